"""The local store: maps JAX's cache keys to entries in a directory shared by any number
of processes, with atomic writes, verification and single flight. Knows nothing of
pytest or JAX. Layout (see also :mod:`pytest_jaxcache.maintenance`,
:mod:`pytest_jaxcache.bookkeeping` and :mod:`pytest_jaxcache.ownership`)::

    <root>/
      entries/<machine>/<file>   one entry per compiled program (see entry.py), in the
                                 namespace of the machine that wrote it (trust.py)
      tmp/                       entries being written; renamed into entries/
      locks/<file>.lock          per-key single-flight locks (filelock)
      locks/<file>.nocache       "the last compile of this key wrote nothing: don't wait"

Correctness rests on the rename: an entry is either absent or whole. Locks only order
work: one process compiles a key while the others wait (bounded) for its entry. Reads
mark use for LRU by touching the entry's mtime; there is no directory-wide lock. An
entry is loaded only when it verifies (entry.py) and nobody but us and root could have
written it (trust.py); anything else is counted, reported, and replaced by a compile.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_jaxcache import entry, keys, trust
from pytest_jaxcache.bookkeeping import Bookkeeping
from pytest_jaxcache.cachedir import TMP, CacheDir, OddFile
from pytest_jaxcache.entry import Entry, Metadata, Refused
from pytest_jaxcache.remote import Remote
from pytest_jaxcache.tally import MAX_MESSAGES, Tally
from pytest_jaxcache.trust import Signer

if TYPE_CHECKING:
    import filelock

ENTRIES = "entries"
LOCKS = "locks"
NAMESPACE = re.compile(r"[0-9a-f]{16}")


@dataclass
class StoreStats(Tally):
    """What one process's store did; summed over processes with :meth:`Tally.add`."""

    hits: int = 0
    misses: int = 0
    writes: int = 0
    bytes_written: int = 0
    repaired: int = 0  # corrupt entries found (and removed, unless read-only)
    wrong_key: int = 0  # entries of another key under this key's name
    untrusted: int = 0  # unsigned, badly signed, or writable by others: not loaded
    foreign: int = 0  # this key's entry exists for another machine only: not loaded
    odd_files: int = 0  # unreadable files, links, FIFOs... where an entry should be
    write_errors: int = 0
    skipped_writes: int = 0  # read-only mode
    lock_waits: int = 0  # waited for another process compiling the same key...
    waited_hits: int = 0  # ...and then read its entry instead of compiling
    lock_timeouts: int = 0
    wait_secs: float = 0.0  # time spent waiting for other processes' compiles
    errors: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        if len(self.errors) < MAX_MESSAGES and message not in self.errors:
            self.errors.append(message)


@dataclass(frozen=True)
class Lookup:
    """What a lookup found: an entry to load, or why there is none to load."""

    entry: Entry | None = None
    refused: str = ""  # why an entry that exists for the key was not loaded
    waited_secs: float = 0.0  # spent waiting for another process's compile
    remote: bool = False  # the entry came from the remote tier


@dataclass(frozen=True)
class Policy:
    """What this session trusts."""

    signer: Signer = field(default_factory=Signer)
    load_unverified: bool = False  # signed entries load without a key to check them
    others_may_write: bool = False  # a deliberately shared directory (or signed entries)


class Store:
    """A directory of entries shared by any number of processes."""

    def __init__(
        self,
        directory: CacheDir,
        *,
        readonly: bool = False,
        lock_timeout_secs: float = 120.0,
        policy: Policy | None = None,
    ) -> None:
        self.directory = directory
        self.readonly = readonly
        self.lock_timeout_secs = lock_timeout_secs
        self.policy = policy or Policy()
        self.stats = StoreStats()
        self.machine = ""  # this process's namespace; set by bind()
        self.machine_facts: dict[str, str] = {}
        self.session = ""  # the id of this session's fingerprint, stamped on entries
        self.remote: Remote | None = None  # the tier behind this one, if any
        self.prefetched: set[str] = set()  # entries this process downloaded ahead
        self._bad_remote: set[str] = set()  # the remote holds a refused entry of these
        self._claims = threading.local()

    @property
    def root(self) -> Path:
        return self.directory.root

    def writable(self) -> bool:
        """Whether files can be created here (a filled cache on a read-only mount, or
        another user's, opens fine and creates nothing until its first write)."""
        probe = f".probe-{os.getpid()}-{threading.get_ident()}"
        try:
            self.directory.create_empty(TMP, probe)
            self.directory.unlink(TMP, probe)
        except OSError:
            return False
        return True

    def bind(self, machine: str, facts: Mapping[str, str], session: str) -> None:
        """Entries from now on are read from and written to ``machine``'s namespace."""
        try:  # this machine's namespace must be a real directory of ours, if it exists
            self.directory.fd(self._sub(machine))
        except FileNotFoundError:
            pass
        except OSError as error:
            self.stats.odd_files += 1
            self.stats.note(f"{self._sub(machine)} is {error.strerror}: nothing is loaded")
            return
        self.machine, self.machine_facts, self.session = machine, dict(facts), session
        if not self.readonly:
            try:
                Bookkeeping(self.directory).save_machine(machine, self.machine_facts)
            except OSError as error:
                self.stats.note(f"machine record: {error}")

    def _sub(self, machine: str | None = None) -> str:
        return f"{ENTRIES}/{machine or self.machine}"

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
        if found.entry is None and not self.readonly and cachable:
            found = self._claim(key, name, found)
        if found.entry is None and cachable and self.remote is not None and self.remote.on:
            found = self._from_remote(key, name, found)  # the claim (if any) is ours
        if found.entry is not None:
            self.stats.hits += 1
            return found
        self.stats.misses += 1
        if not found.refused:
            found = Lookup(None, self._elsewhere(name), found.waited_secs)
        return found

    def _from_remote(self, key: str, name: str, local: Lookup) -> Lookup:
        """Read-through: the remote's entry for ``key``, verified as a local one is, and
        written locally (atomically) before it is served."""
        assert self.remote is not None
        data = self.remote.get(self.machine, name)
        if data is None:
            return local
        try:
            found = self._verify(key, data)
        except Refused as refusal:
            self.remote.stats.refused += 1
            self._bad_remote.add(name)
            return Lookup(None, f"the remote's entry: {refusal.reason}", local.waited_secs)
        self.remote.stats.hits += 1
        if not self.readonly:
            try:
                self.directory.write_atomic(self._sub(), name, data)
            except OSError as error:
                self.stats.note(f"keep {name} from the remote: {error}")
        return Lookup(found, waited_secs=local.waited_secs, remote=True)

    def prefetch(self, names: Iterable[str], wait_secs: float) -> None:
        """Download, in one bulk transfer, the entries of ``names`` this machine does not
        hold yet; one process of the machine does it while the others wait for it."""
        if self.remote is None or not self.remote.on or self.readonly:
            return
        import filelock

        lock = filelock.FileLock(str(self.directory.path(LOCKS, "prefetch.lock")))
        try:
            self.directory.fd(LOCKS, create=True)
            with lock.acquire(timeout=wait_secs):
                missing = [n for n in names if not self.directory.exists(self._sub(), n)]
                for name, data in self.remote.get_many(self.machine, missing).items():
                    self._keep_prefetched(name, data)
        except (filelock.Timeout, OSError) as error:
            self.stats.note(f"prefetch: {error}")

    def _keep_prefetched(self, name: str, data: bytes) -> None:
        assert self.remote is not None
        try:  # an entry's file name is its key (keys.file_name keeps JAX's keys whole)
            self._verify(name, data)
            self.directory.write_atomic(self._sub(), name, data)
        except Refused:
            self.remote.stats.refused += 1
            self._bad_remote.add(name)
            return
        except OSError as error:
            self.stats.note(f"prefetch {name}: {error}")
            return
        self.remote.stats.prefetched += 1
        self.prefetched.add(name)

    def _read(self, key: str, name: str, *, again: bool = False) -> Lookup:
        """This key's entry, if it may be loaded. ``again``: a second look in the same
        lookup (under the key's lock), whose refusals were counted the first time."""
        sub = self._sub()
        try:
            data, info = self.directory.read(sub, name)
        except FileNotFoundError:
            return Lookup()
        except OddFile as error:
            self.stats.odd_files += not again
            self.stats.note(f"{name} is {error.strerror}: not read")
            return Lookup(refused=f"its entry is {error.strerror}")
        except OSError as error:
            self.stats.odd_files += not again
            self.stats.note(f"read {name}: {error.strerror or error}")
            return Lookup(refused=f"its entry cannot be read ({error.strerror or error})")
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
        if not self.readonly:
            with contextlib.suppress(OSError):  # evicted meanwhile: we hold its bytes
                self.directory.touch(sub, name)
        return Lookup(found)

    def _verify(self, key: str, data: bytes) -> Entry:
        """The entry in ``data`` if this session may load it (:class:`Refused` if not)."""
        return entry.decode(
            key,
            data,
            signer=self.policy.signer,
            machine=self.machine,
            load_unverified=self.policy.load_unverified,
        )

    def _refused(self, sub: str, name: str, inode: int, refusal: Refused) -> None:
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
            self.stats.note(f"remove refused {name}: {error}")

    def _elsewhere(self, name: str) -> str:
        """Why this key's entry of another machine was not loaded ("" when none)."""
        for machine in self.namespaces():
            if machine != self.machine and self.directory.exists(self._sub(machine), name):
                self.stats.foreign += 1
                facts = Bookkeeping(self.directory).load_machine(machine)
                if facts is None:
                    return "written on another machine: not loaded"
                return f"{trust.machine_difference(facts, self.machine_facts)}: not loaded"
        return ""

    def namespaces(self) -> Iterator[str]:
        """The machine namespaces that hold entries."""
        try:
            for name, _ in self.directory.scan(ENTRIES):
                if NAMESPACE.fullmatch(name):
                    yield name
        except OSError:
            return

    # -- single flight -----------------------------------------------------------------

    def _uncachable(self, name: str) -> bool:
        """The last compile of this key wrote nothing: nobody waits for an entry."""
        return self.directory.exists(LOCKS, f"{name}.nocache")

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
            self.directory.fd(LOCKS, create=True)
            lock = filelock.FileLock(str(self.directory.path(LOCKS, f"{name}.lock")), timeout=0)
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
            self.stats.note(f"lock {name}: {error}")
            return first
        # Read again under the lock: the holder we waited for, or one that finished
        # between our first read and the lock, has written the entry.
        found = self._read(key, name, again=True)
        if found.entry is not None:
            lock.release()
            self.stats.waited_hits += waited > 0
            return Lookup(found.entry, waited_secs=waited)
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
                    self.directory.create_empty(LOCKS, f"{keys.file_name(key)}.nocache")
            with contextlib.suppress(Exception):  # runs inside the user's compile
                lock.release()

    # -- writes ------------------------------------------------------------------------

    def put(
        self,
        key: str,
        payload: bytes,
        compile_secs: float | None = None,
        parts: Mapping[str, str] | None = None,
    ) -> bool:
        """Store ``payload`` atomically. Never raises; returns whether it was written."""
        name = keys.file_name(key)
        try:
            if self.readonly or not self.machine:
                self.stats.skipped_writes += 1
                return False
            metadata = Metadata(
                compile_secs=compile_secs,
                written_at=time.time(),
                machine=self.machine,
                session=self.session,
                parts=dict(parts or {}),
            )
            data = entry.encode(key, payload, metadata, self.policy.signer)
            try:
                self.directory.write_atomic(self._sub(), name, data)
            except OSError as error:
                self.stats.write_errors += 1
                reason = "disk full" if error.errno == errno.ENOSPC else str(error)
                self.stats.note(f"write {name}: {reason}")
                return False
            self.stats.writes += 1
            self.stats.bytes_written += len(data)
            if self.remote is not None:
                self.remote.put_later(self.machine, name, data, replace=name in self._bad_remote)
            with contextlib.suppress(OSError):  # the key is cachable after all
                self.directory.unlink(LOCKS, f"{name}.nocache")
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
                if same is None or not keys.FILE_NAME.fullmatch(name):
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

    def entry_names(self) -> list[str]:
        """This machine's entries."""
        if not self.machine:
            return []
        try:
            found = list(self.directory.scan(self._sub()))
        except OSError:
            return []
        return sorted(name for name, _ in found if keys.FILE_NAME.fullmatch(name))
