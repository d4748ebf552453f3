"""The plugin object of each role, registered with pytest only when a cache is active
(as pytest-cov does): a session without a cache pays for none of these hooks.

- :class:`Alone`: a session without xdist: it runs the tests and reports.
- :class:`Worker`: an xdist worker: it runs tests and sends its share to the controller.
- :class:`Controller`: the xdist controller: it runs no test; it gathers the workers'
  shares and reports.

The work happens in :class:`~pytest_jaxcache.session.CacheSession`; the report's figures
in :mod:`pytest_jaxcache.snapshot`; its words in :mod:`pytest_jaxcache.terminal` and
:mod:`pytest_jaxcache.summary`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from pytest_jaxcache import markers
from pytest_jaxcache.session import CacheSession
from pytest_jaxcache.worker_report import EXCHANGE_KEY, ReportVersionError, WorkerReport

_OUTCOMES = ("failed", "skipped")  # the first a phase reports wins over "passed"


class _Tests:
    """Accounting per test, in the process that runs them. Plain hooks, not wrappers:
    they run for every test, and pluggy calls a plain hook for a fraction of a
    wrapper's cost. Each phase's hook sets where compiles are attributed until the
    next one; the teardown's report closes the test."""

    def __init__(self, session: CacheSession) -> None:
        self.session = session
        self._markers: tuple[str, ...] = ()
        self._outcome = "passed"
        self._bypass: contextlib.ExitStack | None = None

    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        """With ``--jax-cache-shard``: keep this shard's tests, deselect the others."""
        if self.session.settings.shard is None:
            return
        from pytest_jaxcache.error_checks import is_marked

        marked = {item.nodeid for item in items if is_marked(item)}
        chosen = self.session.select_shard([item.nodeid for item in items], marked)
        deselected = [item for item in items if item.nodeid not in chosen]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if item.nodeid in chosen]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        found = tuple(name for name in markers.DESCRIPTIONS if item.get_closest_marker(name))
        self._markers, self._outcome = found, "passed"
        recorder = self.session.recorder
        if markers.NO_CACHE in found:
            from pytest_jaxcache.jax.runtime import persistent_cache_disabled

            self._bypass = contextlib.ExitStack()
            self._bypass.enter_context(persistent_cache_disabled())
            recorder.set_bypassed(True)
        recorder.begin(item.nodeid, "setup", found)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        self.session.recorder.begin(item.nodeid, "call", self._markers)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        self.session.recorder.begin(item.nodeid, "teardown", self._markers)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """After each phase; after teardown, whatever failed: the test is over."""
        if self._outcome == "passed" and report.outcome in _OUTCOMES:
            self._outcome = report.outcome
        if report.when != "teardown":
            return
        recorder = self.session.recorder
        recorder.end(self._outcome)
        if self._bypass is not None:
            bypass, self._bypass = self._bypass, None
            recorder.set_bypassed(False)
            bypass.close()


class _Reports:
    """The snapshot, built once at the end of the session, and its surfaces: the JSON
    file, the job summary, the terminal section, the header."""

    def __init__(self, session: CacheSession) -> None:
        self.session = session
        self.snapshot: dict[str, Any] | None = None

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        resolved = self.session.settings
        lines = [
            f"jaxcache: {resolved.where} (from {resolved.dir_source}), {self.session.mode.value}"
        ]
        lines += [f"jaxcache: notice: {notice}" for notice in self.session.notices]
        return lines

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        snapshot = self.snapshot = self.session.finish()
        resolved = self.session.settings
        notices = snapshot["cache"]["notices"]
        if resolved.report_path is not None:
            try:
                write_json(resolved.report_path, snapshot)
            except OSError as error:  # the report is ours: its problem must not fail the run
                notices.append(
                    f"could not write the JSON report to {resolved.report_path}: "
                    f"{error.strerror or error}"
                )
        if resolved.summary_path is not None:
            from pytest_jaxcache.summary import markdown

            try:
                append_text(resolved.summary_path, markdown(snapshot))
            except OSError as error:
                notices.append(
                    f"could not write the job summary to {resolved.summary_path}: "
                    f"{error.strerror or error}"
                )
        if resolved.timeline_path is not None:
            from pytest_jaxcache import timeline

            try:
                write_text(
                    resolved.timeline_path,
                    timeline.html(timeline.bars_of(snapshot), title="pytest-jaxcache timeline"),
                )
            except OSError as error:
                notices.append(
                    f"could not write the timeline to {resolved.timeline_path}: "
                    f"{error.strerror or error}"
                )
        from pytest_jaxcache.snapshot import unmarked_uncachable

        if resolved.strict and unmarked_uncachable(snapshot):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.snapshot is None:
            return
        from pytest_jaxcache.snapshot import unmarked_uncachable
        from pytest_jaxcache.terminal import render

        verbosity = terminalreporter.config.get_verbosity()
        if verbosity >= 0:
            terminalreporter.write_sep("=", "jax compilation cache")
        for line in render(self.snapshot, verbosity=verbosity):
            terminalreporter.write_line(line)
        unmarked = unmarked_uncachable(self.snapshot)
        if self.session.settings.strict and unmarked:
            terminalreporter.write_line(
                f"--jax-cache-strict: {len(unmarked)} tests not marked {markers.ERRORS} "
                "compiled uncachable programs: failing the session",
                red=True,
            )


class Alone(_Tests, _Reports):
    """A session without xdist workers."""

    def __init__(self, session: CacheSession) -> None:
        _Tests.__init__(self, session)
        _Reports.__init__(self, session)


class Worker(_Tests):
    """An xdist worker: it runs tests and sends its share to the controller."""

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        workeroutput = getattr(session.config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput[EXCHANGE_KEY] = self.session.share().to_builtins()


class Controller(_Reports):
    """The xdist controller: it gathers the workers' shares and reports."""

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[EXCHANGE_KEY] = self.session.controller_input()

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        worker = str(node.workerinput.get("workerid", "?"))
        data = (getattr(node, "workeroutput", None) or {}).get(EXCHANGE_KEY)
        if data is None:  # the worker crashed before its session finished
            self.session.lose(worker)
            return
        try:
            report = WorkerReport.from_builtins(data)
        except ReportVersionError as problem:
            self.session.notices.append(f"worker {worker}: {problem}")
            self.session.lose(worker)
            return
        self.session.absorb(worker, report)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def append_text(path: Path, text: str) -> None:
    """Append ``text`` (a job summary: other steps append to the same file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
