"""What each test will cost in this session, and which shard runs it: pure functions of
the collection, the history of earlier sessions and the entries the cache holds now.

A test's cost is what it took last time less the compiling it did then, plus, for each
program it used, its compile time if its entry is not in the cache now and a load
otherwise: the same test costs seconds cold and milliseconds warm, and only this
plugin knows which it will be. Shards take the tests longest first, each onto the
least loaded shard (``jax_errors`` tests balanced the same way, as a group of their
own); tests never seen are spread by a stable hash. The same history, entries and
collection give the same shards on every machine: every test in exactly one shard.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Collection, Iterable, Mapping

from pytest_jaxcache.history import History
from pytest_jaxcache.settings import Shard

LOAD_SECS = 0.01  # loading one program from the cache, when nothing better is known
DEFAULT_SECS = 1.0  # a test never seen, when no test was ever seen


def predict(nodeids: Iterable[str], history: History, present: Collection[str]) -> dict[str, float]:
    """Each test's predicted cost in seconds, given the entries ``present`` now."""
    known: dict[str, float] = {}
    for nodeid in nodeids:
        cost = history.tests.get(nodeid)
        if cost is None:
            continue
        ran = max(0.0, cost.wall_secs - cost.compile_secs - cost.load_secs)
        for program in cost.programs:
            if program in present:
                ran += LOAD_SECS
            else:
                ran += history.programs.get(program, cost.compile_secs / len(cost.programs))
        known[nodeid] = ran
    return known


def stable_shard(nodeid: str, count: int) -> int:
    """A shard (0-based) for a test never seen: the same on every machine."""
    return int.from_bytes(hashlib.sha256(nodeid.encode()).digest()[:8], "big") % count


def assign(
    nodeids: Iterable[str], costs: Mapping[str, float], errors: Collection[str], count: int
) -> dict[str, int]:
    """The shard (0-based) of each test: those with a predicted cost longest first onto
    the least loaded shard (marked tests likewise, as a group of their own, so that
    each shard gets its share of them), the others by a stable hash."""
    shards: dict[str, int] = {}
    unseen = [nodeid for nodeid in nodeids if nodeid not in costs]
    for group in (False, True):
        load = [0.0] * count
        members = sorted(
            (nodeid for nodeid in costs if (nodeid in errors) == group),
            key=lambda nodeid: (-costs[nodeid], nodeid),
        )
        for nodeid in members:
            target = min(range(count), key=lambda shard: (load[shard], shard))
            shards[nodeid] = target
            load[target] += costs[nodeid]
    for nodeid in unseen:
        shards[nodeid] = stable_shard(nodeid, count)
    return shards


def select(
    nodeids: list[str],
    shard: Shard,
    history: History,
    present: Collection[str],
    errors: Collection[str],
) -> tuple[list[str], float]:
    """The tests of ``shard`` (in collection order) and their predicted cost; tests
    never seen count as the median of those seen (or :data:`DEFAULT_SECS`)."""
    costs = predict(nodeids, history, present)
    shards = assign(nodeids, costs, errors, shard.total)
    chosen = [nodeid for nodeid in nodeids if shards[nodeid] == shard.number - 1]
    guess = statistics.median(costs.values()) if costs else DEFAULT_SECS
    return chosen, sum(costs.get(nodeid, guess) for nodeid in chosen)
