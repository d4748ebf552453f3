"""The on-disk cache: atomic writes, per-key single-flight locks, integrity, eviction.

Knows nothing of pytest or JAX: it maps string keys to byte payloads. Layout::

    <root>/
      CACHEDIR.TAG, .gitignore   keep backups and git away
      entries/<key>              one file per compiled program (header + payload)
      tmp/                       entries being written; os.replace()d into entries/
      locks/<key>.lock           per-key single-flight locks (filelock)
      locks/<key>.nocache        "the last compile of this key wrote nothing: don't wait"
      maintenance.lock           held while one session evicts and prunes
      sessions.json              start times of recent sessions (for pruning)

Correctness rests on ``os.replace``: an entry is either absent or complete. Locks only
order work (one process compiles a key while the others wait for its entry). A payload is
stored behind a header with its length and a BLAKE2 digest, so a truncated, zero-length
or garbage file is recognised, removed and reported as repaired, never handed to JAX.
Reads mark use for LRU by touching the entry's mtime: no directory-wide lock.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import filelock

MAGIC = b"JXC1"
# magic, compile seconds, written at (unix time), fingerprint id, payload length, digest
_HEADER = struct.Struct(">4sdd8sQ16s")
NO_FINGERPRINT = bytes(8)
_STALE_TMP_SECS = 3600.0  # no write lasts this long
_STALE_MARKER_SECS = 7 * 24 * 3600.0
_SESSIONS_KEPT = 1000
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

_CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by pytest-jaxcache.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)


@dataclass(frozen=True)
class Header:
    """What an entry says about itself: enough to explain a later miss."""

    compile_secs: float | None  # how long its program took to compile; None: unknown
    written_at: float
    fingerprint: bytes  # id of the session fingerprint that wrote it
    length: int
    digest: bytes


@dataclass(frozen=True)
class Entry:
    header: Header
    payload: bytes

    @property
    def compile_secs(self) -> float | None:
        return self.header.compile_secs


def encode(
    payload: bytes,
    compile_secs: float | None,
    fingerprint: bytes = NO_FINGERPRINT,
    written_at: float | None = None,
) -> bytes:
    digest = hashlib.blake2b(payload, digest_size=16).digest()
    secs = -1.0 if compile_secs is None else float(compile_secs)
    when = time.time() if written_at is None else written_at
    fingerprint = fingerprint[:8].ljust(8, b"\0")
    return _HEADER.pack(MAGIC, secs, when, fingerprint, len(payload), digest) + payload


def decode_header(data: bytes) -> Header | None:
    if len(data) < _HEADER.size:
        return None
    magic, secs, when, fingerprint, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        return None
    return Header(None if secs < 0 else secs, when, fingerprint, length, digest)


def decode(data: bytes) -> Entry | None:
    """The entry in ``data``, or ``None`` if it is truncated, padded or corrupt."""
    header = decode_header(data)
    if header is None:
        return None
    payload = data[_HEADER.size :]
    if header.length != len(payload):
        return None
    if hashlib.blake2b(payload, digest_size=16).digest() != header.digest:
        return None
    return Entry(header, payload)


def file_name(key: str) -> str:
    """A safe file name for a key. JAX keys are ``<module>-<sha256 hex>``; the hash
    suffix is kept whole, so truncating the module name cannot make two keys collide."""
    name = _UNSAFE.sub("_", key)[-200:]
    return "_" + name if name.startswith(".") else name  # never ".", ".." or hidden


@dataclass
class StoreStats:
    """What this process's store did. Plain ints so it crosses xdist as builtins."""

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

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def note(self, message: str) -> None:
        if len(self.errors) < 20 and message not in self.errors:
            self.errors.append(message)


@dataclass(frozen=True)
class Usage:
    entries: int
    bytes: int


@dataclass(frozen=True)
class MaintenanceResult:
    ran: bool
    evicted: int = 0
    evicted_bytes: int = 0
    pruned: int = 0
    pruned_bytes: int = 0
    stale_files_removed: int = 0
    reason: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Store:
    """A directory of entries shared by any number of processes."""

    def __init__(self, root: Path, *, readonly: bool = False, lock_timeout_secs: float = 120.0):
        self.root = root
        self.readonly = readonly
        self.lock_timeout_secs = lock_timeout_secs
        self.entries_dir = root / "entries"
        self.tmp_dir = root / "tmp"
        self.locks_dir = root / "locks"
        self.stats = StoreStats()
        self.fingerprint = NO_FINGERPRINT  # stamped on entries written by this process
        self.missed: dict[str, None] = {}  # keys looked up in vain, in order...
        self.written: set[str] = set()  # ...and keys written: misses to explain
        self._claims = threading.local()

    # -- setup -------------------------------------------------------------------------

    def create(self) -> None:
        """Create the layout; raises ``OSError`` when the directory is not writable."""
        for directory in (self.entries_dir, self.tmp_dir, self.locks_dir):
            directory.mkdir(parents=True, exist_ok=True)
        tag = self.root / "CACHEDIR.TAG"
        if not tag.exists():
            self._write_atomic(tag, _CACHEDIR_TAG.encode())
        ignore = self.root / ".gitignore"
        if not ignore.exists():
            self._write_atomic(ignore, b"# created by pytest-jaxcache\n*\n")
        probe = self.tmp_dir / f".probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()

    # -- reads -------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        """The entry for ``key``, or ``None``. Never raises.

        On a miss in read-write mode the caller becomes the key's compiler: it holds
        the key's lock until :meth:`put` or :meth:`release_claims`. If another process
        holds the lock, wait (bounded) for its entry first.
        """
        name = file_name(key)
        entry = self._read(name)
        if entry is not None:
            self.stats.hits += 1
            return entry
        if not self.readonly and not (self.locks_dir / f"{name}.nocache").exists():
            entry = self._claim(key, name)
            if entry is not None:
                self.stats.hits += 1
                return entry
        self.stats.misses += 1
        self.missed[key] = None
        return None

    def _read(self, name: str) -> Entry | None:
        path = self.entries_dir / name
        try:
            with open(path, "rb") as handle:
                data = handle.read()
                inode = os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            return None
        except OSError as error:
            self.stats.note(f"read {name}: {error}")
            return None
        entry = decode(data)
        if entry is None:
            self._repair(path, inode)
            return None
        if not self.readonly:
            with contextlib.suppress(OSError):  # evicted meanwhile: we hold its bytes
                os.utime(path)
        return entry

    def _repair(self, path: Path, inode: int) -> None:
        """Remove a corrupt entry so that the next compile rewrites it, unless another
        process has already replaced it with a good one (a different inode)."""
        self.stats.repaired += 1
        if self.readonly:
            return
        try:
            if os.stat(path).st_ino == inode:
                path.unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            self.stats.note(f"remove corrupt {path.name}: {error}")

    # -- single flight -----------------------------------------------------------------

    def _held(self) -> dict[str, filelock.BaseFileLock]:
        held: dict[str, filelock.BaseFileLock] | None = getattr(self._claims, "held", None)
        if held is None:
            held = self._claims.held = {}
        return held

    def _claim(self, key: str, name: str) -> Entry | None:
        if key in self._held():
            return None  # ours already: a second lookup in the same compile (PGLE)
        import filelock  # imported on the first miss: a warm run never needs it

        lock = filelock.FileLock(str(self.locks_dir / f"{name}.lock"), timeout=0)
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
        except OSError as error:
            self.stats.note(f"lock {name}: {error}")
            return None
        # Read again under the lock: the holder we waited for, or one that finished
        # between our first read and the lock, has written the entry.
        entry = self._read(name)
        if entry is not None:
            lock.release()
            self.stats.waited_hits += waited
            return entry
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
                    (self.locks_dir / f"{file_name(key)}.nocache").touch()
            with contextlib.suppress(Exception):  # runs inside the user's compile
                lock.release()

    # -- writes ------------------------------------------------------------------------

    def put(self, key: str, payload: bytes, compile_secs: float | None = None) -> bool:
        """Store ``payload`` atomically. Never raises; returns whether it was written."""
        name = file_name(key)
        try:
            if self.readonly:
                self.stats.skipped_writes += 1
                return False
            data = encode(payload, compile_secs, self.fingerprint)
            try:
                self._write_atomic(self.entries_dir / name, data)
            except OSError as error:
                self.stats.write_errors += 1
                reason = "disk full" if error.errno == errno.ENOSPC else str(error)
                self.stats.note(f"write {name}: {reason}")
                return False
            self.stats.writes += 1
            self.stats.bytes_written += len(data)
            self.written.add(key)
            with contextlib.suppress(OSError):  # the key is cachable after all
                (self.locks_dir / f"{name}.nocache").unlink()
            return True
        finally:
            lock = self._held().pop(key, None)
            if lock is not None:
                lock.release()

    def _write_atomic(self, target: Path, data: bytes) -> None:
        tmp = self.tmp_dir / f"{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    # -- inspection --------------------------------------------------------------------

    def _scan(self) -> Iterator[tuple[Path, os.stat_result]]:
        try:
            with os.scandir(self.entries_dir) as listing:
                for item in listing:
                    try:
                        yield Path(item.path), item.stat()
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            return

    def has_temporaries(self) -> bool:
        try:
            with os.scandir(self.tmp_dir) as listing:
                return any(True for _ in listing)
        except FileNotFoundError:
            return False

    def usage(self) -> Usage:
        count = size = 0
        for _, stat in self._scan():
            count += 1
            size += stat.st_size
        return Usage(count, size)

    def entry_names(self) -> list[str]:
        return sorted(path.name for path, _ in self._scan())

    def earlier_headers_of(
        self, keys: Iterable[str], before: float
    ) -> dict[str, list[tuple[str, Header]]]:
        """For each key, the headers of entries for the same program name (JAX keys are
        ``<name>-<hash>``) written before ``before``, newest first. One pass over the
        directory for all keys (a jaxlib upgrade misses every key: one scan each would
        be quadratic)."""
        names = {key: file_name(key) for key in keys}
        wanted: dict[str, list[tuple[str, Header]]] = {}
        for name in names.values():
            wanted.setdefault(name.rsplit("-", 1)[0], [])
        for path, _ in self._scan():
            program = path.name.rsplit("-", 1)[0]
            if program not in wanted:
                continue
            try:
                with open(path, "rb") as handle:
                    header = decode_header(handle.read(_HEADER.size))
            except OSError:
                continue
            if header is not None and header.written_at < before:
                wanted[program].append((path.name, header))
        result = {}
        for key, name in names.items():
            found = [item for item in wanted[name.rsplit("-", 1)[0]] if item[0] != name]
            result[key] = sorted(found, key=lambda item: item[1].written_at, reverse=True)
        return result

    # -- session fingerprints -----------------------------------------------------------

    def save_fingerprint(self, fingerprint_id: bytes, fingerprint: dict[str, str]) -> None:
        if self.readonly:
            return
        path = self.root / "fingerprints" / f"{fingerprint_id.hex()}.json"
        try:
            if not path.exists():
                path.parent.mkdir(exist_ok=True)
                self._write_atomic(path, json.dumps(fingerprint, sort_keys=True).encode())
        except OSError as error:
            self.stats.note(f"fingerprint: {error}")

    def load_fingerprint(self, fingerprint_id: bytes) -> dict[str, str] | None:
        path = self.root / "fingerprints" / f"{fingerprint_id.hex()}.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None

    # -- maintenance -------------------------------------------------------------------

    def maintain(
        self,
        *,
        max_size_bytes: int | None,
        prune_after_sessions: int | None,
        session_start: float | None,
        wait_secs: float = 10.0,
    ) -> MaintenanceResult:
        """Once per session: record it, prune entries unused for N sessions, evict LRU
        entries over the size cap, clear stale temporaries. Serialised across processes
        by ``maintenance.lock``; gives up (and says so) if another session holds it.

        Deleting an entry that a concurrent reader has just read is safe (the reader
        holds its bytes); files still being written live in ``tmp/`` and are left alone.
        ``session_start`` is ``None`` for maintenance outside a session (the CLI).
        """
        if self.readonly:
            return MaintenanceResult(ran=False, reason="read-only")
        import filelock

        lock = filelock.FileLock(str(self.root / "maintenance.lock"), timeout=wait_secs)
        try:
            with lock:
                return self._maintain(max_size_bytes, prune_after_sessions, session_start)
        except filelock.Timeout:
            return MaintenanceResult(ran=False, reason="another session held the lock")
        except OSError as error:
            self.stats.note(f"maintenance: {error}")
            return MaintenanceResult(ran=False, reason=str(error))

    def _maintain(
        self, max_size: int | None, prune_after: int | None, session_start: float | None
    ) -> MaintenanceResult:
        sessions = self.sessions()
        if session_start is not None:
            try:
                sessions = self._record(session_start, sessions)
            except OSError as error:  # a full disk must not stop eviction, which frees space
                self.stats.note(f"record session: {error}")
        now = time.time()
        stale = self._remove_stale(self.tmp_dir, "", now - _STALE_TMP_SECS)
        stale += self._remove_idle_locks(now - _STALE_TMP_SECS)
        stale += self._remove_stale(self.locks_dir, ".nocache", now - _STALE_MARKER_SECS)

        entries = sorted(self._scan(), key=lambda item: item[1].st_mtime)
        pruned = pruned_bytes = 0
        if prune_after is not None and len(sessions) >= prune_after:
            cutoff = sorted(sessions)[-prune_after]
            keep = []
            for path, stat in entries:
                if stat.st_mtime < cutoff and _unlink(path):
                    pruned += 1
                    pruned_bytes += stat.st_size
                else:
                    keep.append((path, stat))
            entries = keep

        evicted = evicted_bytes = 0
        total = sum(stat.st_size for _, stat in entries)
        if max_size is not None:
            for path, stat in entries:  # least recently used first
                if total <= max_size:
                    break
                if _unlink(path):
                    evicted += 1
                    evicted_bytes += stat.st_size
                total -= stat.st_size
        return MaintenanceResult(
            ran=True,
            evicted=evicted,
            evicted_bytes=evicted_bytes,
            pruned=pruned,
            pruned_bytes=pruned_bytes,
            stale_files_removed=stale,
        )

    def sessions(self) -> list[float]:
        """Start times of the recent sessions that ran maintenance, oldest first."""
        try:
            data = json.loads((self.root / "sessions.json").read_text())
            return sorted(float(t) for t in data["sessions"])
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def _record(self, session_start: float, sessions: list[float]) -> list[float]:
        sessions = sorted(set(sessions) | {session_start})[-_SESSIONS_KEPT:]
        data = json.dumps({"sessions": sessions}).encode()
        self._write_atomic(self.root / "sessions.json", data)
        return sessions

    @staticmethod
    def _remove_stale(directory: Path, suffix: str, cutoff: float) -> int:
        removed = 0
        try:
            with os.scandir(directory) as listing:
                for item in listing:
                    if not item.name.endswith(suffix):
                        continue
                    try:
                        if item.stat().st_mtime < cutoff and _unlink(Path(item.path)):
                            removed += 1
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            pass
        return removed

    def _remove_idle_locks(self, cutoff: float) -> int:
        """Remove old lock files that nobody holds. Each is unlinked while we hold it:
        filelock notices a lock whose file was unlinked (``st_nlink == 0``) and retries
        on the path, so a process waiting on it is not split from a later one."""
        import filelock

        removed = 0
        try:
            with os.scandir(self.locks_dir) as listing:
                candidates = [Path(i.path) for i in listing if i.name.endswith(".lock")]
        except FileNotFoundError:
            return 0
        for path in candidates:
            try:
                if path.stat().st_mtime >= cutoff:
                    continue
                lock = filelock.FileLock(str(path), timeout=0)
                with lock:
                    removed += _unlink(path)
            except (filelock.Timeout, OSError):
                continue
        return removed

    def clear(self) -> int:
        """Remove every entry (``python -m pytest_jaxcache clear``); returns how many."""
        removed = 0
        for path, _ in self._scan():
            removed += _unlink(path)
        return removed


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
