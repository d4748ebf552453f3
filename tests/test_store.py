"""Unit tests of the on-disk store: format, integrity, single flight, maintenance.

No JAX here: the store maps string keys to bytes. Cross-process behaviour uses real
processes (``spawn``) and real ``filelock`` locks; ordering comes from events.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import filelock
import pytest

from pytest_jaxcache.bookkeeping import Bookkeeping
from pytest_jaxcache.entry import MAGIC, NO_FINGERPRINT, Entry, decode, decode_header, encode
from pytest_jaxcache.keys import file_name
from pytest_jaxcache.maintenance import Maintenance, MaintenanceResult, Usage
from pytest_jaxcache.store import Store, StoreStats

HASH_A = "a" * 64
HASH_B = "b" * 64
HASH_C = "c" * 64
KEY = f"jit_f-{HASH_A}"
PAYLOAD = b"compiled program bytes \x00\x01\x02" * 10
WAIT = 60.0  # upper bound for cross-process waits; never reached when the code is right

SPAWN = multiprocessing.get_context("spawn")


# -- helpers -------------------------------------------------------------------------------


def make_store(root: Path, **kwargs: Any) -> Store:
    """A created store at ``root``."""
    store = Store(root, **kwargs)
    store.create()
    return store


def entries_dir(store: Store) -> Path:
    return store.root / "entries"


def tmp_dir(store: Store) -> Path:
    return store.root / "tmp"


def locks_dir(store: Store) -> Path:
    return store.root / "locks"


def entry_path(store: Store, key: str) -> Path:
    return entries_dir(store) / file_name(key)


def lock_path(store: Store, key: str) -> Path:
    return locks_dir(store) / f"{file_name(key)}.lock"


def maintain(
    store: Store,
    *,
    max_size_bytes: int | None,
    prune_after_sessions: int | None,
    session_start: float | None,
    wait_secs: float = 10.0,
) -> MaintenanceResult:
    return Maintenance(store.directory).maintain(
        max_size_bytes=max_size_bytes,
        prune_after_sessions=prune_after_sessions,
        session_start=session_start,
        wait_secs=wait_secs,
    )


def usage(store: Store) -> Usage:
    return Maintenance(store.directory).usage()


def sessions(store: Store) -> list[float]:
    return Bookkeeping(store.directory).sessions()


def lock_is_free(path: Path) -> bool:
    """Whether nobody (no other file descriptor, in any process) holds the lock."""
    lock = filelock.FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        return False
    lock.release()
    return True


def set_mtime(path: Path, when: float) -> None:
    os.utime(path, (when, when))


def listing(directory: Path) -> list[str]:
    return sorted(item.name for item in directory.iterdir())


# -- child processes (module level so that ``spawn`` can import them) ------------------------


def _guarded(results: Any, role: str, body: Callable[[], Any]) -> None:
    try:
        results.put((role, body()))
    except BaseException:
        results.put((role, {"error": traceback.format_exc()}))


def _compile_then_put(root: str, key: str, claimed: Any, go: Any, results: Any) -> None:
    """Miss ``key`` (claiming it), say so, wait for ``go``, then write it."""

    def body() -> dict[str, Any]:
        store = Store(Path(root))
        entry = store.get(key)
        claimed.set()
        go.wait(WAIT)
        written = store.put(key, PAYLOAD, 2.5)
        return {"missed": entry is None, "written": written, "stats": asdict(store.stats)}

    _guarded(results, "compiler", body)


def _get_while_claimed(root: str, key: str, claimed: Any, waiting: Any, results: Any) -> None:
    """After ``claimed``, get ``key``; announce ``waiting`` once the get waits on the lock."""

    def body() -> dict[str, Any]:
        claimed.wait(WAIT)
        store = Store(Path(root), lock_timeout_secs=WAIT)
        box: dict[str, Entry | None] = {}
        thread = threading.Thread(target=lambda: box.update(entry=store.get(key)))
        thread.start()
        while thread.is_alive() and store.stats.lock_waits == 0:
            time.sleep(0.002)  # polling for a state change, not a timing assertion
        waiting.set()
        thread.join(WAIT)
        entry = box.get("entry")
        return {
            "entry": None if entry is None else [entry.payload, entry.compile_secs],
            "stats": asdict(store.stats),
        }

    _guarded(results, "waiter", body)


def _hold_lock(path: str, held: Any, release: Any, results: Any) -> None:
    """Hold a file lock until ``release``."""

    def body() -> str:
        lock = filelock.FileLock(path)
        with lock:
            held.set()
            release.wait(WAIT)
        return "released"

    _guarded(results, "holder", body)


def _claim_release_then_hold(root: str, key: str, held: Any, release: Any, results: Any) -> None:
    """Miss ``key``, compile nothing writable (release_claims), then keep its lock busy."""

    def body() -> str:
        store = Store(Path(root))
        store.get(key)
        store.release_claims()
        with filelock.FileLock(str(Path(root) / "locks" / f"{file_name(key)}.lock")):
            held.set()
            release.wait(WAIT)
        return "released"

    _guarded(results, "holder", body)


def collect(results: Any, processes: list[Any]) -> dict[str, Any]:
    """Each child's result by role; fails on a child's exception or exit status, and
    fails fast (not after WAIT) when a child died without reporting."""
    found: dict[str, Any] = {}
    deadline = time.monotonic() + WAIT
    while len(found) < len(processes) and time.monotonic() < deadline:
        try:
            role, value = results.get(timeout=0.5)
        except queue.Empty:
            if not any(process.is_alive() for process in processes) and results.empty():
                break
            continue
        found[role] = value
    for process in processes:
        process.join(WAIT)
    for role, value in found.items():
        assert not (isinstance(value, dict) and "error" in value), f"{role}: {value['error']}"
    assert [process.exitcode for process in processes] == [0] * len(processes)
    assert len(found) == len(processes), f"children reported only {sorted(found)}"
    return found


def wait_for(event: Any, process: Any) -> None:
    """Wait until a child sets ``event``; fail at once if the child dies first."""
    deadline = time.monotonic() + WAIT
    while not event.wait(0.1):
        assert process.is_alive(), f"child exited with {process.exitcode} before signalling"
        assert time.monotonic() < deadline, "child never signalled"


# -- format ----------------------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    """Every header field and the payload survive encode -> decode."""
    data = encode(PAYLOAD, 1.25, b"fp123456", written_at=1234.5)
    entry = decode(data)
    assert entry is not None
    assert entry.payload == PAYLOAD
    assert entry.compile_secs == 1.25
    assert entry.header.written_at == 1234.5
    assert entry.header.fingerprint == b"fp123456"
    assert entry.header.length == len(PAYLOAD)
    assert data.startswith(MAGIC)


def test_encode_unknown_compile_time_and_short_fingerprint() -> None:
    """``None`` compile time stays unknown; a short fingerprint is padded to 8 bytes."""
    entry = decode(encode(b"", None, b"ab"))
    assert entry is not None
    assert entry.payload == b""
    assert entry.compile_secs is None
    assert entry.header.fingerprint == b"ab" + bytes(6)
    assert decode(encode(b"x", 0.0)) is not None
    assert decode(encode(b"x", None)).header.fingerprint == NO_FINGERPRINT  # type: ignore[union-attr]


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1 :]


GOOD = encode(PAYLOAD, 1.0, b"fp123456", written_at=1000.0)
HEADER_SIZE = len(GOOD) - len(PAYLOAD)

BROKEN = {
    "zero-length": b"",
    "header cut short": GOOD[: HEADER_SIZE - 1],
    "header only": GOOD[:HEADER_SIZE],
    "payload truncated": GOOD[:-1],
    "padded": GOOD + b"\0",
    "garbage": bytes(range(256)) * 2,
    "flipped payload byte": _flip(GOOD, len(GOOD) - 5),
    "flipped magic": _flip(GOOD, 0),
    "flipped digest byte": _flip(GOOD, HEADER_SIZE - 1),
    "other payload same length": GOOD[:HEADER_SIZE] + bytes(len(PAYLOAD)),
}


@pytest.mark.parametrize("data", BROKEN.values(), ids=BROKEN.keys())
def test_decode_rejects_broken_data(data: bytes) -> None:
    """Truncated, padded, zero-length, garbage or altered bytes never decode."""
    assert decode(data) is None


def test_decode_header_needs_magic_and_length() -> None:
    """The header alone is readable from a good file, not from garbage or short data."""
    header = decode_header(GOOD[:HEADER_SIZE])
    assert header is not None and header.length == len(PAYLOAD)
    assert decode_header(GOOD[: HEADER_SIZE - 1]) is None
    assert decode_header(b"XXXX" + GOOD[4:]) is None


@pytest.mark.parametrize(
    "key", ["jit_<lambda>-" + HASH_A, "pmap/f:g h\\i-" + HASH_A, "jit_f\x00\n-" + HASH_A]
)
def test_file_name_replaces_unsafe_characters(key: str) -> None:
    """Only ``[A-Za-z0-9_.-]`` reaches the file system, and the hash survives."""
    name = file_name(key)
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
    assert name.endswith("-" + HASH_A)
    assert len(name) == len(key)


def test_file_name_of_long_key_keeps_the_hash() -> None:
    """A very long program name is cut from the front: names stay short and keys that
    differ only in their hash stay apart."""
    long_a = "jit_" + "x" * 500 + "-" + HASH_A
    long_b = "jit_" + "x" * 500 + "-" + HASH_B
    assert len(file_name(long_a)) <= 255
    assert file_name(long_a).endswith(HASH_A)
    assert file_name(long_b).endswith(HASH_B)
    assert file_name(long_a) != file_name(long_b)
    assert file_name(KEY) == KEY  # an ordinary JAX key is its own file name


# -- layout ----------------------------------------------------------------------------------


def test_create_makes_layout(tmp_path: Path) -> None:
    """create() makes entries/, tmp/, locks/, a CACHEDIR.TAG and a catch-all .gitignore,
    leaves no probe behind, and can run again."""
    root = tmp_path / "deep" / "cache"
    store = make_store(root)
    for name in ("entries", "tmp", "locks"):
        assert (root / name).is_dir()
    assert (
        (root / "CACHEDIR.TAG")
        .read_text()
        .startswith("Signature: 8a477f597d28d172789f06886806bc55")
    )
    assert "*" in (root / ".gitignore").read_text().splitlines()
    assert listing(tmp_dir(store)) == []
    (root / ".gitignore").write_text("mine\n")
    store.create()  # idempotent, and leaves an existing file alone
    assert (root / ".gitignore").read_text() == "mine\n"


def test_create_raises_when_root_is_a_file(tmp_path: Path) -> None:
    """A root that cannot be a directory raises OSError (the session turns it into a notice)."""
    root = tmp_path / "file"
    root.write_text("not a dir")
    with pytest.raises(OSError):
        Store(root).create()


# -- reads and writes ------------------------------------------------------------------------


def test_put_get_round_trip(tmp_path: Path) -> None:
    """A written entry comes back with its compile time and fingerprint; stats count it."""
    store = make_store(tmp_path)
    store.fingerprint = b"abcdefgh"
    assert store.put(KEY, PAYLOAD, 3.5) is True
    path = entry_path(store, KEY)
    assert store.stats.writes == 1
    assert store.stats.bytes_written == path.stat().st_size

    reader = Store(tmp_path)
    entry = reader.get(KEY)
    assert entry is not None
    assert entry.payload == PAYLOAD
    assert entry.compile_secs == 3.5
    assert entry.header.fingerprint == b"abcdefgh"
    assert (reader.stats.hits, reader.stats.misses) == (1, 0)


def test_put_unknown_compile_time(tmp_path: Path) -> None:
    """put() without a compile time stores 'unknown', not zero."""
    store = make_store(tmp_path)
    store.put(KEY, PAYLOAD)
    entry = store.get(KEY)
    assert entry is not None and entry.compile_secs is None


def test_miss_claims_the_key_until_put(tmp_path: Path) -> None:
    """A read-write miss holds the key's lock; put() releases it and writes the entry."""
    store = make_store(tmp_path)
    assert store.get(KEY) is None
    assert (store.stats.misses, store.stats.hits) == (1, 0)
    assert not lock_is_free(lock_path(store, KEY))
    assert store.put(KEY, PAYLOAD, 1.0)
    assert lock_is_free(lock_path(store, KEY))
    assert store.get(KEY) is not None


def test_overwrite_and_no_tmp_files_left(tmp_path: Path) -> None:
    """Writes go through tmp/ and os.replace: the last value wins, tmp/ ends empty."""
    store = make_store(tmp_path)
    for index in range(5):
        assert store.put(KEY, PAYLOAD + bytes([index]), float(index))
        assert store.put(f"jit_g-{index:064d}", PAYLOAD)
    entry = store.get(KEY)
    assert entry is not None and entry.payload == PAYLOAD + b"\x04"
    assert listing(tmp_dir(store)) == []
    assert len(store.entry_names()) == 6


@pytest.mark.parametrize("damage", ["zero-length", "payload truncated", "garbage", "padded"])
def test_corrupt_entry_is_repaired(tmp_path: Path, damage: str) -> None:
    """A broken file is never served: get() misses, removes it, counts it as repaired,
    and the next put() writes a good entry in its place."""
    store = make_store(tmp_path)
    store.put(KEY, PAYLOAD, 1.0)
    path = entry_path(store, KEY)
    path.write_bytes(BROKEN[damage])

    fresh = Store(tmp_path)
    assert fresh.get(KEY) is None
    assert not path.exists()
    assert fresh.stats.repaired == 1
    assert fresh.stats.misses == 1
    assert fresh.put(KEY, PAYLOAD, 2.0)
    entry = Store(tmp_path).get(KEY)
    assert entry is not None and entry.payload == PAYLOAD and entry.compile_secs == 2.0


def test_get_marks_use_for_lru(tmp_path: Path) -> None:
    """A hit refreshes the entry's mtime (what LRU eviction sorts by)."""
    store = make_store(tmp_path)
    store.put(KEY, PAYLOAD)
    path = entry_path(store, KEY)
    set_mtime(path, 1_000_000.0)
    assert store.get(KEY) is not None
    assert path.stat().st_mtime > 1_000_000.0


def test_readonly_store(tmp_path: Path) -> None:
    """Read-only: hits are served without touching mtimes, writes are skipped and
    counted, misses claim no lock, corrupt entries are counted but left in place."""
    writer = make_store(tmp_path)
    writer.put(KEY, PAYLOAD, 1.0)
    broken_key = f"jit_g-{HASH_B}"
    writer.put(broken_key, PAYLOAD)
    entry_path(writer, broken_key).write_bytes(b"junk")
    set_mtime(entry_path(writer, KEY), 1_000_000.0)

    store = Store(tmp_path, readonly=True)
    entry = store.get(KEY)
    assert entry is not None and entry.payload == PAYLOAD
    assert entry_path(store, KEY).stat().st_mtime == 1_000_000.0

    assert store.put(f"jit_h-{HASH_C}", PAYLOAD) is False
    assert store.stats.skipped_writes == 1
    assert store.stats.writes == 0
    assert not entry_path(store, f"jit_h-{HASH_C}").exists()

    assert store.get(f"jit_h-{HASH_C}") is None
    assert listing(locks_dir(store)) == []

    assert store.get(broken_key) is None
    assert store.stats.repaired == 1
    assert entry_path(store, broken_key).read_bytes() == b"junk"


def _remove_tmp_dir(store: Store) -> None:
    shutil.rmtree(tmp_dir(store))


def _entries_is_a_file(store: Store) -> None:
    shutil.rmtree(entries_dir(store))
    entries_dir(store).write_bytes(b"not a directory")


@pytest.mark.parametrize(
    "break_store", [_remove_tmp_dir, _entries_is_a_file], ids=["no tmp dir", "entries is a file"]
)
def test_failed_write_is_counted_never_raised(
    tmp_path: Path, break_store: Callable[[Store], None]
) -> None:
    """An OSError while writing is counted in write_errors and noted; put() returns
    False, leaves no temporary file, and still releases the key's lock."""
    store = make_store(tmp_path)
    break_store(store)
    assert store.get(KEY) is None  # claims the key
    assert store.put(KEY, PAYLOAD, 1.0) is False
    assert store.stats.write_errors == 1
    assert store.stats.writes == 0
    assert any(message.startswith(f"write {KEY}") for message in store.stats.errors)
    assert lock_is_free(lock_path(store, KEY))
    assert list(tmp_dir(store).glob("*")) == []  # no temporary left (or no tmp/ at all)


def test_release_claims_leaves_nocache_marker(tmp_path: Path) -> None:
    """release_claims() frees the lock and marks the key so later lookups don't wait."""
    store = make_store(tmp_path)
    assert store.get(KEY) is None
    store.release_claims()
    assert lock_is_free(lock_path(store, KEY))
    assert (locks_dir(store) / f"{KEY}.nocache").exists()
    other = Store(tmp_path)
    assert other.get(KEY) is None
    assert lock_is_free(lock_path(store, KEY))  # the marked key was not claimed again


# -- single flight across processes ----------------------------------------------------------


def test_second_process_waits_for_first_compile(tmp_path: Path) -> None:
    """Two processes miss the same key: the second waits on the lock until the first
    writes, then serves the entry (one compile across processes)."""
    make_store(tmp_path)
    claimed, waiting, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
    processes = [
        SPAWN.Process(
            target=_compile_then_put, args=(str(tmp_path), KEY, claimed, waiting, results)
        ),
        SPAWN.Process(
            target=_get_while_claimed, args=(str(tmp_path), KEY, claimed, waiting, results)
        ),
    ]
    for process in processes:
        process.start()
    found = collect(results, processes)

    compiler, waiter = found["compiler"], found["waiter"]
    assert compiler["missed"] and compiler["written"]
    assert compiler["stats"]["misses"] == 1 and compiler["stats"]["writes"] == 1
    assert waiter["entry"] == [PAYLOAD, 2.5]
    assert waiter["stats"]["lock_waits"] == 1
    assert waiter["stats"]["waited_hits"] == 1
    assert waiter["stats"]["hits"] == 1
    assert waiter["stats"]["misses"] == 0
    assert waiter["stats"]["lock_timeouts"] == 0


def test_lock_timeout_gives_up_and_compiles(tmp_path: Path) -> None:
    """When another process keeps a key's lock past the timeout, get() returns None,
    counts the timeout, and a later put() still writes."""
    store = make_store(tmp_path, lock_timeout_secs=0.2)
    held, release, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
    holder = SPAWN.Process(
        target=_hold_lock, args=(str(lock_path(store, KEY)), held, release, results)
    )
    holder.start()
    try:
        wait_for(held, holder)
        assert store.get(KEY) is None
        assert store.stats.lock_waits == 1
        assert store.stats.lock_timeouts == 1
        assert store.stats.waited_hits == 0
        assert store.stats.misses == 1
        assert store.put(KEY, PAYLOAD, 1.0) is True
    finally:
        release.set()
    assert collect(results, [holder]) == {"holder": "released"}
    assert Store(tmp_path).get(KEY) is not None


def test_nocache_marker_stops_waiting_in_other_processes(tmp_path: Path) -> None:
    """After a process released its claim without writing, another store does not
    wait for that key even while its lock is busy."""
    store = make_store(tmp_path, lock_timeout_secs=30.0)
    held, release, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
    holder = SPAWN.Process(
        target=_claim_release_then_hold, args=(str(tmp_path), KEY, held, release, results)
    )
    holder.start()
    try:
        wait_for(held, holder)
        assert (locks_dir(store) / f"{KEY}.nocache").exists()
        assert store.get(KEY) is None
        assert store.stats.lock_waits == 0
        assert store.stats.lock_timeouts == 0
        assert store.stats.misses == 1
    finally:
        release.set()
    assert collect(results, [holder]) == {"holder": "released"}


# -- maintenance -----------------------------------------------------------------------------


def _fill(store: Store, count: int, payload: bytes = PAYLOAD) -> list[str]:
    keys = [f"jit_p{index}-{index:064d}" for index in range(count)]
    for key in keys:
        assert store.put(key, payload)
    return keys


def test_size_cap_evicts_least_recently_used(tmp_path: Path) -> None:
    """Over the cap, the entries with the oldest mtimes go first; a hit protects one."""
    store = make_store(tmp_path)
    keys = _fill(store, 4)
    size = entry_path(store, keys[0]).stat().st_size
    now = time.time()
    for index, key in enumerate(keys):
        set_mtime(entry_path(store, key), now - 1000 + 10 * index)
    assert store.get(keys[0]) is not None  # the oldest is used again: now the newest

    result = maintain(store, max_size_bytes=2 * size, prune_after_sessions=None, session_start=now)
    assert result.ran
    assert (result.evicted, result.evicted_bytes) == (2, 2 * size)
    assert result.pruned == 0
    assert store.entry_names() == sorted([keys[0], keys[3]])
    assert usage(store) == Usage(2, 2 * size)


def test_no_cap_evicts_nothing(tmp_path: Path) -> None:
    """max_size_bytes=None keeps every entry."""
    store = make_store(tmp_path)
    keys = _fill(store, 3)
    result = maintain(store, max_size_bytes=None, prune_after_sessions=None, session_start=1.0)
    assert result.ran and result.evicted == 0
    assert store.entry_names() == sorted(keys)


def test_prune_after_sessions(tmp_path: Path) -> None:
    """prune_after=N removes entries not used since the Nth most recent session start,
    and maintain() records every session start it sees."""
    store = make_store(tmp_path)
    for start in (1000.0, 2000.0, 3000.0):
        assert maintain(
            store, max_size_bytes=None, prune_after_sessions=None, session_start=start
        ).ran
    keys = _fill(store, 4)
    for key, when in zip(keys[:3], (1500.0, 2500.0, 3500.0), strict=True):
        set_mtime(entry_path(store, key), when)
    size = entry_path(store, keys[0]).stat().st_size

    # too few sessions for N=10: nothing pruned yet
    result = maintain(store, max_size_bytes=None, prune_after_sessions=10, session_start=3000.0)
    assert result.pruned == 0 and len(store.entry_names()) == 4

    result = maintain(store, max_size_bytes=None, prune_after_sessions=2, session_start=4000.0)
    assert result.ran
    assert (result.pruned, result.pruned_bytes) == (2, 2 * size)
    assert store.entry_names() == sorted(keys[2:])
    recorded = json.loads((tmp_path / "sessions.json").read_text())["sessions"]
    assert recorded == [1000.0, 2000.0, 3000.0, 4000.0]
    assert sessions(store) == recorded


def test_maintenance_outside_a_session(tmp_path: Path) -> None:
    """session_start=None (the CLI) prunes against the recorded sessions without
    recording one of its own."""
    store = make_store(tmp_path)
    for start in (1000.0, 2000.0, 3000.0):
        maintain(store, max_size_bytes=None, prune_after_sessions=None, session_start=start)
    keys = _fill(store, 3)
    for key, when in zip(keys, (1500.0, 2500.0, 3500.0), strict=True):
        set_mtime(entry_path(store, key), when)
    result = maintain(store, max_size_bytes=None, prune_after_sessions=2, session_start=None)
    assert result.ran and result.pruned == 1
    assert store.entry_names() == sorted(keys[1:])
    assert sessions(store) == [1000.0, 2000.0, 3000.0]


def test_corrupt_sessions_file_is_replaced(tmp_path: Path) -> None:
    """An unreadable sessions.json does not stop maintenance; it is rewritten."""
    store = make_store(tmp_path)
    (tmp_path / "sessions.json").write_text("{not json")
    result = maintain(store, max_size_bytes=None, prune_after_sessions=None, session_start=5.0)
    assert result.ran
    assert json.loads((tmp_path / "sessions.json").read_text()) == {"sessions": [5.0]}


def test_stale_temporaries_and_markers_removed(tmp_path: Path) -> None:
    """Old temporaries, old unheld lock files and week-old markers are removed; fresh
    ones, an old lock someone holds, and old files of other names are kept."""
    store = make_store(tmp_path)
    now = time.time()
    tmp, locks = tmp_dir(store), locks_dir(store)
    old_tmp, fresh_tmp = tmp / f"jit_a-{HASH_A}.1.deadbeef.tmp", tmp / f"jit_b-{HASH_B}.2.1234abcd"
    old_lock, fresh_lock = locks / f"jit_o-{HASH_A}.lock", locks / f"jit_f-{HASH_B}.lock"
    held_lock = locks / f"jit_h-{HASH_C}.lock"
    old_marker, fresh_marker = locks / f"jit_o-{HASH_A}.nocache", locks / f"jit_f-{HASH_B}.nocache"
    foreign = [tmp / "notes.txt", locks / "old.lock", locks / "mine.nocache"]
    for path in (old_tmp, fresh_tmp, old_lock, fresh_lock, old_marker, fresh_marker, *foreign):
        path.write_bytes(b"")
    for path in foreign:
        set_mtime(path, now - 30 * 24 * 3600)
    holder = filelock.FileLock(str(held_lock))
    holder.acquire()
    try:
        set_mtime(old_tmp, now - 2 * 3600)
        set_mtime(old_lock, now - 2 * 3600)
        set_mtime(held_lock, now - 2 * 3600)
        set_mtime(old_marker, now - 8 * 24 * 3600)
        set_mtime(fresh_marker, now - 2 * 3600)
        result = maintain(store, max_size_bytes=None, prune_after_sessions=None, session_start=now)
    finally:
        holder.release()
    assert result.ran
    assert result.stale_files_removed == 3
    assert listing(tmp) == sorted([fresh_tmp.name, "notes.txt"])
    assert listing(locks) == sorted(
        [fresh_lock.name, fresh_marker.name, held_lock.name, "old.lock", "mine.nocache"]
    )


def test_maintenance_skipped_while_another_session_holds_the_lock(tmp_path: Path) -> None:
    """If another process holds maintenance.lock, maintain() gives up with a reason
    and evicts nothing."""
    store = make_store(tmp_path)
    keys = _fill(store, 3)
    held, release, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
    holder = SPAWN.Process(
        target=_hold_lock, args=(str(tmp_path / "maintenance.lock"), held, release, results)
    )
    holder.start()
    try:
        wait_for(held, holder)
        result = maintain(
            store,
            max_size_bytes=1,
            prune_after_sessions=1,
            session_start=time.time(),
            wait_secs=0.2,
        )
    finally:
        release.set()
    assert collect(results, [holder]) == {"holder": "released"}
    assert result.ran is False
    assert "another session" in result.reason
    assert store.entry_names() == sorted(keys)
    assert not (tmp_path / "sessions.json").exists()


# -- inspection ------------------------------------------------------------------------------


def test_usage_and_clear(tmp_path: Path) -> None:
    """usage() counts entries and bytes; clear() removes entries only."""
    assert usage(Store(tmp_path / "missing")) == Usage(0, 0)
    store = make_store(tmp_path)
    assert usage(store) == Usage(0, 0)
    keys = _fill(store, 3)
    store.put(f"jit_big-{HASH_A}", PAYLOAD * 3)
    sizes = [path.stat().st_size for path in entries_dir(store).iterdir()]
    assert usage(store) == Usage(4, sum(sizes))
    assert store.entry_names() == sorted([*keys, f"jit_big-{HASH_A}"])
    assert Maintenance(store.directory).clear() == 4
    assert usage(store) == Usage(0, 0)
    assert (tmp_path / "CACHEDIR.TAG").exists() and locks_dir(store).is_dir()
    assert Maintenance(store.directory).clear() == 0


def _write_entry(store: Store, key: str, fingerprint: bytes, written_at: float) -> None:
    entry_path(store, key).write_bytes(encode(PAYLOAD, 1.0, fingerprint, written_at=written_at))


def test_earlier_headers(tmp_path: Path) -> None:
    """Entries of the same program name written before a time, newest first; the key
    itself, other names, longer names sharing the prefix, later and broken entries
    are left out."""
    store = make_store(tmp_path)
    _write_entry(store, f"jit_f-{HASH_B}", b"old_____", 100.0)
    _write_entry(store, f"jit_f-{HASH_C}", b"newer___", 200.0)
    _write_entry(store, f"jit_f-{'d' * 64}", b"later___", 900.0)  # after `before`
    _write_entry(store, KEY, b"itself__", 150.0)
    _write_entry(store, f"jit_fg-{HASH_B}", b"othernam", 150.0)
    _write_entry(store, f"jit_f-extra-{HASH_B}", b"longer__", 150.0)
    entry_path(store, f"jit_f-{'e' * 64}").write_bytes(b"garbage")

    found = store.earlier_headers_of([KEY], before=500.0)[KEY]
    assert [name for name, _ in found] == [f"jit_f-{HASH_C}", f"jit_f-{HASH_B}"]
    assert [header.fingerprint for _, header in found] == [b"newer___", b"old_____"]
    nothing = f"jit_nothing-{HASH_A}"
    assert store.earlier_headers_of([nothing], before=500.0) == {nothing: []}


def test_fingerprint_save_and_load(tmp_path: Path) -> None:
    """Fingerprints round-trip; unknown, corrupt, deeply nested or non-dict files load as
    None; an existing one is not overwritten."""
    store = make_store(tmp_path)
    fingerprint = {"jaxlib": "0.10.2", "XLA_FLAGS": ""}
    books = Bookkeeping(store.directory)
    books.save_fingerprint(b"12345678", fingerprint)
    assert books.load_fingerprint(b"12345678") == fingerprint
    books.save_fingerprint(b"12345678", {"jaxlib": "other"})
    assert books.load_fingerprint(b"12345678") == fingerprint
    assert books.load_fingerprint(b"87654321") is None

    folder = tmp_path / "fingerprints"
    (folder / f"{b'badjson_'.hex()}.json").write_text("{oops")
    (folder / f"{b'notadict'.hex()}.json").write_text("[1, 2]")
    assert books.load_fingerprint(b"badjson_") is None
    assert books.load_fingerprint(b"notadict") is None
    (folder / f"{b'deepjson'.hex()}.json").write_text("[" * 100_000)
    assert books.load_fingerprint(b"deepjson") is None


def test_stats_are_plain_and_notes_bounded() -> None:
    """Stats serialise as JSON; notes are de-duplicated and capped."""
    stats = StoreStats(hits=2)
    stats.note("same")
    stats.note("same")
    assert stats.errors == ["same"]
    for index in range(30):
        stats.note(f"error {index}")
    assert len(stats.errors) == 20
    assert json.loads(json.dumps(asdict(stats)))["hits"] == 2


def test_has_temporaries_sees_a_killed_writers_leftover(tmp_path: Path) -> None:
    """Maintenance is skipped on a warm run unless a temporary file is left over; the
    store must tell an empty ``tmp/`` from one holding a killed writer's partial file."""
    store = make_store(tmp_path / "cache")
    maintenance = Maintenance(store.directory)
    assert not maintenance.has_temporaries()
    store.put("jit_f-" + "a" * 64, b"payload")
    assert not maintenance.has_temporaries()  # a completed write leaves nothing behind
    (tmp_dir(store) / "jit_f-partial.123.abcd1234.tmp").write_bytes(b"half")
    assert maintenance.has_temporaries()
    assert not Maintenance(Store(tmp_path / "never-created").directory).has_temporaries()


def test_second_lookup_of_a_claimed_key_in_the_same_thread_does_not_wait(
    tmp_path: Path,
) -> None:
    """JAX can look one key up twice in one compile (PGLE): the thread already holds the
    key's lock and must not wait on itself until the lock timeout."""
    store = make_store(tmp_path / "cache", lock_timeout_secs=30)
    key = "jit_pgle-" + "c" * 64
    assert store.get(key) is None
    assert store.get(key) is None
    assert store.stats.lock_waits == 0 and store.stats.lock_timeouts == 0
    store.put(key, b"payload")
    assert lock_is_free(lock_path(store, key))


def test_nocache_marker_only_for_compiles_that_succeeded_and_gone_once_written(
    tmp_path: Path,
) -> None:
    """A compile that raised says nothing about its key (no marker); a marker left by a
    compile that wrote nothing is removed when the key is written after all."""
    store = make_store(tmp_path / "cache")
    key = "jit_k-" + "d" * 64
    marker = locks_dir(store) / f"{file_name(key)}.nocache"
    assert store.get(key) is None
    store.release_claims(compiled=False)
    assert not marker.exists()
    assert store.get(key) is None
    store.release_claims(compiled=True)
    assert marker.exists()
    store.put(key, b"payload")
    assert not marker.exists()
