"""Hooks that projects implement in their conftest.py."""

from __future__ import annotations

import pytest


def pytest_jaxcache_set_errors(config: pytest.Config, enabled: bool) -> None:
    """Switch the project's runtime error checks on or off.

    Called before the first test and whenever the run crosses between tests marked
    ``jax_errors`` and unmarked ones; ``enabled`` is whether the next test is marked.
    JAX's in-memory caches are cleared right after every switch (a switch is read
    when a function is traced), so no program traced under one setting is run under
    the other. Implement it to flip a global such as equinox's ``EQX_ON_ERROR`` or
    Torax's ``enable_errors``.
    """
