"""The small files beside the entries: which sessions ran (for pruning), and what the
environment of each session that wrote entries was (for explaining misses).

Layout::

    sessions.json                start times of recent sessions that ran maintenance
    fingerprints/<id>.json       one session fingerprint, named by the id entries carry
    machines/<namespace>.json    what defines a machine namespace (trust.machine_of)
    contents.json                the digest of the entries, for CI steps that save caches

Every read is capped and every parse is guarded: a garbage or huge file reads as empty
and is replaced on the next write, never a crash.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import Any

from pytest_jaxcache.cachedir import CacheDir
from pytest_jaxcache.layout import (
    CONTENTS,
    FINGERPRINTS,
    MACHINES,
    RECORD_ID,
    SESSIONS,
    record_name,
)

SESSIONS_KEPT = 1000
_MAX_SESSIONS_BYTES = 64 * SESSIONS_KEPT
_MAX_RECORD_BYTES = 64 * 1024
_MAX_FIELDS = 256


def read_json(directory: CacheDir, sub: str, name: str, limit: int) -> Any:
    """The JSON value of ``sub/name``, or ``None`` when it is missing, too big, not a
    regular file or not JSON (including JSON nested deep enough to exhaust recursion)."""
    try:
        data, _ = directory.read(sub, name, limit=limit)
        return json.loads(data)
    except (OSError, ValueError, RecursionError):
        return None


class Bookkeeping:
    """Sessions and fingerprints of one cache directory."""

    def __init__(self, directory: CacheDir) -> None:
        self.directory = directory

    # -- sessions ---------------------------------------------------------------------------

    def sessions(self) -> list[float]:
        """Start times of the recent sessions that ran maintenance, oldest first. Times
        in the future (another machine's clock) are ignored: they would make every
        entry look unused."""
        data = read_json(self.directory, "", SESSIONS, _MAX_SESSIONS_BYTES)
        times = data.get("sessions") if isinstance(data, dict) else None
        if not isinstance(times, list):
            return []
        horizon = time.time() + 60.0
        return sorted(
            float(t)
            for t in times[: 2 * SESSIONS_KEPT]
            if isinstance(t, (int, float)) and math.isfinite(t) and 0 < float(t) < horizon
        )

    def record_session(self, start: float, sessions: list[float]) -> list[float]:
        """Add ``start`` to ``sessions``; keep the newest :data:`SESSIONS_KEPT`."""
        sessions = sorted(set(sessions) | {start})[-SESSIONS_KEPT:]
        self.directory.write_atomic("", SESSIONS, json.dumps({"sessions": sessions}).encode())
        return sessions

    # -- contents ------------------------------------------------------------------------------

    def contents_digest(self) -> str | None:
        data = read_json(self.directory, "", CONTENTS, 4096)
        digest = data.get("digest") if isinstance(data, dict) else None
        return digest if isinstance(digest, str) else None

    def keep_contents(self, digest: str, entries: int, size: int) -> None:
        """Record what the cache holds (rewritten only when the digest changed)."""
        if self.contents_digest() == digest:
            return
        data = json.dumps({"digest": digest, "entries": entries, "bytes": size}, sort_keys=True)
        self.directory.write_atomic("", CONTENTS, data.encode() + b"\n")

    # -- fingerprints -------------------------------------------------------------------------

    def _save(self, sub: str, record_id: str, facts: Mapping[str, str]) -> None:
        if RECORD_ID.fullmatch(record_id) and not self.directory.exists(
            sub, record_name(record_id)
        ):
            data = json.dumps(dict(facts), sort_keys=True).encode()
            self.directory.write_atomic(sub, record_name(record_id), data)

    def _load(self, sub: str, record_id: str) -> dict[str, str] | None:
        if not RECORD_ID.fullmatch(record_id):
            return None
        data = read_json(self.directory, sub, record_name(record_id), _MAX_RECORD_BYTES)
        if not isinstance(data, dict) or len(data) > _MAX_FIELDS:
            return None
        if not all(isinstance(v, str) for v in data.values()):
            return None
        return {str(k): v for k, v in data.items()}

    def save_fingerprint(self, fingerprint_id: str, fingerprint: Mapping[str, str]) -> None:
        self._save(FINGERPRINTS, fingerprint_id, fingerprint)

    def load_fingerprint(self, fingerprint_id: str) -> dict[str, str] | None:
        return self._load(FINGERPRINTS, fingerprint_id)

    def save_machine(self, namespace: str, facts: Mapping[str, str]) -> None:
        self._save(MACHINES, namespace, facts)

    def load_machine(self, namespace: str) -> dict[str, str] | None:
        return self._load(MACHINES, namespace)
