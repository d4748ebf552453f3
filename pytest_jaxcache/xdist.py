"""Controller <-> worker exchange; registered only when pytest-xdist is active."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_jaxcache import error_checks
from pytest_jaxcache.session import CacheSession
from pytest_jaxcache.worker_report import EXCHANGE_KEY, ReportVersionError, WorkerReport


class XdistHooks:
    """xdist hooks, in a class so that they exist only when xdist does.
    ``session`` is ``None`` when the cache is off (grouping still applies)."""

    def __init__(self, session: CacheSession | None) -> None:
        self.session = session

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Before xdist's own hook turns ``xdist_group`` marks into ``@group`` ids."""
        error_checks.group_marked_for_xdist(items)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if self.session is not None:
            node.workerinput[EXCHANGE_KEY] = self.session.controller_input()

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        if self.session is None:
            return
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
