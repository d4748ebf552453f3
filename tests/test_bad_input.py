"""Bad input never crashes a session or fails a test: invalid options are usage errors
that name their source; a cache directory that cannot be used gives a notice and the
suite runs (uncached, or read-only); a missing JAX is one clear message. Real pytest
sessions in subprocesses, real JAX on CPU."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import PROJECT, RunJax, entries, run_command, run_session

SUITE = """
    import jax
    import jax.numpy as jnp
    import pytest


    @pytest.mark.parametrize("n", [2, 3])
    def test_sin_shapes(n):
        assert jax.jit(lambda x: jnp.sin(x) * 2.0)(jnp.ones(n)).shape == (n,)


    def test_cos():
        assert float(jax.jit(jnp.cos)(jnp.zeros(2))[0]) == 1.0
"""
N_SUITE = 3


def assert_clean_usage_error(result: pytest.RunResult, *fragments: str) -> None:
    """Exit code 4, one ``pytest-jaxcache:`` line naming ``fragments``, no traceback,
    no test run."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.outlines + result.errlines
    lines = [line for line in result.errlines if "pytest-jaxcache:" in line]
    assert len(lines) == 1, result.errlines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output and "INTERNALERROR" not in output, output
    assert "passed" not in result.stdout.str()


# -- invalid values: usage errors ----------------------------------------------------------


# id: (args, ini line, environment, what the message names)
C = "--jax-cache-dir=c"
MAX_ENV = "JAX_COMPILATION_CACHE_MAX_SIZE"
INVALID = {
    "cli-dir-file": (["--jax-cache-dir=afile"], "", {}, ["--jax-cache-dir", "not a directory"]),
    # Without a cache the plugin is idle: a shard option would be ignored, and every job
    # of a CI matrix would run the whole suite.
    "cli-shard-without-cache": (["--jax-cache-shard=1/2"], "", {}, ["--jax-cache-shard", "needs"]),
    "env-shard-without-cache": (
        [],
        "",
        {"JAX_CACHE_SHARD": "1/2"},
        ["env JAX_CACHE_SHARD", "needs a cache"],
    ),
    "ini-dir-file": ([], "jax_cache_dir = afile", {}, ["ini jax_cache_dir", "not a directory"]),
    "cli-min-compile-time": (
        [C, "--jax-cache-min-compile-time=abc"],
        "",
        {},
        ["--jax-cache-min-compile-time", "'abc'"],
    ),
    "ini-min-compile-time": (
        [C],
        "jax_cache_min_compile_time = abc",
        {},
        ["ini jax_cache_min_compile_time", "'abc'"],
    ),
    "env-min-compile-time": (
        [C],
        "",
        {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "abc"},
        ["env JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "'abc'"],
    ),
    "cli-negative-min-compile-time": (
        [C, "--jax-cache-min-compile-time=-1"],
        "",
        {},
        ["--jax-cache-min-compile-time", "at least 0"],
    ),
    "cli-max-size": ([C, "--jax-cache-max-size=lots"], "", {}, ["--jax-cache-max-size", "'lots'"]),
    "cli-mode": (
        [C, "--jax-cache-mode=sometimes"],
        "",
        {},
        ["--jax-cache-mode", "readwrite, readonly", "'sometimes'"],
    ),
    "ini-strict-bool": (
        [C],
        "jax_cache_strict = maybe",
        {},
        ["ini jax_cache_strict", "true or false", "'maybe'"],
    ),
    "cli-xla-caches": (
        [C, "--jax-cache-xla-caches=abc"],
        "",
        {},
        ["--jax-cache-xla-caches", "'abc'"],
    ),
    "env-xla-caches": (
        [C],
        "",
        {"JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES": "abc"},
        ["env JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES", "'abc'"],
    ),
    "env-max-size": ([C], "", {MAX_ENV: "lots"}, [f"env {MAX_ENV}", "'lots'"]),
    "env-max-size-under-cli": (
        [C, "--jax-cache-max-size=1GB"],
        "",
        {MAX_ENV: "lots"},
        [f"env {MAX_ENV}", "'lots'"],
    ),
    "cli-max-size-400-digits": (
        [C, f"--jax-cache-max-size={'9' * 400}"],
        "",
        {},
        ["--jax-cache-max-size", "at most 1 PiB", "(400 characters)"],
    ),
    "env-max-size-400-digits": ([C], "", {MAX_ENV: "9" * 400}, [f"env {MAX_ENV}", "at most"]),
    "cli-lock-timeout-400-digits": (
        [C, f"--jax-cache-lock-timeout={'9' * 400}"],
        "",
        {},
        ["--jax-cache-lock-timeout", "must be at most 604800"],
    ),
    "ini-prune-after-beyond-the-sessions-kept": (
        [C],
        "jax_cache_prune_after = 5000",
        {},
        ["ini jax_cache_prune_after", "must be at most 1000"],
    ),
    "signing-key-not-utf8": (
        [C],
        "",
        {"JAX_CACHE_SIGNING_KEY": "sixteen-or-more-\udcff\udcfe-bytes"},
        ["env JAX_CACHE_SIGNING_KEY", "must be valid UTF-8"],
    ),
    "signing-key-of-fifteen-characters-in-30-bytes": (
        [C],
        "",
        {"JAX_CACHE_SIGNING_KEY": "é" * 15},
        ["env JAX_CACHE_SIGNING_KEY", "16 to 4096 characters"],
    ),
}


@pytest.mark.parametrize(
    ("args", "ini", "env", "fragments"), list(INVALID.values()), ids=list(INVALID)
)
def test_invalid_value_is_a_usage_error_naming_its_source(
    pytester: pytest.Pytester,
    run_jax: RunJax,
    args: list[str],
    ini: str,
    env: dict[str, str],
    fragments: list[str],
) -> None:
    """Each invalid value stops pytest at its start with exit code 4 and one message that
    names the option, ini key or env variable it came from; no traceback, no test runs,
    no cache directory is made."""
    pytester.makepyfile(
        test_plain="""
        from pathlib import Path


        def test_plain():
            Path("ran").touch()
        """
    )
    (pytester.path / "afile").write_text("not a directory\n")
    pytester.makeini(f"[pytest]\n{ini}\n")
    result, report = run_jax(*args, env=env)
    assert_clean_usage_error(result, *fragments)
    secrets = [value for name, value in env.items() if "SIGNING" in name]
    assert not any(secret[:8] in result.stderr.str() for secret in secrets)
    assert report == {}
    assert not (pytester.path / "ran").exists()
    assert not (pytester.path / "c").exists()


@pytest.mark.parametrize(
    ("args", "max_size"),
    [
        pytest.param([], 500_000_000, id="env-only"),
        pytest.param(["--jax-cache-max-size=2GB"], 2_000_000_000, id="cli-overrides"),
    ],
)
def test_max_size_in_jax_variable_spelled_our_way(
    pytester: pytest.Pytester, run_jax: RunJax, args: list[str], max_size: int
) -> None:
    """``JAX_COMPILATION_CACHE_MAX_SIZE=500MB`` (a size JAX itself would not parse) with a
    cache dir: JAX imports fine, the suite is green and cached, and the cap is 500 MB
    unless the command line sets another."""
    pytester.makepyfile(test_suite=textwrap.dedent(SUITE))
    result, report = run_jax(
        "--jax-cache-dir=cache", *args, env={"JAX_COMPILATION_CACHE_MAX_SIZE": "500MB"}
    )
    result.assert_outcomes(passed=N_SUITE)
    assert report["cache"]["max_size_bytes"] == max_size
    assert report["cache"]["notices"] == []
    assert report["store"]["writes"] == len(entries(pytester.path / "cache")) > 0


# -- directories that cannot be used: notices, tests pass ---------------------------------


def test_uncreatable_dir_runs_uncached_with_a_notice(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """A cache dir whose parent is a file cannot be created: the suite passes uncached
    and the header, the report section and the JSON report say so."""
    pytester.makepyfile(test_suite=textwrap.dedent(SUITE))
    (pytester.path / "somefile").write_text("a file, not a directory\n")
    result, report = run_jax("--jax-cache-dir=somefile/sub")
    result.assert_outcomes(passed=N_SUITE)
    notices = report["cache"]["notices"]
    assert len(notices) == 1, notices
    assert notices[0].startswith(f"cannot use {pytester.path / 'somefile' / 'sub'} (")
    assert notices[0].endswith("running uncached")
    assert report["cache"]["store"] == "none"
    assert report["store"]["writes"] == 0 and report["totals"]["hits"] == 0
    assert any(line == f"jaxcache: notice: {notices[0]}" for line in result.outlines)
    assert any(line == f"notice: {notices[0]}" for line in result.outlines)
    assert (pytester.path / "somefile").is_file()


def test_uncached_session_does_not_blame_tests(pytester: pytest.Pytester, run_jax: RunJax) -> None:
    """A session running uncached (its cache dir unusable) records its compiles as
    ``uncached``, not ``uncachable``: no test is listed as compiling uncachable programs
    or told to add ``jax_errors`` (which ``--jax-cache-strict`` would turn into a failure)."""
    pytester.makepyfile(test_suite=textwrap.dedent(SUITE))
    (pytester.path / "somefile").write_text("a file, not a directory\n")
    result, report = run_jax("--jax-cache-dir=somefile/sub")
    result.assert_outcomes(passed=N_SUITE)
    assert report["cache"]["store"] == "none"
    assert report["compiles"]
    assert {c["outcome"] for c in report["compiles"]} == {"uncached"}, report["compiles"]
    assert report["uncachable_tests"] == []
    assert report["cachable"]["uncachable"] == 0
    assert not any("not marked" in line for line in result.outlines)


@pytest.mark.skipif(
    importlib.util.find_spec("etils") is not None,
    reason="etils is installed: JAX would really try the bucket",
)
def test_remote_dir_without_etils_runs_uncached_with_a_notice(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """With ``--jax-cache-store=jax`` a ``gs://`` cache dir is handed to JAX's own store,
    never turned into a local path; without etils JAX could not use it, so the session
    runs uncached with one notice saying so, green under ``-W error``, blaming no test."""
    pytester.makepyfile(test_suite=textwrap.dedent(SUITE))
    result, report = run_jax(
        "--jax-cache-dir=gs://no-such-bucket/jaxcache", "--jax-cache-store=jax", "-W", "error"
    )
    result.assert_outcomes(passed=N_SUITE)
    assert report["cache"]["dir"] == "gs://no-such-bucket/jaxcache"
    assert report["cache"]["store"] == "none"
    assert report["cache"]["notices"] == [
        "gs://no-such-bucket/jaxcache: etils[epath] is not installed: running uncached"
    ]
    assert {c["outcome"] for c in report["compiles"]} == {"uncached"}
    assert report["uncachable_tests"] == [] and report["cache_warnings"] == []
    assert not (pytester.path / "gs:").exists()


def test_readonly_mode_on_missing_dir_runs_uncached_with_a_notice(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """``--jax-cache-mode=readonly`` on a dir that does not exist: a notice, the suite
    passes, and nothing is created."""
    pytester.makepyfile(test_suite=textwrap.dedent(SUITE))
    missing = pytester.path / "missing"
    result, report = run_jax(f"--jax-cache-dir={missing}", "--jax-cache-mode=readonly")
    result.assert_outcomes(passed=N_SUITE)
    assert report["cache"]["notices"] == [
        f"read-only cache {missing} does not exist: running uncached"
    ]
    assert report["cache"]["mode"] == "readonly"
    assert report["store"]["writes"] == 0
    assert any("jaxcache: notice: read-only cache" in line for line in result.outlines)
    assert not missing.exists()


def _set_tree_mode(root: Path, dirs: int, files: int) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(dirs if path.is_dir() else files)


@pytest.fixture
def readonly_tree() -> Iterator[list[Path]]:
    """Trees made read-only by a test; writable again afterwards, so they can be removed."""
    roots: list[Path] = []
    yield roots
    for root in roots:
        _set_tree_mode(root, 0o755, 0o644)


def test_unwritable_dir_is_used_read_only(
    pytester: pytest.Pytester,
    run_jax: RunJax,
    readonly_tree: list[Path],
    unprivileged_prefix: list[str],
) -> None:
    """A filled cache dir the user may read but not write: the suite passes, every
    program is served from the cache, nothing is written, and the header and the
    report say the cache is used read-only."""
    pytester.makepyfile(test_suite=textwrap.dedent(SUITE))
    cache = pytester.path / "cache"
    result, cold = run_jax(f"--jax-cache-dir={cache}")
    result.assert_outcomes(passed=N_SUITE)
    assert cold["store"]["writes"] > 0
    before = {path.name: path.stat().st_mtime_ns for path in entries(cache)}

    readonly_tree.append(cache)
    _set_tree_mode(cache, 0o555, 0o444)
    result, report = run_session(
        pytester.path,
        f"--basetemp={pytester.path / 'basetemp-ro'}",
        f"--jax-cache-dir={cache}",
        prefix=unprivileged_prefix,
    )
    result.assert_outcomes(passed=N_SUITE)
    assert report["cache"]["mode"] == "readonly"
    notices = report["cache"]["notices"]
    assert len(notices) == 1 and notices[0].startswith(f"{cache} is not writable"), notices
    assert notices[0].endswith("using it read-only")
    assert any(line == f"jaxcache: notice: {notices[0]}" for line in result.outlines)
    assert any(
        line.startswith(f"jaxcache: {cache} (from --jax-cache-dir)") and "readonly" in line
        for line in result.outlines
    )
    cachable = report["cachable"]
    assert cachable["hits"] == cachable["requests"] == cold["cachable"]["misses"] > 0
    assert report["store"]["writes"] == 0
    assert {path.name: path.stat().st_mtime_ns for path in entries(cache)} == before


# -- JAX not installed --------------------------------------------------------------------


@pytest.fixture(scope="session")
def python_without_jax(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a fresh venv (no system site packages) with pytest, filelock
    and this project installed, and no JAX. Built once per session; skips when it
    cannot be built here (no venv module, no package index)."""
    root = tmp_path_factory.mktemp("nojax")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PROJECT / name, source / name)
    shutil.copytree(
        PROJECT / "pytest_jaxcache",
        source / "pytest_jaxcache",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    venv = root / "venv"
    python = venv / "bin" / "python"
    steps: list[list[str | os.PathLike[str]]] = [
        [sys.executable, "-m", "venv", str(venv)],
        [python, "-m", "pip", "install", "--quiet", "pytest", "filelock"],
        [python, "-m", "pip", "install", "--quiet", "--no-deps", source],
    ]
    for argv in steps:
        done = run_command(argv, root, timeout=600)
        if done.ret != 0:
            command = " ".join(str(part) for part in argv)
            pytest.skip(f"cannot build a venv without JAX: {command}: {done.stderr.str()[-500:]}")
    check = run_command(
        [python, "-c", "import importlib.util as u; print(u.find_spec('jax') is None)"], root
    )
    assert check.outlines == ["True"], "the venv can import jax"
    return python


@pytest.mark.slow
def test_missing_jax(pytester: pytest.Pytester, python_without_jax: Path) -> None:
    """Without JAX the plugin stays out of the way of a plain suite; asked for a cache,
    it stops with one clear usage error saying JAX is not installed."""
    pytester.makepyfile(test_plain="def test_plain():\n    assert 1 + 1 == 2\n")

    result, report = run_session(
        pytester.path, f"--basetemp={pytester.path / 't1'}", python=python_without_jax
    )
    result.assert_outcomes(passed=1)
    assert report == {}
    plugins = [line for line in result.outlines if line.startswith("plugins:")]
    assert plugins and "jaxcache" in plugins[0], result.outlines

    result, report = run_session(
        pytester.path,
        f"--basetemp={pytester.path / 't2'}",
        "--jax-cache-dir=cache",
        python=python_without_jax,
    )
    assert_clean_usage_error(result, "--jax-cache-dir", "JAX is not installed")
    assert (result.stdout.str() + result.stderr.str()).count("JAX is not installed") == 1
    assert report == {}
    assert not (pytester.path / "cache").exists()
