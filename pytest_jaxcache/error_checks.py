"""Tests marked ``jax_errors``: run them after the rest, and switch the project's
runtime error checks (through the ``pytest_jaxcache_set_errors`` hook) whenever the run
crosses between marked and unmarked tests."""

from __future__ import annotations

import pytest

from pytest_jaxcache.markers import ERRORS

XDIST_GROUP = ERRORS
SWITCH = "jaxcache-errors-switch"  # the switch's name among pytest's plugins


def is_marked(item: pytest.Item) -> bool:
    return item.get_closest_marker(ERRORS) is not None


def run_marked_last(items: list[pytest.Item]) -> bool:
    """Stable partition, in place: unmarked tests first, then marked ones, each group
    in the order earlier hooks (pytest-randomly, say) left it. Whether any is marked."""
    marked = [item for item in items if is_marked(item)]
    if marked:
        items[:] = [item for item in items if not is_marked(item)] + marked
    return bool(marked)


def group_marked_for_xdist(items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` the marked tests become one group on one worker."""
    for item in items:
        if is_marked(item) and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(XDIST_GROUP))


class ErrorsSwitch:
    """Tracks whether checks are on in this process and switches them on demand.

    A plugin object, so that the switch runs as a plain ``pytest_runtest_setup``:
    inside output capturing, before fixtures are set up."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.enabled: bool | None = None  # unknown until the first test

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        wanted = is_marked(item)
        if wanted == self.enabled:
            return
        first = self.enabled is None
        self.enabled = wanted
        hook = self.config.hook.pytest_jaxcache_set_errors
        hook(config=self.config, enabled=wanted)
        if first and not hook.get_hookimpls():
            return  # no project switch: nothing traced so far can differ
        from pytest_jaxcache.jax.runtime import clear_in_memory_caches  # JAX: a switch ran

        clear_in_memory_caches()
