"""Keeping a cache directory bounded: usage, eviction over the size cap, pruning of
entries no recent session used, cleanup after killed writers.

It runs once per session, at its end, on the controller (or the only process), under
``maintenance.lock`` and only when there can be work; the command line runs it too.
Over the cap, what can never be loaded here goes first (entries of another jax or jaxlib
version, of an older layout, files of JAX's own store), then the least recently used.
It deletes only names of the store's own patterns (and JAX's), never a link's target.
Deleting an entry that a concurrent reader has just read is safe (the reader holds its
bytes); files still being written live in ``tmp/`` and are left alone while young.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import stat
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from pytest_jaxcache.bookkeeping import Bookkeeping
from pytest_jaxcache.cachedir import CacheDir
from pytest_jaxcache.environment import unusable_versions
from pytest_jaxcache.layout import (
    ENTRIES,
    FINGERPRINTS,
    HISTORY,
    JAX_FILE,
    LOCK_NAME,
    LOCKS,
    MACHINES,
    MAINTENANCE_LOCK,
    MARKER_NAME,
    NAMESPACE,
    RECORD_NAME,
    REMOTE_OFF,
    TEMPORARY,
    TMP,
    is_entry_name,
    namespace_dir,
)

STALE_TMP_SECS = 3600.0  # no write lasts this long
STALE_MARKER_SECS = 7 * 24 * 3600.0

ENTRY = "entry"  # ours, in a machine namespace
OLD = "old"  # ours, of layout 1 (entries/<file>): never loaded
JAX = "jax"  # JAX's own store (<key>-cache, <key>-atime): never loaded


@dataclass(frozen=True)
class Item:
    """One file that holds (part of) a compiled program."""

    sub: str
    name: str
    size: int
    mtime: float
    kind: str
    machine: str = ""  # the namespace of an ENTRY

    @property
    def counts_as_entry(self) -> bool:
        return self.kind != JAX or self.name.endswith("-cache")


@dataclass(frozen=True)
class Usage:
    entries: int
    bytes: int
    jax_files: int = 0  # of ``entries``: JAX's own store's, not loaded
    jax_bytes: int = 0
    digest: str = ""  # of what the cache holds: changes when an entry comes or goes


@dataclass(frozen=True)
class MaintenanceResult:
    ran: bool
    evicted: int = 0
    evicted_bytes: int = 0
    pruned: int = 0
    pruned_bytes: int = 0
    dropped: int = 0  # unusable here, evicted before any entry that could still load
    dropped_bytes: int = 0
    dropped_reasons: list[str] = field(default_factory=list)
    stale_files_removed: int = 0
    reason: str = ""


def content_digest(items: list[Item]) -> str:
    """A digest of the set of entries (their names, which hold their keys, and sizes; not
    when they were used): equal digests, equal caches, nothing new to save."""
    digest = hashlib.sha256()
    for item in sorted(items, key=lambda item: (item.sub, item.name)):
        digest.update(f"{item.sub}/{item.name}:{item.size}\n".encode())
    return digest.hexdigest()[:16]


def usage_of(items: list[Item]) -> Usage:
    jax = [item for item in items if item.kind == JAX]
    return Usage(
        entries=sum(item.counts_as_entry for item in items),
        bytes=sum(item.size for item in items),
        jax_files=sum(item.counts_as_entry for item in jax),
        jax_bytes=sum(item.size for item in jax),
        digest=content_digest(items),
    )


class Maintenance:
    """Usage, eviction, pruning and cleanup of one cache directory. ``machine`` is the
    current machine (trust.machine_of), when known: entries of a namespace with another
    jax or jaxlib version are then unusable."""

    def __init__(self, directory: CacheDir, machine: Mapping[str, str] | None = None) -> None:
        self.directory = directory
        self.machine = machine
        self.bookkeeping = Bookkeeping(directory)
        self._machines: dict[str, dict[str, str] | None] = {}

    def inventory(self) -> list[Item]:
        """Every file that holds a program: ours in every namespace, ours of layout 1,
        and JAX's own."""
        items = []
        for name, info in self.directory.scan(ENTRIES):
            if stat.S_ISDIR(info.st_mode) and NAMESPACE.fullmatch(name):
                sub = namespace_dir(name)
                items += [
                    Item(sub, entry, found.st_size, found.st_mtime, ENTRY, name)
                    for entry, found in self.directory.scan(sub)
                    if stat.S_ISREG(found.st_mode) and is_entry_name(entry)
                ]
            elif stat.S_ISREG(info.st_mode) and is_entry_name(name):
                items.append(Item(ENTRIES, name, info.st_size, info.st_mtime, OLD))
        items += [
            Item("", name, info.st_size, info.st_mtime, JAX)
            for name, info in self.directory.scan()
            if stat.S_ISREG(info.st_mode) and JAX_FILE.fullmatch(name)
        ]
        return items

    def usage(self) -> Usage:
        return usage_of(self.inventory())

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
        """Record the session, prune entries unused for N sessions, evict over the cap
        (unusable entries first, then least recently used), clear stale temporaries.
        Gives up (and says so) if another session holds the maintenance lock.
        ``session_start`` is ``None`` outside a session (the command line)."""
        import filelock

        try:
            with self.directory.file_lock("", MAINTENANCE_LOCK, timeout=wait_secs):
                return self._maintain(max_size_bytes, prune_after_sessions, session_start)
        except filelock.Timeout:
            return MaintenanceResult(ran=False, reason="another session held the lock")
        except OSError as error:
            return MaintenanceResult(ran=False, reason=str(error))

    def record(self, session_start: float, wait_secs: float = 10.0) -> MaintenanceResult:
        """Record a session that left nothing to maintain (it still counts for pruning
        and ``jaxcache show``), under the maintenance lock."""
        import filelock

        try:
            with self.directory.file_lock("", MAINTENANCE_LOCK, timeout=wait_secs):
                self.bookkeeping.record_session(session_start, self.bookkeeping.sessions())
        except filelock.Timeout:
            return MaintenanceResult(ran=False, reason="another session held the lock")
        except OSError as error:
            return MaintenanceResult(ran=False, reason=str(error))
        return MaintenanceResult(ran=False)

    def keep_contents(self) -> Usage:
        """What the cache holds now, recorded in contents.json for CI steps (the command
        line calls it after it changed the cache)."""
        usage = self.usage()
        self.bookkeeping.keep_contents(usage.digest, usage.entries, usage.bytes)
        return usage

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
        stale += self._remove_old(LOCKS, MARKER_NAME, now - STALE_MARKER_SECS)
        stale += self._remove_old(LOCKS, REMOTE_OFF, now - STALE_TMP_SECS)

        items = sorted(self.inventory(), key=lambda item: item.mtime)  # least recently used first
        pruned: list[Item] = []
        if prune_after is not None and len(sessions) >= prune_after:
            cutoff = sessions[-prune_after]
            pruned = self._remove([item for item in items if item.mtime < cutoff])
            items = [item for item in items if item not in pruned]

        dropped: list[Item] = []
        evicted: list[Item] = []
        total = sum(item.size for item in items)
        if max_size is not None and total > max_size:
            reasons = {item: self._unusable(item) for item in items}
            for item in [item for item in items if reasons[item]] + [
                item for item in items if not reasons[item]
            ]:
                if total <= max_size:
                    break
                if self._remove([item]):
                    (dropped if reasons[item] else evicted).append(item)
                total -= item.size
            why = Counter(reasons[item] for item in dropped if item.counts_as_entry)
        else:
            why = Counter()
        return MaintenanceResult(
            ran=True,
            evicted=sum(item.counts_as_entry for item in evicted),
            evicted_bytes=sum(item.size for item in evicted),
            pruned=sum(item.counts_as_entry for item in pruned),
            pruned_bytes=sum(item.size for item in pruned),
            dropped=sum(item.counts_as_entry for item in dropped),
            dropped_bytes=sum(item.size for item in dropped),
            dropped_reasons=[f"{count} {reason}" for reason, count in why.most_common()],
            stale_files_removed=stale,
        )

    def _unusable(self, item: Item) -> str:
        """Why ``item`` can never be loaded here, as the end of "N ... dropped" ("": it
        can)."""
        if item.kind == OLD:
            return "entries of an older pytest-jaxcache layout dropped: never loaded"
        if item.kind == JAX:
            return "files of JAX's own store dropped: pytest-jaxcache does not load them"
        if self.machine is None:
            return ""
        return unusable_versions(self._machine(item.machine) or {}, self.machine)

    def _machine(self, namespace: str) -> dict[str, str] | None:
        if namespace not in self._machines:
            self._machines[namespace] = self.bookkeeping.load_machine(namespace)
        return self._machines[namespace]

    def _remove(self, items: list[Item]) -> list[Item]:
        """Remove ``items`` (a JAX ``-cache`` file takes its ``-atime`` file along);
        returns those that were there to remove."""
        removed = []
        for item in items:
            if self.directory.unlink(item.sub, item.name):
                removed.append(item)
                if item.kind == JAX and item.name.endswith("-cache"):
                    atime = item.name.removesuffix("-cache") + "-atime"
                    with contextlib.suppress(OSError):
                        self.directory.unlink(item.sub, atime)
        return removed

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
            if not (LOCK_NAME.fullmatch(name) and stat.S_ISREG(info.st_mode)):
                continue
            if info.st_mtime >= cutoff:
                continue
            try:
                with self.directory.file_lock(LOCKS, name, timeout=0):
                    removed += self.directory.unlink(LOCKS, name, inode=info.st_ino)
            except (filelock.Timeout, OSError):
                continue
        return removed

    def clear(self) -> int:
        """Remove every entry (ours of any namespace or layout, and JAX's own files);
        returns how many."""
        return sum(item.counts_as_entry for item in self._remove(self.inventory()))


def jax_files_usage(directory: CacheDir) -> Usage:
    """What JAX's own file store keeps in ``directory``."""
    return usage_of([item for item in Maintenance(directory).inventory() if item.kind == JAX])


@dataclass(frozen=True)
class Merged:
    entries: int = 0  # entries copied in (those the cache held already are kept)
    records: int = 0  # machine and fingerprint records copied in
    tests: int = 0  # tests whose history came from the other cache


def merge(target: CacheDir, source: CacheDir, max_entry_bytes: int) -> Merged:
    """Copy into ``target`` what ``source`` holds and ``target`` does not: entries (of
    every namespace; only names of the layout's grammar, regular files within the entry
    limit: loaded only once they verify, as any entry), machine and fingerprint records,
    and the tests' history (``source``'s records win: a CI shard ran those tests last).
    What the shards of a CI matrix wrote becomes one cache to save."""
    from pytest_jaxcache import history

    entries = records = 0
    for name, info in source.scan(ENTRIES):
        if not (stat.S_ISDIR(info.st_mode) and NAMESPACE.fullmatch(name)):
            continue
        sub = namespace_dir(name)
        for entry, found in source.scan(sub):
            if not (is_entry_name(entry) and stat.S_ISREG(found.st_mode)):
                continue
            if found.st_size > max_entry_bytes or target.exists(sub, entry):
                continue
            data, _ = source.read(sub, entry, limit=max_entry_bytes)
            target.write_atomic(sub, entry, data)
            entries += 1
    for sub in (MACHINES, FINGERPRINTS):
        for name, info in source.scan(sub):
            fresh = RECORD_NAME.fullmatch(name) and not target.exists(sub, name)
            if fresh and stat.S_ISREG(info.st_mode):
                data, _ = source.read(sub, name, limit=64 * 1024)
                target.write_atomic(sub, name, data)
                records += 1
    tests = 0
    for name, info in source.scan(HISTORY):
        if RECORD_NAME.fullmatch(name) and stat.S_ISREG(info.st_mode):
            data, _ = source.read(HISTORY, name, limit=history.MAX_BYTES)
            theirs = history.parse(data)
            history.save(target, name.removesuffix(".json"), theirs)
            tests += len(theirs.tests)
    return Merged(entries, records, tests)
