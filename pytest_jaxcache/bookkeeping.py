"""The small files beside the entries: which sessions ran (for pruning), and what the
environment of each session that wrote entries was (for explaining misses).

Layout::

    sessions.json                start times of recent sessions that ran maintenance
    fingerprints/<id>.json       one session fingerprint, named by the id entries carry

Every read is capped and every parse is guarded: a garbage or huge file reads as empty
and is replaced on the next write, never a crash.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pytest_jaxcache.cachedir import CacheDir

SESSIONS = "sessions.json"
FINGERPRINTS = "fingerprints"
SESSIONS_KEPT = 1000
_MAX_SESSIONS_BYTES = 64 * SESSIONS_KEPT
_MAX_FINGERPRINT_BYTES = 64 * 1024


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
            float(t) for t in times if isinstance(t, (int, float)) and 0 < float(t) < horizon
        )

    def record_session(self, start: float, sessions: list[float]) -> list[float]:
        """Add ``start`` to ``sessions``; keep the newest :data:`SESSIONS_KEPT`."""
        sessions = sorted(set(sessions) | {start})[-SESSIONS_KEPT:]
        self.directory.write_atomic("", SESSIONS, json.dumps({"sessions": sessions}).encode())
        return sessions

    # -- fingerprints -------------------------------------------------------------------------

    def save_fingerprint(self, fingerprint_id: bytes, fingerprint: dict[str, str]) -> None:
        name = f"{fingerprint_id.hex()}.json"
        if not self.directory.exists(FINGERPRINTS, name):
            data = json.dumps(fingerprint, sort_keys=True).encode()
            self.directory.write_atomic(FINGERPRINTS, name, data)

    def load_fingerprint(self, fingerprint_id: bytes) -> dict[str, str] | None:
        name = f"{fingerprint_id.hex()}.json"
        data = read_json(self.directory, FINGERPRINTS, name, _MAX_FINGERPRINT_BYTES)
        if not isinstance(data, dict):
            return None
        return {str(k): str(v) for k, v in data.items()}
