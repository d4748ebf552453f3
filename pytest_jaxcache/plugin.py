"""pytest hooks: options, ini keys, markers and wiring. The work happens elsewhere."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_jaxcache import errors, hookspecs, settings

if TYPE_CHECKING:
    from pytest_jaxcache.fixture import JaxCache
    from pytest_jaxcache.session import CacheSession  # noqa: F401 (named in SESSION)

# The rest of the package (JAX, filelock) is imported only when a cache is asked for:
# an installed plugin costs a run that does not use it next to nothing.
SESSION = pytest.StashKey["CacheSession"]()
REPORT = pytest.StashKey[dict[str, Any]]()
ITEM_MARKERS = pytest.StashKey[tuple[str, ...]]()
BYPASS = pytest.StashKey[contextlib.ExitStack]()  # open while a jax_no_cache test runs

MARKERS = {
    "jax_errors": "the test switches on runtime error checks that use host callbacks "
    "(jax.debug.callback, io_callback, equinox.error_if); its programs are accounted "
    "apart from the cachable rest.",
    "jax_no_cache": "run this test with JAX's persistent compilation cache bypassed "
    "(no lookup, no write).",
}

_HELP = {
    settings.DIR: "directory of the shared JAX compilation cache; empty disables "
    "(ini jax_cache_dir, env JAX_COMPILATION_CACHE_DIR)",
    settings.MIN_COMPILE_TIME: "write programs that compiled in at least this many seconds "
    "(default 0: every program)",
    settings.MIN_ENTRY_SIZE: "write entries of at least this many bytes (default -1: no minimum)",
    settings.MAX_SIZE: f"size cap enforced at session end by LRU eviction, e.g. 500MB, 2GiB, "
    f"none (default {settings.DEFAULT_MAX_SIZE})",
    settings.PRUNE_AFTER: "remove entries unused for this many sessions (default: never)",
    settings.MODE: "readwrite (default) or readonly: serve hits, never write or evict",
    settings.XLA_CACHES: "value of jax_persistent_cache_enable_xla_caches (default none: keys "
    "independent of the cache path; 'all' enables the GPU autotune/kernel caches)",
    settings.LOCK_TIMEOUT: "seconds to wait for another process compiling the same program "
    f"(default {settings.DEFAULT_LOCK_TIMEOUT:g})",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jaxcache", "JAX persistent compilation cache (pytest-jaxcache)")
    for option, help_text in _HELP.items():
        dest = option.ini
        group.addoption(option.cli, action="store", dest=dest, default=None, help=help_text)
        parser.addini(option.ini, help_text, default=None)
    group.addoption(
        "--jax-cache-durations",
        type=int,
        default=10,
        metavar="N",
        help="show the N slowest-compiling test phases (0: all, -1: none; default 10)",
    )
    group.addoption(
        "--jax-cache-report",
        metavar="PATH",
        default=None,
        help="write the session's compile report as JSON to PATH",
    )
    group.addoption(
        "--jax-cache-strict",
        action="store_true",
        default=None,
        help="fail the session when a test not marked jax_errors compiled uncachable "
        "programs (ini jax_cache_strict)",
    )
    parser.addini("jax_cache_strict", "see --jax-cache-strict", type="bool", default=False)
    group.addoption(
        "--jax-cache-store",
        choices=("pytest-jaxcache", "jax"),
        default="pytest-jaxcache",
        help="pytest-jaxcache: atomic, locked, bounded store (default); jax: JAX's own files",
    )


def _early_option(config: pytest.Config, dest: str) -> Any:
    """Options are only parsed into ``known_args_namespace`` when initial conftests load."""
    return getattr(config.known_args_namespace, dest, None)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def _raw(config: pytest.Config) -> dict[settings.Option, settings.Raw]:
    raw = {}
    for option in settings.ALL_OPTIONS:
        cli = _early_option(config, option.ini)
        ini = config.getini(option.ini)
        env = os.environ.get(option.env) if option.env else None
        raw[option] = settings.Raw(cli, ini if isinstance(ini, str) else None, env)
    return raw


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Configure JAX before any conftest can import it and compile."""
    config = early_config
    try:
        resolved = settings.resolve(
            _raw(config),
            rootpath=config.rootpath,
            invocation_dir=config.invocation_params.dir,
        )
    except settings.SettingsError as error:
        raise pytest.UsageError(f"pytest-jaxcache: {error}") from None
    from pytest_jaxcache import jaxhooks

    if not resolved.enabled:
        env = settings.DIR.env
        if resolved.dir_source.kind in ("cli", "ini") and env and os.environ.get(env):
            jaxhooks.keep_jax_cache_off(env)
        return
    from pytest_jaxcache.recorder import Recorder
    from pytest_jaxcache.session import CacheSession

    session = CacheSession(
        settings=resolved,
        recorder=Recorder(),
        use_our_store=_early_option(config, "jax_cache_store") != "jax",
    )
    try:
        session.start()
    except jaxhooks.JaxMissing as error:
        raise pytest.UsageError(
            f"pytest-jaxcache: {resolved.dir_source} asks for a JAX compilation cache, "
            f"but {error}. Install JAX, or run with -p no:jaxcache."
        ) from None
    config.stash[SESSION] = session


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    config.pluginmanager.register(errors.ErrorsSwitch(config), "jaxcache-errors-switch")
    session = config.stash.get(SESSION, None)
    if config.pluginmanager.hasplugin("xdist"):
        from pytest_jaxcache.xdist import XdistHooks

        config.pluginmanager.register(XdistHooks(session), "jaxcache-xdist")
    if session is None:
        return
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        session.become_worker(str(workerinput.get("workerid", "?")), workerinput.get("jaxcache"))
    else:
        session.measure_before()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marked tests run after the rest; last, so that reordering plugins keep their
    order within each group."""
    errors.run_marked_last(items)


@pytest.fixture
def jax_cache(request: pytest.FixtureRequest) -> JaxCache:
    """This test's JAX compile figures, and ``assert_cached(fn, *args)``."""
    from pytest_jaxcache.fixture import JaxCache

    return JaxCache(request.config.stash.get(SESSION, None), request.node.nodeid)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION, None)
    if session is not None:
        session.stop()


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    session = config.stash.get(SESSION, None)
    if session is None:
        return None
    lines = [
        f"jaxcache: {session.settings.location} (from {session.settings.dir_source}), "
        f"{session.mode.value}"
    ]
    lines += [f"jaxcache: notice: {notice}" for notice in session.notices]
    return lines


# Plain hooks, not wrappers: they run for every test, and pluggy calls a plain hook for a
# fraction of a wrapper's cost. Each phase's hook sets where compiles are attributed
# until the next one; pytest_runtest_logfinish closes the test.


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    session = item.config.stash.get(SESSION, None)
    if session is None:
        return
    markers = tuple(name for name in MARKERS if item.get_closest_marker(name) is not None)
    item.stash[ITEM_MARKERS] = markers
    if "jax_no_cache" in markers:
        from pytest_jaxcache import jaxhooks

        bypass = item.config.stash[BYPASS] = contextlib.ExitStack()
        bypass.enter_context(jaxhooks.persistent_cache_disabled())
        session.recorder.set_bypassed(True)
    session.recorder.begin(item.nodeid, "setup", markers)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    session = item.config.stash.get(SESSION, None)
    if session is not None:
        session.recorder.begin(item.nodeid, "call", item.stash.get(ITEM_MARKERS, ()))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    session = item.config.stash.get(SESSION, None)
    if session is not None:
        session.recorder.begin(item.nodeid, "teardown", item.stash.get(ITEM_MARKERS, ()))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """After teardown, whatever failed: stop attributing to the test, end a bypass."""
    if call.when != "teardown":
        return
    session = item.config.stash.get(SESSION, None)
    if session is None:
        return
    session.recorder.end()
    bypass = item.config.stash.get(BYPASS, None)
    if bypass is not None:
        del item.config.stash[BYPASS]
        session.recorder.set_bypassed(False)
        bypass.close()


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    state = config.stash.get(SESSION, None)
    if state is None:
        return
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["jaxcache"] = state.worker_output()
        return
    from pytest_jaxcache import report
    from pytest_jaxcache.session import write_json

    state.finish()
    data = state.build_report()
    config.stash[REPORT] = data
    path = config.getoption("jax_cache_report")
    if path:
        target = Path(config.invocation_params.dir, path)
        try:
            write_json(target, data)
        except OSError as error:  # the report is ours: its problem must not fail the run
            data["cache"]["notices"].append(
                f"could not write the JSON report to {target}: {error.strerror or error}"
            )
    if _strict(config) and report.unmarked_uncachable(data):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _strict(config: pytest.Config) -> bool:
    option = config.getoption("jax_cache_strict")
    return bool(config.getini("jax_cache_strict") if option is None else option)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    data = config.stash.get(REPORT, None)
    if data is None:
        return
    from pytest_jaxcache import report

    verbosity = config.get_verbosity()
    lines = report.render(
        data, verbosity=verbosity, durations=config.getoption("jax_cache_durations")
    )
    if verbosity >= 0:
        terminalreporter.write_sep("=", "jax compilation cache")
    for line in lines:
        terminalreporter.write_line(line)
    unmarked = report.unmarked_uncachable(data)
    if _strict(config) and unmarked:
        terminalreporter.write_line(
            f"--jax-cache-strict: {len(unmarked)} tests not marked jax_errors compiled "
            "uncachable programs: failing the session",
            red=True,
        )
