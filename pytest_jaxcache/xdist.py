"""xdist hooks that apply with or without a cache; registered only when pytest-xdist is
installed. The controller <-> worker exchange of a cache session is the roles'
(:mod:`pytest_jaxcache.roles`)."""

from __future__ import annotations

import pytest

from pytest_jaxcache import error_checks


class XdistHooks:
    """xdist hooks, in a class so that they exist only when xdist does."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Before xdist's own hook turns ``xdist_group`` marks into ``@group`` ids."""
        error_checks.group_marked_for_xdist(items)
