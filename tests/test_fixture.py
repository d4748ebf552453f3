"""The ``jax_cache`` fixture end to end: real pytest
sessions in subprocesses, real JAX on CPU. ``assert_cached`` on cold and warm caches
(a Torax-style "is the simulation cached?" check in a few lines), its failures,
``counts()``/``compiles()``, and the reason it gives for a program that missed (the
reasons themselves: ``test_why_compiled.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import CALLBACKS_CACHED, RunJax, write_files

from pytest_jaxcache import reasons

# -- assert_cached, counts(), compiles() -------------------------------------------------

FIXTURE_SUITE = {
    "test_cached.py": """
        import json
        from dataclasses import asdict
        from pathlib import Path

        import jax
        import jax.numpy as jnp
        import numpy as np
        from jax import lax

        X = np.linspace(0.0, 1.0, 4, dtype=np.float32)


        def scaled(x):
            return jnp.sin(x) * 2.0


        def test_plain_function_is_cached(jax_cache):
            out = jax_cache.assert_cached(jax.jit(scaled), X)
            np.testing.assert_allclose(out, np.sin(X) * 2.0, rtol=1e-6)


        # A Torax-like "persistent_cache" test: is the whole simulation served from the
        # cache? Without the fixture: run it twice in subprocesses and compare timings.
        @jax.jit
        def simulate(y0, rate):
            def euler_step(y, _):
                y = y - 0.01 * rate * y  # dy/dt = -rate * y
                return y, y

            final, trajectory = lax.scan(euler_step, y0, None, length=50)
            return final, trajectory


        def test_simulation_is_cached(jax_cache):
            final, trajectory = jax_cache.assert_cached(simulate, jnp.ones(3), 2.0)
            assert trajectory.shape == (50, 3)
            np.testing.assert_allclose(final, (1 - 0.02) ** 50, rtol=1e-5)


        def counted(x):
            return jnp.cos(x) + 1.0


        def test_counts(jax_cache):
            before = jax_cache.counts()
            jax.jit(counted)(X).block_until_ready()
            after = jax_cache.counts()
            record = {
                "enabled": jax_cache.enabled,
                "before": asdict(before),
                "after": asdict(after),
                "compiles": [(c.name, c.outcome, c.test, c.phase) for c in jax_cache.compiles()],
            }
            Path(__file__).with_name("counts.json").write_text(json.dumps(record))
    """,
    "test_not_cached.py": """
        import jax
        import numpy as np

        X = np.ones(3, np.float32)


        def with_callback(x):
            jax.debug.callback(lambda v: None, x)
            return x + 1.0


        def test_callback_is_not_cached(jax_cache):
            jax_cache.assert_cached(jax.jit(with_callback), X)


        def test_nothing_compiled(jax_cache):
            jax_cache.assert_cached(lambda: 1)
    """,
}


def read_counts(base: Path) -> dict[str, Any]:
    path = base / "counts.json"
    data: dict[str, Any] = json.loads(path.read_text())
    path.unlink()
    return data


def check_counts(data: dict[str, Any], report: dict[str, Any], outcome: str) -> None:
    """``counts()`` grew by exactly the one program the test compiled (``outcome``) and
    equals what the report holds for the test; ``compiles()`` names that program."""
    nodeid = "test_cached.py::test_counts"
    assert data["enabled"] is True
    assert data["compiles"] == [["jit(counted)", outcome, nodeid, "call"]]
    field = {"hit": "hits", "miss": "misses"}[outcome]
    before, after = data["before"], data["after"]
    assert after[field] - before[field] == 1
    assert after["requests"] - before["requests"] == 1
    assert after["hits"] + after["misses"] + after["uncachable"] == 1
    test = next(t for t in report["tests"] if t["nodeid"] == nodeid)
    phases = test["phases"]
    assert sum(p["hits"] for p in phases.values()) == after["hits"]
    assert sum(p["misses"] for p in phases.values()) == after["misses"]


# What fails in FIXTURE_SUITE: the function that compiles nothing, and (up to JAX 0.10,
# which never writes programs with host callbacks) the function with a callback.
NOTHING_COMPILED = [
    "*_ test_nothing_compiled _*",
    "*assert_cached: the function compiled nothing, so nothing was checked*",
]
CALLBACK_UNCACHABLE = [
    "*_ test_callback_is_not_cached _*",
    "1 of 1 programs did not come from the persistent cache:",
    f"  jit(with_callback): uncachable: {reasons.not_written(reasons.HOST_CALLBACKS)}",
]
FIXTURE_TESTS = 5


@pytest.mark.parametrize(
    "failures",
    [
        pytest.param(
            [NOTHING_COMPILED, CALLBACK_UNCACHABLE],
            marks=pytest.mark.skipif(CALLBACKS_CACHED, reason="JAX 0.11+ caches host callbacks"),
            id="callbacks-uncachable",
        ),
        pytest.param(
            [NOTHING_COMPILED],
            marks=pytest.mark.skipif(
                not CALLBACKS_CACHED, reason="JAX <= 0.10 never writes host callbacks"
            ),
            id="callbacks-cached",
        ),
    ],
)
def test_assert_cached_and_counts_on_cold_and_warm_caches(
    pytester: pytest.Pytester, run_jax: RunJax, failures: list[list[str]]
) -> None:
    """``assert_cached`` passes for a plain jitted function and for a lax.scan simulation
    on a cold cache (it fills it) and on a warm one; it fails, naming the program and
    'uncachable', for a function with jax.debug.callback (up to JAX 0.10; it passes from
    0.11), and fails when the function compiled nothing. ``counts()``/``compiles()``
    reflect the current test's miss (cold) or hit (warm), in agreement with the report."""
    write_files(pytester.path, FIXTURE_SUITE)
    cache = f"--jax-cache-dir={pytester.path / 'cache'}"

    # The cold run compiles the simulation and writes it, then loads it; the warm run
    # loads it twice.
    for run, outcome, simulate in (("cold", "miss", ["miss", "hit"]), ("warm", "hit", ["hit"] * 2)):
        result, report = run_jax(cache, "-p", "no:xdist")
        result.assert_outcomes(passed=FIXTURE_TESTS - len(failures), failed=len(failures))
        for lines in failures:
            result.stdout.fnmatch_lines(lines)
        check_counts(read_counts(pytester.path), report, outcome)
        names = {c["name"] for c in report["compiles"] if "simulation" in c["test"]}
        assert "jit(simulate)" in names, (run, names)
        outcomes = [c["outcome"] for c in report["compiles"] if c["name"] == "jit(simulate)"]
        assert outcomes == simulate, run


def test_assert_cached_without_a_cache_dir_says_what_to_do(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """Without ``--jax-cache-dir`` the fixture still works (``enabled`` is False, counts
    are zero) and ``assert_cached`` fails with a message naming ``--jax-cache-dir``."""
    write_files(
        pytester.path,
        {
            "test_nodir.py": """
                import jax
                import jax.numpy as jnp


                def test_counts_without_cache(jax_cache):
                    jax.jit(jnp.sin)(jnp.ones(2)).block_until_ready()
                    assert jax_cache.enabled is False
                    assert jax_cache.counts().compiles == 0
                    assert jax_cache.compiles() == []


                def test_assert_cached(jax_cache):
                    jax_cache.assert_cached(jax.jit(jnp.sin), jnp.ones(2))
            """
        },
    )
    result, report = run_jax("-p", "no:xdist")
    result.assert_outcomes(passed=1, failed=1)
    assert report == {}
    result.stdout.fnmatch_lines(
        ["*jax_cache.assert_cached needs a persistent cache: run with --jax-cache-dir*"]
    )


def test_assert_cached_explains_a_program_that_changes_between_runs(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """A function that bakes a fresh random constant into its program misses on the
    second run: ``assert_cached`` fails and says the key changed between two identical
    runs (something non-deterministic is traced in)."""
    write_files(
        pytester.path,
        {
            "test_noisy.py": """
                import jax
                import numpy as np


                def noisy(x):
                    constant = float(np.random.rand())
                    return jax.jit(lambda y: y * constant)(x)


                def test_noisy(jax_cache):
                    jax_cache.assert_cached(noisy, np.ones(3, np.float32))
            """
        },
    )
    result, _ = run_jax(f"--jax-cache-dir={pytester.path / 'cache'}", "-p", "no:xdist")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "1 of 1 programs did not come from the persistent cache:",
            "  jit(<lambda>): miss: its key changed between two identical runs*",
        ]
    )
