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
import struct
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import filelock
import pytest
from helpers import claimed

from pytest_jaxcache.bookkeeping import Bookkeeping
from pytest_jaxcache.entry import Metadata, encode, key_digest
from pytest_jaxcache.keys import file_name
from pytest_jaxcache.layout import TEMPORARY
from pytest_jaxcache.ownership import adopt
from pytest_jaxcache.reasons import EARLIER
from pytest_jaxcache.stats import StoreStats
from pytest_jaxcache.store import Lookup, Policy, Store
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
    directory = adopt(root, readonly=True) if kwargs.get("readonly") else claimed(root)
    store = Store(directory, **kwargs)
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
    assert found.entry is not None and found.refused == "" and found.source == EARLIER
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
    before = snapshot(tmp_path)
    found = store.get(KEY)
    assert found == Lookup(refused="the machine is not known yet: nothing is loaded")
    assert (store.stats.misses, store.stats.hits) == (1, 0)
    assert store.put(KEY, PAYLOAD) is False and store.stats.skipped_writes == 1
    assert store.earlier_entries([KEY], 1e12) == {KEY: []}
    assert snapshot(tmp_path) == before  # no lock taken, no machine recorded


def test_get_marks_use_for_lru(tmp_path: Path) -> None:
    path = write_entry(tmp_path)
    os.utime(path, (1000.0, 1000.0))
    assert open_store(tmp_path).get(KEY).entry is not None
    assert path.stat().st_mtime > 1000.0


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every path under ``root`` (links not followed): mode, mtime and, for regular
    files, contents."""
    found: dict[str, tuple[int, int, bytes | None]] = {}
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        data = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
        found[str(path.relative_to(root))] = (info.st_mode, info.st_mtime_ns, data)
    return found


def test_a_readonly_store_writes_and_touches_nothing(tmp_path: Path) -> None:
    """Read-only: hits served without touching mtimes; corrupt, another key's,
    untrusted and another machine's entries refused and counted but left in place;
    misses claim no lock; writes skipped and counted; no machine record written."""
    good = write_entry(tmp_path)
    os.utime(good, (1000.0, 1000.0))
    write_entry(tmp_path, f"jit_corrupt-{HASH_B}").write_bytes(b"garbage")
    shutil.copyfile(good, entry_path(tmp_path, f"jit_copied-{HASH_B}"))
    write_entry(tmp_path, f"jit_shared-{HASH_B}").chmod(0o666)
    write_entry(tmp_path, f"jit_elsewhere-{HASH_B}", machine=OTHER_MACHINE)
    before = snapshot(tmp_path)

    store = open_store(tmp_path, readonly=True)
    hit = store.get(KEY)
    assert hit.entry is not None and hit.entry.payload == PAYLOAD
    refusals = {
        name: store.get(f"jit_{name}-{HASH_B}").refused
        for name in ("corrupt", "copied", "shared", "elsewhere", "new")
    }
    assert refusals == {
        "corrupt": "not a readable entry (truncated, garbage or an old format)",
        "copied": "written for another key",
        "shared": "its entry file is writable by every user: not loaded",
        "elsewhere": "written on another machine: not loaded",
        "new": "",
    }
    assert store.put(f"jit_new-{HASH_B}", PAYLOAD) is False
    store.release_claims()
    stats = store.stats
    assert (stats.hits, stats.misses) == (1, 5)
    assert (stats.repaired, stats.wrong_key, stats.untrusted, stats.foreign) == (1, 1, 1, 1)
    assert (stats.skipped_writes, stats.writes, stats.write_errors) == (1, 0, 0)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "locks").exists() and not (tmp_path / "machines").exists()


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


def test_an_entry_whose_metadata_cannot_be_parsed_is_corrupt_and_never_raises(
    tmp_path: Path,
) -> None:
    """get() never raises: a file whose head is ours and whose metadata holds a number
    too large for a float (it is parsed before the digest is checked) is a corrupt
    entry like any other, removed and recompiled. Lookups of earlier entries skip it."""
    meta = b'{"written_at": 1' + b"0" * 400 + b"}"
    head = struct.pack(">4sBBxxIQ", b"JXC2", 2, 0, len(meta), 0)
    path = entry_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(head + meta + bytes(32))
    store = open_store(tmp_path)
    assert store.earlier_entries([f"jit_f-{HASH_B}"], before=1e12) == {f"jit_f-{HASH_B}": []}
    found = store.get(KEY)
    assert found.entry is None and found.refused.startswith("not a readable entry")
    assert store.stats.repaired == 1 and not path.exists()


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


@pytest.mark.parametrize(
    "written_with, why",
    [
        (None, "not signed, and a signing key is set"),
        (Signer((b"someone-elses-secret!!",)), "signed with an unknown key, or tampered with"),
    ],
    ids=["unsigned", "another secret"],
)
def test_untrusted_entries_are_not_loaded_and_are_replaced(
    tmp_path: Path, written_with: Signer | None, why: str
) -> None:
    """With a secret set, an unsigned entry or one signed with another secret is counted
    untrusted and left in place; the put after the compile replaces it with one signed
    with this secret."""
    path = write_entry(tmp_path, signer=written_with)
    policy = Policy(signer=Signer((b"a-signing-key-of-16+",)))
    store = open_store(tmp_path, policy=policy)
    found = store.get(KEY)
    assert found.entry is None and found.refused == why
    assert (store.stats.untrusted, store.stats.repaired, store.stats.misses) == (1, 0, 1)
    assert path.read_bytes() == entry_path(tmp_path).read_bytes()  # still there
    assert store.put(KEY, PAYLOAD)
    signed = open_store(tmp_path, policy=policy).get(KEY).entry
    assert signed is not None and signed.signed
    assert open_store(tmp_path).get(KEY).refused == "signed, and no signing key is set to verify it"


@pytest.mark.parametrize("how", ["mode 666", "another owner"])
def test_an_entry_file_others_can_write_is_not_loaded(tmp_path: Path, how: str) -> None:
    path = write_entry(tmp_path)
    if how == "mode 666":
        path.chmod(0o666)
        reason = "writable by every user"
    else:
        os.chown(path, 65534, 65534)
        reason = "owned by"
    written = path.read_bytes()
    store = open_store(tmp_path)
    found = store.get(KEY)
    assert found.entry is None
    assert found.refused.startswith(f"its entry file is {reason}") and found.refused.endswith(
        ": not loaded"
    )
    assert (store.stats.untrusted, store.stats.misses) == (1, 1)
    assert path.read_bytes() == written  # left for the put to replace
    shared = open_store(tmp_path, policy=Policy(others_may_write=True))
    assert shared.get(KEY).entry is not None  # a directory shared on purpose
    store.put(KEY, PAYLOAD)
    assert open_store(tmp_path).get(KEY).entry is not None
    assert path.stat().st_uid == os.geteuid() and path.stat().st_mode & 0o022 == 0


@pytest.mark.parametrize(
    "theirs, why",
    [
        ({**FACTS, "cpu features": "bbbbbbbbbbbb"}, "written on another CPU"),
        ({**FACTS, "jaxlib": "0.10.1"}, "written under jaxlib 0.10.1 (this is 0.10.2)"),
        ({**FACTS, "backend cpu": "2"}, "written for another backend platform version"),
        (None, "written on another machine"),
    ],
    ids=["cpu", "jaxlib", "backend", "no record"],
)
def test_a_key_only_another_machine_holds_is_explained_and_kept(
    tmp_path: Path, theirs: dict[str, str] | None, why: str
) -> None:
    """A key present only in another machine's namespace: not loaded, counted foreign,
    and the miss says how that machine differs (from machines/<namespace>.json); the
    put writes this machine's entry beside it, and theirs is untouched."""
    other = write_entry(tmp_path, machine=OTHER_MACHINE)
    written = other.read_bytes()
    if theirs is not None:
        Bookkeeping(claimed(tmp_path)).save_machine(OTHER_MACHINE, theirs)
    store = open_store(tmp_path)
    found = store.get(KEY)
    assert found.entry is None and found.refused == f"{why}: not loaded"
    assert (store.stats.foreign, store.stats.misses) == (1, 1)
    assert store.put(KEY, PAYLOAD)
    assert other.read_bytes() == written and entry_path(tmp_path).is_file()
    assert open_store(tmp_path).get(KEY).entry is not None


def test_an_entry_that_says_another_machine_is_refused_in_this_namespace(tmp_path: Path) -> None:
    path = entry_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(encode(KEY, PAYLOAD, Metadata(machine=OTHER_MACHINE)))
    store = open_store(tmp_path)
    assert store.get(KEY).refused == "written on another machine"
    assert store.stats.foreign == 1


def get_in_a_thread(store: Store, key: str) -> Lookup:
    """``store.get(key)``, failing (rather than hanging the suite) if it never returns:
    a lookup that opened a FIFO for reading would block until someone writes to it."""
    box: dict[str, Lookup] = {}
    thread = threading.Thread(target=lambda: box.update(found=store.get(key)), daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), "the lookup blocked"
    return box["found"]


@pytest.mark.parametrize(
    "kind, described, replaced",
    [
        ("link", "a symbolic link", True),
        ("self-link", "a symbolic link", True),
        ("fifo", "a FIFO", True),
        ("directory", "a directory", False),
    ],
)
def test_an_odd_file_named_like_an_entry_is_skipped(
    tmp_path: Path, kind: str, described: str, replaced: bool
) -> None:
    """A link (to a valid entry outside the cache), a link to itself, a FIFO or a
    directory where an entry should be: never followed, never opened blocking, never
    loaded; counted. The link's target is untouched; the next put replaces the odd file
    with an entry (a directory it cannot replace: that write fails and is counted)."""
    outside = tmp_path / "outside.entry"
    valid = encode(KEY, PAYLOAD, Metadata(machine=MACHINE))
    outside.write_bytes(valid)
    cache = tmp_path / "cache"
    store = open_store(cache)
    path = entry_path(cache)
    path.parent.mkdir(parents=True)
    if kind == "link":
        path.symlink_to(outside)
    elif kind == "self-link":
        path.symlink_to(path.name)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    found = get_in_a_thread(store, KEY)
    assert found.entry is None
    assert found.refused == f"its entry is {described}, not a regular file"
    assert (store.stats.odd_files, store.stats.misses, store.stats.hits) == (1, 1, 0)
    assert store.put(KEY, PAYLOAD) is replaced
    assert store.stats.write_errors == int(not replaced)
    assert stat.S_ISREG(path.lstat().st_mode) is replaced
    assert outside.read_bytes() == valid
    assert (get_in_a_thread(open_store(cache), KEY).entry is not None) is replaced


def _large_entry_file(root: Path, *, whole: bool) -> bytes:
    """A valid entry of 4 MiB of random bytes (as large on disk: incompressible) at its
    place, written whole or as its first 4 KiB over holes of the right size."""
    payload = os.urandom(4 * 2**20)
    valid = encode(KEY, payload, Metadata(machine=MACHINE))
    path = entry_path(root)
    path.parent.mkdir(parents=True)
    with open(path, "wb") as handle:
        handle.write(valid if whole else valid[:4096])
        handle.truncate(len(valid))
    return payload


def test_an_entry_whose_head_is_right_but_whose_bytes_are_holes_is_never_read(
    tmp_path: Path,
) -> None:
    """A file with a valid entry's first bytes and size, but holes where the rest should
    be (a forged header over a sparse file): refused by what is on disk before it is
    read, counted as an odd file."""
    store = open_store(tmp_path)
    _large_entry_file(tmp_path, whole=False)
    found = store.get(KEY)
    assert found.entry is None and "a sparse file" in found.refused, found
    assert (store.stats.odd_files, store.stats.misses) == (1, 1)


def test_a_large_entry_written_whole_loads(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    payload = _large_entry_file(tmp_path, whole=True)
    found = store.get(KEY)
    assert found.entry is not None and found.entry.payload == payload
    assert (store.stats.odd_files, store.stats.hits) == (0, 1)


def test_a_namespace_directory_that_is_a_link_loads_nothing(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "cache" / "entries").mkdir(parents=True)
    (tmp_path / "cache" / "entries" / MACHINE).symlink_to(outside)
    store = open_store(tmp_path / "cache")
    assert store.machine == "" and store.stats.odd_files == 1
    assert store.put(KEY, PAYLOAD) is False
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    "break_it, reason",
    [
        ("tmp removed", ".tmp'"),
        ("tmp is a file", "a regular file, not a directory: 'tmp'"),
        ("tmp is a link out", "a symbolic link, not a directory: 'tmp'"),
        ("entries is a file", "a regular file, not a directory: 'entries'"),
        ("namespace is a file", f"a regular file, not a directory: 'entries/{MACHINE}'"),
    ],
)
def test_a_failed_write_is_counted_never_raised(tmp_path: Path, break_it: str, reason: str) -> None:
    """An OSError while writing is counted and noted; put() returns False, leaves no
    temporary file, writes nothing outside the cache, and still releases the key's
    lock."""
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    outside.mkdir()
    claimed(cache).close()
    if break_it == "tmp is a file":  # before the store opens its tmp/
        shutil.rmtree(cache / "tmp")
        (cache / "tmp").write_bytes(b"not a directory")
    elif break_it == "tmp is a link out":
        shutil.rmtree(cache / "tmp")
        (cache / "tmp").symlink_to(outside)
    store = open_store(cache)
    if break_it == "tmp removed":  # under a store that has written before
        assert store.put(f"jit_other-{HASH_B}", PAYLOAD)
    assert store.get(KEY).entry is None  # claims the key
    if break_it == "tmp removed":
        shutil.rmtree(cache / "tmp")
    elif break_it == "entries is a file":
        (cache / "entries").write_bytes(b"not a directory")
    elif break_it == "namespace is a file":
        (cache / "entries").mkdir()
        (cache / "entries" / MACHINE).write_bytes(b"not a directory")
    assert store.put(KEY, PAYLOAD, 1.0) is False
    assert store.stats.write_errors == 1
    assert store.stats.writes == int(break_it == "tmp removed")  # the other key's
    written = [m for m in store.stats.errors if m.startswith(f"write {KEY}: ")]
    assert len(written) == 1 and written[0].endswith(reason), store.stats.errors
    assert lock_is_free(lock_path(cache))
    assert not entry_path(cache).exists()
    assert list(outside.iterdir()) == []
    assert [p.name for p in cache.rglob("*") if TEMPORARY.fullmatch(p.name)] == []


def test_a_locks_directory_that_is_a_link_out_is_never_used(tmp_path: Path) -> None:
    """Without a lock of its own, a lookup still misses and the put still writes; no
    lock or marker is made in the link's target."""
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    outside.mkdir()
    cache.mkdir()
    (cache / "locks").symlink_to(outside)
    store = open_store(cache)
    assert store.get(KEY).entry is None and store.stats.misses == 1
    store.release_claims()
    assert store.get(KEY).entry is None
    assert store.put(KEY, PAYLOAD) is True
    assert open_store(cache).get(KEY).entry is not None
    assert list(outside.iterdir()) == []
    assert [m for m in store.stats.errors if m.startswith(f"lock {KEY}: ")] != []


def test_stats_sum_and_notes_are_bounded() -> None:
    stats = StoreStats(hits=2, wait_secs=0.5)
    stats.note("same")
    stats.note("same")
    assert stats.errors == ["same"]
    stats.add(StoreStats(hits=3, foreign=1, wait_secs=0.25, errors=["same", "other"]))
    assert (stats.hits, stats.foreign, stats.wait_secs) == (5, 1, 0.75)
    assert stats.errors == ["same", "other"]
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
    """The entries of the same program written before a time, newest first, on any
    machine; the key's own entry, other programs, later and broken entries left out."""
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
    assert [(m.key_digest, m.machine) for m in found] == [
        (key_digest(f"jit_f-{HASH_C}"), MACHINE),
        (key_digest(f"jit_f-{HASH_B}"), MACHINE),
        (key_digest(f"jit_f-{'f' * 64}"), OTHER_MACHINE),
    ]
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
