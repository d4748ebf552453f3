"""The invariants of every snapshot, checked over the JSON of every child session the
tests start (``helpers.run_session`` calls :func:`check`) and over the snapshots the
unit tests build: a new surface or a new figure cannot drift from the others.

- each compile has exactly one outcome and at most one reason; a reason exactly when
  it was not a hit;
- hits + misses + uncachable + not written + cache off = programs compiled;
- the totals are the sum of the tests' phases, and cachable + errors = totals;
- the per-reason miss counts add up to the misses, the not-written groups to the
  uncachable and unwritten programs, the hit sources to the hits;
- the hit rate is hits over lookups, lookups are hits + misses;
- every surface the session printed (the ``compiles:`` line, the ``hit rate:`` line,
  the ``-q`` line, the ``shard:`` line) shows the JSON's numbers.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

OUTCOMES = ("hit", "miss", "uncachable", "unwritten", "uncached")
_COUNTED = (
    "requests",
    "hits",
    "misses",
    "uncachable",
    "unwritten",
    "uncached",
    "saved_unknown",
)
_TIMED = ("compile_secs", "outside_secs", "retrieval_secs", "saved_secs", "wait_secs")
_COMPILES_LINE = re.compile(
    r"compiles: (\d+) programs: (\d+) hits, (\d+) misses, (\d+) uncachable, "
    r"(\d+) not written, (\d+) with the cache off"
)
_LOOKUPS = re.compile(r"(\d+)/(\d+) lookups hit \((n/a|[\d.]+%)\)")
_SHARD_LINE = re.compile(r"shard: (\d+) of (\d+), (\d+) of (\d+) tests \((\d+) known")


class Violation(AssertionError):
    """A snapshot that contradicts itself."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise Violation(message)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def check(snapshot: Mapping[str, Any], output: Sequence[str] = ()) -> None:
    """Raise :class:`Violation` where ``snapshot`` (and ``output``, the lines the
    session printed) contradict each other."""
    compiles = snapshot["compiles"]
    totals, cachable, errors = snapshot["totals"], snapshot["cachable"], snapshot["errors"]
    outcomes = Counter(c["outcome"] for c in compiles)
    _require(set(outcomes) <= set(OUTCOMES), f"unknown outcomes: {set(outcomes) - set(OUTCOMES)}")
    for c in compiles:
        _require((c["why"] == "") == (c["outcome"] == "hit"), f"a reason iff not a hit: {c}")
        _require(c["source"] == "" or c["outcome"] == "hit", f"a source only on a hit: {c}")
        _require(
            (c["unwritten"] != "") == (c["outcome"] in ("uncachable", "unwritten")),
            f"a not-written code iff not written: {c}",
        )
    _require(totals["programs"] == len(compiles), "programs == compiles")
    for name, outcome in (
        ("hits", "hit"),
        ("misses", "miss"),
        ("uncachable", "uncachable"),
        ("unwritten", "unwritten"),
        ("uncached", "uncached"),
    ):
        _require(totals[name] == outcomes[outcome], f"totals[{name}] == compiles of {outcome}")
    for section in (totals, cachable, errors):
        parts = ("hits", "misses", "uncachable", "unwritten", "uncached")
        _require(section["programs"] == sum(section[p] for p in parts), f"programs: {section}")
        _require(section["lookups"] == section["hits"] + section["misses"], "lookups")
        _require(section["requests"] == section["programs"] - section["uncached"], "requests")
        outside = section["uncachable"] + section["unwritten"] + section["uncached"]
        _require(section["outside"] == outside, "outside")
        inside = section["compile_secs"] - section["outside_secs"]
        _require(_close(section["inside_secs"], inside), "inside_secs")
        rate = section["hit_rate"]
        if section["lookups"]:
            _require(_close(rate, section["hits"] / section["lookups"]), "hit rate")
        else:
            _require(rate is None, "no lookups, no rate")
    summed = {name: 0.0 for name in (*_COUNTED, *_TIMED)}
    for test in snapshot["tests"]:
        for counts in test["phases"].values():
            for name in summed:
                summed[name] += counts[name]
    for name, value in summed.items():
        _require(_close(totals[name], value), f"totals[{name}] == sum over tests")
        _require(_close(cachable[name] + errors[name], value), f"cachable + errors: {name}")
    _require(
        sum(group["count"] for group in snapshot["misses"]) == totals["misses"],
        "per-reason miss counts add up to the misses",
    )
    _require(
        sum(group["count"] for group in snapshot["not_written"])
        == totals["uncachable"] + totals["unwritten"],
        "not-written groups add up",
    )
    _require(sum(snapshot["hit_sources"].values()) == totals["hits"], "hit sources add up")
    reasons = [group["reason"] for group in snapshot["misses"]]
    _require(len(reasons) == len(set(reasons)), "each miss reason once")
    _check_output(snapshot, output)


def _check_output(snapshot: Mapping[str, Any], output: Sequence[str]) -> None:
    totals, cachable = snapshot["totals"], snapshot["cachable"]
    for line in output:
        found = _COMPILES_LINE.search(line)
        if found:
            shown = [int(number) for number in found.groups()]
            expected = [
                totals[name]
                for name in ("programs", "hits", "misses", "uncachable", "unwritten", "uncached")
            ]
            _require(shown == expected, f"the compiles line {shown} != JSON {expected}")
        shard_line = _SHARD_LINE.match(line)
        if shard_line:
            shard = snapshot["shard"]
            _require(shard is not None, "a shard line without a shard in the JSON")
            expected = [shard[k] for k in ("index", "count", "tests", "collected", "history")]
            shown = [int(number) for number in shard_line.groups()]
            _require(shown == expected, f"the shard line {shown} != JSON {expected}")
        if line.startswith(("hit rate: ", "jax cache: ")):
            rate = _LOOKUPS.search(line)
            if rate is None:
                continue  # a notice line of -q
            hits, lookups = int(rate.group(1)), int(rate.group(2))
            _require(
                (hits, lookups) == (cachable["hits"], cachable["lookups"]),
                f"{line!r} shows {hits}/{lookups}, JSON {cachable['hits']}/{cachable['lookups']}",
            )
