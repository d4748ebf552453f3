"""The local store: maps JAX's cache keys to entries in a directory shared by any number
of processes, with atomic writes, integrity checks and single flight. Knows nothing of
pytest or JAX. Layout (see also :mod:`pytest_jaxcache.maintenance` and
:mod:`pytest_jaxcache.bookkeeping`)::

    <root>/
      CACHEDIR.TAG, .gitignore   keep backup tools and git away from the cache
      entries/<file>             one entry per compiled program (see entry.py)
      tmp/                       entries being written; renamed into entries/
      locks/<file>.lock          per-key single-flight locks (filelock)
      locks/<file>.nocache       "the last compile of this key wrote nothing: don't wait"

Correctness rests on the rename: an entry is either absent or whole. Locks only order
work: one process compiles a key while the others wait (bounded) for its entry. Reads
mark use for LRU by touching the entry's mtime; there is no directory-wide lock.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_jaxcache import entry, keys
from pytest_jaxcache.cachedir import TMP, CacheDir
from pytest_jaxcache.entry import Entry, Header
from pytest_jaxcache.tally import MAX_MESSAGES, Tally

if TYPE_CHECKING:
    import filelock

ENTRIES = "entries"
LOCKS = "locks"

_CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by pytest-jaxcache.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)


@dataclass
class StoreStats(Tally):
    """What one process's store did; summed over processes with :meth:`Tally.add`."""

    hits: int = 0
    misses: int = 0
    writes: int = 0
    bytes_written: int = 0
    repaired: int = 0
    write_errors: int = 0
    skipped_writes: int = 0  # read-only mode
    lock_waits: int = 0  # waited for another process compiling the same key...
    waited_hits: int = 0  # ...and then read its entry instead of compiling
    lock_timeouts: int = 0
    errors: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        if len(self.errors) < MAX_MESSAGES and message not in self.errors:
            self.errors.append(message)


class Store:
    """A directory of entries shared by any number of processes."""

    def __init__(
        self, root: Path, *, readonly: bool = False, lock_timeout_secs: float = 120.0
    ) -> None:
        self.directory = CacheDir(root)
        self.readonly = readonly
        self.lock_timeout_secs = lock_timeout_secs
        self.stats = StoreStats()
        self.fingerprint = entry.NO_FINGERPRINT  # stamped on entries this process writes
        self._claims = threading.local()

    @property
    def root(self) -> Path:
        return self.directory.root

    # -- setup -------------------------------------------------------------------------

    def create(self) -> None:
        """Create the layout; raises ``OSError`` when the directory is not writable."""
        self.directory.root.mkdir(parents=True, exist_ok=True)
        for sub in (ENTRIES, LOCKS):
            self.directory.fd(sub, create=True)
        for name, text in (
            ("CACHEDIR.TAG", _CACHEDIR_TAG),
            (".gitignore", "# created by pytest-jaxcache\n*\n"),
        ):
            if not self.directory.exists("", name):
                self.directory.write_atomic("", name, text.encode())
        probe = f".probe-{os.getpid()}"  # a filled cache creates nothing: prove we can write
        self.directory.create_empty(TMP, probe)
        self.directory.unlink(TMP, probe)

    # -- reads -------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        """The entry for ``key``, or ``None``. Never raises.

        On a miss in read-write mode the caller becomes the key's compiler: it holds
        the key's lock until :meth:`put` or :meth:`release_claims`. If another process
        holds the lock, wait (bounded) for its entry first.
        """
        name = keys.file_name(key)
        found = self._read(name)
        if (
            found is None
            and not self.readonly
            and not self.directory.exists(LOCKS, f"{name}.nocache")
        ):
            found = self._claim(key, name)
        if found is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return found

    def _read(self, name: str) -> Entry | None:
        try:
            data, info = self.directory.read(ENTRIES, name)
        except FileNotFoundError:
            return None
        except OSError as error:
            self.stats.note(f"read {name}: {error}")
            return None
        found = entry.decode(data)
        if found is None:
            self._repair(name, info.st_ino)
            return None
        if not self.readonly:
            with contextlib.suppress(OSError):  # evicted meanwhile: we hold its bytes
                self.directory.touch(ENTRIES, name)
        return found

    def _repair(self, name: str, inode: int) -> None:
        """Remove a corrupt entry so that the next compile rewrites it, unless another
        process has already replaced it with a good one (a different inode)."""
        self.stats.repaired += 1
        if self.readonly:
            return
        try:
            self.directory.unlink(ENTRIES, name, inode=inode)
        except OSError as error:
            self.stats.note(f"remove corrupt {name}: {error}")

    # -- single flight -----------------------------------------------------------------

    def _uncachable(self, name: str) -> bool:
        """The last compile of this key wrote nothing: nobody waits for an entry."""
        return self.directory.exists(LOCKS, f"{name}.nocache")

    def _held(self) -> dict[str, filelock.BaseFileLock]:
        held: dict[str, filelock.BaseFileLock] | None = getattr(self._claims, "held", None)
        if held is None:
            held = self._claims.held = {}
        return held

    def _claim(self, key: str, name: str) -> Entry | None:
        if key in self._held():
            return None  # ours already: a second lookup in the same compile (PGLE)
        import filelock  # imported on the first miss: a warm run never needs it

        try:
            self.directory.fd(LOCKS, create=True)
            lock = filelock.FileLock(str(self.directory.path(LOCKS, f"{name}.lock")), timeout=0)
            waited = False
            try:
                lock.acquire()
            except filelock.Timeout:
                self.stats.lock_waits += 1
                waited = True
                try:
                    lock.acquire(timeout=self.lock_timeout_secs)
                except filelock.Timeout:
                    self.stats.lock_timeouts += 1
                    return None  # compile without the lock rather than wait for ever
        except OSError as error:
            self.stats.note(f"lock {name}: {error}")
            return None
        # Read again under the lock: the holder we waited for, or one that finished
        # between our first read and the lock, has written the entry.
        found = self._read(name)
        if found is not None:
            lock.release()
            self.stats.waited_hits += waited
            return found
        self._held()[key] = lock
        return None

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

    def put(self, key: str, payload: bytes, compile_secs: float | None = None) -> bool:
        """Store ``payload`` atomically. Never raises; returns whether it was written."""
        name = keys.file_name(key)
        try:
            if self.readonly:
                self.stats.skipped_writes += 1
                return False
            data = entry.encode(payload, compile_secs, self.fingerprint)
            try:
                self.directory.write_atomic(ENTRIES, name, data)
            except OSError as error:
                self.stats.write_errors += 1
                reason = "disk full" if error.errno == errno.ENOSPC else str(error)
                self.stats.note(f"write {name}: {reason}")
                return False
            self.stats.writes += 1
            self.stats.bytes_written += len(data)
            with contextlib.suppress(OSError):  # the key is cachable after all
                self.directory.unlink(LOCKS, f"{name}.nocache")
            return True
        finally:
            lock = self._held().pop(key, None)
            if lock is not None:
                lock.release()

    # -- what the entries say about themselves ------------------------------------------

    def entry_names(self) -> list[str]:
        return sorted(
            name for name, info in self.directory.scan(ENTRIES) if keys.FILE_NAME.fullmatch(name)
        )

    def earlier_headers_of(
        self, wanted_keys: Iterable[str], before: float
    ) -> dict[str, list[tuple[str, Header]]]:
        """For each key, the headers of entries for the same program name written before
        ``before``, newest first. One pass over the directory for all keys (a jaxlib
        upgrade misses every key: one scan each would be quadratic)."""
        names = {key: keys.file_name(key) for key in wanted_keys}
        by_program: dict[str, list[tuple[str, Header]]] = {
            keys.program_name(name): [] for name in names.values()
        }
        for name, _ in self.directory.scan(ENTRIES):
            found = by_program.get(keys.program_name(name))
            if found is None:
                continue
            try:
                header = entry.decode_header(
                    self.directory.read_head(ENTRIES, name, entry.HEADER_SIZE)
                )
            except OSError:
                continue
            if header is not None and header.written_at < before:
                found.append((name, header))
        result = {}
        for key, name in names.items():
            same = [item for item in by_program[keys.program_name(name)] if item[0] != name]
            result[key] = sorted(same, key=lambda item: item[1].written_at, reverse=True)
        return result
