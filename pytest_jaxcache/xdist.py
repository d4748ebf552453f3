"""xdist hooks that apply with or without a cache; registered only when pytest-xdist is
installed: ``jax_errors`` tests grouped for ``--dist loadgroup``, and ``--dist=jaxcache``
(:mod:`pytest_jaxcache.scheduler`). The controller <-> worker exchange of a cache
session is the roles' (:mod:`pytest_jaxcache.roles`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import pytest

from pytest_jaxcache import error_checks
from pytest_jaxcache.markers import ERRORS

DIST = "jaxcache"  # --dist=jaxcache: the scheduler of pytest_jaxcache.scheduler
MARKED_KEY = "jaxcache_marked"  # in workerinput: where workers write their marked tests


def add_dist_choice(parser: pytest.Parser) -> bool:
    """Let xdist's ``--dist`` accept ``jaxcache`` (xdist fixes its choices; a plugin's
    scheduler has no other way in: pytest-dev/pytest-xdist#970). Whether it could."""
    for group in getattr(parser, "_groups", ()):
        for option in getattr(group, "options", ()):
            if "--dist" in option.names():
                # The option's attributes (pytest 8), or its argparse action's (pytest 9).
                choices = option.attrs().get("choices")
                if isinstance(choices, list):
                    if DIST not in choices:
                        choices.append(DIST)
                    return True
    return False


class DistChoice:
    """Adds the choice once xdist's options exist, whichever plugin registers first."""

    def __init__(self, parser: pytest.Parser) -> None:
        self.parser = parser

    def pytest_plugin_registered(self, plugin: object) -> None:
        if getattr(plugin, "__name__", "") == "xdist.plugin":
            add_dist_choice(self.parser)


LOADGROUP_ISSUE = "https://github.com/pytest-dev/pytest-xdist/issues/1386"


class LoadgroupCheck:
    """On a worker under ``--dist loadgroup``: whether xdist's ``@group`` suffix reached
    the marked tests' ids (pytest 9.2 keeps ids where xdist 3.8 cannot change them). When
    it did not, say so once: ``--dist=jaxcache`` keeps them together regardless."""

    def __init__(self, notices: list[str]) -> None:
        self.notices = notices

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        lost = [item for item in items if error_checks.is_marked(item) and "@" not in item.nodeid]
        if lost:
            self.notices.append(
                f"--dist loadgroup did not group {len(lost)} {ERRORS} tests with "
                f"pytest {pytest.__version__} ({LOADGROUP_ISSUE}): they may share workers "
                "with other tests; --dist=jaxcache keeps them on one worker"
            )


class XdistHooks:
    """xdist hooks, in a class so that they exist only when xdist does. ``state`` gives
    the scheduler what the cache knows (history, entries present) when a cache is on."""

    def __init__(self, config: pytest.Config, state: Any | None) -> None:
        self.config = config
        self.state = state  # a CacheSession, or None without a cache
        self.notices: list[str] = []
        self._marked_dir: str | None = None
        if getattr(config.option, "loadgroup", False):  # a worker under --dist loadgroup
            notices = state.notices if state is not None else self.notices
            config.pluginmanager.register(LoadgroupCheck(notices), "jaxcache-loadgroup-check")

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Before xdist's own hook turns ``xdist_group`` marks into ``@group`` ids; on a
        worker under --dist=jaxcache, tell the controller which tests are marked."""
        error_checks.group_marked_for_xdist(items)
        workerinput: dict[str, Any] = getattr(self.config, "workerinput", None) or {}
        directory = workerinput.get(MARKED_KEY)
        if isinstance(directory, str) and os.path.isdir(directory):
            from pytest_jaxcache.scheduler import write_marked

            marked = [item.nodeid for item in items if error_checks.is_marked(item)]
            write_marked(directory, str(workerinput.get("workerid", "")), marked)

    def _dist(self) -> str:
        return str(getattr(self.config.option, "dist", "no"))

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if self._dist() == DIST:
            if self._marked_dir is None:
                self._marked_dir = tempfile.mkdtemp(prefix="jaxcache-marked-")
            node.workerinput[MARKED_KEY] = self._marked_dir

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if self._dist() != DIST:
            return None
        from xdist.workermanage import parse_tx_spec_config

        from pytest_jaxcache.history import History
        from pytest_jaxcache.scheduler import CostScheduling

        if self._marked_dir is None:
            self._marked_dir = tempfile.mkdtemp(prefix="jaxcache-marked-")
        history, present = History(), frozenset[str]()
        if self.state is not None:
            history, present = self.state.history, self.state.present
        notice = self.state.notices.append if self.state is not None else self.notices.append
        return CostScheduling(
            len(parse_tx_spec_config(config)), history, present, self._marked_dir, notice
        )

    def pytest_unconfigure(self) -> None:
        if self._marked_dir is not None:
            shutil.rmtree(self._marked_dir, ignore_errors=True)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Without a cache session, the scheduler's notices have no report to go in."""
        for notice in self.notices:
            terminalreporter.write_line(f"jaxcache: {notice}")
