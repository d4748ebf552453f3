"""Why did a program miss? Compare it with what earlier sessions wrote.

Every entry records a digest of each part of its key as JAX computed it (the lowered
module, the compile options, the devices, ...) and the id of the writing session's
fingerprint (jaxlib, XLA_FLAGS, key-relevant config, ...). For a miss of
``<name>-<hash>`` we look for earlier entries of the same program name:

- none: a new program, no earlier session compiled it;
- an entry found and refused (another machine's, untrusted): why it was refused;
- entries of this machine with key parts: the parts that differ from the nearest one
  (the one with the most parts equal, then the newest), and what changed in the
  environment when it was written under another;
- otherwise, entries written under the same fingerprint: the program itself changed;
  under other fingerprints (another machine's too): what changed in the environment.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pytest_jaxcache import keys
from pytest_jaxcache.bookkeeping import Bookkeeping
from pytest_jaxcache.entry import Metadata
from pytest_jaxcache.store import Store

NEW_PROGRAM = "new program: no earlier session compiled it"
# What a difference in each part of JAX's key means (parts named as jax._src.cache_key
# names them; the same from JAX 0.6 to 0.12).
PART_MEANINGS = {  # environment-wide parts first: they explain the others
    "jax_lib version": "jaxlib's version differs",
    "backend version": "the backend's platform version differs",
    "XLA flags": "XLA flags differ (XLA_FLAGS, LIBTPU_INIT_ARGS or --xla arguments)",
    "compression": "the compression differs (zstandard installed or removed)",
    "custom_hook": "a custom cache-key hook gives another value",
    "accelerator_config": "the device assignment differs: the device count or topology changed",
    "compile_options": "compile options differ: a compiler option or an XLA flag changed",
    "computation": "the lowered module differs: the program's code, shapes, dtypes or a "
    "config traced into it (such as jax_default_matmul_precision) changed",
}
PROGRAM_CHANGED = "program changed: same name, other code, shapes, dtypes or options"
UNKNOWN_ENVIRONMENT = "written under another environment (its fingerprint is gone)"

# Components whose change alters every key, not only some programs (so do the
# "backend <name>" platform versions, which JAX hashes into every key).
_GLOBAL = ("jaxlib", "XLA_FLAGS", "LIBTPU_INIT_ARGS", "compression")


# What kind of cause explains a miss (JSON ``cause``).
NEW = "new"  # no earlier entry of the program
REFUSED = "refused"  # its entry was found and not loaded
KEY_PARTS = "key parts"  # parts of the key differ from the nearest earlier entry's
PROGRAM = "program"  # an earlier entry under this environment, no parts to compare
ENVIRONMENT = "environment"  # earlier entries under another environment only


@dataclass(frozen=True)
class Miss:
    key: str
    reason: str
    cause: str = NEW
    parts: tuple[str, ...] = ()  # the key parts that differ (cause KEY_PARTS)


@dataclass(frozen=True)
class MissGroup:
    """Misses of one reason: how many, and a few program names."""

    reason: str
    cause: str
    parts: tuple[str, ...]
    count: int
    examples: tuple[str, ...]


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


def part_meaning(part: str) -> str:
    """What a difference in ``part`` of two keys means (a part this JAX adds: its name)."""
    return PART_MEANINGS.get(part, f"the key part {part!r} differs")


def describe_parts(differing: Iterable[str]) -> str:
    """What the differing parts of two keys mean, most telling first."""
    order = list(PART_MEANINGS)
    ranked = sorted(differing, key=lambda part: (order.index(part) if part in order else 99, part))
    return "; ".join(part_meaning(part) for part in ranked)


def nearest_entry(current: dict[str, str], earlier: list[Metadata]) -> Metadata | None:
    """Of the earlier entries that record their key's parts, the one with most parts
    equal to ``current``, then the newest (``None``: none records them, or ``current``
    is unknown)."""
    candidates = [metadata for metadata in earlier if metadata.parts]
    if not current or not candidates:
        return None
    return max(
        candidates,
        key=lambda metadata: (
            sum(metadata.parts.get(part) == digest for part, digest in current.items()),
            metadata.written_at,
        ),
    )


def difference(current: Mapping[str, str], earlier: Mapping[str, str]) -> list[str]:
    """The parts whose digests differ (or that only one side has), by name."""
    return sorted(
        part for part in current.keys() | earlier.keys() if current.get(part) != earlier.get(part)
    )


def explain(
    store: Store,
    missed: Iterable[str],
    *,
    before: float,
    current: dict[str, str],
    parts: dict[str, dict[str, str]] | None = None,
    refused: dict[str, str] | None = None,
) -> list[Miss]:
    """One :class:`Miss` per key, in key order. ``current`` is this session's
    fingerprint, ``parts`` the digests of each missed key's parts (key -> part ->
    digest, as JAX computed them in this session). A key whose entry was found and
    refused (``refused``: key -> why) is explained by that."""
    wanted = set(missed)
    refused = refused or {}
    parts = parts or {}
    looked_up = wanted - set(refused)
    earlier_of = store.earlier_entries(looked_up, before) if looked_up else {}
    books = Bookkeeping(store.directory)
    misses = []
    for key in sorted(wanted):
        if key in refused:
            misses.append(Miss(key, refused[key], REFUSED))
            continue
        misses.append(_why(store, books, key, earlier_of[key], current, parts.get(key, {})))
    return misses


def _why(
    store: Store,
    books: Bookkeeping,
    key: str,
    earlier: list[Metadata],
    current: dict[str, str],
    parts: dict[str, str],
) -> Miss:
    if not earlier:
        return Miss(key, NEW_PROGRAM, NEW)
    here = [metadata for metadata in earlier if metadata.machine == store.machine]
    nearest = nearest_entry(parts, here)
    if nearest is not None:
        differing = difference(parts, nearest.parts)
        reason = describe_parts(differing)
        if nearest.session not in (store.session, ""):
            old = books.load_fingerprint(nearest.session)
            if old is not None and old != current:
                reason += f" ({describe_change(old, current)})"
        return Miss(key, reason, KEY_PARTS, tuple(differing))
    if {metadata.session for metadata in here} & {store.session, ""}:
        # Some earlier entry was written under this very environment: the program itself
        # changed, whatever other environments wrote since.
        return Miss(key, PROGRAM_CHANGED, PROGRAM)
    old = books.load_fingerprint(earlier[0].session)
    reason = UNKNOWN_ENVIRONMENT if old is None else describe_change(old, current)
    return Miss(key, reason, ENVIRONMENT)


def summarise(misses: list[Miss]) -> list[MissGroup]:
    """Misses grouped by reason, most frequent first, with a few program names each."""
    groups: dict[str, list[Miss]] = {}
    for miss in misses:
        groups.setdefault(miss.reason, []).append(miss)
    counts = Counter({reason: len(group) for reason, group in groups.items()})
    found = []
    for reason, count in counts.most_common():
        group = groups[reason]
        examples: list[str] = []
        for miss in group:
            program = keys.program_name(miss.key)
            if len(examples) < 3 and program not in examples:
                examples.append(program)
        found.append(MissGroup(reason, group[0].cause, group[0].parts, count, tuple(examples)))
    return found
