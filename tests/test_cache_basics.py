"""Foundation of pytest-jaxcache, end to end: real pytest sessions in subprocesses, real
JAX on CPU. Cold and warm runs, where the cache directory comes from, checkouts at other
paths, compiles at import time, patterns that real suites assert, corrupt entries under
``-W error``, and the JSON report."""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

import pytest
from helpers import (
    CALLBACKS_CACHED,
    UNRELATED_PLUGINS,
    RunJax,
    assert_all_hits,
    entries,
    write_files,
)

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

    sessions = (cache / "sessions.json").read_bytes()
    warm_result, warm = run_jax(f"--jax-cache-dir={cache}", "-q")
    warm_result.assert_outcomes(passed=N_SUITE + 1)
    assert_all_hits(warm)
    assert warm["store"]["hits"] == warm["cachable"]["hits"]
    assert entries(cache) == written
    # Nothing written, nothing to evict: the warm run skips maintenance altogether.
    assert warm["cache"]["maintenance"] is None
    assert warm["cache"]["after"] == warm["cache"]["before"]
    assert (cache / "sessions.json").read_bytes() == sessions
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
    assert summary[0].startswith(f"jax cache: {hits}/{hits} cachable lookups hit (100.0%)")


# -- 2: where the cache directory comes from ---------------------------------------------


def test_dir_precedence_cli_over_ini_over_env(
    pytester: pytest.Pytester, run_jax: RunJax, clean_env: pytest.MonkeyPatch
) -> None:
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
    clean_env.setenv("JAX_COMPILATION_CACHE_DIR", str(env_dir))

    # All three given: the command line wins (relative to the invocation dir).
    result, report = run_jax("--jax-cache-dir=clidir")
    result.assert_outcomes(passed=N_SUITE)
    assert report["cache"]["source"] == "--jax-cache-dir"
    assert report["cache"]["dir"] == str(cli_dir)
    assert has_line(result, f"jaxcache: {cli_dir} (from --jax-cache-dir)")
    assert entries(cli_dir)
    assert not ini_dir.exists() and not env_dir.exists()

    # ini and env, pytest started in a subdirectory: ini wins, relative to the rootdir.
    sub = pytester.path / "sub"
    clean_env.chdir(sub)
    result, report = run_jax()
    result.assert_outcomes(passed=N_SUITE)
    assert report["cache"]["source"] == "ini jax_cache_dir"
    assert report["cache"]["dir"] == str(ini_dir)
    assert has_line(result, f"jaxcache: {ini_dir} (from ini jax_cache_dir)")
    assert entries(ini_dir)
    assert not (sub / "inidir").exists()
    assert not env_dir.exists()

    # env only.
    clean_env.chdir(pytester.path)
    (pytester.path / "pytest.ini").write_text("[pytest]\n")
    result, report = run_jax()
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
    pytester: pytest.Pytester, run_jax: RunJax, clean_env: pytest.MonkeyPatch
) -> None:
    """``--jax-cache-dir=`` switches the plugin off although the env names a dir:
    no header, no report section, no JSON report, no store in the env dir."""
    write_files(pytester.path, {"test_suite.py": SUITE})
    env_dir = pytester.path / "envdir"
    clean_env.setenv("JAX_COMPILATION_CACHE_DIR", str(env_dir))
    result, report = run_jax("--jax-cache-dir=")
    result.assert_outcomes(passed=N_SUITE)
    assert report == {}
    assert not has_line(result, "jaxcache:")
    assert not any("jax compilation cache" in line for line in result.outlines)
    assert entries(env_dir) == []
    assert not env_dir.exists() or not any(env_dir.iterdir())


def test_empty_cli_dir_turns_jax_persistent_cache_off(
    pytester: pytest.Pytester, run_jax: RunJax, clean_env: pytest.MonkeyPatch
) -> None:
    """``--jax-cache-dir=`` means *no cache*: JAX must not fall back to the env dir
    (here with a zero compile-time threshold from the env, as many shells have it)."""
    write_files(pytester.path, {"test_suite.py": SUITE})
    env_dir = pytester.path / "envdir"
    clean_env.setenv("JAX_COMPILATION_CACHE_DIR", str(env_dir))
    clean_env.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    result, _ = run_jax("--jax-cache-dir=")
    result.assert_outcomes(passed=N_SUITE)
    written = sorted(env_dir.iterdir()) if env_dir.is_dir() else []
    assert written == [], f"JAX used the env cache dir: {[p.name for p in written][:3]}"


def test_no_jaxcache_removes_the_plugin(
    pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch
) -> None:
    """``-p no:jaxcache``: the suite runs without the plugin (its ini key is ignored,
    nothing is created), and its options are gone from the command line."""
    write_files(
        pytester.path,
        {"pytest.ini": "[pytest]\njax_cache_dir = inidir\n", "test_suite.py": SUITE},
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:jaxcache", "-p", "no:cacheprovider", *UNRELATED_PLUGINS
    )
    result.assert_outcomes(passed=N_SUITE)
    assert not has_line(result, "jaxcache:")
    assert not any("jax compilation cache" in line for line in result.outlines)
    assert not (pytester.path / "inidir").exists()

    result = pytester.runpytest_subprocess("-p", "no:jaxcache", "--jax-cache-dir=x")
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
    assert report["cachable"]["hit_rate"] == 0.0
    assert any(
        "not written (below the compile-time or size threshold)" in line for line in result.outlines
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


def test_cache_copied_to_another_checkout_hits(
    pytester: pytest.Pytester, run_jax: RunJax, clean_env: pytest.MonkeyPatch
) -> None:
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
    clean_env.chdir(a)
    result, cold = run_jax()
    result.assert_outcomes(passed=N_SUITE)
    assert cold["cache"]["dir"] == str(a / ".jaxcache")
    assert cold["store"]["writes"] > 0

    b.mkdir()
    shutil.copytree(a / ".jaxcache", b / ".jaxcache")
    for name in ("pytest.ini", "test_suite.py"):
        shutil.copy2(a / name, b / name)
    clean_env.chdir(pytester.path)
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


def test_json_report_schema_phases_markers_and_durations(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """The report has its schema and version; compiles are attributed per phase (a
    module fixture to the first test's setup); the markers pass ``--strict-markers``;
    a ``jax_no_cache`` test's compiles are uncached and leave no entry; the slowest
    list shows ``--jax-cache-durations`` rows."""
    write_files(pytester.path, {"test_report.py": REPORT_SUITE})
    cache = pytester.path / "cache"
    result, report = run_jax(
        f"--jax-cache-dir={cache}", "--strict-markers", "--jax-cache-durations=1"
    )
    result.assert_outcomes(passed=5)
    assert report["schema"] == "pytest-jaxcache/report"
    assert report["version"] == 1
    tests = {t["nodeid"]: t for t in report["tests"]}
    first = "test_report.py::test_first_uses_table"
    second = "test_report.py::test_second_uses_table"

    # Per-phase figures: setup (fixture), call (test body), teardown (fixture finaliser).
    phases = tests["test_report.py::test_phases"]["phases"]
    assert {"setup", "call", "teardown"} <= set(phases), phases
    for name, phase in (("setup_fn", "setup"), ("call_fn", "call"), ("teardown_fn", "teardown")):
        records = compiles_of(report, name)
        assert [(c["test"], c["phase"]) for c in records] == [
            ("test_report.py::test_phases", phase)
        ], records
        assert phases[phase]["requests"] >= 1

    # A module-scoped fixture compiles once, in the first user's setup.
    records = compiles_of(report, "module_table")
    assert [(c["test"], c["phase"], c["outcome"]) for c in records] == [(first, "setup", "miss")]
    assert tests[first]["phases"]["setup"]["misses"] >= 1
    assert "setup" not in tests.get(second, {"phases": {}})["phases"]

    # jax_no_cache: compiled with the cache off, nothing written for it.
    records = compiles_of(report, "no_cache_fn")
    assert records and all(c["outcome"] == "uncached" for c in records), records
    assert tests["test_report.py::test_no_cache"]["markers"] == ["jax_no_cache"]
    names = [path.name for path in entries(cache)]
    assert any(name.startswith("jit_module_table-") for name in names), names
    assert not any("no_cache_fn" in name for name in names), names

    # jax_errors: accounted apart. Its host-callback program is uncachable up to JAX
    # 0.10 and cached from 0.11 (then the marker is reported as possibly unneeded).
    assert tests["test_report.py::test_errors"]["markers"] == ["jax_errors"]
    assert report["cachable"]["uncachable"] == 0
    errors_outcomes = [c["outcome"] for c in compiles_of(report, "errors_fn")]
    if CALLBACKS_CACHED:
        assert errors_outcomes == ["miss"]
        assert report["errors"]["misses"] >= 1
        assert report["uncachable_tests"] == []
        assert report["unneeded_markers"] == ["test_report.py::test_errors"]
    else:
        assert errors_outcomes == ["uncachable"]
        assert report["errors"]["uncachable"] >= 1
        assert {t["nodeid"]: t["marked"] for t in report["uncachable_tests"]} == {
            "test_report.py::test_errors": True
        }

    # --jax-cache-durations=1: one row of many.
    heading = [line for line in result.outlines if line.startswith("slowest compiling")]
    assert len(heading) == 1, result.outlines
    match = re.fullmatch(r"slowest compiling \(1 of (\d+) test phases\):", heading[0])
    assert match and int(match.group(1)) > 1, heading
    rows = [
        line
        for line in result.outlines
        if re.match(r"^\s+\d+\.\d\ds (setup|call|teardown)\s+test_report\.py::", line)
    ]
    assert len(rows) == 1, rows


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
    result = pytester.runpytest_subprocess(
        *UNRELATED_PLUGINS, "-p", "no:cacheprovider", "--jax-cache-dir=cache",
        f"--jax-cache-report={pytester.path}",
    )  # fmt: skip
    assert result.ret == 0
    result.assert_outcomes(passed=N_SUITE)
    assert any("could not write the JSON report to" in line for line in result.outlines)
