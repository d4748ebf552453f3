"""Why each program was compiled instead of served, end to end with real JAX on CPU:
a miss named by the part of JAX's key that changed (the lowered module, the compile
options, the device assignment, the XLA flags), a program compiled and not written named
with JAX's own reason, the same figures on every surface (quiet line, section, JSON, job
summary), and ``--jax-cache-explain``'s directory that the user can diff."""

from __future__ import annotations

import hashlib
import json
import subprocess
from typing import Any

import pytest
from helpers import CALLBACKS_CACHED, RunJax, decoded, entries, write_files

from pytest_jaxcache import reasons
from pytest_jaxcache.reasons import KEY_PARTS, NEW, NEW_PROGRAM, PART_MEANINGS
from pytest_jaxcache.terminal import compiled_outside

pytestmark = pytest.mark.slow

# One program per way a key can change, each steered by the environment.
MISS_SUITE = {
    "test_misses.py": """
        import os

        import jax
        import jax.numpy as jnp
        import numpy as np

        N = int(os.environ.get("SHAPE_N", "3"))
        FAST_MATH = os.environ.get("FAST_MATH") == "1"


        def shaped(x):
            return jnp.sin(x) * 2.0


        def stable(x):
            return jnp.cos(x) + 1.0


        def product(a):
            return a @ a.T


        def optioned(x):
            return jnp.exp(x) - 1.0


        def test_shaped():
            jax.jit(shaped)(np.ones(N, np.float32)).block_until_ready()


        def test_stable():
            jax.jit(stable)(np.ones(3, np.float32)).block_until_ready()


        def test_product():
            jax.jit(product)(np.ones((4, 4), np.float32)).block_until_ready()


        def test_optioned():
            x = np.ones(3, np.float32)
            options = {"xla_cpu_enable_fast_math": True} if FAST_MATH else None
            jax.jit(optioned).lower(x).compile(options)(x).block_until_ready()


        if os.environ.get("NEW_FN"):

            def brand_new(x):
                return jnp.tanh(x)

            def test_new():
                jax.jit(brand_new)(np.ones(3, np.float32)).block_until_ready()
    """
}
PROGRAMS = ["jit_optioned", "jit_product", "jit_shaped", "jit_stable"]

# Harmless on CPU, and part of every key: a run with it set shares no entry with one without.
XLA_FLAGS = "--xla_cpu_enable_fast_math=false"


def why(document: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """``{program: (outcome, why)}`` of a session's compiles (``jit(f)`` -> ``jit_f``)."""
    return {
        compile_["name"].replace("(", "_").rstrip(")"): (compile_["outcome"], compile_["why"])
        for compile_ in document["compiles"]
    }


def groups(document: dict[str, Any]) -> dict[str, tuple[str, list[str], int]]:
    """``{reason: (cause, parts, count)}`` of a session's misses."""
    return {
        group["reason"]: (group["cause"], group["parts"], group["count"])
        for group in document["misses"]
    }


def miss_line(result: pytest.RunResult, reason: str) -> str:
    """The terminal's 'why programs missed:' line for ``reason``."""
    lines = result.outlines
    start = lines.index("why programs missed:")
    found = [line for line in lines[start + 1 :] if reason in line]
    assert found, lines[start:]
    return found[0]


def test_each_changed_part_of_the_key_is_named(pytester: pytest.Pytester, run_jax: RunJax) -> None:
    """After a cold run, one change at a time: a changed shape and a changed
    ``jax_default_matmul_precision`` change the lowered module, a compiler option the
    compile options, ``jax_num_cpu_devices`` the device assignment of every program;
    a function no session compiled is a new program. The programs that did not change
    hit, and the terminal names the same reason as the JSON."""
    write_files(pytester.path, MISS_SUITE)
    cache = "--jax-cache-dir=cache"

    result, cold = run_jax(cache, "-p", "no:xdist")
    result.assert_outcomes(passed=4)
    assert groups(cold) == {NEW_PROGRAM: (NEW, [], 4)}

    result, shaped = run_jax(cache, "-p", "no:xdist", env={"SHAPE_N": "4", "NEW_FN": "1"})
    result.assert_outcomes(passed=5)
    module_changed = PART_MEANINGS["computation"]
    assert groups(shaped) == {
        module_changed: (KEY_PARTS, ["computation"], 1),
        NEW_PROGRAM: (NEW, [], 1),
    }
    compiled = why(shaped)
    assert compiled["jit_shaped"] == ("miss", module_changed)
    assert compiled["jit_brand_new"] == ("miss", NEW_PROGRAM)
    assert compiled["jit_stable"] == ("hit", "")
    assert miss_line(result, module_changed).split()[0] == "1"
    assert miss_line(result, module_changed).endswith("(e.g. jit(shaped))")

    env = {"JAX_DEFAULT_MATMUL_PRECISION": "highest"}
    result, precise = run_jax(cache, "-p", "no:xdist", env=env)
    result.assert_outcomes(passed=4)
    precision_changed = f"{module_changed} (jax_default_matmul_precision None -> highest)"
    assert groups(precise) == {precision_changed: (KEY_PARTS, ["computation"], 1)}
    assert why(precise)["jit_product"] == ("miss", precision_changed)  # the one matmul

    result, optioned = run_jax(cache, "-p", "no:xdist", env={"FAST_MATH": "1"})
    result.assert_outcomes(passed=4)
    options_changed = PART_MEANINGS["compile_options"]
    assert groups(optioned) == {options_changed: (KEY_PARTS, ["compile_options"], 1)}
    assert why(optioned)["jit_optioned"] == ("miss", options_changed)

    result, devices = run_jax(cache, "-p", "no:xdist", env={"JAX_NUM_CPU_DEVICES": "2"})
    result.assert_outcomes(passed=4)
    ((reason, (cause, parts, count)),) = groups(devices).items()
    assert reason.startswith(PART_MEANINGS["accelerator_config"])
    assert (cause, parts, count) == (KEY_PARTS, ["accelerator_config"], 4)
    assert devices["cachable"]["hits"] == 0


def test_a_changed_environment_is_named_with_the_part(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """XLA_FLAGS set: every key's "XLA flags" part changed, and the session fingerprint
    says which variable. Then XLA_FLAGS unset again and one shape changed: the nearest
    entry is the first run's, so the one miss is the lowered module alone."""
    write_files(pytester.path, MISS_SUITE)
    cache = "--jax-cache-dir=cache"
    result, _ = run_jax(cache, "-p", "no:xdist")
    result.assert_outcomes(passed=4)

    result, flagged = run_jax(cache, "-p", "no:xdist", env={"XLA_FLAGS": XLA_FLAGS})
    result.assert_outcomes(passed=4)
    flags_changed = f"{PART_MEANINGS['XLA flags']} (XLA_FLAGS changed: every key changed)"
    assert groups(flagged) == {flags_changed: (KEY_PARTS, ["XLA flags"], 4)}
    assert miss_line(result, flags_changed).split()[0] == "4"

    result, back = run_jax(cache, "-p", "no:xdist", env={"SHAPE_N": "5"})
    result.assert_outcomes(passed=4)
    assert groups(back) == {PART_MEANINGS["computation"]: (KEY_PARTS, ["computation"], 1)}
    assert why(back)["jit_shaped"] == ("miss", PART_MEANINGS["computation"])


# -- programs compiled and not written: the same figures on every surface ----------------

MIX_SUITE = {
    "test_mix.py": """
        import jax
        import jax.numpy as jnp
        import numpy as np

        def big(x):  # a long program: its entry is over the size threshold
            for i in range(300):
                x = jnp.sin(x) * (i + 1.0) + jnp.cos(x)
            return x


        def small(x):
            return x * 3.0


        def noisy(x):
            jax.debug.print("x = {}", x)
            return x + 1.0


        def test_big():
            jax.jit(big)(np.ones(3, np.float32)).block_until_ready()


        def test_small():
            jax.jit(small)(np.ones(3, np.float32)).block_until_ready()


        def test_noisy():
            jax.jit(noisy)(np.ones(3, np.float32)).block_until_ready()
    """
}
MIN_ENTRY_SIZE = 10_000  # entries here: about 3 KB small, 27 KB big


def test_programs_not_written_are_named_and_counted_alike_everywhere(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """An equinox-style warm run: a big program hits; a small one stays under
    ``--jax-cache-min-entry-size`` and a program with host callbacks is never written
    (up to JAX 0.10; from 0.11 the size threshold keeps it out too). Each compiled
    program is named with JAX's reason, and the quiet line, the section, the JSON and
    the job summary give one hit rate and one count of programs compiled outside the
    cachable set."""
    write_files(pytester.path, MIX_SUITE)
    args = ("--jax-cache-dir=cache", f"--jax-cache-min-entry-size={MIN_ENTRY_SIZE}", "-n", "2")
    result, _ = run_jax(*args)
    result.assert_outcomes(passed=3)

    summary_path = pytester.path / "summary.md"
    quiet, warm = run_jax(*args, "-q", f"--jax-cache-summary={summary_path}")
    quiet.assert_outcomes(passed=3)
    section, again = run_jax(*args)
    section.assert_outcomes(passed=3)

    compiled = why(warm)
    assert compiled["jit_big"] == ("hit", "")
    threshold = f"--jax-cache-min-entry-size ({MIN_ENTRY_SIZE} bytes)"
    small_why = f"its entry is smaller than {threshold}"
    assert compiled["jit_small"] == ("unwritten", small_why)
    # The one place the JAX version decides an expectation (see helpers.CALLBACKS_CACHED):
    # up to 0.10 the program with callbacks is never written; from 0.11 it could be, and
    # is kept out by the size threshold like any small program.
    noisy_why = small_why if CALLBACKS_CACHED else reasons.not_written(reasons.HOST_CALLBACKS)
    noisy_outcome = "unwritten" if CALLBACKS_CACHED else "uncachable"
    assert compiled["jit_noisy"] == (noisy_outcome, noisy_why)
    expected_not_written: dict[str, list[str]] = {}  # named as JAX names the compile
    for program, reason in (("jit(noisy)", noisy_why), ("jit(small)", small_why)):
        expected_not_written.setdefault(reason, []).append(program)
    not_written = {group["reason"]: sorted(group["examples"]) for group in warm["not_written"]}
    assert not_written == expected_not_written

    cachable, totals = warm["cachable"], warm["totals"]
    hits = 1  # the big program: the other two compile outside the cachable set
    assert (cachable["hits"], cachable["lookups"], cachable["hit_rate"]) == (hits, hits, 1.0)
    assert totals["outside"] == 2
    counted = ("hits", "lookups", "hit_rate", "uncachable", "unwritten")
    assert {name: again["cachable"][name] for name in counted} == {
        name: cachable[name] for name in counted
    }

    fraction = f"{hits}/{hits} lookups hit (100.0%)"
    outside = compiled_outside(totals)
    assert outside.startswith(f"{totals['outside']} program")
    (quiet_line,) = [line for line in quiet.outlines if line.startswith("jax cache: ")]
    assert fraction in quiet_line
    assert outside in quiet_line
    assert f"hit rate: {fraction}" in section.outlines
    assert "compiled and not written, by reason:" in section.outlines
    assert any(threshold in line and "jit(small)" in line for line in section.outlines)
    markdown = summary_path.read_text()
    assert f"**{fraction}**" in markdown
    assert outside in markdown
    assert small_why in markdown


# -- --jax-cache-explain ------------------------------------------------------------------


def test_explain_writes_key_inputs_to_diff(pytester: pytest.Pytester, run_jax: RunJax) -> None:
    """``--jax-cache-explain=jit_sha*`` on two runs whose shapes differ: one directory per
    key of the matching program only; each part's file holds exactly the bytes JAX hashed
    (its digest is the one the entry records); the second run's ``nearest.txt`` names the
    differing part and a ``diff -r`` command that shows the shape change in the module."""
    write_files(pytester.path, MISS_SUITE)
    args = ("--jax-cache-dir=cache", "-p", "no:xdist", "--jax-cache-explain=jit_sha*")
    result, _ = run_jax(*args)
    result.assert_outcomes(passed=4)
    result, _ = run_jax(*args, env={"SHAPE_N": "4"})
    result.assert_outcomes(passed=4)

    explained = pytester.path / "jaxcache-explain"
    assert sorted(path.name for path in explained.iterdir()) == ["jit_shaped"]
    keys = sorted(explained.glob("jit_shaped/*"), key=lambda path: path.stat().st_mtime)
    assert len(keys) == 2
    recorded = {}
    for path in entries(pytester.path / "cache"):
        entry = decoded(path)
        assert entry is not None
        recorded[entry.metadata.key_digest] = entry.metadata.parts
    for directory in keys:
        facts = json.loads((directory / "parts.json").read_text())
        assert facts["parts"] == recorded[directory.name]
        for part, digest in facts["parts"].items():
            data = (directory / f"{part.replace(' ', '_')}.bin").read_bytes()
            assert hashlib.sha256(data).hexdigest()[:16] == digest, part
    assert "tensor<3xf32>" in (keys[0] / "computation.mlir").read_text()
    assert "tensor<4xf32>" in (keys[1] / "computation.mlir").read_text()
    assert "nothing to compare with" in (keys[0] / "nearest.txt").read_text()

    nearest = (keys[1] / "nearest.txt").read_text().splitlines()
    assert "parts that differ: computation" in nearest
    command = f"diff -r jit_shaped/{keys[0].name} jit_shaped/{keys[1].name}"
    assert f"compare: {command}" in nearest
    diff = subprocess.run(command.split(), cwd=explained, capture_output=True, text=True)
    assert diff.returncode == 1  # they differ
    assert "computation.mlir" in diff.stdout
    assert "tensor<4xf32>" in diff.stdout
    assert "XLA_flags" not in diff.stdout  # the parts that did not change are equal


# -- misses nobody caused, and misses counted once under xdist ------------------------------

UNSTABLE_SUITE = {
    "test_unstable.py": """
        import os
        import time

        import jax
        import jax.numpy as jnp
        import numpy as np
        import pytest

        # Drawn from a fresh key each run: the module embeds other constants each time.
        NOISE = jax.random.normal(jax.random.key(time.time_ns() % 2**31), (4,))
        SCALE = float(os.environ.get("SCALE", "2.0"))


        def test_closes_over_fresh_noise():
            noisy = jax.jit(lambda x: jnp.sin(x) * NOISE)
            assert noisy(jnp.ones(4)).shape == (4,)


        @pytest.mark.parametrize("n", [3, 5, 7])
        def test_edited(n):
            edited = jax.jit(lambda x: jnp.cos(x) * SCALE)
            x = np.linspace(0.0, 1.0, n, dtype=np.float32)
            np.testing.assert_allclose(np.asarray(edited(x)), np.cos(x) * SCALE, rtol=1e-5)
    """
}


@pytest.mark.parametrize("workers", [["-p", "no:xdist"], ["-n", "2"]], ids=["serial", "n2"])
def test_misses_nobody_caused_are_named_and_counted_once(
    pytester: pytest.Pytester, run_jax: RunJax, workers: list[str]
) -> None:
    """A program closed over an array drawn from a fresh random key misses on every
    warm run: said as constants captured by the program (with the test), apart from
    the edited function, whose three shapes each miss once, compared with their own
    earlier shape (not doubled by xdist, and without a second reason)."""
    write_files(pytester.path, UNSTABLE_SUITE)
    result, cold = run_jax("--jax-cache-dir=cache", *workers)
    result.assert_outcomes(passed=4)
    assert groups(cold) == {NEW_PROGRAM: (NEW, [], cold["totals"]["misses"])}
    result, warm = run_jax("--jax-cache-dir=cache", *workers, env={"SCALE": "3.0"})
    result.assert_outcomes(passed=4)
    assert groups(warm) == {
        reasons.CONSTANTS_DIFFER: (reasons.CONSTANTS, ["computation"], 1),
        PART_MEANINGS["computation"]: (KEY_PARTS, ["computation"], 3),
    }
    [constants] = [group for group in warm["misses"] if group["cause"] == reasons.CONSTANTS]
    assert constants["tests"] == ["test_unstable.py::test_closes_over_fresh_noise"]
    assert miss_line(result, reasons.CONSTANTS_DIFFER).split()[0] == "1"
    assert "in test_unstable.py::test_closes_over_fresh_noise" in map(str.strip, result.outlines)
