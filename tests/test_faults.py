"""Faults in the shared store: a tiny size cap under four workers, a writer killed
mid-write, truncated entries, read-only use, two sessions at once and a full disk.
In none of them may a test go red or an entry be left corrupt.

Real processes throughout: pytest sessions in subprocesses with real xdist workers, a
real SIGKILL, a real tmpfs (skipped where it cannot be mounted).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    ColdCache,
    RunJax,
    assert_all_hits,
    child_env,
    claimed,
    cold_session,
    decoded,
    entries,
    run_command,
    start_session,
    write_files,
)

from pytest_jaxcache.entry import HEAD_SIZE
from pytest_jaxcache.keys import file_name
from pytest_jaxcache.store import Store

pytestmark = pytest.mark.slow

# One distinct program per test (numpy inputs: no helper programs), so that every entry
# belongs to exactly one test and so to exactly one worker.
SUITE = {
    "test_suite.py": """
import jax
import jax.numpy as jnp
import numpy as np
import pytest


def sin_plus(v):
    return jnp.sin(v) + 1.0


def cos_times(v):
    return jnp.cos(v) * 3.0


@pytest.mark.parametrize("n", range(4))
def test_sin(n):
    x = np.arange(n + 1, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(sin_plus)(x)), np.sin(x) + 1.0, rtol=1e-5)


@pytest.mark.parametrize("n", range(4))
def test_cos(n):
    x = np.arange(n + 1, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(cos_times)(x)), np.cos(x) * 3.0, rtol=1e-5)
""",
}
SUITE_SIZE = 8

# Many small entries (about 2.5 KB each): enough to overflow a 20 KB cap or a 64 KiB disk.
MANY = {
    "test_many.py": """
import jax
import jax.numpy as jnp
import numpy as np
import pytest


def tanh_sum(v):
    return jnp.tanh(v) + v


@pytest.mark.parametrize("n", range(24))
def test_many(n):
    x = np.arange(n + 1, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(tanh_sum)(x)), np.tanh(x) + x, rtol=1e-5)
""",
}
MANY_SIZE = 24

# A writer that misses a key (and so holds its single-flight lock), then stores 200 MB.
KILLED_WRITER = """
import sys
from pathlib import Path

from pytest_jaxcache.ownership import adopt, claim
from pytest_jaxcache.store import Store

root = Path(sys.argv[1])
directory = adopt(root, readonly=False)
claim(directory)
store = Store(directory)
store.bind(sys.argv[4], {}, "killedwriter")
assert store.get(sys.argv[2]).entry is None
store.put(sys.argv[2], bytes(int(sys.argv[3])))
"""
BIG_PAYLOAD = 200 * 2**20


# -- helpers ------------------------------------------------------------------------------


def assert_entries_decode(cache: Path) -> list[Path]:
    """Every entry left in the store is complete; returns them."""
    found = entries(cache)
    corrupt = [path.name for path in found if decoded(path) is None]
    assert not corrupt, f"corrupt entries: {corrupt}"
    return found


def payload_size(path: Path) -> int | None:
    """The payload size of the entry in ``path``; ``None`` when there is no such file or
    it does not decode."""
    with contextlib.suppress(FileNotFoundError):
        found = decoded(path)
        return None if found is None else len(found.payload)
    return None


def snapshot(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under ``root``: (size, mtime in ns) for files, None for folders."""
    found: dict[str, tuple[int, int] | None] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            stat = os.stat(os.path.join(folder, name))
            found[os.path.relpath(os.path.join(folder, name), root)] = (
                stat.st_size,
                stat.st_mtime_ns,
            )
    return found


def fill_disk(path: Path) -> None:
    """Write zeros to ``path`` until its file system is full."""
    with open(path, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(bytes(4096))
        except OSError as error:
            assert error.errno == errno.ENOSPC, error


@pytest.fixture(scope="module")
def cold_cache(tmp_path_factory: pytest.TempPathFactory) -> ColdCache:
    """One cold ``-n 2`` session of SUITE; tests copy its cache."""
    cold = cold_session(tmp_path_factory, "cold-faults", SUITE, "-n", "2")
    assert cold.report["store"]["writes"] == SUITE_SIZE  # one entry per test, as designed
    return cold


@pytest.fixture
def warm_cache(pytester: pytest.Pytester, cold_cache: ColdCache) -> Path:
    """pytester.path holds SUITE and a copy of the cold cache (at ``cache``)."""
    return cold_cache.copy_to(pytester.path, SUITE)


@pytest.fixture
def small_disk(pytester: pytest.Pytester) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted for this test (needs root); unmounted afterwards."""
    mount_point = pytester.path / "small"
    mount_point.mkdir()
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount/umount on this machine")
    mounted = run_command(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mount_point], pytester.path
    )
    if mounted.ret != 0:
        pytest.skip(f"cannot mount a 64 KiB tmpfs: {mounted.stderr.str() or mounted.ret}")
    try:
        yield mount_point
    finally:
        if run_command(["umount", mount_point], pytester.path).ret != 0:
            run_command(["umount", "-l", mount_point], pytester.path)


# -- a tiny size cap under four workers ----------------------------------------------------


def test_four_workers_tiny_cap(run_jax: RunJax, pytester: pytest.Pytester) -> None:
    """``-n 4 --jax-cache-max-size=20KB`` over 24 programs: all green, the session ends
    with the store under the cap (LRU eviction ran), and every surviving entry decodes."""
    write_files(pytester.path, MANY)
    result, report = run_jax("-n", "4", "--jax-cache-max-size=20KB", "--jax-cache-dir=cache")
    assert result.ret == 0
    result.assert_outcomes(passed=MANY_SIZE)
    assert set(report["workers"]) == {"gw0", "gw1", "gw2", "gw3"}

    cache = pytester.path / "cache"
    remaining = assert_entries_decode(cache)
    size = sum(path.stat().st_size for path in remaining)
    assert size <= 20_000
    assert report["cache"]["max_size_bytes"] == 20_000
    maintenance = report["cache"]["maintenance"]
    assert maintenance["ran"] and maintenance["evicted"] > 0
    assert report["store"]["writes"] == maintenance["evicted"] + len(remaining)
    after = {"entries": len(remaining), "bytes": size, "jax_files": 0, "jax_bytes": 0}
    assert {k: v for k, v in report["cache"]["after"].items() if k != "digest"} == after
    assert report["store"]["repaired"] == report["store"]["write_errors"] == 0
    assert list((cache / "tmp").iterdir()) == []


# -- a writer killed mid-write ------------------------------------------------------------


def test_writer_killed_mid_write(run_jax: RunJax, warm_cache: Path) -> None:
    """A process SIGKILLed while writing a 200 MB entry leaves no entry for the key (or
    a complete one), does not keep its key locked, and the next session is green with
    every hit; that session's maintenance removes the partial file once it is over an
    hour old, and leaves a fresh temporary (a write in progress) alone."""
    key = "jit_big-" + "ab" * 32
    prefix = file_name(key) + "."
    tmp = warm_cache / "tmp"
    [machine] = [path.name for path in (warm_cache / "entries").iterdir()]
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(warm_cache), key, str(BIG_PAYLOAD), machine],
        cwd=warm_cache.parent,
        env=child_env(),
    )
    try:
        while writer.poll() is None:  # kill as soon as the entry's bytes start to land
            with contextlib.suppress(FileNotFoundError):  # renamed into entries/ meanwhile
                started = [p for p in tmp.iterdir() if p.name.startswith(prefix)]
                if started and started[0].stat().st_size > 0:
                    os.kill(writer.pid, signal.SIGKILL)
                    break
            time.sleep(0.001)
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == -signal.SIGKILL

    entry = warm_cache / "entries" / machine / file_name(key)
    leftovers = [p for p in tmp.iterdir() if p.name.startswith(prefix)]
    sizes = [p.stat().st_size for p in leftovers]
    # Either the kill landed after the rename (a whole entry, no leftover) or before it
    # (no entry, one temporary cut short mid-write): never a partial entry.
    assert (payload_size(entry) == BIG_PAYLOAD and sizes == []) or (
        not entry.exists() and len(sizes) == 1 and sizes[0] < BIG_PAYLOAD
    ), (entry.exists(), payload_size(entry), sizes)

    # The dead writer's single-flight lock went with it: a miss claims the key at once.
    store = Store(claimed(warm_cache), lock_timeout_secs=30)
    store.bind(machine, {}, "inspector")
    found = store.get(key).entry
    store.release_claims()
    assert store.stats.lock_waits == 0 and store.stats.lock_timeouts == 0
    assert (found is None) == (not entry.exists())

    two_hours_ago = time.time() - 2 * 3600
    for path in leftovers:
        os.utime(path, (two_hours_ago, two_hours_ago))
    in_progress = tmp / f"{prefix}99999.abcdef12.tmp"
    in_progress.write_bytes(b"a write that is still going on")

    result, report = run_jax("-n", "0", "--jax-cache-dir=cache")
    assert result.ret == 0
    result.assert_outcomes(passed=SUITE_SIZE)
    assert_all_hits(report)
    assert report["store"]["repaired"] == 0
    maintenance = report["cache"]["maintenance"]
    assert maintenance["ran"]
    assert maintenance["stale_files_removed"] >= len(leftovers)
    assert not any(path.exists() for path in leftovers)
    assert in_progress.exists()
    assert entry.exists() == (found is not None)
    assert_entries_decode(warm_cache)


# -- truncated entries under -W error, two workers -----------------------------------------


def test_truncated_entries_repaired_under_two_workers(run_jax: RunJax, warm_cache: Path) -> None:
    """Every entry hand-truncated (to 0 bytes, a bare header, half, all but one byte):
    a warm ``-n 2 -W error`` session is green, repairs each one exactly once (summed over
    the workers), rewrites them, and the next session hits everything."""
    truncated = entries(warm_cache)
    assert len(truncated) == SUITE_SIZE
    for index, path in enumerate(truncated):
        data = path.read_bytes()
        assert decoded(path) is not None
        keep = (0, HEAD_SIZE, len(data) // 2, len(data) - 1)[index % 4]
        path.write_bytes(data[:keep])
        assert decoded(path) is None

    result, report = run_jax("-n", "2", "-W", "error", "--jax-cache-dir=cache")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=SUITE_SIZE)
    store = report["store"]
    assert store["repaired"] == len(truncated)
    assert sum(w["store"]["repaired"] for w in report["workers"].values()) == len(truncated)
    assert store["writes"] == report["cachable"]["misses"] == len(truncated)
    assert report["cache_warnings"] == []
    assert len(assert_entries_decode(warm_cache)) == len(truncated)

    result, report = run_jax("-n", "0", "-W", "error", "--jax-cache-dir=cache")
    assert result.ret == 0
    assert_all_hits(report)
    assert report["store"]["repaired"] == 0


# -- read-only mode -----------------------------------------------------------------------


def test_readonly_serves_hits_and_touches_nothing(run_jax: RunJax, warm_cache: Path) -> None:
    """``--jax-cache-mode=readonly`` on a warm cache under ``-n 2``: every lookup hits,
    and not one file or folder of the cache changes (no write, no LRU mtime touch, no
    session record) even with a size cap far below its size."""
    before = snapshot(warm_cache)
    size = sum(path.stat().st_size for path in entries(warm_cache))
    assert size > 1000

    result, report = run_jax(
        "-n", "2", "--jax-cache-mode=readonly", "--jax-cache-max-size=1KB", "--jax-cache-dir=cache"
    )
    assert result.ret == 0
    result.assert_outcomes(passed=SUITE_SIZE)
    assert_all_hits(report)
    assert report["cache"]["mode"] == "readonly"
    maintenance = report["cache"]["maintenance"]
    assert not maintenance["ran"] and maintenance["evicted"] == 0
    assert report["store"]["skipped_writes"] == 0
    assert snapshot(warm_cache) == before


# -- two sessions at once -----------------------------------------------------------------


def test_two_concurrent_sessions(run_jax: RunJax, pytester: pytest.Pytester) -> None:
    """Two ``pytest -n 2`` sessions started together on one cold directory: both green,
    no corrupt entry, no leftover temporary, and a third session hits everything."""
    write_files(pytester.path, SUITE)
    sessions: list[tuple[subprocess.Popen[str], Path]] = []
    with contextlib.ExitStack() as stack:
        for index in range(2):
            report_path = pytester.path / f"concurrent-{index}.json"
            log = stack.enter_context(open(pytester.path / f"concurrent-{index}.log", "w"))
            process = start_session(
                pytester.path,
                "-n",
                "2",
                "--jax-cache-dir=cache",
                f"--jax-cache-report={report_path}",
                output=log,
            )
            stack.callback(process.kill)  # a no-op once it has exited
            sessions.append((process, report_path))
        for process, _ in sessions:
            process.wait(timeout=300)
    for index, (process, report_path) in enumerate(sessions):
        output = (pytester.path / f"concurrent-{index}.log").read_text()
        assert process.returncode == 0, output
        data = json.loads(report_path.read_text())
        store = data["store"]
        assert store["repaired"] == store["write_errors"] == store["lock_timeouts"] == 0, store
        assert data["cache_warnings"] == []
        assert data["cachable"]["requests"] == SUITE_SIZE

    cache = pytester.path / "cache"
    assert len(assert_entries_decode(cache)) == SUITE_SIZE
    assert list((cache / "tmp").iterdir()) == []
    result, report = run_jax("-n", "0", "--jax-cache-dir=cache")
    assert result.ret == 0
    assert_all_hits(report)
    assert report["cachable"]["requests"] == SUITE_SIZE


# -- a full disk --------------------------------------------------------------------------


def test_disk_fills_up_during_the_session(
    run_jax: RunJax, pytester: pytest.Pytester, small_disk: Path
) -> None:
    """A cache on a 64 KiB tmpfs filled by the session itself: all green, failed writes
    counted and reported as "disk full", no partial file left. Then, with the disk full
    to the last byte, the next session is green and serves what fit."""
    write_files(pytester.path, MANY)
    cache = small_disk / "cache"
    result, report = run_jax("-n", "0", f"--jax-cache-dir={cache}")
    assert result.ret == 0
    result.assert_outcomes(passed=MANY_SIZE)
    store = report["store"]
    assert store["write_errors"] > 0
    # A program the store could not write is compiled and not written, not a miss.
    assert store["writes"] == report["cachable"]["misses"]
    assert store["write_errors"] == report["cachable"]["unwritten"]
    assert store["writes"] + store["write_errors"] == MANY_SIZE
    not_written = {group["reason"]: group["count"] for group in report["not_written"]}
    assert not_written == {"the store could not write it (see its notices)": store["write_errors"]}
    assert any("disk full" in message for message in store["errors"])
    assert "disk full" in result.stdout.str()
    fitted = assert_entries_decode(cache)
    assert len(fitted) == store["writes"] > 0
    assert list((cache / "tmp").iterdir()) == []

    fill_disk(small_disk / "filler")
    result, report = run_jax("-n", "0", f"--jax-cache-dir={cache}")
    assert result.ret == 0
    result.assert_outcomes(passed=MANY_SIZE)
    assert report["cachable"]["hits"] == len(fitted)
    assert report["store"]["write_errors"] == report["cachable"]["unwritten"] > 0
    assert report["cachable"]["misses"] == 0
    assert len(assert_entries_decode(cache)) == len(fitted)


def test_disk_full_from_the_start(
    run_jax: RunJax, pytester: pytest.Pytester, small_disk: Path
) -> None:
    """A new cache directory on a tmpfs that is already full: the session is green and
    says the disk is full; nothing half-written is left behind."""
    write_files(pytester.path, SUITE)
    fill_disk(small_disk / "filler")
    cache = small_disk / "cache"
    result, report = run_jax("-n", "0", f"--jax-cache-dir={cache}")
    assert result.ret == 0
    result.assert_outcomes(passed=SUITE_SIZE)
    assert any("disk full" in notice for notice in report["cache"]["notices"])
    assert "disk full" in result.stdout.str()
    assert entries(cache) == []
    assert report["store"]["repaired"] == 0


def test_full_disk_still_evicts_to_the_cap(
    run_jax: RunJax, pytester: pytest.Pytester, small_disk: Path
) -> None:
    """A store over its size cap on a full disk: session-end eviction still runs and
    brings the store under the cap (freeing the disk)."""
    write_files(pytester.path, MANY)
    cache = small_disk / "cache"
    result, _ = run_jax("-n", "0", "--jax-cache-max-size=none", f"--jax-cache-dir={cache}")
    assert result.ret == 0
    fill_disk(small_disk / "filler")
    assert sum(p.stat().st_size for p in entries(cache)) > 10_000

    result, report = run_jax("-n", "0", "--jax-cache-max-size=10KB", f"--jax-cache-dir={cache}")
    assert result.ret == 0
    maintenance = report["cache"]["maintenance"]
    assert maintenance["ran"] and maintenance["evicted"] > 0, str(maintenance)
    assert sum(p.stat().st_size for p in assert_entries_decode(cache)) <= 10_000
