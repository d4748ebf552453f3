"""Why did a program miss? Compare it with what earlier sessions wrote.

Every entry carries the id of the writing session's fingerprint (what goes into every
key besides the program: jaxlib version, XLA flags, key-relevant config, ...). For a
miss of ``<name>-<hash>`` we look for an earlier entry with the same program name:

- none: a new program, no earlier session compiled it;
- one written under the same fingerprint: the program itself changed (code, shapes,
  dtypes, compile options);
- only ones written under other fingerprints: name the components that changed since
  the newest of them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from pytest_jaxcache import keys
from pytest_jaxcache.bookkeeping import Bookkeeping
from pytest_jaxcache.store import Store

NEW_PROGRAM = "new program: no earlier session compiled it"
PROGRAM_CHANGED = "program changed: same name, other code, shapes, dtypes or options"
UNKNOWN_ENVIRONMENT = "written under another environment (its fingerprint is gone)"

# Components whose change alters every key, not only some programs (so do the
# "backend <name>" platform versions, which JAX hashes into every key).
_GLOBAL = ("jaxlib", "XLA_FLAGS", "LIBTPU_INIT_ARGS", "compression")


@dataclass(frozen=True)
class Miss:
    key: str
    reason: str


def describe_change(old: dict[str, str], new: dict[str, str]) -> str:
    """``"jaxlib 0.10.1 -> 0.10.2: every key changed"``; only components both know."""
    changed = [name for name in sorted(old.keys() & new.keys()) if old[name] != new[name]]
    if not changed:
        return "environment changed (a component only one side records)"
    parts = []
    for name in changed:
        before, after = old[name] or "(unset)", new[name] or "(unset)"
        if name in ("XLA_FLAGS", "LIBTPU_INIT_ARGS"):
            parts.append(f"{name} changed")
        else:
            parts.append(f"{name} {before} -> {after}")
    every_key = any(name in _GLOBAL or name.startswith("backend ") for name in changed)
    suffix = ": every key changed" if every_key else ""
    return ", ".join(parts) + suffix


def explain(
    store: Store,
    missed: Iterable[str],
    *,
    before: float,
    current: dict[str, str],
    refused: dict[str, str] | None = None,
) -> list[Miss]:
    """One :class:`Miss` per key, in key order. A key whose entry was found and refused
    (``refused``: key -> why) is explained by that."""
    wanted = set(missed)
    refused = refused or {}
    looked_up = wanted - set(refused)
    earlier_of = store.earlier_entries(looked_up, before) if looked_up else {}
    misses = []
    for key in sorted(wanted):
        if key in refused:
            misses.append(Miss(key, refused[key]))
            continue
        earlier = earlier_of[key]
        if not earlier:
            misses.append(Miss(key, NEW_PROGRAM))
            continue
        if {metadata.session for _, metadata in earlier} & {store.session, ""}:
            # Some earlier entry was written under this very environment: the program
            # itself changed, whatever other environments wrote since.
            misses.append(Miss(key, PROGRAM_CHANGED))
            continue
        old = Bookkeeping(store.directory).load_fingerprint(earlier[0][1].session)
        reason = UNKNOWN_ENVIRONMENT if old is None else describe_change(old, current)
        misses.append(Miss(key, reason))
    return misses


def summarise(misses: list[Miss]) -> list[tuple[str, int, list[str]]]:
    """(reason, count, a few program names), most frequent reason first."""
    counts = Counter(miss.reason for miss in misses)
    examples: dict[str, list[str]] = {}
    for miss in misses:
        names = examples.setdefault(miss.reason, [])
        program = keys.program_name(miss.key)
        if len(names) < 3 and program not in names:
            names.append(program)
    return [(reason, count, examples[reason]) for reason, count in counts.most_common()]
