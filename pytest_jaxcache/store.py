"""The local store: maps JAX's cache keys to entries in a directory shared by any number
of processes, with atomic writes, verification and single flight. Knows nothing of
pytest or JAX, and of a remote tier only that a second tier may sit behind it
(:class:`SecondTier`). Its files (see :mod:`pytest_jaxcache.layout`)::

    entries/<machine>/<entry>  one entry per compiled program (see entry.py), in the
                               namespace of the machine that wrote it (environment.py)
    tmp/                       entries being written; renamed into entries/
    locks/<entry>.lock         per-key single-flight locks (filelock)
    locks/<entry>.nocache      "the last compile of this key wrote nothing: don't wait"

Correctness rests on the rename: an entry is either absent or whole. Locks only order
work: one process compiles a key while the others wait (bounded) for its entry. Reads
mark use for LRU by touching the entry's mtime; there is no directory-wide lock. An
entry is loaded only when it verifies (entry.py) and nobody but us and root could have
written it (trust.py); anything else is counted, reported, and replaced by a compile.
Reads are bounded: a file larger than the entry limit, or whose head does not account
for its size exactly, is refused before it is read.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pytest_jaxcache import entry, keys, trust
from pytest_jaxcache.bookkeeping import Bookkeeping
from pytest_jaxcache.cachedir import CacheDir, OddFile
from pytest_jaxcache.entry import Entry, Metadata, Refused
from pytest_jaxcache.environment import machine_difference
from pytest_jaxcache.layout import (
    ENTRIES,
    LOCKS,
    LOWERED,
    LOWERING_KEY,
    NAMESPACE,
    PREFETCH_LOCK,
    TMP,
    is_entry_name,
    lock_name,
    marker_name,
    namespace_dir,
    temporary_name,
)
from pytest_jaxcache.reasons import EARLIER, REMOTE, THIS_SESSION
from pytest_jaxcache.stats import StoreStats
from pytest_jaxcache.trust import Signer

if TYPE_CHECKING:
    import filelock


def why_not(error: OSError) -> str:
    """An OSError in a few words, with the file it names ("disk full" for a full disk)."""
    if error.errno == errno.ENOSPC:
        return "disk full"
    if error.filename is not None:
        return f"{error.strerror or error}: {error.filename!r}"
    return error.strerror or str(error)


@dataclass(frozen=True)
class Lookup:
    """What a lookup found: an entry to load, or why there is none to load."""

    entry: Entry | None = None
    refused: str = ""  # why an entry that exists for the key was not loaded
    waited_secs: float = 0.0  # spent waiting for another process's compile
    source: str = ""  # where a hit's entry came from: EARLIER, THIS_SESSION or REMOTE


@dataclass(frozen=True)
class Policy:
    """What this session trusts."""

    signer: Signer = field(default_factory=Signer)
    load_unverified: bool = False  # signed entries load without a key to check them
    others_may_write: bool = False  # a deliberately shared directory (or signed entries)


class SecondTier(Protocol):
    """A tier behind the local store (the remote tier): asked on a local miss, given
    what the store writes. It never raises and never blocks for long."""

    @property
    def on(self) -> bool: ...

    def fetch(self, machine: str, name: str, check: Callable[[bytes, int], str]) -> bytes | None:
        """The tier's bytes for entry ``name`` (unverified), or ``None``; ``check`` may
        refuse a large object by its first bytes, before the rest is fetched."""

    def fetched(self, name: str, *, accepted: bool) -> None:
        """Whether the bytes :meth:`fetch` gave for ``name`` verified."""

    def upload_later(self, machine: str, name: str, data: bytes, *, replace: bool) -> None:
        """Keep ``data`` as entry ``name`` too, in the background."""


class _BadHead(Refused):
    """An entry file refused by its head, before it was read whole."""

    def __init__(self, reason: str, inode: int) -> None:
        super().__init__(entry.CORRUPT, reason)
        self.inode = inode


class Store:
    """A directory of entries shared by any number of processes."""

    def __init__(
        self,
        directory: CacheDir,
        *,
        readonly: bool = False,
        lock_timeout_secs: float = 120.0,
        policy: Policy | None = None,
        max_entry_bytes: int = entry.MAX_ENTRY_BYTES,
    ) -> None:
        self.directory = directory
        self.readonly = readonly
        self.lock_timeout_secs = lock_timeout_secs
        self.policy = policy or Policy()
        self.max_entry_bytes = max_entry_bytes
        self.stats = StoreStats()
        self.machine = ""  # this process's namespace; set by bind()
        self.machine_facts: dict[str, str] = {}
        self.session = ""  # the id of this session's fingerprint, stamped on entries
        self.session_started = math.inf  # entries written since are this session's (set by it)
        # When an entry is written: the wall clock, shared by every process of a session
        # (tests give a store a clock of its own to order writes without waiting on time).
        self.clock: Callable[[], float] = time.time
        self.second: SecondTier | None = None  # the tier behind this one, if any
        self.single_flight = True  # off when nothing would release a claim
        self.verified: set[str] = set()  # entries this process verified (hits, writes, kept)
        self._claims = threading.local()

    @property
    def root(self) -> Path:
        return self.directory.root

    def writable(self) -> bool:
        """Whether files can be created here (a filled cache on a read-only mount, or
        another user's, opens fine and creates nothing until its first write)."""
        probe = temporary_name("probe", os.getpid(), f"{threading.get_ident() & 0xFFFFFFFF:08x}")
        try:
            self.directory.create_empty(TMP, probe)
            self.directory.unlink(TMP, probe)
        except OSError:
            return False
        return True

    def bind(self, machine: str, facts: Mapping[str, str], session: str) -> None:
        """Entries from now on are read from and written to ``machine``'s namespace."""
        try:  # this machine's namespace must be a real directory of ours, if it exists
            self.directory.fd(namespace_dir(machine))
        except FileNotFoundError:
            pass
        except OSError as error:
            self.stats.odd_files += 1
            self.stats.note(f"{namespace_dir(machine)} is {error.strerror}: nothing is loaded")
            return
        self.machine, self.machine_facts, self.session = machine, dict(facts), session
        if not self.readonly:
            try:
                Bookkeeping(self.directory).save_machine(machine, self.machine_facts)
            except OSError as error:
                self.stats.note(f"machine record: {why_not(error)}")

    def _sub(self, machine: str | None = None) -> str:
        return namespace_dir(machine or self.machine)

    # -- reads -------------------------------------------------------------------------

    def get(self, key: str) -> Lookup:
        """What the cache holds for ``key``. Never raises.

        On a miss in read-write mode the caller becomes the key's compiler: it holds the
        key's lock until :meth:`put` or :meth:`release_claims`. If another process holds
        the lock, wait (bounded) for its entry first.
        """
        if not self.machine:
            self.stats.misses += 1
            return Lookup(refused="the machine is not known yet: nothing is loaded")
        name = keys.file_name(key)
        found = self._read(key, name)
        # A key whose last compile wrote nothing (host callbacks): nobody waits, nothing
        # is fetched.
        cachable = found.entry is not None or not self._uncachable(name)
        if found.entry is None and not self.readonly and cachable and self.single_flight:
            found = self._claim(key, name, found)
        second = self.second
        if found.entry is None and cachable and second is not None and second.on:
            found = self._from_second_tier(second, key, name, found)  # the claim is ours
        if found.entry is not None:
            self.stats.hits += 1
            self.verified.add(name)
            return found
        self.stats.misses += 1
        if not found.refused:
            found = Lookup(None, self._elsewhere(name), found.waited_secs)
        return found

    def _from_second_tier(self, second: SecondTier, key: str, name: str, local: Lookup) -> Lookup:
        """Read-through: the second tier's entry for ``key``, verified as a local one
        is, and written locally (atomically) before it is served."""
        data = second.fetch(self.machine, name, entry.check_head)
        if data is None:
            return local
        try:
            found = self._verify(key, data)
        except Refused as refusal:
            second.fetched(name, accepted=False)
            return Lookup(None, f"the remote's entry: {refusal.reason}", local.waited_secs)
        second.fetched(name, accepted=True)
        found, data = self._signed_anew(key, found, data)
        if not self.readonly:
            try:
                self.directory.write_atomic(self._sub(), name, data)
            except OSError as error:
                self.stats.note(f"keep {name} from the remote: {why_not(error)}")
        return Lookup(found, waited_secs=local.waited_secs, source=REMOTE)

    @staticmethod
    def _head_check(head: bytes, info: os.stat_result) -> None:
        """Refuse a file whose head does not account for its size exactly (a sparse or
        padded file, garbage) before the rest of it is read."""
        reason = entry.check_head(head, info.st_size)
        if reason:
            raise _BadHead(reason, info.st_ino)

    def _read(self, key: str, name: str, *, again: bool = False) -> Lookup:
        """This key's entry, if it may be loaded. ``again``: a second look in the same
        lookup (under the key's lock), whose refusals were counted the first time."""
        sub = self._sub()
        try:
            data, info = self.directory.read(
                sub, name, limit=self.max_entry_bytes, check=self._head_check
            )
        except FileNotFoundError:
            return Lookup()
        except _BadHead as refusal:
            if not again:
                self._refused(sub, name, refusal.inode, refusal)
            return Lookup(refused=refusal.reason)
        except OddFile as error:
            self.stats.odd_files += not again
            self.stats.note(f"{name} is {error.strerror}: not read")
            return Lookup(refused=f"its entry is {error.strerror}")
        except OSError as error:
            self.stats.odd_files += not again
            self.stats.note(f"read {name}: {why_not(error)}")
            return Lookup(refused=f"its entry cannot be read ({why_not(error)})")
        if not self.policy.others_may_write:
            writer = trust.other_writers(info)
            if writer is not None:
                self.stats.untrusted += not again
                return Lookup(refused=f"its entry file is {writer}: not loaded")
        try:
            found = self._verify(key, data)
        except Refused as refusal:
            if not again:
                self._refused(sub, name, info.st_ino, refusal)
            return Lookup(refused=refusal.reason)
        found, data = self._signed_anew(key, found, data)
        if not self.readonly:
            with contextlib.suppress(OSError):  # evicted meanwhile: we hold its bytes
                self.directory.touch(sub, name)
        source = THIS_SESSION if found.metadata.written_at >= self.session_started else EARLIER
        return Lookup(found, source=source)

    def _verify(self, key: str, data: bytes) -> Entry:
        """The entry in ``data`` if this session may load it (:class:`Refused` if not)."""
        return entry.decode(
            key,
            data,
            signer=self.policy.signer,
            machine=self.machine,
            load_unverified=self.policy.load_unverified,
        )

    def _signed_anew(self, key: str, found: Entry, data: bytes) -> tuple[Entry, bytes]:
        """An entry that verified with an old signing key, signed with the current one
        and written back (and to the second tier), so that dropping the old key later
        does not turn the cache cold."""
        signer = self.policy.signer
        if not (signer.signs and found.signed) or found.metadata.signer == signer.signing_key_id:
            return found, data
        if self.readonly:
            return found, data
        name = keys.file_name(key)
        fresh = entry.encode(key, found.payload, found.metadata, signer)
        try:
            self.directory.write_atomic(self._sub(), name, fresh)
        except OSError as error:
            self.stats.note(f"re-sign {name}: {why_not(error)}")
            return found, data
        self.stats.resigned += 1
        if self.second is not None:
            self.second.upload_later(self.machine, name, fresh, replace=True)
        return self._verify(key, fresh), fresh

    def _refused(self, sub: str, name: str, inode: int | None, refusal: Refused) -> None:
        """Count a refused entry; remove it when it can never be of use (corrupt, or
        another key's), so that the next compile rewrites it. An untrusted entry is
        left for the write that replaces it."""
        if refusal.category == entry.CORRUPT:
            self.stats.repaired += 1
        elif refusal.category == entry.WRONG_KEY:
            self.stats.wrong_key += 1
        elif refusal.category == entry.FOREIGN:
            self.stats.foreign += 1
        else:
            self.stats.untrusted += 1
        if self.readonly or refusal.category not in (entry.CORRUPT, entry.WRONG_KEY):
            return
        try:  # unless another process has already replaced it (a different inode)
            self.directory.unlink(sub, name, inode=inode)
        except OSError as error:
            self.stats.note(f"remove refused {name}: {why_not(error)}")

    def _elsewhere(self, name: str) -> str:
        """Why this key's entry of another machine was not loaded ("" when none)."""
        for machine in self.namespaces():
            if machine != self.machine and self.directory.exists(self._sub(machine), name):
                self.stats.foreign += 1
                facts = Bookkeeping(self.directory).load_machine(machine)
                if facts is None:
                    return "written on another machine: not loaded"
                return f"{machine_difference(facts, self.machine_facts)}: not loaded"
        return ""

    def namespaces(self) -> Iterator[str]:
        """The machine namespaces that hold entries."""
        try:
            for name, _ in self.directory.scan(ENTRIES):
                if NAMESPACE.fullmatch(name):
                    yield name
        except OSError:
            return

    # -- what a second tier hands over (prefetch) ---------------------------------------

    @staticmethod
    def check_head(head: bytes, size: int) -> str:
        """Why a file of ``size`` bytes starting with ``head`` cannot be an entry."""
        return entry.check_head(head, size)

    def holds(self, name: str) -> bool:
        """Whether this machine's namespace has an entry file called ``name``."""
        return is_entry_name(name) and self.directory.exists(self._sub(), name)

    def keep(self, name: str, data: bytes) -> bool:
        """Keep ``data`` as entry ``name`` if it verifies for the key the name holds;
        returns whether it did. ``name`` comes from outside: it must be an entry name."""
        if self.readonly or not self.machine or not is_entry_name(name):
            return False
        if len(data) > self.max_entry_bytes:
            return False
        try:  # an entry's file name is its key (keys.file_name keeps JAX's keys whole)
            found = self._verify(name, data)
        except Refused:
            return False
        _, data = self._signed_anew(name, found, data)
        try:
            self.directory.write_atomic(self._sub(), name, data)
        except OSError as error:
            self.stats.note(f"keep {name}: {why_not(error)}")
            return False
        self.verified.add(name)
        return True

    @contextlib.contextmanager
    def prefetching(self, wait_secs: float) -> Iterator[bool]:
        """Held while one process of this machine prefetches; yields whether this
        process got to (``False``: it waited too long, or cannot lock)."""
        import filelock

        try:
            lock = self.directory.file_lock(LOCKS, PREFETCH_LOCK, timeout=wait_secs)
            lock.acquire()
        except (filelock.Timeout, OSError) as error:
            self.stats.note(f"prefetch: {error}")
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    # -- single flight -----------------------------------------------------------------

    def _uncachable(self, name: str) -> bool:
        """The last compile of this key wrote nothing: nobody waits for an entry."""
        return self.directory.exists(LOCKS, marker_name(name))

    def _held(self) -> dict[str, filelock.BaseFileLock]:
        held: dict[str, filelock.BaseFileLock] | None = getattr(self._claims, "held", None)
        if held is None:
            held = self._claims.held = {}
        return held

    def _claim(self, key: str, name: str, first: Lookup) -> Lookup:
        if key in self._held():
            return first  # ours already: a second lookup in the same compile (PGLE)
        import filelock  # imported on the first miss: a warm run never needs it

        waited = 0.0
        try:
            lock = self.directory.file_lock(LOCKS, lock_name(name), timeout=0)
            try:
                lock.acquire()
            except filelock.Timeout:
                self.stats.lock_waits += 1
                started = time.perf_counter()
                try:
                    lock.acquire(timeout=self.lock_timeout_secs)
                except filelock.Timeout:
                    self.stats.lock_timeouts += 1
                    return first  # compile without the lock rather than wait for ever
                finally:
                    waited = time.perf_counter() - started
                    self.stats.wait_secs += waited
        except OSError as error:
            self.stats.note(f"lock {name}: {why_not(error)}")
            return first
        # Read again under the lock: the holder we waited for, or one that finished
        # between our first read and the lock, has written the entry.
        found = self._read(key, name, again=True)
        if found.entry is not None:
            lock.release()
            self.stats.waited_hits += waited > 0
            return Lookup(found.entry, waited_secs=waited, source=found.source)
        self._held()[key] = lock
        return Lookup(None, found.refused or first.refused, waited)

    def release_claims(self, *, compiled: bool = True) -> None:
        """Release the locks this thread still holds: their programs were not written.
        When the compile itself succeeded (host callbacks, thresholds), leave a marker so
        that other processes compile such a key at once instead of waiting for an entry;
        a compile that raised says nothing about the key."""
        held = self._held()
        while held:
            key, lock = held.popitem()
            if compiled:
                with contextlib.suppress(OSError):
                    self.directory.create_empty(LOCKS, marker_name(keys.file_name(key)))
            try:
                lock.release()
            except OSError as error:  # runs inside the user's compile: count, never raise
                self.stats.note(f"release the lock of {keys.file_name(key)}: {why_not(error)}")

    # -- the lowering tier's modules ---------------------------------------------------

    def get_lowered(self, key: str) -> bytes | None:
        """The payload of the lowered module stored under lowering key ``key`` (64 hex
        digits), verified as any entry, read through the second tier; ``None`` when there
        is none. No single flight (lowering is cheap), nothing counted in the store's
        hits and misses (the tier counts its own). Never raises."""
        if not self.machine or not LOWERING_KEY.fullmatch(key):
            return None
        entry_key = f"{LOWERED}-{key}"
        name = keys.file_name(entry_key)
        found = self._read(entry_key, name)
        second = self.second
        if found.entry is None and second is not None and second.on:
            found = self._from_second_tier(second, entry_key, name, found)
        if found.entry is None:
            return None
        self.verified.add(name)
        return found.entry.payload

    def put_lowered(self, key: str, data: bytes, lower_secs: float) -> bool:
        """Store a lowered module's payload under lowering key ``key`` (overwriting);
        never raises; returns whether it was written."""
        if self.readonly or not LOWERING_KEY.fullmatch(key):
            return False
        return self.put(f"{LOWERED}-{key}", data, compile_secs=lower_secs, counted=False)

    # -- writes ------------------------------------------------------------------------

    def put(
        self,
        key: str,
        payload: bytes,
        compile_secs: float | None = None,
        parts: Mapping[str, str] | None = None,
        facts: Mapping[str, str] | None = None,
        *,
        counted: bool = True,
    ) -> bool:
        """Store ``payload`` atomically. Never raises; returns whether it was written.
        ``parts`` are the digests of the key's parts, ``facts`` what else explains a
        later miss (the program's input types, its module's structure). ``counted``:
        whether the write is one of the store's (an executable), or the lowering tier's
        (which counts its own)."""
        name = keys.file_name(key)
        try:
            if self.readonly or not self.machine:
                self.stats.skipped_writes += 1
                return False
            metadata = Metadata(
                compile_secs=compile_secs,
                written_at=self.clock(),
                machine=self.machine,
                session=self.session,
                parts=dict(parts or {}),
                facts=dict(facts or {}),
            )
            data = entry.encode(key, payload, metadata, self.policy.signer)
            if len(data) > self.max_entry_bytes:
                self.stats.skipped_writes += 1
                self.stats.note(f"write {name}: {len(data)} bytes, over the entry limit")
                return False
            try:
                self.directory.write_atomic(self._sub(), name, data)
            except OSError as error:
                self.stats.write_errors += 1
                self.stats.note(f"write {name}: {why_not(error)}")
                return False
            if counted:
                self.stats.writes += 1
                self.stats.bytes_written += len(data)
            self.verified.add(name)
            if self.second is not None:
                self.second.upload_later(self.machine, name, data, replace=False)
            with contextlib.suppress(OSError):  # the key is cachable after all
                self.directory.unlink(LOCKS, marker_name(name))
            return True
        finally:
            lock = self._held().pop(key, None)
            if lock is not None:
                lock.release()

    # -- what the entries say about themselves ------------------------------------------

    def earlier_entries(self, wanted: Iterable[str], before: float) -> dict[str, list[Metadata]]:
        """For each key, the entries of the same program (on any machine) written before
        ``before``, newest first (this machine's first among equals), the key's own
        entry left out. One pass over the directory for all keys (a jaxlib upgrade
        misses every key: one scan each would be quadratic)."""
        names = {key: keys.file_name(key) for key in wanted}
        if not self.machine:
            return {key: [] for key in names}
        by_program: dict[str, list[tuple[str, Metadata]]] = {
            keys.program_name(name): [] for name in names.values()
        }
        for machine in self.namespaces():
            sub = self._sub(machine)
            try:
                found = [name for name, _ in self.directory.scan(sub)]
            except OSError:
                continue
            for name in found:
                same = by_program.get(keys.program_name(name))
                if same is None or not is_entry_name(name):
                    continue
                metadata = entry.read_metadata(self.directory, sub, name)
                if metadata is not None and metadata.written_at < before:
                    same.append((name, metadata))
        result: dict[str, list[Metadata]] = {}
        for key, name in names.items():
            others = [
                metadata
                for other, metadata in by_program[keys.program_name(name)]
                if not (other == name and metadata.machine == self.machine)
            ]
            result[key] = sorted(others, key=self._newest_here_first, reverse=True)
        return result

    def _newest_here_first(self, metadata: Metadata) -> tuple[float, bool]:
        return metadata.written_at, metadata.machine == self.machine
