"""The plugin touches only what it owns, and no odd file stops or hangs a session.

Real sessions in subprocesses, real files, real symbolic links, a real FIFO, and real
permissions (a child that cannot override them, where root would ignore them). Every
case asserts its outcome: files outside the cache intact, nothing loaded that should not
be, the run green, and a notice or error that names the cause.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import (
    ColdCache,
    RunJax,
    assert_all_hits,
    cold_session,
    decoded,
    entries,
    jaxcache_argv,
    pytest_argv,
    run_command,
    run_session,
    write_files,
)

from pytest_jaxcache import entry as entry_format
from pytest_jaxcache.trust import Signer

pytestmark = pytest.mark.slow

# Three distinct programs (numpy inputs: no helper programs), one per test.
SUITE = {
    "test_suite.py": """
import jax
import jax.numpy as jnp
import numpy as np


def sin_twice(v):
    return jnp.sin(v) * 2.0


def cos_plus(v):
    return jnp.cos(v) + 1.0


def tanh_sum(v):
    return jnp.tanh(v) + v


X = np.linspace(0.0, 1.0, 8, dtype=np.float32)


def test_sin():
    np.testing.assert_allclose(np.asarray(jax.jit(sin_twice)(X)), np.sin(X) * 2.0, rtol=1e-5)


def test_cos():
    np.testing.assert_allclose(np.asarray(jax.jit(cos_plus)(X)), np.cos(X) + 1.0, rtol=1e-5)


def test_tanh():
    np.testing.assert_allclose(np.asarray(jax.jit(tanh_sum)(X)), np.tanh(X) + X, rtol=1e-5)
""",
}
N_TESTS = N_PROGRAMS = 3


@pytest.fixture(scope="module")
def cold_cache(tmp_path_factory: pytest.TempPathFactory) -> ColdCache:
    cold = cold_session(tmp_path_factory, "cold-ownership", SUITE, "-p", "no:xdist")
    assert cold.report["store"]["writes"] == N_PROGRAMS
    return cold


@pytest.fixture
def warm_cache(pytester: pytest.Pytester, cold_cache: ColdCache) -> Path:
    """pytester.path holds SUITE and a copy of the cold cache (at ``cache``)."""
    return cold_cache.copy_to(pytester.path, SUITE)


def entry_of(cache: Path, program: str) -> Path:
    [path] = [path for path in entries(cache) if path.name.startswith(f"jit_{program}-")]
    return path


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file under ``root`` with its bytes (a link: where it points)."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = os.readlink(path)
        elif path.is_file():
            found[key] = path.read_bytes()
    return found


def notices(report: dict[str, object]) -> list[str]:
    cache = report["cache"]
    assert isinstance(cache, dict)
    return [str(notice) for notice in cache["notices"]]


def assert_usage_error(result: pytest.RunResult, *fragments: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.outlines + result.errlines
    errors = result.stderr.str()
    for fragment in fragments:
        assert fragment in errors, errors
    assert "Traceback" not in errors and "INTERNALERROR" not in result.stdout.str()


# -- ownership of the directory ---------------------------------------------------------------


def test_a_project_directory_is_refused_and_left_alone(pytester: pytest.Pytester) -> None:
    """``--jax-cache-dir=.`` in a project with tmp/ and locks/ folders holding old files:
    a usage error naming the directory and why; no test runs; every file of the project
    is intact, and no .gitignore or CACHEDIR.TAG is written into it."""
    write_files(pytester.path, {**SUITE, "README.md": "project\n", "src/mod.py": "x = 1\n"})
    (pytester.path / "tmp").mkdir()
    (pytester.path / "locks").mkdir()
    old = time.time() - 30 * 24 * 3600
    for path in (pytester.path / "tmp/scratch.1.deadbeef", pytester.path / "locks/build.lock"):
        path.write_text("user data\n")
        os.utime(path, (old, old))
    before = snapshot(pytester.path)

    for args in (["--jax-cache-dir=."], ["--jax-cache-dir=.", "--jax-cache-mode=readonly"]):
        result, report = run_session(pytester.path, *args, report=False)
        assert_usage_error(result, "--jax-cache-dir", "is not a pytest-jaxcache cache")
        assert "README.md" in result.stderr.str()
        assert report == {}
    assert snapshot(pytester.path) == before


@pytest.mark.parametrize("state", ["new", "empty"])
def test_a_new_or_empty_directory_is_adopted_and_tagged(
    pytester: pytest.Pytester, run_jax: RunJax, state: str
) -> None:
    """A directory that does not exist, or is empty, becomes a tagged cache (the tag
    keeps backup tools out, the .gitignore keeps git out: both inside the cache)."""
    write_files(pytester.path, SUITE)
    cache = pytester.path / "deep" / "cache"
    if state == "empty":
        cache.mkdir(parents=True)
    result, report = run_jax("--jax-cache-dir=deep/cache", "-p", "no:xdist")
    result.assert_outcomes(passed=N_TESTS)
    assert report["store"]["writes"] == N_PROGRAMS
    tag = (cache / "CACHEDIR.TAG").read_text()
    assert tag.startswith("Signature: 8a477f597d28d172789f06886806bc55\n")
    assert "pytest-jaxcache cache directory" in tag
    assert (cache / ".gitignore").read_text().endswith("*\n")
    assert not (pytester.path / ".gitignore").exists()
    assert not (pytester.path / "deep" / ".gitignore").exists()


def test_a_dangling_symlink_is_named_as_such(pytester: pytest.Pytester) -> None:
    write_files(pytester.path, SUITE)
    (pytester.path / "cache").symlink_to(pytester.path / "nowhere")
    result, _ = run_session(pytester.path, "--jax-cache-dir=cache", report=False)
    assert_usage_error(result, "--jax-cache-dir", "dangling symbolic link", "nowhere")
    assert not (pytester.path / "nowhere").exists()


def test_a_path_too_long_is_a_usage_error_naming_its_source(pytester: pytest.Pytester) -> None:
    write_files(pytester.path, SUITE)
    long_path = "/".join(["d" * 250] * 20)
    result, _ = run_session(pytester.path, f"--jax-cache-dir={long_path}", report=False)
    assert_usage_error(result, "--jax-cache-dir", "at most 4096 characters")


def test_a_directory_that_cannot_be_entered_runs_uncached(
    pytester: pytest.Pytester, unprivileged_prefix: list[str]
) -> None:
    """A cache below a directory the user may not enter: a notice, a green run, no
    lookups."""
    write_files(pytester.path, SUITE)
    locked = pytester.path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        result, report = run_session(
            pytester.path,
            "--jax-cache-dir=locked/cache",
            "test_suite.py",
            prefix=unprivileged_prefix,
        )
    finally:
        locked.chmod(0o755)
    result.assert_outcomes(passed=N_TESTS)
    assert any("Permission denied" in n and "running uncached" in n for n in notices(report))
    assert {c["outcome"] for c in report["compiles"]} == {"uncached"}


# -- files of other caches ---------------------------------------------------------------------


def test_a_directory_of_plain_jax_is_adopted_counted_capped_and_cleared(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """A directory filled by JAX's own store (``<key>-cache`` files) is adopted; its
    files are reported (how many, how big), never loaded, count toward the cap and are
    evicted before any entry of ours; ``jaxcache clear`` removes them too."""
    write_files(pytester.path, SUITE)
    cache = pytester.path / "cache"
    result, _ = run_jax(f"--jax-cache-dir={cache}", "--jax-cache-store=jax", "-p", "no:xdist")
    result.assert_outcomes(passed=N_TESTS)
    jax_files = sorted(cache.glob("*-cache"))
    assert len(jax_files) >= N_PROGRAMS
    jax_bytes = sum(path.stat().st_size for path in [*jax_files, *cache.glob("*-atime")])

    result, report = run_jax(f"--jax-cache-dir={cache}", "-p", "no:xdist", "-rA")
    result.assert_outcomes(passed=N_TESTS)
    before = report["cache"]["before"]
    assert (before["jax_files"], before["jax_bytes"]) == (len(jax_files), jax_bytes)
    assert report["cachable"]["hits"] == 0  # never loaded: nothing says who wrote them
    assert report["store"]["writes"] == N_PROGRAMS
    assert any(f"{len(jax_files)} files of JAX's own store" in line for line in result.outlines)

    ours = sum(path.stat().st_size for path in entries(cache))
    cap = f"--jax-cache-max-size={ours + jax_bytes // 2}"
    result, report = run_jax(f"--jax-cache-dir={cache}", cap, "--jax-cache-prune-after=1000")
    result.assert_outcomes(passed=N_TESTS)
    maintenance = report["cache"]["maintenance"]
    assert maintenance["evicted"] == 0  # ours stay: JAX's files went first
    assert maintenance["dropped"] >= 1
    assert any("files of JAX's own store dropped" in r for r in maintenance["dropped_reasons"])
    assert len(entries(cache)) == N_PROGRAMS

    cleared = run_command(jaxcache_argv("clear", str(cache)), pytester.path)
    assert cleared.ret == 0, cleared.errlines
    assert list(cache.glob("*-cache")) == [] and entries(cache) == []


def test_a_cache_of_the_first_release_is_adopted_and_its_entries_dropped_first(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """A directory in the first release's layout (entries/<key> of format 1, its tag,
    .gitignore, sessions.json) is adopted without an error; its entries are never
    loaded (they are not bound to their key) and are the first to go over the cap."""
    write_files(pytester.path, SUITE)
    cache = pytester.path / "cache"
    (cache / "entries").mkdir(parents=True)
    (cache / "tmp").mkdir()
    (cache / "locks").mkdir()
    (cache / "CACHEDIR.TAG").write_text(
        "Signature: 8a477f597d28d172789f06886806bc55\n"
        "# This file is a cache directory tag created by pytest-jaxcache.\n"
    )
    (cache / ".gitignore").write_text("# created by pytest-jaxcache\n*\n")
    (cache / "sessions.json").write_text('{"sessions": [1.0]}')
    old = [cache / "entries" / f"jit_sin_twice-{n:064x}" for n in range(4)]
    for path in old:
        path.write_bytes(b"JXC1" + bytes(20_000))

    result, report = run_jax("--jax-cache-dir=cache", "--jax-cache-max-size=40KB")
    result.assert_outcomes(passed=N_TESTS)
    assert report["cachable"]["hits"] == 0
    assert report["store"]["writes"] == N_PROGRAMS
    maintenance = report["cache"]["maintenance"]
    assert maintenance["evicted"] == 0 and maintenance["dropped"] >= 2
    assert any("older pytest-jaxcache layout" in r for r in maintenance["dropped_reasons"])
    assert len(entries(cache)) == N_PROGRAMS
    assert "pytest-jaxcache cache directory" in (cache / "CACHEDIR.TAG").read_text()


# -- links are never followed -------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["tmp", "entries", "locks", "machines", "fingerprints"])
def test_a_layout_directory_that_is_a_link_out_is_never_followed(
    pytester: pytest.Pytester, run_jax: RunJax, warm_cache: Path, sub: str
) -> None:
    """One of the cache's own directories replaced by a link to a directory outside,
    which holds old files named like the cache's: the session is green and says it cannot
    use the cache; maintenance, pruning and ``jaxcache clear`` delete nothing outside."""
    outside = pytester.path / "outside"
    outside.mkdir()
    old = time.time() - 30 * 24 * 3600
    for name in (f"jit_x-{'a' * 64}", f"jit_x-{'a' * 64}.1.deadbeef.tmp", f"jit_x-{'a' * 64}.lock"):
        (outside / name).write_text("not the cache's\n")
        os.utime(outside / name, (old, old))
    target = warm_cache / sub
    if target.exists():
        for path in sorted(target.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        target.rmdir()
    target.symlink_to(outside)
    before = snapshot(outside)

    result, report = run_jax(
        "--jax-cache-dir=cache", "--jax-cache-prune-after=1", "--jax-cache-max-size=1KB"
    )
    result.assert_outcomes(passed=N_TESTS)
    assert any(f"{target} is a symbolic link, not a directory" in n for n in notices(report))
    assert {c["outcome"] for c in report["compiles"]} == {"uncached"}
    for command in (["clear", str(warm_cache)], ["prune", str(warm_cache), "--max-size=1"]):
        refused = run_command(jaxcache_argv(*command), pytester.path)
        assert refused.ret == 2, refused.errlines
        assert f"{target} is a symbolic link, not a directory" in refused.stderr.str()
        assert "Traceback" not in refused.stderr.str()
    assert snapshot(outside) == before


def test_a_planted_maintenance_lock_link_does_not_touch_its_target(
    pytester: pytest.Pytester, run_jax: RunJax, warm_cache: Path
) -> None:
    """``maintenance.lock`` planted as a link to a file outside: maintenance (forced by a
    tiny cap) does not truncate, create or lock through it; the run is green."""
    precious = pytester.path / "precious.txt"
    precious.write_text("do not truncate\n")
    (warm_cache / "maintenance.lock").unlink(missing_ok=True)
    (warm_cache / "maintenance.lock").symlink_to(precious)
    result, report = run_jax("--jax-cache-dir=cache", "--jax-cache-max-size=1KB")
    result.assert_outcomes(passed=N_TESTS)
    assert precious.read_text() == "do not truncate\n"
    assert report["cache"]["maintenance"]["ran"] is False
    assert (warm_cache / "maintenance.lock").is_symlink()


def test_an_entry_that_is_a_link_is_not_followed(
    pytester: pytest.Pytester, run_jax: RunJax, warm_cache: Path
) -> None:
    """An entry replaced by a link to a valid entry outside the cache: not read (an odd
    file, counted), its program recompiled and written in place of the link; the file
    outside is untouched."""
    entry = entry_of(warm_cache, "sin_twice")
    outside = pytester.path / "elsewhere.entry"
    entry.rename(outside)
    entry.symlink_to(outside)
    before = outside.read_bytes()

    result, report = run_jax("--jax-cache-dir=cache", "-W", "error")
    result.assert_outcomes(passed=N_TESTS)
    assert report["store"]["odd_files"] == 1
    assert report["cachable"]["hits"] == N_PROGRAMS - 1
    assert report["store"]["writes"] == 1
    assert not entry.is_symlink() and decoded(entry) is not None
    assert outside.read_bytes() == before


def test_a_self_looping_link_entry_is_skipped(
    pytester: pytest.Pytester, run_jax: RunJax, warm_cache: Path
) -> None:
    entry = entry_of(warm_cache, "cos_plus")
    entry.unlink()
    entry.symlink_to(entry.name)
    result, report = run_jax("--jax-cache-dir=cache")
    result.assert_outcomes(passed=N_TESTS)
    assert report["store"]["odd_files"] == 1
    assert decoded(entry) is not None  # replaced by a real entry


# -- odd files ----------------------------------------------------------------------------------


def test_a_fifo_named_like_an_entry_does_not_hang_the_session(
    pytester: pytest.Pytester, run_jax: RunJax, warm_cache: Path
) -> None:
    entry = entry_of(warm_cache, "tanh_sum")
    entry.unlink()
    os.mkfifo(entry)
    result, report = run_jax("--jax-cache-dir=cache", "-n", "2", timeout=120)
    result.assert_outcomes(passed=N_TESTS)
    assert report["store"]["odd_files"] == 1
    assert any("a FIFO, not a regular file" in e for e in report["store"]["errors"])
    assert decoded(entry) is not None  # the FIFO's name now holds the recompiled entry


def test_an_unreadable_entry_is_recompiled(
    pytester: pytest.Pytester, warm_cache: Path, unprivileged_prefix: list[str]
) -> None:
    """An entry its reader may not read (mode 000, a child that cannot override it):
    counted as an odd file, the program recompiled and the entry replaced."""
    entry = entry_of(warm_cache, "sin_twice")
    entry.chmod(0)
    result, report = run_session(pytester.path, "--jax-cache-dir=cache", prefix=unprivileged_prefix)
    result.assert_outcomes(passed=N_TESTS)
    assert report["store"]["odd_files"] == 1
    assert any("Permission denied" in e for e in report["store"]["errors"])
    assert report["cachable"]["hits"] == N_PROGRAMS - 1
    assert decoded(entry) is not None


def test_entries_that_is_a_file_runs_uncached(
    pytester: pytest.Pytester, run_jax: RunJax, warm_cache: Path
) -> None:
    for path in entries(warm_cache):
        path.unlink()
    for path in (warm_cache / "entries").iterdir():
        path.rmdir()
    (warm_cache / "entries").rmdir()
    (warm_cache / "entries").write_text("not a directory\n")
    result, report = run_jax("--jax-cache-dir=cache")
    result.assert_outcomes(passed=N_TESTS)
    assert any("a regular file, not a directory" in n for n in notices(report))
    assert (warm_cache / "entries").read_text() == "not a directory\n"


@pytest.mark.parametrize(
    "garbage",
    [b"[" * 100_000, b"{" + b" " * (32 * 2**20) + b"}", b"\xff\xfe not json"],
    ids=["deeply-nested", "32MB", "binary"],
)
def test_garbage_bookkeeping_files_are_read_as_empty(
    pytester: pytest.Pytester, run_jax: RunJax, warm_cache: Path, garbage: bytes
) -> None:
    """sessions.json and every fingerprint and machine file replaced by garbage (nested
    deep enough to exhaust recursion, 32 MB, not JSON): every hit still served, the
    session ends with its summary and exit 0, sessions.json rewritten."""
    for path in [
        warm_cache / "sessions.json",
        *(warm_cache / "fingerprints").iterdir(),
        *(warm_cache / "machines").iterdir(),
    ]:
        path.write_bytes(garbage)
    result, report = run_jax("--jax-cache-dir=cache", "--jax-cache-prune-after=5")
    assert result.ret == 0
    result.assert_outcomes(passed=N_TESTS)
    assert_all_hits(report)
    assert any("jax compilation cache" in line for line in result.outlines)
    sessions = json.loads((warm_cache / "sessions.json").read_text())["sessions"]
    assert len(sessions) == 1


def test_session_times_in_the_future_do_not_prune_everything(
    pytester: pytest.Pytester, run_jax: RunJax, warm_cache: Path
) -> None:
    """Another machine's clock recorded sessions far in the future: they are ignored,
    so pruning after 2 sessions keeps entries used now."""
    future = time.time() + 10 * 365 * 24 * 3600
    (warm_cache / "sessions.json").write_text(json.dumps({"sessions": [future, future + 1]}))
    result, report = run_jax("--jax-cache-dir=cache", "--jax-cache-prune-after=2")
    result.assert_outcomes(passed=N_TESTS)
    assert report["cache"]["maintenance"]["pruned"] == 0
    assert len(entries(warm_cache)) == N_PROGRAMS


def test_an_old_format_entry_is_a_miss_and_is_replaced(
    pytester: pytest.Pytester, run_jax: RunJax, warm_cache: Path
) -> None:
    """An entry of format 1 in this machine's namespace reads as corrupt: recompiled and
    rewritten in format 2, under -W error, with no warning."""
    entry = entry_of(warm_cache, "cos_plus")
    entry.write_bytes(b"JXC1" + bytes(60))
    result, report = run_jax("--jax-cache-dir=cache", "-W", "error")
    result.assert_outcomes(passed=N_TESTS)
    assert report["store"]["repaired"] == 1
    assert entry.read_bytes()[:4] == entry_format.MAGIC


# -- what a restored archive or a hostile writer can plant (issue 15) ---------------------------


def test_hard_linked_lock_files_are_never_opened(
    pytester: pytest.Pytester, run_jax: RunJax, warm_cache: Path
) -> None:
    """A restored tar can carry a hard link to a file outside as ``maintenance.lock`` or
    as a program's lock: neither is opened (a lock opened with O_TRUNC would empty the
    file outside), each is said, the program still compiles, and the file outside is
    byte-identical."""
    precious = pytester.path / "precious.txt"
    precious.write_bytes(b"the user's file, linked into the cache\n")
    victim = entry_of(warm_cache, "cos_plus")
    victim.unlink()  # the program will miss, and so take its lock
    locks = warm_cache / "locks"
    locks.mkdir(exist_ok=True)
    (locks / f"{victim.name}.lock").unlink(missing_ok=True)
    os.link(precious, locks / f"{victim.name}.lock")
    (warm_cache / "maintenance.lock").unlink(missing_ok=True)
    os.link(precious, warm_cache / "maintenance.lock")

    result, report = run_jax("--jax-cache-dir=cache", "-p", "no:xdist")
    result.assert_outcomes(passed=N_TESTS)
    assert precious.read_bytes() == b"the user's file, linked into the cache\n"
    assert report["totals"]["misses"] == 1 and report["store"]["writes"] == 1
    errors = report["store"]["errors"]
    assert any("links (a hard link)" in error for error in errors), errors
    maintenance = report["cache"]["maintenance"]
    assert maintenance["ran"] is False and "(a hard link)" in maintenance["reason"]


def _max_rss_kib(argv: list[str], cwd: Path) -> tuple[pytest.RunResult, int]:
    """Run ``argv`` and the peak resident memory of it (KiB), as the kernel counted it."""
    measure = (
        "import resource, subprocess, sys; "
        "done = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.exit(done.returncode)"
    )
    result = run_command([sys.executable, "-c", measure, *argv], cwd)
    return result, int(result.outlines[-1])


@pytest.mark.parametrize(
    "size, counted",
    [(2 * 2**30, "odd_files"), (900 * 2**20, "repaired")],
    ids=["over the cap", "under the cap"],
)
def test_a_sparse_file_named_like_an_entry_is_never_read_whole(
    pytester: pytest.Pytester, warm_cache: Path, size: int, counted: str
) -> None:
    """A sparse file in place of an entry: over the entry limit (the 1 GiB cap) it is
    refused by its size; under it, by its first bytes (it is garbage under our name:
    removed). Either way it is never read whole: the session's peak memory stays below
    the file's size, and the program is compiled and written in its place."""
    victim = entry_of(warm_cache, "sin_twice")
    victim.unlink()
    with open(victim, "wb") as handle:
        handle.truncate(size)
    report_path = pytester.path / "report.json"
    result, peak = _max_rss_kib(
        pytest_argv(f"--jax-cache-report={report_path}", "--jax-cache-dir=cache", "-p", "no:xdist"),
        pytester.path,
    )
    assert result.ret == 0, result.outlines[-30:]
    report = json.loads(report_path.read_text())
    assert (report["store"][counted], report["totals"]["misses"]) == (1, 1)
    assert peak * 1024 < 700 * 2**20, f"peak {peak} KiB: the {size}-byte file was read"
    assert victim.stat().st_size < 2**20  # the recompiled entry took its place


def test_a_larger_entry_than_the_cap_is_refused_by_its_size(
    pytester: pytest.Pytester, run_jax: RunJax, warm_cache: Path
) -> None:
    """A file larger than the entry limit (the cap) named like an entry is refused by its
    size alone, counted as an odd file, and never read."""
    victim = entry_of(warm_cache, "tanh_sum")
    with open(victim, "ab") as handle:
        handle.truncate(3 * 2**20)
    result, report = run_jax("--jax-cache-dir=cache", "--jax-cache-max-size=2MB", "-p", "no:xdist")
    result.assert_outcomes(passed=N_TESTS)
    assert report["store"]["odd_files"] == 1 and report["totals"]["misses"] == 1
    assert any("more than 2000000" in error for error in report["store"]["errors"])


def test_modes_do_not_depend_on_the_umask(pytester: pytest.Pytester, run_jax: RunJax) -> None:
    """Under ``umask 000`` the cache is made with explicit modes (0o755 directories,
    0o644 files), so that the next run, under the usual umask, trusts and uses it."""
    write_files(pytester.path, SUITE)
    umask_000 = ["sh", "-c", 'umask 000 && exec "$@"', "sh"]
    result, report = run_session(
        pytester.path, "--jax-cache-dir=new/cache", "-p", "no:xdist", prefix=umask_000
    )
    result.assert_outcomes(passed=N_TESTS)
    cache = pytester.path / "new" / "cache"
    modes = {
        str(path.relative_to(pytester.path)): stat.S_IMODE(path.lstat().st_mode)
        for path in [cache.parent, *cache.rglob("*"), cache]
    }
    assert {mode for path, mode in modes.items() if Path(pytester.path / path).is_dir()} == {
        0o755
    }, modes
    assert {mode for path, mode in modes.items() if Path(pytester.path / path).is_file()} == {
        0o644
    }, modes
    result, report = run_jax("--jax-cache-dir=new/cache", "-p", "no:xdist")
    assert_all_hits(report)
    assert not any("not loading" in notice for notice in notices(report))


def test_adoption_looks_all_the_way_down(pytester: pytest.Pytester) -> None:
    """A ``build/`` folder whose top-level names look like a cache's (tmp/, entries/)
    but that holds someone else's files below: a usage error naming them, and nothing
    written or deleted, by a session or by ``jaxcache clear``."""
    write_files(pytester.path, SUITE)
    build = pytester.path / "build"
    for name in ("tmp/model.bin", "entries/weights.npz", "entries/jit_f-" + "a" * 64 + ".bak"):
        (build / name).parent.mkdir(parents=True, exist_ok=True)
        (build / name).write_bytes(b"someone's work\n")
    old = time.time() - 30 * 24 * 3600
    os.utime(build / "tmp" / "model.bin", (old, old))
    before = snapshot(build)
    result, _ = run_session(pytester.path, "--jax-cache-dir=build", report=False)
    assert_usage_error(result, "--jax-cache-dir", "tmp/model.bin", "entries/weights.npz")
    cleared = run_command(jaxcache_argv("clear", "build"), pytester.path)
    assert cleared.ret == 2 and "entries/weights.npz" in cleared.stderr.str()
    assert snapshot(build) == before


def test_a_directory_others_can_write_gets_nothing_written(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """An empty mode-1777 directory: refused before anything is written in it (no tag,
    no .gitignore, no tmp/)."""
    write_files(pytester.path, SUITE)
    shared = pytester.path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    result, report = run_jax("--jax-cache-dir=shared", "-p", "no:xdist")
    result.assert_outcomes(passed=N_TESTS)
    assert any("not loading from" in notice for notice in notices(report))
    assert list(shared.iterdir()) == []


def test_metadata_out_of_range_never_raises_in_jax_read_path(
    pytester: pytest.Pytester, run_jax: RunJax, warm_cache: Path
) -> None:
    """An entry (digest valid) whose metadata says it was written at -1e20 s, read with
    --jax-cache-explain on: no exception in JAX's read path; the entry is unreadable
    (repaired and rewritten), and the next run hits it."""
    victim = entry_of(warm_cache, "cos_plus")
    good = entry_format.decode(
        victim.name, victim.read_bytes(), signer=Signer(), machine=victim.parent.name
    )
    planted = replace(good.metadata, written_at=-1e20)
    victim.write_bytes(entry_format.encode(victim.name, good.payload, planted))
    args = ("--jax-cache-dir=cache", "-p", "no:xdist", "--jax-cache-explain=jit*")
    result, report = run_jax(*args)
    result.assert_outcomes(passed=N_TESTS)
    assert (report["store"]["repaired"], report["totals"]["misses"]) == (1, 1)
    assert report["cache_warnings"] == [] and report["store"]["errors"] == []
    result, report = run_jax(*args)
    assert_all_hits(report)
