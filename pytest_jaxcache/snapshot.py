"""THE snapshot of a session: built once, at its end (on the controller, or the only
process), from every process's share (:class:`~pytest_jaxcache.worker_report.
WorkerReport`) and the cache's state; every figure of the report is computed here, once.
The terminal section, the ``-q`` line, the JSON file, the job summary and the timeline
only render it (:mod:`pytest_jaxcache.terminal`, :mod:`pytest_jaxcache.summary`,
:mod:`pytest_jaxcache.timeline`).

The snapshot is the JSON document. Schema ``pytest-jaxcache/report``, version 2
(additions keep the version; a removal or a change of meaning bumps it)::

    schema, version
    cache:    dir, source, store, mode, notices[], max_size_bytes,
              before{entries, bytes, jax_files, jax_bytes, digest} | null,
              after{...} | null, maintenance{...} | null,
              changed (the contents' digest changed) | null, digest | null
    jax:      {jax, jaxlib}
    totals:   counts of every program compiled: in tests, and outside tests
    cachable: counts of the work of tests not marked ``jax_errors`` (hit_rate's set)
    errors:   counts of tests marked ``jax_errors``
    hit_sources: {earlier session, this session, remote}: where the hits' entries came
              from (this session: written by another worker or test of this session)
    store:    what the store did, summed over processes (hits, writes, repaired, ...)
    remote:   null, or {url, namespace, mode, off (why it was turned off) | null, hits,
              misses, refused, prefetched, prefetched_used, uploads, upload_failures,
              not_uploaded, bytes_down, bytes_up, io_secs, foreign_names, oversized,
              manifests_ignored, errors[]}, summed over processes
    tests[]:  {nodeid, worker, markers[], started, wall_secs, outcome,
               phases{setup|call|teardown|collect: counts}}
    compiles[]: {name, outcome: hit|miss|uncachable|unwritten|uncached, secs, test, phase,
                 worker, key, refused, waited_secs, unwritten (a reasons code), detail,
                 source (a hit's: earlier session|this session|remote), lowered, why}
                (key: the cache key, "" when our store did not see it; lowered: whether
                JAX lowered it, false when the lowering tier served its module; why: why
                it was compiled rather than served, in words, "" on a hit)
    not_written[]: {code, reason, count, secs, examples[], remedy}: compiled and not
                 written, by reason (remedy: what would keep such programs, or "")
    misses[]: {reason, cause: new|refused|key parts|constants|program|environment|
               unexplained,
               parts[] (the key parts that differ), count, examples[], tests[] (for the
               cause no code change explains: constants)}
    uncachable_tests[]: {nodeid, outside, marked, programs[]} (outside: import/collection)
    unneeded_markers[]: nodeids marked jax_errors whose programs were all cachable
    slowest_compiling[]: {nodeid, phase, compile_secs, compiled, hits, retrieval_secs}
    slowest_loading[]: the same, for phases whose time went to loading hits
    phases_compiling, phases_loading: how many phases compiled, or mostly loaded
    shard:    null, or {index, count, tests, collected, predicted_secs (the sum of its
              tests' predicted costs), history (tests known), tests_secs (what they
              took), wall_secs (the session's wall)}
    lowering: null (--jax-cache-lowering=off), or {mode: on|verify, ran (whether the tier
              ran in any process), hits, misses, stored, not_stored{reason: count},
              verified, relocated (of verified: but for debug locations), mismatched,
              mismatches[] (program, key, diff command), checked,
              check_failed, saved_secs, serve_secs, lower_secs, errors[]}, summed over
              processes
    workers:  {id: {store{...}, tests, misses[] (its own: {key, reason, cause, parts}),
              installed{store, jax, jaxlib}}}
    lost_workers[]
    cache_warnings[], listener_errors[]

``counts`` is {requests, hits, misses, uncachable, unwritten, uncached, compile_secs,
outside_secs, retrieval_secs, saved_secs, saved_unknown, wait_secs, trace_secs, lower_secs}
and, in totals/cachable/errors, programs (every compile), lookups (hits + misses),
hit_rate (hits / lookups), outside (uncachable + unwritten + uncached, whose compile
time is outside_secs) and inside_secs (compile time of the cachable programs:
compile_secs - outside_secs); times in seconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass, replace
from typing import Any

from pytest_jaxcache import reasons
from pytest_jaxcache.environment import namespace
from pytest_jaxcache.keys import file_name
from pytest_jaxcache.markers import ERRORS
from pytest_jaxcache.reasons import HIT, MISS, UNCACHABLE, UNWRITTEN, Miss
from pytest_jaxcache.recorder import OUTSIDE_TESTS, CompileRecord, Counts, TestRecord
from pytest_jaxcache.stats import LoweringStats, RemoteStats, StoreStats
from pytest_jaxcache.worker_report import WorkerReport

SCHEMA = "pytest-jaxcache/report"
VERSION = 2
_EXAMPLES = 3


@dataclass(frozen=True)
class CacheState:
    """What the session knows of the cache itself (the ``cache`` section)."""

    where: str
    source: str
    mode: str
    notices: tuple[str, ...] = ()
    max_size_bytes: int | None = None
    before: Any = None  # maintenance.Usage | None
    after: Any = None
    maintenance: Any = None  # maintenance.MaintenanceResult | None
    durations: int = 10  # how many slowest phases to keep (0: all, -1: none)
    wall_secs: float = 0.0  # the session's wall time so far
    lowering: str = "off"  # --jax-cache-lowering


@dataclass(frozen=True)
class RemoteState:
    """The remote tier, when there is one."""

    url: str
    mode: str


def hit_rate(counts: Counts) -> float | None:
    """Hits over cachable lookups (hits and misses: programs the cache serves or was
    given). Programs compiled outside the cachable set (host callbacks, not written,
    cache off) are counted apart, with their compile time."""
    lookups = counts.hits + counts.misses
    return None if lookups == 0 else counts.hits / lookups


def _counts_json(counts: Counts) -> dict[str, Any]:
    return {
        **asdict(counts),
        "programs": counts.compiles,
        "lookups": counts.hits + counts.misses,
        "hit_rate": hit_rate(counts),
        "outside": counts.uncachable + counts.unwritten + counts.uncached,
        "inside_secs": counts.compile_secs - counts.outside_secs,
    }


def _plain(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value


def build(
    shares: Mapping[str, WorkerReport],
    *,
    cache: CacheState,
    remote: RemoteState | None = None,
    lost_workers: Sequence[str] = (),
) -> dict[str, Any]:
    """The snapshot of a session: ``shares`` maps each process (``""``: the controller
    or the only process; else the xdist worker id) to what it did."""
    ordered = sorted(shares.items())
    tests = _merge_tests(ordered)
    prefetched = {name for _, share in ordered for name in share.prefetched}
    compiles = [_sourced(c, prefetched) for _, share in ordered for c in share.records.compiles]
    misses = {(worker, miss.key): miss for worker, share in ordered for miss in share.misses}

    def miss_of(record: CompileRecord) -> Miss | None:
        return misses.get((record.worker, record.key)) if record.outcome == MISS else None

    totals, cachable, errors = Counts(), Counts(), Counts()
    for record in tests:
        total = record.total()
        totals.add(total)
        (errors if ERRORS in record.markers else cachable).add(total)
    store = StoreStats()
    for _, share in ordered:
        store.add(share.store)
    installed = next((s.installed for _, s in ordered if s.installed is not None), None)
    fingerprint = next((s.fingerprint for _, s in ordered if s.fingerprint), {})
    notices = list(cache.notices)
    for _, share in ordered:
        notices += [notice for notice in share.notices if notice not in notices]
    slowest_compiling, compiling = _slowest(tests, cache.durations, loading=False)
    slowest_loading, loading = _slowest(tests, cache.durations, loading=True)
    jax_version = None if installed is None else installed.jax
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "cache": {
            "dir": cache.where,
            "source": cache.source,
            "store": "none (JAX never imported)" if installed is None else installed.store,
            "mode": cache.mode,
            "notices": notices,
            "max_size_bytes": cache.max_size_bytes,
            "before": _plain(cache.before),
            "after": _plain(cache.after),
            "maintenance": _plain(cache.maintenance),
            "changed": _changed(cache),
            "digest": None if cache.after is None else cache.after.digest,
        },
        "jax": {
            "jax": jax_version,
            "jaxlib": None if installed is None else installed.jaxlib,
        },
        "totals": _counts_json(totals),
        "cachable": _counts_json(cachable),
        "errors": _counts_json(errors),
        "hit_sources": _hit_sources(compiles),
        "store": asdict(store),
        "remote": _remote(remote, ordered, compiles, fingerprint, prefetched),
        "tests": [_test_json(record) for record in tests],
        "compiles": [
            {
                **asdict(c),
                "why": reasons.why_compiled(c.outcome, c.unwritten, c.detail, miss_of(c)),
            }
            for c in compiles
        ],
        "not_written": _not_written(compiles, jax_version),
        "misses": _misses(compiles, miss_of),
        "uncachable_tests": _uncachable_tests(tests, compiles),
        "unneeded_markers": _unneeded_markers(tests),
        "slowest_compiling": slowest_compiling,
        "slowest_loading": slowest_loading,
        "phases_compiling": compiling,
        "phases_loading": loading,
        "workers": {
            worker: {
                "store": asdict(share.store),
                "tests": sum(r.nodeid != OUTSIDE_TESTS for r in share.records.tests),
                "misses": [{**asdict(miss), "parts": list(miss.parts)} for miss in share.misses],
                "installed": None if share.installed is None else asdict(share.installed),
            }
            for worker, share in ordered
            if worker
        },
        "shard": _shard(ordered, tests, cache.wall_secs),
        "lowering": _lowering(cache.lowering, ordered),
        "lost_workers": list(lost_workers),
        "cache_warnings": [w for _, s in ordered for w in s.records.cache_warnings],
        "listener_errors": [e for _, s in ordered for e in s.records.listener_errors],
    }


def _merge_tests(ordered: list[tuple[str, WorkerReport]]) -> list[TestRecord]:
    """Every test once: a test runs in one process, the work outside tests in each."""
    merged: dict[str, TestRecord] = {}
    for _, share in ordered:
        for test in share.records.tests:
            record = merged.get(test.nodeid)
            if record is None:
                merged[test.nodeid] = TestRecord(
                    test.nodeid,
                    {phase: Counts.from_dict(asdict(c)) for phase, c in test.phases.items()},
                    list(test.markers),
                    "" if test.nodeid == OUTSIDE_TESTS else test.worker,  # every process's
                    test.started,
                    test.wall_secs,
                    test.outcome,
                )
                continue
            for phase, counts in test.phases.items():
                record.phases.setdefault(phase, Counts()).add(counts)
            record.markers = sorted(set(record.markers) | set(test.markers))
    return list(merged.values())


def _test_json(record: TestRecord) -> dict[str, Any]:
    return {
        "nodeid": record.nodeid,
        "worker": record.worker,
        "markers": record.markers,
        "started": record.started,
        "wall_secs": record.wall_secs,
        "outcome": record.outcome,
        "phases": {phase: asdict(counts) for phase, counts in record.phases.items()},
    }


def _shard(
    ordered: list[tuple[str, WorkerReport]], tests: list[TestRecord], wall_secs: float
) -> dict[str, Any] | None:
    """Which shard ran, how many tests it had, what it predicted and what it took."""
    selected = next((s.shard for _, s in ordered if s.shard is not None), None)
    if selected is None:
        return None
    ran = [t for t in tests if t.nodeid != OUTSIDE_TESTS and t.outcome]
    return {**selected, "tests_secs": sum(t.wall_secs for t in ran), "wall_secs": wall_secs}


def _lowering(mode: str, ordered: list[tuple[str, WorkerReport]]) -> dict[str, Any] | None:
    """The lowering tier's figures, summed over the processes it ran in."""
    if mode == "off":
        return None
    summed = LoweringStats()
    for _, share in ordered:
        if share.lowering is not None:
            summed.add(share.lowering)
    ran = any(share.lowering is not None for _, share in ordered)
    return {"mode": mode, "ran": ran, **asdict(summed)}


def _changed(cache: CacheState) -> bool | None:
    if cache.before is None or cache.after is None:
        return None
    return bool(cache.before.digest != cache.after.digest)


def _hit_sources(compiles: list[CompileRecord]) -> dict[str, int]:
    found = Counter(c.source or reasons.EARLIER for c in compiles if c.outcome == HIT)
    return {source: found.get(source, 0) for source in reasons.HIT_SOURCES}


def _sourced(record: CompileRecord, prefetched: set[str]) -> CompileRecord:
    """``record``, a hit on an entry that a process of this session downloaded ahead
    saying it came from the remote (the file keeps its writer's time, which says "an
    earlier session", and another process may have read it)."""
    if record.outcome != HIT or record.source != reasons.EARLIER or not record.key:
        return record
    if file_name(record.key) not in prefetched:
        return record
    return replace(record, source=reasons.REMOTE)


def _remote(
    remote: RemoteState | None,
    ordered: list[tuple[str, WorkerReport]],
    compiles: list[CompileRecord],
    fingerprint: Mapping[str, str],
    prefetched: set[str],
) -> dict[str, Any] | None:
    if remote is None:
        return None
    stats = RemoteStats()
    for _, share in ordered:
        stats.add(share.remote)
    hit = {file_name(c.key) for c in compiles if c.outcome == HIT and c.key}
    stats.prefetched_used = len(prefetched & hit)
    off = next((s.remote_off for _, s in ordered if s.remote_off), "")
    return {
        "url": remote.url,
        "namespace": namespace(fingerprint) if fingerprint else None,
        "mode": remote.mode,
        "off": off or None,
        **asdict(stats),
    }


def _not_written(compiles: list[CompileRecord], jax_version: str | None) -> list[dict[str, Any]]:
    """Programs compiled with the cache on and not written, grouped by why, the
    costliest group first, each with its remedy where there is one."""
    groups: dict[str, dict[str, Any]] = {}
    for record in compiles:
        if record.outcome not in (UNCACHABLE, UNWRITTEN):
            continue
        why = reasons.not_written(record.unwritten, record.detail)
        group = groups.setdefault(
            why,
            {
                "code": record.unwritten or reasons.UNKNOWN,
                "reason": why,
                "count": 0,
                "secs": 0.0,
                "examples": [],
                "remedy": _remedy(record.unwritten, jax_version),
            },
        )
        group["count"] += 1
        group["secs"] += record.secs
        if len(group["examples"]) < _EXAMPLES and record.name not in group["examples"]:
            group["examples"].append(record.name)
    return sorted(groups.values(), key=lambda group: group["secs"], reverse=True)


def _remedy(code: str, jax_version: str | None) -> str:
    if code == reasons.HOST_CALLBACKS and not _before_0_11(jax_version):
        return ""  # this JAX writes them: what kept them out is elsewhere
    return reasons.REMEDIES.get(code, "")


def _before_0_11(version: str | None) -> bool:
    try:
        major, minor = (int(part) for part in (version or "").split(".")[:2])
    except ValueError:
        return True
    return (major, minor) < (0, 11)


def _misses(compiles: list[CompileRecord], miss_of: Any) -> list[dict[str, Any]]:
    """Misses grouped by reason, most frequent first: one per missed compile."""
    groups: dict[str, dict[str, Any]] = {}
    for record in compiles:
        if record.outcome != MISS:
            continue
        miss: Miss | None = miss_of(record)
        if miss is None:
            miss = Miss(record.key, reasons.NOT_EXPLAINED, reasons.UNEXPLAINED)
        group = groups.setdefault(
            miss.reason,
            {
                "reason": miss.reason,
                "cause": miss.cause,
                "parts": list(miss.parts),
                "count": 0,
                "examples": [],
                "tests": [],
            },
        )
        group["count"] += 1
        if len(group["examples"]) < _EXAMPLES and record.name not in group["examples"]:
            group["examples"].append(record.name)
        if miss.cause in reasons.UNSTABLE and record.test not in group["tests"]:
            group["tests"].append(record.test)
    return sorted(groups.values(), key=lambda group: (-group["count"], group["reason"]))


def _uncachable_tests(
    tests: list[TestRecord], compiles: list[CompileRecord]
) -> list[dict[str, Any]]:
    """Tests (and work outside tests: ``outside`` true) that compiled uncachable programs."""
    marked = {record.nodeid for record in tests if ERRORS in record.markers}
    programs: dict[str, list[str]] = {}
    for record in compiles:
        if record.outcome == UNCACHABLE:
            names = programs.setdefault(record.test, [])
            if record.name not in names:
                names.append(record.name)
    return [
        {
            "nodeid": nodeid,
            "outside": nodeid == OUTSIDE_TESTS,
            "marked": nodeid in marked,
            "programs": names,
        }
        for nodeid, names in programs.items()
    ]


def _unneeded_markers(tests: list[TestRecord]) -> list[str]:
    """Marked tests whose programs were all cachable: on a JAX that caches host
    callbacks (0.11+), or with checks that use none, the marker buys nothing."""
    unneeded = []
    for record in tests:
        total = record.total()
        if ERRORS in record.markers and total.uncachable == 0 and total.requests:
            unneeded.append(record.nodeid)
    return unneeded


def _slowest(
    tests: list[TestRecord], durations: int, *, loading: bool
) -> tuple[list[dict[str, Any]], int]:
    """The test phases that spent most time compiling (``loading``: whose time went to
    loading hits, more than to compiling), busiest first, ``durations`` of them (0: all,
    -1: none); and how many such phases there were."""
    rows: list[dict[str, Any]] = []
    for record in tests:
        for phase, counts in record.phases.items():
            compiled = counts.misses + counts.uncachable + counts.unwritten + counts.uncached
            if loading and not (counts.hits and counts.retrieval_secs > counts.compile_secs):
                continue
            if not loading and not compiled:
                continue
            rows.append(
                {
                    "nodeid": record.nodeid,
                    "phase": phase,
                    "compile_secs": counts.compile_secs,
                    "retrieval_secs": counts.retrieval_secs,
                    "compiled": compiled,
                    "hits": counts.hits,
                }
            )
    key = "retrieval_secs" if loading else "compile_secs"
    rows.sort(key=lambda row: (-row[key], row["nodeid"], row["phase"]))
    if durations < 0:
        return [], len(rows)
    return (rows if durations == 0 else rows[:durations]), len(rows)


def unmarked_uncachable(snapshot: Mapping[str, Any]) -> list[str]:
    """Tests not marked ``jax_errors`` that compiled uncachable programs."""
    return [
        test["nodeid"]
        for test in snapshot["uncachable_tests"]
        if not test["marked"] and not test["outside"]
    ]
