"""Worker -> controller exchange; registered only when pytest-xdist is active."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_jaxcache import errors
from pytest_jaxcache.session import CacheSession


class XdistHooks:
    """xdist hooks, in a class so that they exist only when xdist does.
    ``session`` is ``None`` when the cache is off (grouping still applies)."""

    def __init__(self, session: CacheSession | None) -> None:
        self.session = session

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Before xdist's own hook turns ``xdist_group`` marks into ``@group`` ids."""
        errors.group_marked_for_xdist(items)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if self.session is not None:
            node.workerinput["jaxcache"] = self.session.controller_input()

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        if self.session is None:
            return
        worker = str(node.workerinput.get("workerid", "?"))
        output = getattr(node, "workeroutput", None) or {}
        data = output.get("jaxcache")
        if data is None:  # the worker crashed before its session finished
            self.session.recorder.lost_workers.append(worker)
            return
        records = data.get("records", {})
        self.session.recorder.merge(
            worker,
            records,
            {
                "store": data.get("store", {}),
                "misses": data.get("misses", []),
                "tests": len(records.get("tests", [])),
                "installed": data.get("installed", {}),
            },
        )
        for notice in data.get("notices", []):
            if notice not in self.session.notices:
                self.session.notices.append(notice)
