"""When JAX's private cache seam is not shaped as expected, the plugin keeps JAX's own
file store, says so, and the cache still works."""

from __future__ import annotations

import pytest
from helpers import RunJax, assert_all_hits, entries

SUITE = """
import jax
import jax.numpy as jnp
import pytest


@pytest.mark.parametrize("n", [2, 3])
def test_compiles(n):
    assert jax.jit(lambda x: jnp.cos(x) + n)(jnp.ones(n)).shape == (n,)
"""

# A plugin module imported before pytest-jaxcache configures JAX: it removes one name
# the plugin looks for, as a JAX release that renamed it would. JAX itself does not
# need the name once its modules are imported, so JAX keeps working.
OLDER_JAX = """
import jax._src.compilation_cache as compilation_cache

del compilation_cache.CacheInterface
"""


def test_missing_seam_falls_back_to_jax_store(pytester: pytest.Pytester, run_jax: RunJax) -> None:
    """The header names the missing internal and the fallback; JAX's store (with the
    plugin's thresholds) still makes the warm run hit every cachable program."""
    pytester.makepyfile(test_suite=SUITE, older_jax=OLDER_JAX)
    cache = pytester.path / "cache"
    args = ("-p", "older_jax", f"--jax-cache-dir={cache}")
    cold, cold_report = run_jax(*args)
    cold.assert_outcomes(passed=2)
    header = "\n".join(cold.outlines)
    assert "compilation_cache.CacheInterface" in header
    assert "JAX's own file store serves the cache" in header
    assert cold_report["cache"]["store"] == "JAX's file store"
    assert cold_report["totals"]["misses"] > 0
    written = sorted(cache.glob("*-cache"))
    assert written, "JAX's own store wrote no entry"
    assert entries(cache) == []  # the plugin's store took no entry

    warm, warm_report = run_jax(*args)
    warm.assert_outcomes(passed=2)
    assert "JAX's own file store serves the cache" in "\n".join(warm.outlines)
    assert_all_hits(warm_report)
    assert warm_report["totals"]["misses"] == 0
    assert sorted(cache.glob("*-cache")) == written
