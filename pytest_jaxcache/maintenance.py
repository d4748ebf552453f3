"""Keeping a cache directory bounded: usage, eviction over the size cap (least recently
used first), pruning of entries no recent session used, cleanup after killed writers.

It runs once per session, at its end, on the controller (or the only process), under
``maintenance.lock`` and only when there can be work; the command line runs it too.
It deletes only names of the store's own patterns, in the store's own sub-directories.
Deleting an entry that a concurrent reader has just read is safe (the reader holds its
bytes); files still being written live in ``tmp/`` and are left alone while young.
"""

from __future__ import annotations

import contextlib
import re
import stat
import time
from dataclasses import dataclass

from pytest_jaxcache import keys
from pytest_jaxcache.bookkeeping import Bookkeeping
from pytest_jaxcache.cachedir import TEMPORARY, TMP, CacheDir
from pytest_jaxcache.store import ENTRIES, LOCKS

MAINTENANCE_LOCK = "maintenance.lock"
STALE_TMP_SECS = 3600.0  # no write lasts this long
STALE_MARKER_SECS = 7 * 24 * 3600.0
_LOCK_FILE = re.compile(keys.FILE_NAME.pattern + r"\.lock")
_MARKER_FILE = re.compile(keys.FILE_NAME.pattern + r"\.nocache")


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


class Maintenance:
    """Usage, eviction, pruning and cleanup of one cache directory."""

    def __init__(self, directory: CacheDir) -> None:
        self.directory = directory
        self.bookkeeping = Bookkeeping(directory)

    def _entries(self) -> list[tuple[str, float, int]]:
        """``(name, mtime, size)`` of every entry file."""
        return [
            (name, info.st_mtime, info.st_size)
            for name, info in self.directory.scan(ENTRIES)
            if stat.S_ISREG(info.st_mode) and keys.FILE_NAME.fullmatch(name)
        ]

    def usage(self) -> Usage:
        found = self._entries()
        return Usage(len(found), sum(size for _, _, size in found))

    def has_temporaries(self) -> bool:
        """Whether a writer left a temporary file (it was killed mid-write)."""
        return any(TEMPORARY.fullmatch(name) for name, _ in self.directory.scan(TMP))

    def maintain(
        self,
        *,
        max_size_bytes: int | None,
        prune_after_sessions: int | None,
        session_start: float | None,
        wait_secs: float = 10.0,
    ) -> MaintenanceResult:
        """Record the session, prune entries unused for N sessions, evict least recently
        used entries over the cap, clear stale temporaries. Gives up (and says so) if
        another session holds the maintenance lock. ``session_start`` is ``None``
        outside a session (the command line)."""
        import filelock

        lock = filelock.FileLock(str(self.directory.path("", MAINTENANCE_LOCK)), timeout=wait_secs)
        try:
            with lock:
                return self._maintain(max_size_bytes, prune_after_sessions, session_start)
        except filelock.Timeout:
            return MaintenanceResult(ran=False, reason="another session held the lock")
        except OSError as error:
            return MaintenanceResult(ran=False, reason=str(error))

    def _maintain(
        self, max_size: int | None, prune_after: int | None, session_start: float | None
    ) -> MaintenanceResult:
        sessions = self.bookkeeping.sessions()
        if session_start is not None:
            # A full disk must not stop eviction, which frees space.
            with contextlib.suppress(OSError):
                sessions = self.bookkeeping.record_session(session_start, sessions)
        now = time.time()
        stale = self._remove_old(TMP, TEMPORARY, now - STALE_TMP_SECS)
        stale += self._remove_idle_locks(now - STALE_TMP_SECS)
        stale += self._remove_old(LOCKS, _MARKER_FILE, now - STALE_MARKER_SECS)

        entries = sorted(self._entries(), key=lambda item: item[1])  # least recently used first
        pruned = pruned_bytes = 0
        if prune_after is not None and len(sessions) >= prune_after:
            cutoff = sessions[-prune_after]
            keep = []
            for name, mtime, size in entries:
                if mtime < cutoff and self.directory.unlink(ENTRIES, name):
                    pruned += 1
                    pruned_bytes += size
                else:
                    keep.append((name, mtime, size))
            entries = keep

        evicted = evicted_bytes = 0
        total = sum(size for _, _, size in entries)
        if max_size is not None:
            for name, _, size in entries:
                if total <= max_size:
                    break
                if self.directory.unlink(ENTRIES, name):
                    evicted += 1
                    evicted_bytes += size
                total -= size
        return MaintenanceResult(
            ran=True,
            evicted=evicted,
            evicted_bytes=evicted_bytes,
            pruned=pruned,
            pruned_bytes=pruned_bytes,
            stale_files_removed=stale,
        )

    def _remove_old(self, sub: str, pattern: re.Pattern[str], cutoff: float) -> int:
        removed = 0
        for name, info in list(self.directory.scan(sub)):
            if pattern.fullmatch(name) and stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                removed += self.directory.unlink(sub, name, inode=info.st_ino)
        return removed

    def _remove_idle_locks(self, cutoff: float) -> int:
        """Remove old lock files that nobody holds. Each is unlinked while we hold it:
        filelock notices a lock whose file was unlinked (``st_nlink == 0``) and retries
        on the path, so a process waiting on it is not split from a later one."""
        import filelock

        removed = 0
        for name, info in list(self.directory.scan(LOCKS)):
            if not (_LOCK_FILE.fullmatch(name) and stat.S_ISREG(info.st_mode)):
                continue
            if info.st_mtime >= cutoff:
                continue
            try:
                with filelock.FileLock(str(self.directory.path(LOCKS, name)), timeout=0):
                    removed += self.directory.unlink(LOCKS, name, inode=info.st_ino)
            except (filelock.Timeout, OSError):
                continue
        return removed

    def clear(self) -> int:
        """Remove every entry; returns how many."""
        return sum(self.directory.unlink(ENTRIES, name) for name, _, _ in self._entries())


# Files of JAX's own store (jax._src.lru_cache): "<key>-cache" and "<key>-atime".
JAX_FILE = re.compile(r".+-[0-9a-f]{64}-(cache|atime)")


def jax_files_usage(directory: CacheDir) -> Usage:
    """Entries JAX's own file store keeps in ``directory`` (``-cache`` files)."""
    found = [
        info.st_size
        for name, info in directory.scan()
        if name.endswith("-cache") and JAX_FILE.fullmatch(name) and stat.S_ISREG(info.st_mode)
    ]
    return Usage(len(found), sum(found))
