"""Drive a :class:`~pytest_jaxcache.recorder.Recorder` with the events JAX emits, and
turn recorders into snapshots: what the recorder and snapshot unit tests share."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from invariants import check

from pytest_jaxcache import markers, snapshot
from pytest_jaxcache.maintenance import MaintenanceResult, Usage
from pytest_jaxcache.reasons import HIT, MISS, UNCACHED, Miss
from pytest_jaxcache.recorder import (
    BACKEND_COMPILE_EVENT,
    HIT_EVENT,
    OUTSIDE_TESTS,
    REQUEST_EVENT,
    WRITE_EVENT,
    Counts,
    Recorder,
)
from pytest_jaxcache.stats import StoreStats
from pytest_jaxcache.worker_report import WorkerReport


def compile_(
    recorder: Recorder,
    name: str,
    outcome: str,
    secs: float,
    stored: float | None = None,
    *,
    source: str = "",
) -> None:
    """Emit the monitoring events JAX emits for one compile with ``outcome``."""
    if outcome != UNCACHED:
        recorder.on_event(REQUEST_EVENT)
        recorder.note_lookup(f"{name}-0123", stored if outcome == HIT else None, source=source)
    if outcome == HIT:
        recorder.on_event(HIT_EVENT)
    elif outcome == MISS:
        recorder.on_event(WRITE_EVENT)
    recorder.on_duration(BACKEND_COMPILE_EVENT, secs, fun_name=name)


@dataclass(frozen=True)
class Step:
    test: str
    phase: str
    markers: tuple[str, ...]
    name: str
    outcome: str
    secs: float
    stored: float | None = None


A, B, C, E, F = (f"tests/test_x.py::test_{x}" for x in "abcef")
ERR = (markers.ERRORS,)


def play(recorder: Recorder, steps: Sequence[Step]) -> None:
    """Drive ``recorder`` as the pytest hooks and JAX listeners would."""
    for step in steps:
        if step.test == OUTSIDE_TESTS:
            recorder.end()
        else:
            recorder.begin(step.test, step.phase, tuple(step.markers))
        compile_(recorder, step.name, step.outcome, step.secs, step.stored)
        recorder.end("passed")


def expected_counts(steps: Sequence[Step]) -> Counts:
    """What the recorder should count for ``steps``, computed independently."""
    counts = Counts()
    for step in steps:
        counts.requests += step.outcome != UNCACHED
        counts.hits += step.outcome == HIT
        counts.misses += step.outcome == MISS
        counts.uncachable += step.outcome == "uncachable"
        counts.unwritten += step.outcome == "unwritten"
        counts.uncached += step.outcome == UNCACHED
        if step.outcome == HIT:
            counts.retrieval_secs += step.secs
            if step.stored is None:
                counts.saved_unknown += 1
            else:
                counts.saved_secs += max(0.0, step.stored - step.secs)
        else:
            counts.compile_secs += step.secs
    return counts


def cache_state(**overrides: Any) -> snapshot.CacheState:
    """The cache's state as a session hands it to the snapshot."""
    values: dict[str, Any] = {
        "where": "/work/.jaxcache",
        "source": "ini jax_cache_dir",
        "mode": "readwrite",
        "max_size_bytes": 2**30,
        "before": Usage(2, 2048, digest="aaaa"),
        "after": Usage(5, 3 * 2**20, digest="bbbb"),
        "maintenance": MaintenanceResult(ran=True, evicted=1, pruned=2),
        "durations": 10,
    }
    values.update(overrides)
    return snapshot.CacheState(**values)


def share(
    recorder: Recorder, *, misses: Sequence[Miss] = (), store: StoreStats | None = None
) -> WorkerReport:
    """``recorder``'s process as a share of the session, shipped through JSON as a
    worker's is."""
    report = WorkerReport(
        records=recorder.export(), misses=list(misses), store=store or StoreStats()
    )
    return WorkerReport.from_builtins(json.loads(json.dumps(report.to_builtins())))


def build(
    shares: Recorder | Mapping[str, WorkerReport],
    *,
    misses: Sequence[Miss] = (),
    store: StoreStats | None = None,
    lost_workers: Sequence[str] = (),
    **cache: Any,
) -> dict[str, Any]:
    """The snapshot of ``shares`` (a recorder: the only process), with its invariants
    checked."""
    if isinstance(shares, Recorder):
        shares = {"": share(shares, misses=misses, store=store)}
    data = snapshot.build(shares, cache=cache_state(**cache), lost_workers=lost_workers)
    check(data)
    return data
