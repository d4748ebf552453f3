"""Unit tests of maintenance and bookkeeping: usage and the content digest, eviction
(what can never load here first, then least recently used), pruning, cleanup that
touches only the store's own names, and bookkeeping files that may be garbage."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import filelock
import pytest
from helpers import claimed

from pytest_jaxcache.bookkeeping import Bookkeeping
from pytest_jaxcache.cachedir import CacheDir
from pytest_jaxcache.entry import Metadata, encode
from pytest_jaxcache.maintenance import JAX, OLD, Maintenance, MaintenanceResult, jax_files_usage

MACHINE, OTHER = "0123456789abcdef", "fedcba9876543210"
FACTS = {"jax": "0.10.2", "jaxlib": "0.10.2", "cpu features": "aaaaaaaaaaaa"}
SIZE = 1000
SPAWN = multiprocessing.get_context("spawn")


def key(index: int) -> str:
    return f"jit_step{index % 3}-{index:064x}"


def put(root: Path, index: int, *, machine: str = MACHINE, used: float = 0.0) -> Path:
    """An entry of ``SIZE`` bytes, last used at ``used`` (seconds since the epoch)."""
    path = root / "entries" / machine / key(index)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = encode(key(index), b"", Metadata(machine=machine))
    path.write_bytes(data + bytes(SIZE - len(data)))
    os.utime(path, (used or 1000.0 + index, used or 1000.0 + index))
    return path


def cache(root: Path) -> Maintenance:
    directory = claimed(root)
    books = Bookkeeping(directory)
    books.save_machine(MACHINE, FACTS)
    books.save_machine(OTHER, {**FACTS, "jaxlib": "0.10.1", "jax": "0.10.1"})
    return Maintenance(directory, FACTS)


def maintain(maintenance: Maintenance, **kwargs: Any) -> MaintenanceResult:
    options: dict[str, Any] = {
        "max_size_bytes": None,
        "prune_after_sessions": None,
        "session_start": time.time(),
    }
    return maintenance.maintain(**{**options, **kwargs})


def names(root: Path) -> list[str]:
    return sorted(path.name for path in (root / "entries").glob("*/*"))


# -- usage and digest ----------------------------------------------------------------------


def test_usage_counts_every_kind_of_entry_and_its_digest_its_contents(tmp_path: Path) -> None:
    maintenance = cache(tmp_path)
    empty = maintenance.usage()
    assert (empty.entries, empty.bytes) == (0, 0)
    put(tmp_path, 0)
    put(tmp_path, 1, machine=OTHER)
    (tmp_path / "entries" / key(2)).write_bytes(bytes(300))  # the first layout's
    (tmp_path / f"{key(3)}-cache").write_bytes(bytes(400))  # JAX's own store's
    (tmp_path / f"{key(3)}-atime").write_bytes(bytes(8))
    usage = maintenance.usage()
    assert (usage.entries, usage.bytes) == (4, 2 * SIZE + 300 + 408)
    assert (usage.jax_files, usage.jax_bytes) == (1, 408)
    assert {item.kind for item in maintenance.inventory()} == {"entry", OLD, JAX}
    assert jax_files_usage(maintenance.directory).entries == 1

    # The digest follows the set of entries, not their use.
    os.utime(tmp_path / "entries" / MACHINE / key(0), (5000.0, 5000.0))
    assert maintenance.usage().digest == usage.digest
    put(tmp_path, 4)
    assert maintenance.usage().digest != usage.digest
    assert empty.digest != usage.digest


def test_files_not_of_a_cache_are_never_counted(tmp_path: Path) -> None:
    maintenance = cache(tmp_path)
    (tmp_path / "entries" / MACHINE).mkdir(parents=True)
    (tmp_path / "entries" / MACHINE / "notes.txt").write_text("mine")
    (tmp_path / "entries" / "not-a-namespace").mkdir()
    (tmp_path / "entries" / "not-a-namespace" / key(0)).write_bytes(bytes(10))
    (tmp_path / "entries" / MACHINE / key(1)).symlink_to(tmp_path / "CACHEDIR.TAG")
    assert maintenance.usage().entries == 0
    assert maintenance.clear() == 0
    assert (tmp_path / "entries" / MACHINE / "notes.txt").read_text() == "mine"


# -- eviction ------------------------------------------------------------------------------


def test_the_cap_evicts_least_recently_used(tmp_path: Path) -> None:
    maintenance = cache(tmp_path)
    for index in range(4):
        put(tmp_path, index)
    os.utime(tmp_path / "entries" / MACHINE / key(0), (9999.0, 9999.0))  # used last
    result = maintain(maintenance, max_size_bytes=2 * SIZE)
    assert (result.ran, result.evicted, result.evicted_bytes) == (True, 2, 2 * SIZE)
    assert result.dropped == 0
    assert names(tmp_path) == sorted([key(0), key(3)])


def test_entries_that_can_never_load_go_first_and_are_reported_apart(tmp_path: Path) -> None:
    """Over the cap: entries of another jaxlib, of the first layout and JAX's own files
    go before any entry of this machine, however recently they were used."""
    maintenance = cache(tmp_path)
    for index in range(3):
        put(tmp_path, index, used=1000.0 + index)
    for index in range(3, 6):
        put(tmp_path, index, machine=OTHER, used=9000.0 + index)
    old = tmp_path / "entries" / key(6)
    old.write_bytes(bytes(SIZE))
    (tmp_path / f"{key(7)}-cache").write_bytes(bytes(SIZE - 8))
    (tmp_path / f"{key(7)}-atime").write_bytes(bytes(8))
    result = maintain(maintenance, max_size_bytes=3 * SIZE)
    assert result.evicted == 0 and result.dropped == 5
    assert sorted(result.dropped_reasons) == sorted(
        [
            "3 entries of jaxlib 0.10.1 dropped: unusable with 0.10.2",
            "1 entries of an older pytest-jaxcache layout dropped: never loaded",
            "1 files of JAX's own store dropped: pytest-jaxcache does not load them",
        ]
    )
    assert names(tmp_path) == sorted(key(index) for index in range(3))
    assert not old.exists() and not list(tmp_path.glob(f"{key(7)}-*"))


def test_under_the_cap_nothing_is_dropped(tmp_path: Path) -> None:
    """Entries of another version stay while there is room (a tox matrix sharing one
    directory keeps both versions' entries)."""
    maintenance = cache(tmp_path)
    put(tmp_path, 0)
    put(tmp_path, 1, machine=OTHER)
    result = maintain(maintenance, max_size_bytes=10 * SIZE)
    assert (result.evicted, result.dropped) == (0, 0)
    assert len(names(tmp_path)) == 2


def test_without_knowing_the_machine_only_foreign_formats_are_unusable(tmp_path: Path) -> None:
    """The command line knows no machine: other namespaces are evicted by age only."""
    directory = claimed(tmp_path)
    put(tmp_path, 0, machine=OTHER, used=9000.0)
    put(tmp_path, 1, used=1000.0)
    result = maintain(Maintenance(directory), max_size_bytes=SIZE)
    assert (result.evicted, result.dropped) == (1, 0)
    assert names(tmp_path) == [key(0)]


# -- pruning and sessions ------------------------------------------------------------------


def test_prune_after_sessions(tmp_path: Path) -> None:
    """Entries not used since the Nth most recent session start are removed; each
    maintenance records its session."""
    maintenance = cache(tmp_path)
    for start in (1000.0, 2000.0, 3000.0):
        assert maintain(maintenance, session_start=start).ran
    for index, used in enumerate((1500.0, 2500.0, 3500.0, 3600.0)):
        put(tmp_path, index, used=used)
    assert maintain(maintenance, prune_after_sessions=10, session_start=3000.0).pruned == 0
    result = maintain(maintenance, prune_after_sessions=2, session_start=4000.0)
    assert (result.pruned, result.pruned_bytes) == (2, 2 * SIZE)
    assert names(tmp_path) == sorted([key(2), key(3)])
    recorded = json.loads((tmp_path / "sessions.json").read_text())["sessions"]
    assert recorded == [1000.0, 2000.0, 3000.0, 4000.0]
    assert maintenance.bookkeeping.sessions() == recorded


def test_outside_a_session_nothing_is_recorded(tmp_path: Path) -> None:
    maintenance = cache(tmp_path)
    for start in (1000.0, 2000.0, 3000.0):
        maintain(maintenance, session_start=start)
    put(tmp_path, 0, used=1500.0)
    result = maintain(maintenance, prune_after_sessions=2, session_start=None)
    assert result.pruned == 1
    assert maintenance.bookkeeping.sessions() == [1000.0, 2000.0, 3000.0]


@pytest.mark.parametrize(
    "garbage",
    [b"{not json", b"[" * 100_000, b'{"sessions": "x"}', b'{"sessions": [1, "a", null]}'],
    ids=["not json", "nested deep", "not a list", "odd items"],
)
def test_a_garbage_sessions_file_reads_as_empty_and_is_rewritten(
    tmp_path: Path, garbage: bytes
) -> None:
    maintenance = cache(tmp_path)
    (tmp_path / "sessions.json").write_bytes(garbage)
    assert maintenance.bookkeeping.sessions() in ([], [1.0])
    assert maintain(maintenance, session_start=5.0).ran
    assert json.loads((tmp_path / "sessions.json").read_text())["sessions"][-1] == 5.0


def test_a_huge_sessions_file_is_not_read(tmp_path: Path) -> None:
    maintenance = cache(tmp_path)
    (tmp_path / "sessions.json").write_bytes(b'{"sessions": [' + b"1.0, " * 8_000_000 + b"1.0]}")
    assert maintenance.bookkeeping.sessions() == []


def test_session_times_in_the_future_are_ignored(tmp_path: Path) -> None:
    maintenance = cache(tmp_path)
    future = time.time() + 365 * 24 * 3600
    (tmp_path / "sessions.json").write_text(json.dumps({"sessions": [1000.0, future]}))
    assert maintenance.bookkeeping.sessions() == [1000.0]


# -- cleanup touches only the store's own names --------------------------------------------


def test_stale_temporaries_and_idle_locks_of_our_names_only(tmp_path: Path) -> None:
    """Old temporaries, old unheld lock files and week-old markers of the store's own
    patterns are removed; fresh ones, a held lock, and files of other names stay."""
    maintenance = cache(tmp_path)
    tmp, locks = tmp_path / "tmp", tmp_path / "locks"
    locks.mkdir(exist_ok=True)
    now = time.time()
    old_tmp, fresh_tmp = tmp / f"{key(0)}.1.deadbeef.tmp", tmp / f"{key(1)}.2.1234abcd"
    old_lock, fresh_lock, held_lock = (locks / f"{key(i)}.lock" for i in (0, 1, 2))
    old_marker, fresh_marker = locks / f"{key(0)}.nocache", locks / f"{key(1)}.nocache"
    foreign = [tmp / "notes.txt", locks / "build.lock", locks / "mine.nocache"]
    for path in (old_tmp, fresh_tmp, old_lock, fresh_lock, held_lock, old_marker, fresh_marker):
        path.write_bytes(b"")
    for path in foreign:
        path.write_bytes(b"user data")
        os.utime(path, (now - 30 * 24 * 3600,) * 2)
    for path in (old_tmp, old_lock, held_lock):
        os.utime(path, (now - 2 * 3600,) * 2)
    os.utime(old_marker, (now - 8 * 24 * 3600,) * 2)
    with filelock.FileLock(str(held_lock)):
        result = maintain(maintenance, session_start=now)
    assert result.stale_files_removed == 3
    assert sorted(p.name for p in tmp.iterdir()) == sorted([fresh_tmp.name, "notes.txt"])
    assert sorted(p.name for p in locks.iterdir()) == sorted(
        [fresh_lock.name, held_lock.name, fresh_marker.name, "build.lock", "mine.nocache"]
    )


@pytest.mark.parametrize("sub", ["tmp", "locks", "entries"])
def test_a_layout_directory_that_is_a_link_deletes_nothing_outside(
    tmp_path: Path, sub: str
) -> None:
    """Maintenance, pruning and clear do not follow a link out of the cache: files in
    the link's target (named like the store's own) survive."""
    root = tmp_path / "cache"
    cache(root).directory.close()
    outside = tmp_path / "outside"
    (outside / MACHINE).mkdir(parents=True)
    planted = [outside / f"{key(0)}.1.deadbeef.tmp", outside / f"{key(0)}.lock", outside / key(0)]
    planted.append(outside / MACHINE / key(1))
    for path in planted:
        path.write_bytes(b"precious")
        os.utime(path, (1.0, 1.0))
    target = root / sub
    if target.exists():
        target.rmdir()
    target.symlink_to(outside)
    maintenance = Maintenance(CacheDir(root), FACTS)  # opens the layout afresh
    result = maintain(maintenance, max_size_bytes=1, prune_after_sessions=1)
    assert result.ran is False and "not a directory" in result.reason
    with contextlib.suppress(OSError):  # refused, or done inside the cache only
        maintenance.clear()
    assert all(path.read_bytes() == b"precious" for path in planted)


def test_maintenance_gives_way_to_another_session(tmp_path: Path) -> None:
    """If another process holds maintenance.lock, maintain() gives up with a reason."""
    maintenance = cache(tmp_path)
    put(tmp_path, 0)
    held, release = SPAWN.Event(), SPAWN.Event()
    holder = SPAWN.Process(target=_hold, args=(str(tmp_path / "maintenance.lock"), held, release))
    holder.start()
    try:
        assert held.wait(60)
        result = maintain(maintenance, max_size_bytes=1, prune_after_sessions=1, wait_secs=0.2)
    finally:
        release.set()
        holder.join(60)
    assert (result.ran, result.reason) == (False, "another session held the lock")
    assert names(tmp_path) == [key(0)] and not (tmp_path / "sessions.json").exists()


def _hold(path: str, held: Any, release: Any) -> None:
    with filelock.FileLock(path):
        held.set()
        release.wait(60)


def test_clear_removes_every_kind_of_entry_and_nothing_else(tmp_path: Path) -> None:
    maintenance = cache(tmp_path)
    put(tmp_path, 0)
    put(tmp_path, 1, machine=OTHER)
    (tmp_path / "entries" / key(2)).write_bytes(bytes(10))
    (tmp_path / f"{key(3)}-cache").write_bytes(bytes(10))
    assert maintenance.clear() == 4
    assert maintenance.usage().entries == 0
    assert (tmp_path / "CACHEDIR.TAG").exists() and (tmp_path / "machines").is_dir()
