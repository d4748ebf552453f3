"""Shared fixtures for the pytest-jaxcache example suite.

Nothing here depends on pytest-jaxcache being installed: the suite runs the
same with ``-p no:jaxcache``.  No arrays are created at import time; every
JAX computation happens inside a fixture or a test.
"""

import jax
import pytest


def pytest_configure(config):
    # pytest-jaxcache registers this marker too; registering it here as well
    # keeps the suite warning-free (filterwarnings = error) without the plugin.
    config.addinivalue_line(
        "markers",
        "jax_errors: test relies on runtime checks inside jitted code "
        "(jax.debug.callback / checkify)",
    )


@pytest.fixture
def key():
    """A fresh, deterministic PRNG key for each test."""
    return jax.random.PRNGKey(0)
