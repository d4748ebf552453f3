"""pytest hooks: register the option table and the markers, and wire pytest's events
to the session. The work happens elsewhere."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

import pytest

from pytest_jaxcache import error_checks, hookspecs, markers, settings

if TYPE_CHECKING:
    from pytest_jaxcache.fixture import JaxCache
    from pytest_jaxcache.session import CacheSession  # noqa: F401 (named in SESSION)

# The rest of the package (JAX, filelock) is imported only when a cache is asked for:
# an installed plugin costs a run that does not use it next to nothing.
SESSION = pytest.StashKey["CacheSession"]()
REPORT = pytest.StashKey[dict[str, Any]]()
ITEM_MARKERS = pytest.StashKey[tuple[str, ...]]()
BYPASS = pytest.StashKey[contextlib.ExitStack]()  # open while a jax_no_cache test runs


def _dest(option: settings.Option[Any]) -> str:
    """Where argparse keeps a value: prefixed, so that no option of pytest's own (such as
    --durations or --strict) shares it."""
    return f"jaxcache_{option.attr}"


def pytest_addoption(parser: pytest.Parser) -> None:
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
    """Resolve the options and configure JAX before any conftest can import it."""
    config = early_config
    base = config.invocation_params.dir
    try:
        resolved = settings.resolve(_raw(config), rootpath=config.rootpath, invocation_dir=base)
        jax_environment = settings.jax_environment(os.environ, base) if resolved.enabled else {}
    except settings.SettingsError as error:
        raise pytest.UsageError(f"pytest-jaxcache: {error}") from None
    from pytest_jaxcache import jaxhooks

    if not resolved.enabled:
        env = settings.DIR.env
        if resolved.dir_source.kind in ("cli", "ini") and env and os.environ.get(env):
            jaxhooks.keep_jax_cache_off(env)
        return
    os.environ.update(jax_environment)
    from pytest_jaxcache import trust
    from pytest_jaxcache.session import CacheSession, UnusableCache
    from pytest_jaxcache.store import Policy

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
    except jaxhooks.JaxMissing as error:
        raise pytest.UsageError(
            f"pytest-jaxcache: {resolved.dir_source} asks for a JAX compilation cache, "
            f"but {error}. Install JAX, or run with -p no:jaxcache."
        ) from None
    except UnusableCache as error:
        raise pytest.UsageError(f"pytest-jaxcache: {error}") from None
    config.stash[SESSION] = session


def pytest_configure(config: pytest.Config) -> None:
    for name, description in markers.DESCRIPTIONS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    config.pluginmanager.register(error_checks.ErrorsSwitch(config), "jaxcache-errors-switch")
    session = config.stash.get(SESSION, None)
    if config.pluginmanager.hasplugin("xdist"):
        from pytest_jaxcache.xdist import XdistHooks

        config.pluginmanager.register(XdistHooks(session), "jaxcache-xdist")
    if session is None:
        return
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        from pytest_jaxcache.worker_report import EXCHANGE_KEY

        session.become_worker(str(workerinput.get("workerid", "?")), workerinput.get(EXCHANGE_KEY))
    else:
        session.measure_before()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marked tests run after the rest; last, so that reordering plugins keep their
    order within each group."""
    error_checks.run_marked_last(items)


@pytest.fixture
def jax_cache(request: pytest.FixtureRequest) -> JaxCache:
    """This test's JAX compile figures, and ``assert_cached(fn, *args)``."""
    from pytest_jaxcache.fixture import JaxCache

    return JaxCache(request.config.stash.get(SESSION, None), request.node.nodeid)


def pytest_unconfigure(config: pytest.Config) -> None:
    cache_session = config.stash.get(SESSION, None)
    if cache_session is not None:
        cache_session.stop()


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    cache_session = config.stash.get(SESSION, None)
    if cache_session is None:
        return None
    resolved = cache_session.settings
    lines = [f"jaxcache: {resolved.where} (from {resolved.dir_source}), {cache_session.mode.value}"]
    lines += [f"jaxcache: notice: {notice}" for notice in cache_session.notices]
    return lines


# Plain hooks, not wrappers: they run for every test, and pluggy calls a plain hook for a
# fraction of a wrapper's cost. Each phase's hook sets where compiles are attributed
# until the next one; the teardown report closes the test.


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    cache_session = item.config.stash.get(SESSION, None)
    if cache_session is None:
        return
    found = tuple(name for name in markers.DESCRIPTIONS if item.get_closest_marker(name))
    item.stash[ITEM_MARKERS] = found
    if markers.NO_CACHE in found:
        from pytest_jaxcache import jaxhooks

        bypass = item.config.stash[BYPASS] = contextlib.ExitStack()
        bypass.enter_context(jaxhooks.persistent_cache_disabled())
        cache_session.recorder.set_bypassed(True)
    cache_session.recorder.begin(item.nodeid, "setup", found)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    cache_session = item.config.stash.get(SESSION, None)
    if cache_session is not None:
        cache_session.recorder.begin(item.nodeid, "call", item.stash.get(ITEM_MARKERS, ()))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    cache_session = item.config.stash.get(SESSION, None)
    if cache_session is not None:
        cache_session.recorder.begin(item.nodeid, "teardown", item.stash.get(ITEM_MARKERS, ()))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """After teardown, whatever failed: stop attributing to the test, end a bypass."""
    if call.when != "teardown":
        return
    cache_session = item.config.stash.get(SESSION, None)
    if cache_session is None:
        return
    cache_session.recorder.end()
    bypass = item.config.stash.get(BYPASS, None)
    if bypass is not None:
        del item.config.stash[BYPASS]
        cache_session.recorder.set_bypassed(False)
        bypass.close()


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    cache_session = config.stash.get(SESSION, None)
    if cache_session is None:
        return
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        from pytest_jaxcache.worker_report import EXCHANGE_KEY

        workeroutput[EXCHANGE_KEY] = cache_session.worker_report().to_builtins()
        return
    from pytest_jaxcache import report
    from pytest_jaxcache.session import append_text, write_json

    cache_session.finish()
    data = cache_session.build_report()
    config.stash[REPORT] = data
    resolved = cache_session.settings
    if resolved.report_path is not None:
        try:
            write_json(resolved.report_path, data)
        except OSError as error:  # the report is ours: its problem must not fail the run
            data["cache"]["notices"].append(
                f"could not write the JSON report to {resolved.report_path}: "
                f"{error.strerror or error}"
            )
    if resolved.summary_path is not None:
        from pytest_jaxcache.summary import markdown

        try:
            append_text(resolved.summary_path, markdown(data, durations=resolved.durations))
        except OSError as error:
            data["cache"]["notices"].append(
                f"could not write the job summary to {resolved.summary_path}: "
                f"{error.strerror or error}"
            )
    if cache_session.settings.strict and report.unmarked_uncachable(data):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    data = config.stash.get(REPORT, None)
    cache_session = config.stash.get(SESSION, None)
    if data is None or cache_session is None:
        return
    from pytest_jaxcache import report

    verbosity = config.get_verbosity()
    resolved = cache_session.settings
    if verbosity >= 0:
        terminalreporter.write_sep("=", "jax compilation cache")
    for line in report.render(data, verbosity=verbosity, durations=resolved.durations):
        terminalreporter.write_line(line)
    unmarked = report.unmarked_uncachable(data)
    if resolved.strict and unmarked:
        terminalreporter.write_line(
            f"--jax-cache-strict: {len(unmarked)} tests not marked {markers.ERRORS} compiled "
            "uncachable programs: failing the session",
            red=True,
        )
