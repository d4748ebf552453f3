"""Foundation of pytest-jaxcache, end to end: real pytest sessions in subprocesses, real
JAX on CPU. Cold and warm runs, where the cache directory comes from, checkouts at other
paths, compiles at import time, patterns that real suites assert, corrupt entries under
``-W error``, and the JSON report."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    CALLBACKS_CACHED,
    RunJax,
    Session,
    assert_all_hits,
    entries,
    once_per_run,
    run_session,
    write_files,
)

from pytest_jaxcache import snapshot

# A small suite: parametrized shapes, a few jitted functions.
SUITE = """
    import jax
    import jax.numpy as jnp
    import pytest


    def scaled_sin(x):
        return jnp.sin(x) * 2.0


    def shifted_cos(x):
        return jnp.cos(x) + 1.0


    @pytest.mark.parametrize("n", [2, 3, 5])
    def test_sin_shapes(n):
        assert jax.jit(scaled_sin)(jnp.ones(n)).shape == (n,)


    def test_cos():
        assert float(jax.jit(shifted_cos)(jnp.zeros(2))[0]) == 2.0
"""

N_SUITE = 4


def compiles_of(report: dict[str, Any], fragment: str) -> list[dict[str, Any]]:
    """The report's compile records of programs whose name contains ``fragment``."""
    return [c for c in report["compiles"] if fragment in c["name"]]


def has_line(result: pytest.RunResult, prefix: str) -> bool:
    return any(line.startswith(prefix) for line in result.outlines)


# -- 1 + 4: cold then warm, compiles at import ----------------------------------------------


def test_cold_then_warm_hits_every_program_including_import_compiles(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """A cold run writes one entry per program; the warm run serves every cachable
    lookup from the cache, including programs compiled while conftest.py and a test
    module are imported. Default verbosity shows the section, ``-q`` one line."""
    write_files(
        pytester.path,
        {
            "conftest.py": """
                import jax
                import jax.numpy as jnp


                def conftest_warmup(x):
                    return jnp.tanh(x) + 1.0


                WARM = jax.jit(conftest_warmup)(jnp.arange(3.0))
            """,
            "test_suite.py": SUITE,
            "test_import_compile.py": """
                import jax
                import jax.numpy as jnp


                def module_import_fn(x):
                    return jnp.exp(x) - 1.0


                AT_IMPORT = jax.jit(module_import_fn)(jnp.zeros(4))


                def test_import_value():
                    assert float(AT_IMPORT.sum()) == 0.0
            """,
        },
    )
    cache = pytester.path / "cache"

    cold_result, cold = run_jax(f"--jax-cache-dir={cache}")
    cold_result.assert_outcomes(passed=N_SUITE + 1)
    assert has_line(cold_result, f"jaxcache: {cache} (from --jax-cache-dir)")
    assert any("jax compilation cache" in line for line in cold_result.outlines)
    assert cold["store"]["writes"] > 0
    written = entries(cache)
    assert len(written) == cold["store"]["writes"]
    assert cold["cache"]["after"]["entries"] == len(written)
    assert cold["cachable"]["hits"] == 0
    assert cold["cachable"]["misses"] == cold["cachable"]["requests"] > 0
    for fragment in ("conftest_warmup", "module_import_fn"):
        records = compiles_of(cold, fragment)
        assert [(c["test"], c["phase"], c["outcome"]) for c in records] == [
            ("<outside tests>", "collect", "miss")
        ], records
        assert any(f"jit_{fragment}-" in path.name for path in written)

    sessions = json.loads((cache / "sessions.json").read_bytes())["sessions"]
    warm_result, warm = run_jax(f"--jax-cache-dir={cache}", "-q")
    warm_result.assert_outcomes(passed=N_SUITE + 1)
    assert_all_hits(warm)
    assert warm["store"]["hits"] == warm["cachable"]["hits"]
    assert entries(cache) == written
    # Nothing written, nothing to evict: the warm run skips maintenance (no scan, the
    # contents unchanged) and is only counted as a session (for pruning, jaxcache show).
    assert warm["cache"]["maintenance"] == {**warm["cache"]["maintenance"], "ran": False}
    assert warm["cache"]["maintenance"]["reason"] == ""
    assert warm["cache"]["after"] == warm["cache"]["before"] and warm["cache"]["changed"] is False
    recorded = json.loads((cache / "sessions.json").read_bytes())["sessions"]
    assert recorded[:-1] == sessions and len(recorded) == len(sessions) + 1
    for fragment in ("conftest_warmup", "module_import_fn"):
        records = compiles_of(warm, fragment)
        assert [(c["test"], c["phase"], c["outcome"]) for c in records] == [
            ("<outside tests>", "collect", "hit")
        ], records
    # -q: the one-line summary only, and its figures agree with the report.
    assert not any("jax compilation cache" in line for line in warm_result.outlines)
    summary = [line for line in warm_result.outlines if line.startswith("jax cache: ")]
    assert len(summary) == 1, warm_result.outlines
    hits = warm["cachable"]["hits"]
    assert summary[0].startswith(f"jax cache: {hits}/{hits} lookups hit (100.0%)")


# -- 2: where the cache directory comes from ---------------------------------------------


def test_dir_precedence_cli_over_ini_over_env(pytester: pytest.Pytester, run_jax: RunJax) -> None:
    """``--jax-cache-dir`` beats ini ``jax_cache_dir`` beats env
    ``JAX_COMPILATION_CACHE_DIR``; the winner gets the entries, the report and the header
    name it. The ini path is relative to the rootdir even when pytest runs from a
    subdirectory; the CLI path is relative to where pytest was invoked."""
    write_files(
        pytester.path,
        {
            "pytest.ini": "[pytest]\njax_cache_dir = inidir\n",
            "sub/test_suite.py": SUITE,
        },
    )
    cli_dir, ini_dir, env_dir = (pytester.path / n for n in ("clidir", "inidir", "envdir"))
    env = {"JAX_COMPILATION_CACHE_DIR": str(env_dir)}

    # All three given: the command line wins (relative to the invocation dir).
    result, report = run_jax("--jax-cache-dir=clidir", env=env)
    result.assert_outcomes(passed=N_SUITE)
    assert report["cache"]["source"] == "--jax-cache-dir"
    assert report["cache"]["dir"] == str(cli_dir)
    assert has_line(result, f"jaxcache: {cli_dir} (from --jax-cache-dir)")
    assert entries(cli_dir)
    assert not ini_dir.exists() and not env_dir.exists()

    # ini and env, pytest started in a subdirectory: ini wins, relative to the rootdir.
    sub = pytester.path / "sub"
    result, report = run_session(sub, env=env)
    result.assert_outcomes(passed=N_SUITE)
    assert report["cache"]["source"] == "ini jax_cache_dir"
    assert report["cache"]["dir"] == str(ini_dir)
    assert has_line(result, f"jaxcache: {ini_dir} (from ini jax_cache_dir)")
    assert entries(ini_dir)
    assert not (sub / "inidir").exists()
    assert not env_dir.exists()

    # env only.
    (pytester.path / "pytest.ini").write_text("[pytest]\n")
    result, report = run_jax(env=env)
    result.assert_outcomes(passed=N_SUITE)
    assert report["cache"]["source"] == "env JAX_COMPILATION_CACHE_DIR"
    assert report["cache"]["dir"] == str(env_dir)
    assert has_line(result, f"jaxcache: {env_dir} (from env JAX_COMPILATION_CACHE_DIR)")
    assert entries(env_dir)


def test_pyproject_ini_dir(pytester: pytest.Pytester, run_jax: RunJax) -> None:
    """``[tool.pytest.ini_options] jax_cache_dir`` in pyproject.toml is read too."""
    write_files(
        pytester.path,
        {
            "pyproject.toml": '[tool.pytest.ini_options]\njax_cache_dir = ".jaxcache"\n',
            "test_suite.py": SUITE,
        },
    )
    result, report = run_jax()
    result.assert_outcomes(passed=N_SUITE)
    assert report["cache"]["source"] == "ini jax_cache_dir"
    assert report["cache"]["dir"] == str(pytester.path / ".jaxcache")
    assert len(entries(pytester.path / ".jaxcache")) == report["store"]["writes"] > 0


def test_empty_cli_dir_disables_the_plugin_even_with_env(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """``--jax-cache-dir=`` switches the plugin off although the env names a dir:
    no header, no report section, no JSON report, nothing in the env dir."""
    write_files(pytester.path, {"test_suite.py": SUITE})
    env_dir = pytester.path / "envdir"
    result, report = run_jax("--jax-cache-dir=", env={"JAX_COMPILATION_CACHE_DIR": str(env_dir)})
    result.assert_outcomes(passed=N_SUITE)
    assert report == {}
    assert not has_line(result, "jaxcache:")
    assert not any("jax compilation cache" in line for line in result.outlines)
    assert not env_dir.exists()


def test_empty_cli_dir_turns_jax_persistent_cache_off(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """``--jax-cache-dir=`` means *no cache*: JAX must not fall back to the env dir
    (here with a zero compile-time threshold from the env, as many shells have it)."""
    write_files(pytester.path, {"test_suite.py": SUITE})
    env_dir = pytester.path / "envdir"
    env = {
        "JAX_COMPILATION_CACHE_DIR": str(env_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    result, _ = run_jax("--jax-cache-dir=", env=env)
    result.assert_outcomes(passed=N_SUITE)
    assert not env_dir.exists(), f"JAX used the env cache dir: {sorted(env_dir.iterdir())[:3]}"


def test_no_jaxcache_removes_the_plugin(pytester: pytest.Pytester) -> None:
    """``-p no:jaxcache``: the suite runs without the plugin (its ini key is ignored,
    nothing is created), and its options are gone from the command line."""
    write_files(
        pytester.path,
        {"pytest.ini": "[pytest]\njax_cache_dir = inidir\n", "test_suite.py": SUITE},
    )
    result, _ = run_session(pytester.path, "-p", "no:jaxcache", report=False)
    result.assert_outcomes(passed=N_SUITE)
    assert not has_line(result, "jaxcache:")
    assert not any("jax compilation cache" in line for line in result.outlines)
    assert not (pytester.path / "inidir").exists()

    result, _ = run_session(pytester.path, "-p", "no:jaxcache", "--jax-cache-dir=x", report=False)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--jax-cache-dir" in result.stderr.str()
    assert not (pytester.path / "x").exists()


def test_min_compile_time_from_cli_and_ini(pytester: pytest.Pytester, run_jax: RunJax) -> None:
    """The compile-time threshold is read from ini and CLI (CLI wins): at 1000 s no
    program qualifies, every lookup is *unwritten* (not blamed on host callbacks: no
    test is listed as uncachable, and ``--jax-cache-strict`` stays green) and nothing is
    written; at 0 s everything is written."""
    write_files(
        pytester.path,
        {
            "pytest.ini": "[pytest]\njax_cache_min_compile_time = 1000\n",
            "test_suite.py": SUITE,
        },
    )
    # ini: 1000 s.
    result, report = run_jax("--jax-cache-dir=by_ini", "--jax-cache-strict")
    assert result.ret == 0
    result.assert_outcomes(passed=N_SUITE)
    assert report["store"]["writes"] == 0
    assert report["cachable"]["unwritten"] > 0
    assert report["cachable"]["unwritten"] == report["cachable"]["requests"]
    assert report["cachable"]["uncachable"] == 0 and report["uncachable_tests"] == []
    # no cachable lookup at all: every program was compiled outside the cachable set
    assert report["cachable"]["lookups"] == 0 and report["cachable"]["hit_rate"] is None
    assert report["totals"]["outside"] == report["cachable"]["unwritten"]
    unwritten = report["cachable"]["unwritten"]
    assert any(f", {unwritten} not written, " in line for line in result.outlines)
    assert any(
        "faster than --jax-cache-min-compile-time (1000s)" in line for line in result.outlines
    )
    assert entries(pytester.path / "by_ini") == []

    # CLI 0 beats ini 1000.
    result, report = run_jax("--jax-cache-dir=cli_zero", "--jax-cache-min-compile-time=0")
    result.assert_outcomes(passed=N_SUITE)
    assert report["store"]["writes"] > 0
    assert report["cachable"]["uncachable"] == 0
    assert len(entries(pytester.path / "cli_zero")) == report["store"]["writes"]

    # CLI 1000 beats ini 0.
    (pytester.path / "pytest.ini").write_text("[pytest]\njax_cache_min_compile_time = 0\n")
    result, report = run_jax("--jax-cache-dir=cli_big", "--jax-cache-min-compile-time=1000")
    result.assert_outcomes(passed=N_SUITE)
    assert report["store"]["writes"] == 0
    assert report["cachable"]["unwritten"] > 0
    assert entries(pytester.path / "cli_big") == []


# -- 3: another checkout at another path ---------------------------------------------------


def test_cache_copied_to_another_checkout_hits(pytester: pytest.Pytester, run_jax: RunJax) -> None:
    """Keys do not depend on where the checkout or the cache lives: a cache filled in
    checkout A and copied with the sources to checkout B (A deleted, pytest started
    from elsewhere) serves every program of B."""
    a, b = pytester.path / "a", pytester.path / "b"
    write_files(
        a,
        {
            "pytest.ini": "[pytest]\njax_cache_dir = .jaxcache\n",
            "test_suite.py": SUITE,
        },
    )
    result, cold = run_session(a)
    result.assert_outcomes(passed=N_SUITE)
    assert cold["cache"]["dir"] == str(a / ".jaxcache")
    assert cold["store"]["writes"] > 0

    b.mkdir()
    shutil.copytree(a / ".jaxcache", b / ".jaxcache")
    for name in ("pytest.ini", "test_suite.py"):
        shutil.copy2(a / name, b / name)
    shutil.rmtree(a)

    result, warm = run_jax(str(b))
    result.assert_outcomes(passed=N_SUITE)
    assert warm["cache"]["dir"] == str(b / ".jaxcache")
    assert_all_hits(warm)
    assert warm["cachable"]["hits"] == cold["cachable"]["misses"]


# -- 5: patterns that real suites assert ----------------------------------------------------


def test_real_suite_patterns_pass_cold_and_warm(pytester: pytest.Pytester, run_jax: RunJax) -> None:
    """With the plugin on, a suite that configures devices in conftest, asserts no live
    arrays at its start, turns warnings into errors and asserts empty logs still passes,
    cold and warm (``-W error`` too), and the warm run hits everything."""
    write_files(
        pytester.path,
        {
            "pytest.ini": "[pytest]\nfilterwarnings =\n    error\n",
            "conftest.py": """
                import jax

                jax.config.update("jax_num_cpu_devices", 2)
            """,
            "test_a_first.py": """
                import jax


                def test_no_live_arrays_at_start():
                    assert len(jax.live_arrays()) == 0


                def test_two_devices():
                    assert len(jax.devices()) == 2
            """,
            "test_b_logs.py": """
                import logging

                import jax
                import jax.numpy as jnp


                def test_debug_log_empty_after_nothing(caplog):
                    caplog.set_level(logging.DEBUG)
                    assert caplog.text == ""


                def test_info_log_empty_after_compile(caplog):
                    caplog.set_level(logging.INFO)
                    assert float(jax.jit(lambda x: x * 3.0)(jnp.ones(3)).sum()) == 9.0
                    assert caplog.text == ""
            """,
            "test_suite.py": SUITE,
        },
    )
    n_tests = N_SUITE + 4
    cache = pytester.path / "cache"
    result, cold = run_jax(f"--jax-cache-dir={cache}")
    result.assert_outcomes(passed=n_tests)
    assert cold["store"]["writes"] > 0
    assert cold["cache_warnings"] == [] and cold["listener_errors"] == []

    result, warm = run_jax(f"--jax-cache-dir={cache}", "-W", "error")
    result.assert_outcomes(passed=n_tests)
    assert_all_hits(warm)
    assert warm["cache_warnings"] == [] and warm["listener_errors"] == []


# -- 6: corrupt entries ---------------------------------------------------------------------


def test_corrupt_entries_are_repaired_under_w_error(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """A truncated, a garbage and a zero-length entry are detected, removed, recompiled
    and rewritten without a warning reaching the tests (``-W error`` and
    ``filterwarnings = error``); the run after that hits everything again."""
    write_files(
        pytester.path,
        {"pytest.ini": "[pytest]\nfilterwarnings =\n    error\n", "test_suite.py": SUITE},
    )
    cache = pytester.path / "cache"
    result, cold = run_jax(f"--jax-cache-dir={cache}")
    result.assert_outcomes(passed=N_SUITE)
    files = entries(cache)
    assert len(files) == cold["store"]["writes"] >= 3

    truncated, garbage, empty = files[0], files[len(files) // 2], files[-1]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    garbage.write_bytes(os.urandom(garbage.stat().st_size))
    empty.write_bytes(b"")
    broken = {truncated.name, garbage.name, empty.name}

    result, repaired = run_jax(f"--jax-cache-dir={cache}", "-W", "error")
    result.assert_outcomes(passed=N_SUITE)
    assert repaired["store"]["repaired"] == 3
    assert repaired["store"]["writes"] == 3
    assert repaired["cachable"]["misses"] == 3
    assert repaired["cachable"]["hits"] == repaired["cachable"]["requests"] - 3
    assert repaired["cache_warnings"] == []
    assert {path.name for path in entries(cache)} == {path.name for path in files}
    assert all(path.stat().st_size > 0 for path in entries(cache) if path.name in broken)

    result, warm = run_jax(f"--jax-cache-dir={cache}", "-W", "error")
    result.assert_outcomes(passed=N_SUITE)
    assert_all_hits(warm)
    assert warm["store"]["repaired"] == 0


def test_corrupt_entry_in_jax_store_is_counted_not_raised(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """With ``--jax-cache-store=jax`` a garbage ``*-cache`` file makes JAX warn; under
    ``-W error`` and ``filterwarnings = error`` the run stays green and the warning is
    counted in the report instead."""
    write_files(
        pytester.path,
        {"pytest.ini": "[pytest]\nfilterwarnings =\n    error\n", "test_suite.py": SUITE},
    )
    cache = pytester.path / "cache"
    result, cold = run_jax(f"--jax-cache-dir={cache}", "--jax-cache-store=jax")
    result.assert_outcomes(passed=N_SUITE)
    assert cold["cache"]["store"] == "JAX's file store"
    files = sorted(cache.glob("*-cache"))
    assert files, sorted(p.name for p in cache.iterdir())
    victim = next(p for p in files if p.name.startswith("jit_scaled_sin-"))
    victim.write_bytes(os.urandom(victim.stat().st_size))

    result, warm = run_jax(f"--jax-cache-dir={cache}", "--jax-cache-store=jax", "-W", "error")
    result.assert_outcomes(passed=N_SUITE)
    assert warm["cache_warnings"], warm["cache_warnings"]
    assert all("scaled_sin" in warning for warning in warm["cache_warnings"])
    assert "Error reading persistent compilation cache entry" in warm["cache_warnings"][0]


def without_digest(usage: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in usage.items() if name != "digest"}


def test_jax_store_leaves_the_directory_to_jax(pytester: pytest.Pytester, run_jax: RunJax) -> None:
    """``--jax-cache-store=jax``: the directory holds JAX's own files and nothing of the
    plugin's store, and the report's usage counts JAX's entries: from 0 in the cold run,
    unchanged in the warm run, which hits every cachable lookup."""
    write_files(pytester.path, {"test_suite.py": SUITE})
    cache = pytester.path / "cache"
    args = (f"--jax-cache-dir={cache}", "--jax-cache-store=jax")
    result, cold = run_jax(*args)
    result.assert_outcomes(passed=N_SUITE)
    assert cold["cache"]["store"] == "JAX's file store"
    ours = {"entries", "tmp", "locks", "CACHEDIR.TAG", ".gitignore", "sessions.json"}
    ours |= {"fingerprints", "maintenance.lock"}
    names = sorted(path.name for path in cache.iterdir())
    assert ours.isdisjoint(names), names
    files = sorted(cache.glob("*-cache"))
    assert len(files) == cold["cachable"]["misses"] > 0, names
    # JAX caps its store at our size cap: it keeps an "-atime" file beside each entry
    size = sum(path.stat().st_size for path in [*files, *cache.glob("*-atime")])
    usage = {"entries": len(files), "bytes": size, "jax_files": len(files), "jax_bytes": size}
    empty = {"entries": 0, "bytes": 0, "jax_files": 0, "jax_bytes": 0}
    assert without_digest(cold["cache"]["before"]) == empty
    assert without_digest(cold["cache"]["after"]) == usage
    assert cold["store"]["writes"] == 0  # the plugin's store wrote nothing

    result, warm = run_jax(*args)
    result.assert_outcomes(passed=N_SUITE)
    assert warm["cache"]["before"] == warm["cache"]["after"]
    assert warm["cache"]["after"]["digest"] == cold["cache"]["after"]["digest"]
    assert without_digest(warm["cache"]["after"]) == usage
    assert_all_hits(warm)
    assert warm["cachable"]["hits"] == cold["cachable"]["misses"]
    assert sorted(cache.glob("*-cache")) == files
    assert ours.isdisjoint(path.name for path in cache.iterdir())


# -- 7: the JSON report ---------------------------------------------------------------------

REPORT_SUITE = """
    import jax
    import jax.numpy as jnp
    import pytest


    def module_table(x):
        return jnp.exp(x) * 0.5


    def setup_fn(x):
        return x + 10.0


    def call_fn(x):
        return x * 7.0


    def teardown_fn(x):
        return x - 4.0


    def no_cache_fn(x):
        return jnp.arctan(x) * 3.0


    def errors_fn(x):
        jax.debug.callback(lambda v: None, x)
        return x * 2.0


    @pytest.fixture(scope="module")
    def table():
        return jax.jit(module_table)(jnp.arange(4.0))


    @pytest.fixture
    def phased():
        value = jax.jit(setup_fn)(jnp.ones(3))
        yield value
        jax.jit(teardown_fn)(jnp.ones(3))


    def test_first_uses_table(table):
        assert table.shape == (4,)


    def test_second_uses_table(table):
        assert table.shape == (4,)


    def test_phases(phased):
        assert float(jax.jit(call_fn)(phased)[0]) == 77.0


    @pytest.mark.jax_no_cache
    def test_no_cache():
        assert jax.jit(no_cache_fn)(jnp.zeros(5)).shape == (5,)


    @pytest.mark.jax_errors
    def test_errors():
        assert float(jax.jit(errors_fn)(jnp.ones(2))[0]) == 2.0
"""


@dataclass(frozen=True)
class ReportRun:
    """One cold session of REPORT_SUITE: its outcome, its JSON report, its cache."""

    result: pytest.RunResult
    report: dict[str, Any]
    cache: Path

    def tests(self) -> dict[str, dict[str, Any]]:
        return {t["nodeid"]: t for t in self.report["tests"]}


FIRST = "test_report.py::test_first_uses_table"
SECOND = "test_report.py::test_second_uses_table"


@pytest.fixture(scope="module")
def report_run(tmp_path_factory: pytest.TempPathFactory) -> ReportRun:
    """REPORT_SUITE, run once (cold, ``--strict-markers``) for the tests that read it:
    once per test run."""

    def build(root: Path) -> dict[str, Any]:
        write_files(root, {"test_report.py": REPORT_SUITE})
        run = run_session(root, "--jax-cache-dir=cache", "--strict-markers", "-rA")
        return run.to_builtins()

    root, data = once_per_run(tmp_path_factory, "report", build)
    result, report = Session.from_builtins(data)
    return ReportRun(result, report, root / "cache")


def test_report_suite_passes_with_strict_markers(report_run: ReportRun) -> None:
    """The plugin's markers are registered: ``--strict-markers`` accepts them."""
    report_run.result.assert_outcomes(passed=5)
    assert report_run.result.ret == 0


def test_json_report_schema_and_version(report_run: ReportRun) -> None:
    assert report_run.report["schema"] == "pytest-jaxcache/report"
    assert report_run.report["version"] == snapshot.VERSION == 2


def test_json_report_attributes_compiles_to_phases(report_run: ReportRun) -> None:
    """A fixture's setup, the test body and the fixture's finaliser each get their
    compiles."""
    phases = report_run.tests()["test_report.py::test_phases"]["phases"]
    assert sorted(phases) == ["call", "setup", "teardown"], phases
    for name, phase in (("setup_fn", "setup"), ("call_fn", "call"), ("teardown_fn", "teardown")):
        records = compiles_of(report_run.report, name)
        assert [(c["test"], c["phase"]) for c in records] == [
            ("test_report.py::test_phases", phase)
        ], records
        assert phases[phase]["requests"] >= 1


def test_json_report_module_fixture_compiles_in_first_users_setup(report_run: ReportRun) -> None:
    """A module-scoped fixture compiles once, in its first user's setup; the second
    user compiles nothing: its record has no phase."""
    records = compiles_of(report_run.report, "module_table")
    assert [(c["test"], c["phase"], c["outcome"]) for c in records] == [(FIRST, "setup", "miss")]
    tests = report_run.tests()
    assert tests[FIRST]["phases"]["setup"]["misses"] >= 1
    assert tests[SECOND]["phases"] == {} and tests[SECOND]["outcome"] == "passed"
    names = [path.name for path in entries(report_run.cache)]
    assert any(name.startswith("jit_module_table-") for name in names), names


def test_json_report_no_cache_marker(report_run: ReportRun) -> None:
    """``jax_no_cache``: the test passes, its compiles are uncached and leave no entry."""
    assert "PASSED test_report.py::test_no_cache" in report_run.result.outlines, (
        report_run.result.outlines
    )
    records = compiles_of(report_run.report, "no_cache_fn")
    assert records and all(c["outcome"] == "uncached" for c in records), records
    assert report_run.tests()["test_report.py::test_no_cache"]["markers"] == ["jax_no_cache"]
    names = [path.name for path in entries(report_run.cache)]
    assert not any("no_cache_fn" in name for name in names), names


@pytest.mark.skipif(CALLBACKS_CACHED, reason="from JAX 0.11 host callbacks are cached")
def test_json_report_jax_errors_program_uncachable(report_run: ReportRun) -> None:
    """Up to JAX 0.10: the ``jax_errors`` test's host-callback program is uncachable,
    accounted apart from the cachable figures, and the test is listed as marked."""
    report = report_run.report
    assert report_run.tests()["test_report.py::test_errors"]["markers"] == ["jax_errors"]
    assert report["cachable"]["uncachable"] == 0
    assert [c["outcome"] for c in compiles_of(report, "errors_fn")] == ["uncachable"]
    assert report["errors"]["uncachable"] >= 1
    assert {t["nodeid"]: t["marked"] for t in report["uncachable_tests"]} == {
        "test_report.py::test_errors": True
    }
    assert report["unneeded_markers"] == []


@pytest.mark.skipif(not CALLBACKS_CACHED, reason="up to JAX 0.10 host callbacks are uncachable")
def test_json_report_jax_errors_program_cached(report_run: ReportRun) -> None:
    """From JAX 0.11: the ``jax_errors`` test's host-callback program is cached, and the
    marker is reported as possibly unneeded."""
    report = report_run.report
    assert report_run.tests()["test_report.py::test_errors"]["markers"] == ["jax_errors"]
    assert report["cachable"]["uncachable"] == 0
    assert [c["outcome"] for c in compiles_of(report, "errors_fn")] == ["miss"]
    assert report["errors"]["misses"] >= 1
    assert report["uncachable_tests"] == []
    assert report["unneeded_markers"] == ["test_report.py::test_errors"]


def test_durations_option_limits_the_slowest_list(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """``--jax-cache-durations=1``: the slowest list shows one row of many."""
    write_files(pytester.path, {"test_suite.py": SUITE})
    result, _ = run_jax("--jax-cache-dir=cache", "--jax-cache-durations=1")
    result.assert_outcomes(passed=N_SUITE)
    assert result.ret == 0, result.errlines
    heading = [line for line in result.outlines if line.startswith("slowest compiling")]
    assert heading == [f"slowest compiling (1 of {N_SUITE} test phases):"], result.outlines
    rows = [
        line
        for line in result.outlines
        if re.match(r"^\s+\d+\.\d\ds (setup|call|teardown)\s+test_suite\.py::", line)
    ]
    assert len(rows) == 1, rows


def test_pytest_durations_is_not_jax_cache_durations(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """pytest's own ``--durations=2`` keeps its meaning next to the plugin: pytest lists
    its two slowest durations, and the compile list keeps its default length."""
    write_files(pytester.path, {"test_suite.py": SUITE})
    result, _ = run_jax("--jax-cache-dir=cache", "--durations=2")
    result.assert_outcomes(passed=N_SUITE)
    assert result.ret == 0, result.errlines
    assert any(re.search(r"slowest 2 durations", line) for line in result.outlines)
    heading = [line for line in result.outlines if line.startswith("slowest compiling")]
    assert heading == [f"slowest compiling ({N_SUITE} of {N_SUITE} test phases):"], heading


@pytest.mark.skipif(CALLBACKS_CACHED, reason="from JAX 0.11 host callbacks are cached")
def test_pytest_strict_is_not_jax_cache_strict(pytester: pytest.Pytester, run_jax: RunJax) -> None:
    """pytest's own ``--strict`` does not turn on ``--jax-cache-strict``: an unmarked test
    with an uncachable program is reported, not failed."""
    write_files(
        pytester.path,
        {
            "test_callback.py": """
                import jax
                import jax.numpy as jnp


                def with_callback(x):
                    jax.debug.callback(lambda v: None, x)
                    return x * 2.0


                def test_callback():
                    assert float(jax.jit(with_callback)(jnp.ones(2))[0]) == 2.0
            """
        },
    )
    result, report = run_jax("--jax-cache-dir=cache", "--strict")
    result.assert_outcomes(passed=1)
    assert [t["nodeid"] for t in report["uncachable_tests"]] == ["test_callback.py::test_callback"]
    assert result.ret == 0, result.outlines
    assert not any("--jax-cache-strict" in line for line in result.outlines), result.outlines


def test_availability_check_before_import_keeps_the_cache(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """``importlib.util.find_spec("jax")`` before ``import jax`` (a common availability
    check in conftests) must not disarm the configuration, nor leave JAX without its
    own loader (``pkgutil.get_data`` and ``importlib.resources`` keep working)."""
    write_files(
        pytester.path,
        {
            "conftest.py": """
                import importlib.resources
                import importlib.util
                import pkgutil

                HAS_JAX = importlib.util.find_spec("jax") is not None

                import jax

                assert HAS_JAX
                assert pkgutil.get_data("jax", "version.py")
                assert importlib.resources.files("jax").joinpath("version.py").is_file()
            """,
            "test_suite.py": SUITE,
        },
    )
    result, report = run_jax("--jax-cache-dir=cache")
    result.assert_outcomes(passed=N_SUITE)
    assert report["cache"]["store"] == "pytest-jaxcache store"
    assert report["store"]["writes"] > 0
    assert len(entries(pytester.path / "cache")) == report["store"]["writes"]


def test_unwritable_report_path_is_a_notice(pytester: pytest.Pytester) -> None:
    """``--jax-cache-report`` pointing at a directory: the run stays green and says so."""
    write_files(pytester.path, {"test_suite.py": SUITE})
    result, _ = run_session(
        pytester.path, "--jax-cache-dir=cache", f"--jax-cache-report={pytester.path}", report=False
    )
    assert result.ret == 0
    result.assert_outcomes(passed=N_SUITE)
    assert any("could not write the JSON report to" in line for line in result.outlines)
