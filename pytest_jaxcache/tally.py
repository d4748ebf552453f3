"""One way to add up figures: field by field, for every dataclass of counters.

Per-test compile counts, store statistics and remote statistics are all summed the
same way, whether over the phases of a test or over the xdist workers of a session.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

MAX_MESSAGES = 20
# The field names of each Tally class, found once: ``dataclasses.fields`` builds its
# answer on every call, and a session adds figures twice per test.
_NAMES: dict[type, tuple[str, ...]] = {}
MAX_GROUPS = 32  # distinct keys of a dict of counts; the rest are counted under OTHERS
OTHERS = "other reasons"


class Tally:
    """A dataclass of numbers (summed), lists of messages (joined, deduplicated,
    bounded) and dicts of counts by reason (summed key by key, bounded)."""

    errors: list[str]  # what went wrong, in a few words each

    def note(self, message: str) -> None:
        """Keep ``message`` (once, and not more than :data:`MAX_MESSAGES` in all)."""
        if len(self.errors) < MAX_MESSAGES and message not in self.errors:
            self.errors.append(message)

    def add(self, other: Any) -> None:
        names = _NAMES.get(type(self))
        if names is None:
            names = _NAMES[type(self)] = tuple(item.name for item in fields(self))  # type: ignore[arg-type]
        for name in names:
            mine, theirs = getattr(self, name), getattr(other, name)
            if isinstance(mine, list):
                for message in theirs:
                    if len(mine) < MAX_MESSAGES and message not in mine:
                        mine.append(message)
            elif isinstance(mine, dict):
                for reason, count in theirs.items():
                    count_by(mine, reason, count)
            else:
                setattr(self, name, mine + theirs)


def count_by(counts: dict[str, int], reason: str, count: int = 1) -> None:
    """Add ``count`` under ``reason``, or under :data:`OTHERS` once :data:`MAX_GROUPS`
    reasons are taken: a dict of counts stays bounded whatever it is fed."""
    if reason not in counts and len(counts) >= MAX_GROUPS:
        reason = OTHERS
    counts[reason] = counts.get(reason, 0) + count
