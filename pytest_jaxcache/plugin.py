"""pytest hooks that exist whatever a session does: the option table, the markers, the
``jax_cache`` fixture and the order of ``jax_errors`` tests. When a cache is asked for,
the session is opened before any conftest can import JAX, and the plugin object of this
process's role (:mod:`pytest_jaxcache.roles`) is registered; otherwise nothing else is
imported and no per-test hook runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from pytest_jaxcache import error_checks, hookspecs, markers, settings

if TYPE_CHECKING:
    from pytest_jaxcache.fixture import JaxCache
    from pytest_jaxcache.session import CacheSession

SESSION = pytest.StashKey["CacheSession"]()
UNDO_ENV = pytest.StashKey[Callable[[], None]]()
ROLE = "jaxcache-role"


def _dest(option: settings.Option[Any]) -> str:
    """Where argparse keeps a value: prefixed, so that no option of pytest's own (such as
    --durations or --strict) shares it."""
    return f"jaxcache_{option.attr}"


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    group = parser.getgroup("jaxcache", "JAX persistent compilation cache (pytest-jaxcache)")
    for option in settings.OPTIONS:
        names = [f"ini {option.ini}"] if option.ini else []
        names += [f"env {option.env}"] if option.env else []
        help_text = option.help + (f" ({', '.join(names)})" if names else "")
        if option.cli is not None:
            kind = {"action": "store_true"} if option.flag else {"metavar": option.metavar}
            group.addoption(option.cli, dest=_dest(option), default=None, help=help_text, **kind)
        if option.ini is not None:
            parser.addini(option.ini, help_text, default=None)
    from pytest_jaxcache.xdist import DistChoice  # --dist=jaxcache, once xdist's options exist

    pluginmanager.register(DistChoice(parser), "jaxcache-dist-choice")


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def _raw(config: pytest.Config) -> dict[settings.Option[Any], settings.Raw]:
    """What each source says about each option. Options are parsed into
    ``known_args_namespace`` by the time initial conftests load."""
    raw = {}
    for option in settings.OPTIONS:
        cli = getattr(config.known_args_namespace, _dest(option), None)
        ini = config.getini(option.ini) if option.ini is not None else None
        env = os.environ.get(option.env) if option.env is not None else None
        raw[option] = settings.Raw(
            cli=("true" if cli is True else cli),
            ini=ini if isinstance(ini, str) else None,
            env=env,
        )
    return raw


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Resolve the options and open the session before any conftest can import JAX."""
    config = early_config
    base = config.invocation_params.dir
    try:
        resolved = settings.resolve(_raw(config), rootpath=config.rootpath, invocation_dir=base)
        jax_environment = settings.jax_environment(os.environ, base) if resolved.enabled else {}
    except settings.SettingsError as error:
        raise pytest.UsageError(f"pytest-jaxcache: {error}") from None
    if not resolved.enabled and resolved.shard is not None:
        raise pytest.UsageError(
            f"pytest-jaxcache: {resolved.source(settings.SHARD)} needs a cache "
            f"({settings.DIR.cli}, ini {settings.DIR.ini} or {settings.DIR.env}): "
            "without one, every job of the matrix would run every test"
        )
    if not resolved.enabled:
        env = settings.DIR.env
        if resolved.dir_source.kind in ("cli", "ini") and env and os.environ.get(env):
            from pytest_jaxcache.jax.importing import keep_jax_cache_off

            config.stash[UNDO_ENV] = keep_jax_cache_off(env)
        return
    config.stash[UNDO_ENV] = _set_environment(jax_environment)
    config.stash[SESSION] = _open_session(resolved)


def _set_environment(values: dict[str, str]) -> Callable[[], None]:
    """Set the variables JAX reads on import; returns the undo."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)

    def undo() -> None:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    return undo


def _open_session(resolved: settings.Settings) -> CacheSession:
    try:
        from pytest_jaxcache import trust
        from pytest_jaxcache.jax.importing import JaxMissing
        from pytest_jaxcache.session import CacheSession, UnusableCache
        from pytest_jaxcache.store import Policy
    except ImportError as error:  # a platform without what the store needs
        raise pytest.UsageError(f"pytest-jaxcache: {error}") from None
    try:
        signer = trust.signer_from(os.environ)
    except trust.TrustError as error:
        raise pytest.UsageError(f"pytest-jaxcache: {error}") from None
    policy = Policy(
        signer=signer,
        load_unverified=resolved.load_unverified,
        others_may_write=resolved.shared or signer.signs,
    )
    session = CacheSession(settings=resolved, policy=policy)
    try:
        session.start()
    except JaxMissing as error:
        raise pytest.UsageError(
            f"pytest-jaxcache: {resolved.dir_source} asks for a JAX compilation cache, "
            f"but {error}. Install JAX, or run with -p no:jaxcache."
        ) from None
    except UnusableCache as error:
        raise pytest.UsageError(f"pytest-jaxcache: {error}") from None
    return session


def pytest_configure(config: pytest.Config) -> None:
    for name, description in markers.DESCRIPTIONS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    session = config.stash.get(SESSION, None)
    if config.pluginmanager.hasplugin("xdist"):
        from pytest_jaxcache.xdist import XdistHooks

        config.pluginmanager.register(XdistHooks(config, session), "jaxcache-xdist")
    if session is None:
        return
    from pytest_jaxcache import roles

    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        from pytest_jaxcache.worker_report import EXCHANGE_KEY

        session.become_worker(str(workerinput.get("workerid", "?")), workerinput.get(EXCHANGE_KEY))
        role: object = roles.Worker(session)
    elif _distributes(config):
        session.measure_before(scheduled=getattr(config.option, "dist", "") == "jaxcache")
        role = roles.Controller(session)
    else:
        session.measure_before()
        role = roles.Alone(session)
    config.pluginmanager.register(role, ROLE)


def _distributes(config: pytest.Config) -> bool:
    """Whether this process is an xdist controller (it hands tests to workers)."""
    return getattr(config.option, "dist", "no") != "no" and bool(getattr(config.option, "tx", ()))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marked tests run after the rest (last, so that reordering plugins keep their
    order within each group); the switch of error checks runs only where it can
    matter: some test is marked, or the project implements the switch."""
    marked = error_checks.run_marked_last(items)
    hook = config.hook.pytest_jaxcache_set_errors
    wanted = marked or bool(hook.get_hookimpls())
    if wanted and not config.pluginmanager.has_plugin(error_checks.SWITCH):
        config.pluginmanager.register(error_checks.ErrorsSwitch(config), error_checks.SWITCH)


@pytest.fixture
def jax_cache(request: pytest.FixtureRequest) -> JaxCache:
    """This test's JAX compile figures, and ``assert_cached(fn, *args)``."""
    from pytest_jaxcache.fixture import JaxCache

    return JaxCache(request.config.stash.get(SESSION, None), request.node.nodeid)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION, None)
    if session is not None:
        session.stop()
    undo = config.stash.get(UNDO_ENV, None)
    if undo is not None:
        undo()
