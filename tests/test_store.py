"""Unit tests of the local store: reads and writes, refusals (corrupt, another key's,
untrusted, another machine's, odd files), single flight across real processes.

No JAX here: the store maps string keys to bytes. Cross-process behaviour uses real
processes (``spawn``) and real ``filelock`` locks; ordering comes from events.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import shutil
import stat
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
from pytest_jaxcache.entry import Metadata, encode
from pytest_jaxcache.keys import file_name
from pytest_jaxcache.ownership import adopt
from pytest_jaxcache.store import Lookup, Policy, Store, StoreStats
from pytest_jaxcache.trust import Signer

HASH_A, HASH_B, HASH_C = "a" * 64, "b" * 64, "c" * 64
KEY = f"jit_f-{HASH_A}"
MACHINE = "0123456789abcdef"
OTHER_MACHINE = "fedcba9876543210"
FACTS = {"jax": "0.10.2", "jaxlib": "0.10.2", "cpu features": "aaaaaaaaaaaa"}
SESSION = "5e55105e55105e55"
PAYLOAD = b"compiled program bytes \x00\x01\x02" * 10
WAIT = 60.0  # upper bound for cross-process waits; never reached when the code is right

SPAWN = multiprocessing.get_context("spawn")


# -- helpers -------------------------------------------------------------------------------


def open_store(root: Path, *, machine: str = MACHINE, bind: bool = True, **kwargs: Any) -> Store:
    """A store on ``root`` as a session opens one: adopted, and bound to ``machine``."""
    store = Store(adopt(root, readonly=bool(kwargs.get("readonly"))), **kwargs)
    if bind:
        store.bind(machine, FACTS, SESSION)
    return store


def entry_path(root: Path, key: str = KEY, machine: str = MACHINE) -> Path:
    return root / "entries" / machine / file_name(key)


def lock_path(root: Path, key: str = KEY) -> Path:
    return root / "locks" / f"{file_name(key)}.lock"


def write_entry(
    root: Path,
    key: str = KEY,
    *,
    machine: str = MACHINE,
    signer: Signer | None = None,
    payload: bytes = PAYLOAD,
) -> Path:
    path = entry_path(root, key, machine)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = Metadata(compile_secs=1.0, written_at=100.0, machine=machine, session=SESSION)
    path.write_bytes(encode(key, payload, metadata, signer))
    return path


def lock_is_free(path: Path) -> bool:
    """Whether nobody (no other file descriptor, in any process) holds the lock."""
    lock = filelock.FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        return False
    lock.release()
    return True


# -- child processes (module level so that ``spawn`` can import them) ------------------------


def _guarded(results: Any, role: str, body: Callable[[], Any]) -> None:
    try:
        results.put((role, body()))
    except BaseException:
        results.put((role, {"error": traceback.format_exc()}))


def _compile_then_put(root: str, key: str, claimed: Any, go: Any, results: Any) -> None:
    """Miss ``key`` (claiming it), say so, wait for ``go``, then write it."""

    def body() -> dict[str, Any]:
        store = open_store(Path(root))
        found = store.get(key)
        claimed.set()
        go.wait(WAIT)
        written = store.put(key, PAYLOAD, 2.5)
        return {"missed": found.entry is None, "written": written, "stats": asdict(store.stats)}

    _guarded(results, "compiler", body)


def _get_while_claimed(root: str, key: str, claimed: Any, waiting: Any, results: Any) -> None:
    """After ``claimed``, get ``key``; announce ``waiting`` once the get waits on the lock."""

    def body() -> dict[str, Any]:
        claimed.wait(WAIT)
        store = open_store(Path(root), lock_timeout_secs=WAIT)
        box: dict[str, Lookup] = {}
        thread = threading.Thread(target=lambda: box.update(found=store.get(key)))
        thread.start()
        while thread.is_alive() and store.stats.lock_waits == 0:
            time.sleep(0.002)  # polling for a state change, not a timing assertion
        waiting.set()
        thread.join(WAIT)
        found = box["found"].entry
        return {
            "entry": None if found is None else [found.payload, found.compile_secs],
            "waited": box["found"].waited_secs > 0,
            "stats": asdict(store.stats),
        }

    _guarded(results, "waiter", body)


def _hold_lock(path: str, held: Any, release: Any, results: Any) -> None:
    """Hold a file lock until ``release``."""

    def body() -> str:
        with filelock.FileLock(path):
            held.set()
            release.wait(WAIT)
        return "released"

    _guarded(results, "holder", body)


def _claim_release_then_hold(root: str, key: str, held: Any, release: Any, results: Any) -> None:
    """Miss ``key``, compile nothing writable (release_claims), then keep its lock busy."""

    def body() -> str:
        store = open_store(Path(root))
        store.get(key)
        store.release_claims()
        with filelock.FileLock(str(lock_path(Path(root), key))):
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


# -- reads and writes ------------------------------------------------------------------------


def test_put_get_round_trip(tmp_path: Path) -> None:
    """An entry comes back with its compile time, under this machine's namespace, with
    what the session stamps on it; stats count it."""
    store = open_store(tmp_path)
    assert store.put(KEY, PAYLOAD, 3.5) is True
    path = entry_path(tmp_path)
    assert store.stats.writes == 1 and store.stats.bytes_written == path.stat().st_size

    reader = open_store(tmp_path)
    found = reader.get(KEY)
    assert found.entry is not None and found.refused == "" and not found.remote
    assert found.entry.payload == PAYLOAD and found.entry.compile_secs == 3.5
    assert (found.entry.metadata.machine, found.entry.metadata.session) == (MACHINE, SESSION)
    assert (reader.stats.hits, reader.stats.misses) == (1, 0)
    assert Bookkeeping(reader.directory).load_machine(MACHINE) == FACTS


def test_put_with_parts_and_unknown_compile_time(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.put(KEY, PAYLOAD, None, {"computation": "c0ffee"})
    found = store.get(KEY).entry
    assert found is not None and found.compile_secs is None
    assert found.metadata.parts == {"computation": "c0ffee"}


def test_a_miss_claims_the_key_until_put(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    assert store.get(KEY).entry is None
    assert (store.stats.misses, store.stats.hits) == (1, 0)
    assert not lock_is_free(lock_path(tmp_path))
    assert store.put(KEY, PAYLOAD, 1.0)
    assert lock_is_free(lock_path(tmp_path))
    assert store.get(KEY).entry is not None


def test_rewrite_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for payload in (b"first", b"second"):
        store.put(KEY, payload)
    found = store.get(KEY).entry
    assert found is not None and found.payload == b"second"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_get_before_bind_loads_and_writes_nothing(tmp_path: Path) -> None:
    """Until the machine is known (the first compile binds it), nothing is loaded."""
    write_entry(tmp_path)
    store = open_store(tmp_path, bind=False)
    found = store.get(KEY)
    assert found.entry is None and "machine is not known" in found.refused
    assert store.put(KEY, PAYLOAD) is False


def test_get_marks_use_for_lru(tmp_path: Path) -> None:
    path = write_entry(tmp_path)
    os.utime(path, (1000.0, 1000.0))
    assert open_store(tmp_path).get(KEY).entry is not None
    assert path.stat().st_mtime > 1000.0


def test_a_readonly_store_writes_and_touches_nothing(tmp_path: Path) -> None:
    path = write_entry(tmp_path)
    os.utime(path, (1000.0, 1000.0))
    corrupt = write_entry(tmp_path, f"jit_g-{HASH_B}")
    corrupt.write_bytes(b"garbage")
    store = open_store(tmp_path, readonly=True)
    assert store.get(KEY).entry is not None
    assert path.stat().st_mtime == 1000.0
    assert store.get(f"jit_g-{HASH_B}").entry is None
    assert store.stats.repaired == 1 and corrupt.read_bytes() == b"garbage"
    assert store.put(f"jit_h-{HASH_C}", PAYLOAD) is False
    assert store.stats.skipped_writes == 1 and store.stats.writes == 0
    assert not (tmp_path / "locks").exists()  # not even a lock was taken


# -- what is never loaded --------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "format 1"])
def test_a_corrupt_entry_is_removed_and_counted(tmp_path: Path, damage: str) -> None:
    path = write_entry(tmp_path)
    data = path.read_bytes()
    broken = {"empty": b"", "truncated": data[:-1], "garbage": os.urandom(200)}
    path.write_bytes(broken.get(damage, b"JXC1" + bytes(60)))
    store = open_store(tmp_path)
    found = store.get(KEY)
    assert found.entry is None and found.refused
    assert store.stats.repaired == 1 and not path.exists()
    store.put(KEY, PAYLOAD)
    assert open_store(tmp_path).get(KEY).entry is not None


def test_an_entry_under_another_keys_name_is_removed_and_counted(tmp_path: Path) -> None:
    """A valid entry of one key copied under another key's file name is not served."""
    source = write_entry(tmp_path, KEY)
    target = entry_path(tmp_path, f"jit_g-{HASH_B}")
    shutil.copyfile(source, target)
    store = open_store(tmp_path)
    found = store.get(f"jit_g-{HASH_B}")
    assert found.entry is None and found.refused == "written for another key"
    assert store.stats.wrong_key == 1 and not target.exists()
    assert store.get(KEY).entry is not None  # the original is untouched


def test_untrusted_entries_are_not_loaded_and_are_replaced(tmp_path: Path) -> None:
    """With a key set, an unsigned entry is counted untrusted and left for the next put,
    which replaces it with a signed one."""
    path = write_entry(tmp_path)
    policy = Policy(signer=Signer((b"a-signing-key-of-16+",)), others_may_write=True)
    store = open_store(tmp_path, policy=policy)
    found = store.get(KEY)
    assert found.entry is None and found.refused == "not signed, and a signing key is set"
    assert store.stats.untrusted == 1 and path.exists()
    store.put(KEY, PAYLOAD)
    signed = open_store(tmp_path, policy=policy).get(KEY).entry
    assert signed is not None and signed.signed


@pytest.mark.parametrize("how", ["mode 666", "another owner"])
def test_an_entry_file_others_can_write_is_not_loaded(tmp_path: Path, how: str) -> None:
    path = write_entry(tmp_path)
    if how == "mode 666":
        path.chmod(0o666)
        reason = "writable by every user"
    else:
        os.chown(path, 65534, 65534)
        reason = "owned by"
    store = open_store(tmp_path)
    found = store.get(KEY)
    assert found.entry is None and reason in found.refused
    assert store.stats.untrusted == 1
    shared = open_store(tmp_path, policy=Policy(others_may_write=True))
    assert shared.get(KEY).entry is not None  # a directory shared on purpose


def test_an_entry_of_another_machine_is_explained_and_kept(tmp_path: Path) -> None:
    """A key present only in another machine's namespace: not loaded, counted, and the
    miss says how that machine differs; both namespaces keep their entries."""
    other = write_entry(tmp_path, machine=OTHER_MACHINE)
    books = Bookkeeping(adopt(tmp_path, readonly=False))
    books.save_machine(OTHER_MACHINE, {**FACTS, "cpu features": "bbbbbbbbbbbb"})
    store = open_store(tmp_path)
    found = store.get(KEY)
    assert found.entry is None
    assert found.refused == "written on another CPU: not loaded"
    assert store.stats.foreign == 1
    store.put(KEY, PAYLOAD)
    assert other.exists() and entry_path(tmp_path).exists()


def test_an_entry_that_says_another_machine_is_refused_in_this_namespace(tmp_path: Path) -> None:
    path = entry_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(encode(KEY, PAYLOAD, Metadata(machine=OTHER_MACHINE)))
    store = open_store(tmp_path)
    assert store.get(KEY).refused == "written on another machine"
    assert store.stats.foreign == 1


@pytest.mark.parametrize("kind", ["link", "self-link", "fifo", "directory"])
def test_an_odd_file_named_like_an_entry_is_skipped(tmp_path: Path, kind: str) -> None:
    """A link (to a valid entry outside), a link to itself, a FIFO or a directory where
    an entry should be: never opened blocking, never followed; counted; the link's
    target untouched; a put replaces it (but a directory)."""
    outside = tmp_path / "outside.entry"
    before = encode(KEY, PAYLOAD, Metadata(machine=MACHINE))
    outside.write_bytes(before)
    store = open_store(tmp_path / "cache")
    path = entry_path(tmp_path / "cache")
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "link":
        path.symlink_to(outside)
    elif kind == "self-link":
        path.symlink_to(path.name)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    found = store.get(KEY)
    assert found.entry is None and found.refused.startswith("its entry is")
    assert store.stats.odd_files == 1
    written = store.put(KEY, PAYLOAD)
    assert written is (kind != "directory")
    assert stat.S_ISREG(path.lstat().st_mode) is (kind != "directory")
    assert not outside.exists() or outside.read_bytes().endswith(
        PAYLOAD + outside.read_bytes()[-32:]
    )


def test_a_namespace_directory_that_is_a_link_loads_nothing(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "cache" / "entries").mkdir(parents=True)
    (tmp_path / "cache" / "entries" / MACHINE).symlink_to(outside)
    store = open_store(tmp_path / "cache")
    assert store.machine == "" and store.stats.odd_files == 1
    assert store.put(KEY, PAYLOAD) is False
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("break_it", ["no tmp dir", "entries is a file"])
def test_a_failed_write_is_counted_never_raised(tmp_path: Path, break_it: str) -> None:
    """An OSError while writing is counted and noted; put() returns False, leaves no
    temporary file, and still releases the key's lock."""
    store = open_store(tmp_path)
    store.put(f"jit_other-{HASH_B}", PAYLOAD)  # the layout exists, then breaks
    assert store.get(KEY).entry is None  # claims the key
    if break_it == "no tmp dir":
        shutil.rmtree(tmp_path / "tmp")
    else:
        shutil.rmtree(tmp_path / "entries")
        (tmp_path / "entries").write_bytes(b"not a directory")
    assert store.put(KEY, PAYLOAD, 1.0) is False
    assert store.stats.write_errors == 1 and store.stats.writes == 1  # the other key's
    assert any(message.startswith(f"write {KEY}") for message in store.stats.errors)
    assert lock_is_free(lock_path(tmp_path))
    assert list((tmp_path / "tmp").glob("*")) == []


def test_stats_sum_and_notes_are_bounded() -> None:
    stats = StoreStats(hits=2)
    stats.note("same")
    stats.note("same")
    assert stats.errors == ["same"]
    for index in range(30):
        stats.note(f"error {index}")
    assert len(stats.errors) == 20


# -- single flight ------------------------------------------------------------------------------


def test_release_claims_leaves_a_nocache_marker(tmp_path: Path) -> None:
    """release_claims() frees the lock and marks the key so later lookups do not wait."""
    store = open_store(tmp_path)
    assert store.get(KEY).entry is None
    store.release_claims()
    assert lock_is_free(lock_path(tmp_path))
    assert (tmp_path / "locks" / f"{KEY}.nocache").exists()
    other = open_store(tmp_path)
    assert other.get(KEY).entry is None
    assert lock_is_free(lock_path(tmp_path))  # the marked key was not claimed again


def test_a_marker_only_for_compiles_that_succeeded_and_gone_once_written(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    marker = tmp_path / "locks" / f"{KEY}.nocache"
    assert store.get(KEY).entry is None
    store.release_claims(compiled=False)
    assert not marker.exists()
    assert store.get(KEY).entry is None
    store.release_claims(compiled=True)
    assert marker.exists()
    store.put(KEY, PAYLOAD)
    assert not marker.exists()


def test_a_second_lookup_in_the_same_thread_does_not_wait(tmp_path: Path) -> None:
    """JAX can look one key up twice in one compile (PGLE): the thread already holds the
    key's lock and must not wait on itself until the lock timeout."""
    store = open_store(tmp_path, lock_timeout_secs=30)
    assert store.get(KEY).entry is None
    assert store.get(KEY).entry is None
    assert store.stats.lock_waits == 0 and store.stats.lock_timeouts == 0
    store.put(KEY, PAYLOAD)
    assert lock_is_free(lock_path(tmp_path))


def test_a_second_process_waits_for_the_first_compile(tmp_path: Path) -> None:
    """Two processes miss the same key: the second waits on the lock until the first
    writes, then serves the entry (one compile across processes); its wait is measured."""
    open_store(tmp_path)
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
    assert waiter["entry"] == [PAYLOAD, 2.5] and waiter["waited"]
    stats = waiter["stats"]
    assert (stats["lock_waits"], stats["waited_hits"], stats["hits"]) == (1, 1, 1)
    assert stats["misses"] == stats["lock_timeouts"] == 0 and stats["wait_secs"] > 0


def test_a_lock_timeout_gives_up_and_compiles(tmp_path: Path) -> None:
    store = open_store(tmp_path, lock_timeout_secs=0.2)
    held, release, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
    holder = SPAWN.Process(
        target=_hold_lock, args=(str(lock_path(tmp_path)), held, release, results)
    )
    holder.start()
    try:
        wait_for(held, holder)
        assert store.get(KEY).entry is None
        assert (store.stats.lock_waits, store.stats.lock_timeouts) == (1, 1)
        assert store.stats.waited_hits == 0 and store.stats.misses == 1
        assert store.put(KEY, PAYLOAD, 1.0) is True
    finally:
        release.set()
    assert collect(results, [holder]) == {"holder": "released"}
    assert open_store(tmp_path).get(KEY).entry is not None


def test_a_nocache_marker_stops_waiting_in_other_processes(tmp_path: Path) -> None:
    store = open_store(tmp_path, lock_timeout_secs=30.0)
    held, release, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
    holder = SPAWN.Process(
        target=_claim_release_then_hold, args=(str(tmp_path), KEY, held, release, results)
    )
    holder.start()
    try:
        wait_for(held, holder)
        assert (tmp_path / "locks" / f"{KEY}.nocache").exists()
        assert store.get(KEY).entry is None
        assert store.stats.lock_waits == store.stats.lock_timeouts == 0
        assert store.stats.misses == 1
    finally:
        release.set()
    assert collect(results, [holder]) == {"holder": "released"}


# -- what the entries say about themselves -------------------------------------------------


def test_earlier_entries_of_the_same_program(tmp_path: Path) -> None:
    """This machine's entries of the same program written before a time, newest first;
    the key itself, other programs, later and broken entries left out."""
    store = open_store(tmp_path)
    for key, when in [
        (f"jit_f-{HASH_B}", 100.0),
        (f"jit_f-{HASH_C}", 200.0),
        (f"jit_f-{'d' * 64}", 900.0),
        (KEY, 150.0),
        (f"jit_fg-{HASH_B}", 150.0),
    ]:
        path = entry_path(tmp_path, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(key, PAYLOAD, Metadata(written_at=when, machine=MACHINE)))
    entry_path(tmp_path, f"jit_f-{'e' * 64}").write_bytes(b"garbage")
    write_entry(tmp_path, f"jit_f-{'f' * 64}", machine=OTHER_MACHINE)
    found = store.earlier_entries([KEY], before=500.0)[KEY]
    assert [name for name, _ in found] == [f"jit_f-{HASH_C}", f"jit_f-{HASH_B}"]
    nothing = f"jit_nothing-{HASH_A}"
    assert store.earlier_entries([nothing], before=500.0) == {nothing: []}


# -- file names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["jit_<lambda>-" + HASH_A, "pmap/f:g h\\i-" + HASH_A, "jit_f\x00\n-" + HASH_A]
)
def test_file_name_replaces_unsafe_characters(key: str) -> None:
    name = file_name(key)
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
    assert name.endswith("-" + HASH_A)


def test_file_name_of_a_long_or_odd_key_keeps_keys_apart() -> None:
    long_a, long_b = "jit_" + "x" * 500 + "-" + HASH_A, "jit_" + "x" * 500 + "-" + HASH_B
    assert len(file_name(long_a)) <= 200
    assert file_name(long_a).endswith(HASH_A) and file_name(long_b).endswith(HASH_B)
    assert file_name(KEY) == KEY  # an ordinary JAX key is its own file name
    assert file_name(".hidden") != file_name("..hidden")
    assert not file_name("..").startswith(".")
