"""Why did a program miss? Compare it with its own past.

Every entry records a digest of each part of its key as JAX computed it (the lowered
module, the compile options, the devices, ...), the id of the writing session's
fingerprint (jaxlib, XLA_FLAGS, key-relevant config, ...) and a few *facts* about its
program: its input types and a digest of its module with the constants left out. For a
miss of ``<name>-<hash>`` we look for earlier entries of the same program name, written
before this session started:

- none: a new program, no earlier session compiled it;
- an entry found and refused (another machine's, untrusted): why it was refused;
- entries of this machine with key parts: the nearest one is the program's own past
  (same input types first, then the most parts equal, then the newest); the parts that
  differ say why, and when only the module differs, its facts say whether only
  embedded constants changed (a program closed over fresh random values): misses
  nobody caused. (A module that JAX lowered differently from the same jaxpr,
  jax-ml/jax#40312, cannot be told from a code change here: the compile does not see
  the jaxpr. With ``--jax-cache-lowering=on`` the same jaxpr is served the same
  module, and ``verify`` names the programs whose fresh lowering differs);
- otherwise, entries written under the same fingerprint: the program itself changed;
  under other fingerprints (another machine's too): what changed in the environment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pytest_jaxcache.bookkeeping import Bookkeeping
from pytest_jaxcache.entry import Metadata
from pytest_jaxcache.environment import describe_change
from pytest_jaxcache.reasons import (
    CONSTANTS,
    CONSTANTS_DIFFER,
    ENVIRONMENT,
    KEY_PARTS,
    NEW,
    NEW_PROGRAM,
    PROGRAM,
    PROGRAM_CHANGED,
    REFUSED,
    UNKNOWN_ENVIRONMENT,
    Miss,
    describe_parts,
)
from pytest_jaxcache.store import Store

# Facts an entry records about its program (Metadata.facts).
INPUTS = "inputs"  # the types of the module's inputs and outputs
STRUCTURE = "structure"  # a digest of the module with its constants left out
COMPUTATION = "computation"  # the key part that holds the lowered module


def nearest_entry(
    parts: Mapping[str, str], facts: Mapping[str, str], earlier: list[Metadata]
) -> Metadata | None:
    """Of the earlier entries that record their key's parts, the program's own past:
    the same input types first, then the most parts equal to ``parts``, then the newest
    (``None``: none records parts, or ``parts`` are unknown)."""
    candidates = [metadata for metadata in earlier if metadata.parts]
    if not parts or not candidates:
        return None
    inputs = facts.get(INPUTS)
    return max(
        candidates,
        key=lambda metadata: (
            inputs is not None and metadata.facts.get(INPUTS) == inputs,
            sum(metadata.parts.get(part) == digest for part, digest in parts.items()),
            metadata.written_at,
        ),
    )


def difference(current: Mapping[str, str], earlier: Mapping[str, str]) -> list[str]:
    """The parts whose digests differ (or that only one side has), by name."""
    return sorted(
        part for part in current.keys() | earlier.keys() if current.get(part) != earlier.get(part)
    )


def unstable_cause(
    differing: list[str], facts: Mapping[str, str], nearest: Metadata
) -> tuple[str, str] | None:
    """When only the module differs from the program's own past (same inputs), the
    cause no code change explains, if the facts tell one: (cause, reason)."""
    if differing != [COMPUTATION] or not facts.get(INPUTS):
        return None
    theirs = nearest.facts
    if theirs.get(INPUTS) != facts[INPUTS]:
        return None
    if facts.get(STRUCTURE) and theirs.get(STRUCTURE) == facts[STRUCTURE]:
        return CONSTANTS, CONSTANTS_DIFFER
    return None


def explain(
    store: Store,
    missed: Iterable[str],
    *,
    before: float,
    current: dict[str, str],
    parts: Mapping[str, Mapping[str, str]] | None = None,
    facts: Mapping[str, Mapping[str, str]] | None = None,
    refused: Mapping[str, str] | None = None,
) -> list[Miss]:
    """One :class:`Miss` per key, in key order. ``before`` is when the session started
    (its own entries are not its past), ``current`` its fingerprint, ``parts`` and
    ``facts`` what each missed key's program was, as this session computed them. A key
    whose entry was found and refused (``refused``: key -> why) is explained by that."""
    wanted = set(missed)
    refused = refused or {}
    parts = parts or {}
    facts = facts or {}
    looked_up = wanted - set(refused)
    earlier_of = store.earlier_entries(looked_up, before) if looked_up else {}
    books = Bookkeeping(store.directory)
    misses = []
    for key in sorted(wanted):
        if key in refused:
            misses.append(Miss(key, refused[key], REFUSED))
            continue
        misses.append(
            _why(
                store, books, key, earlier_of[key], current, parts.get(key, {}), facts.get(key, {})
            )
        )
    return misses


def _why(
    store: Store,
    books: Bookkeeping,
    key: str,
    earlier: list[Metadata],
    current: dict[str, str],
    parts: Mapping[str, str],
    facts: Mapping[str, str],
) -> Miss:
    if not earlier:
        return Miss(key, NEW_PROGRAM, NEW)
    here = [metadata for metadata in earlier if metadata.machine == store.machine]
    nearest = nearest_entry(parts, facts, here)
    if nearest is not None:
        differing = difference(parts, nearest.parts)
        unstable = unstable_cause(differing, facts, nearest)
        if unstable is not None:
            return Miss(key, unstable[1], unstable[0], tuple(differing))
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
