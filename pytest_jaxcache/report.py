"""Render a session's compile records: the JSON document and the terminal section.

Pure functions. :func:`build` turns records into the JSON document (schema below);
:func:`render` turns that document into terminal lines, so that both always agree.

JSON schema ``pytest-jaxcache/report``, version 1 (additions keep the version; a
removal or a change of meaning bumps it)::

    schema, version
    cache:    dir, source, store, mode, notices[], max_size_bytes,
              before{entries, bytes, jax_files, jax_bytes, digest} | null,
              after{...} | null, maintenance{...} | null,
              changed (the contents' digest changed) | null, digest | null
    jax:      {jax, jaxlib}
    totals:   counts of every test and of work outside tests, plus hit_rate
    cachable: counts of unmarked tests' work (hit_rate excludes ``jax_errors`` tests)
    errors:   counts of tests marked ``jax_errors``
    store:    what the store did, summed over processes (hits, writes, repaired, ...)
    remote:   null, or {url, namespace, mode, off (why it was turned off) | null, hits,
              misses, refused, prefetched, prefetched_used, uploads, upload_failures,
              not_uploaded, bytes_down, bytes_up, io_secs, errors[]}, summed over processes
    tests[]:  {nodeid, worker, markers[], phases{setup|call|teardown|collect: counts}}
    compiles[]: {name, outcome: hit|miss|uncachable|unwritten|uncached, secs, test, phase,
                 worker, key, refused, waited_secs, unwritten, why}
                (key: the cache key, "" when our store did not see it; unwritten: why
                JAX or the store did not write it; why: why it was not served, "" on a hit)
    not_written[]: {reason, count, secs, examples[]}: compiled and not written, by reason
    uncachable_tests[]: {nodeid, outside, marked, programs[]} (outside: import/collection)
    unneeded_markers[]: nodeids marked jax_errors whose programs were all cachable
    misses[]: {reason, cause: new|refused|key parts|program|environment, parts[] (the
               key parts that differ), count, examples[]}
    workers:  {id: {store{...}, tests, misses[], installed{store, jax, jaxlib}}}
    lost_workers[]
    cache_warnings[], listener_errors[]

``counts`` is {requests, hits, misses, uncachable, unwritten, uncached, compile_secs,
outside_secs, retrieval_secs, saved_secs, saved_unknown, wait_secs, trace_secs, lower_secs}
and, in totals/cachable/errors, lookups (hits + misses), hit_rate (hits / lookups) and
outside (uncachable + unwritten + uncached, whose compile time is outside_secs); times in
seconds.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pytest_jaxcache.explain import MissGroup
from pytest_jaxcache.markers import ERRORS
from pytest_jaxcache.recorder import (
    HIT,
    MISS,
    OUTSIDE_TESTS,
    UNCACHABLE,
    UNCACHED,
    UNWRITTEN,
    CompileRecord,
    Counts,
    Recorder,
)
from pytest_jaxcache.settings import format_size

SCHEMA = "pytest-jaxcache/report"
VERSION = 1


def hit_rate(counts: Counts) -> float | None:
    """Hits over cachable lookups (hits and misses: programs the cache serves or was
    given). Programs compiled outside the cachable set (host callbacks, not written,
    cache off) are counted apart, with their compile time: the one arithmetic of every
    surface (terminal, JSON, job summary)."""
    lookups = counts.hits + counts.misses
    return None if lookups == 0 else counts.hits / lookups


def _counts_json(counts: Counts) -> dict[str, Any]:
    return {
        **asdict(counts),
        "lookups": counts.hits + counts.misses,
        "hit_rate": hit_rate(counts),
        "outside": counts.uncachable + counts.unwritten + counts.uncached,
    }


def build(
    recorder: Recorder,
    *,
    cache: dict[str, Any],
    jax_versions: dict[str, str | None],
    store_stats: dict[str, Any],
    misses: list[MissGroup],
    miss_reasons: dict[str, str],
    remote: dict[str, Any] | None = None,
    workers: dict[str, dict[str, Any]],
    lost_workers: list[str],
) -> dict[str, Any]:
    """The JSON document of one session."""
    totals, cachable, errors = Counts(), Counts(), Counts()
    tests = []
    for record in recorder.tests.values():
        total = record.total()
        totals.add(total)
        (errors if ERRORS in record.markers else cachable).add(total)
        if record.phases:
            tests.append(
                {
                    "nodeid": record.nodeid,
                    "worker": record.worker,
                    "markers": record.markers,
                    "phases": {phase: asdict(c) for phase, c in record.phases.items()},
                }
            )
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "cache": cache,
        "jax": jax_versions,
        "totals": _counts_json(totals),
        "cachable": _counts_json(cachable),
        "errors": _counts_json(errors),
        "store": store_stats,
        "remote": remote,
        "tests": tests,
        "compiles": [
            {**asdict(c), "why": why_compiled(c, miss_reasons)} for c in recorder.compiles
        ],
        "not_written": _not_written(recorder, miss_reasons),
        "uncachable_tests": _uncachable_tests(recorder),
        "unneeded_markers": _unneeded_markers(recorder),
        "misses": [
            {**asdict(group), "parts": list(group.parts), "examples": list(group.examples)}
            for group in misses
        ],
        "workers": workers,
        "lost_workers": lost_workers,
        "cache_warnings": recorder.cache_warnings,
        "listener_errors": recorder.listener_errors,
    }


# Why a program was compiled and not written when JAX did not say (older JAX, or a log
# record that did not reach us).
_DEFAULT_WHY = {
    UNCACHABLE: "it has host callbacks (jax.debug.print, callbacks, checks): never written",
    UNWRITTEN: "under --jax-cache-min-compile-time or --jax-cache-min-entry-size",
    UNCACHED: "compiled with the persistent cache off",
}


def why_compiled(record: CompileRecord, miss_reasons: dict[str, str]) -> str:
    """Why ``record``'s program was compiled rather than served ("" for a hit)."""
    if record.outcome == HIT:
        return ""
    if record.outcome == MISS:
        return miss_reasons.get(record.key, "")
    return record.unwritten or _DEFAULT_WHY[record.outcome]


def _not_written(recorder: Recorder, miss_reasons: dict[str, str]) -> list[dict[str, Any]]:
    """Programs compiled with the cache on and not written, grouped by why, the
    costliest group first."""
    groups: dict[str, dict[str, Any]] = {}
    for record in recorder.compiles:
        if record.outcome not in (UNCACHABLE, UNWRITTEN):
            continue
        why = why_compiled(record, miss_reasons)
        group = groups.setdefault(why, {"reason": why, "count": 0, "secs": 0.0, "examples": []})
        group["count"] += 1
        group["secs"] += record.secs
        if len(group["examples"]) < 3 and record.name not in group["examples"]:
            group["examples"].append(record.name)
    return sorted(groups.values(), key=lambda group: group["secs"], reverse=True)


def _uncachable_tests(recorder: Recorder) -> list[dict[str, Any]]:
    """Tests (and work outside tests: ``outside`` true) that compiled uncachable programs."""
    programs: dict[str, list[str]] = {}
    for compile_ in recorder.compiles:
        if compile_.outcome == UNCACHABLE:
            names = programs.setdefault(compile_.test, [])
            if compile_.name not in names:
                names.append(compile_.name)
    return [
        {
            "nodeid": nodeid,
            "outside": nodeid == OUTSIDE_TESTS,
            "marked": nodeid in recorder.tests and ERRORS in recorder.tests[nodeid].markers,
            "programs": names,
        }
        for nodeid, names in programs.items()
    ]


def _unneeded_markers(recorder: Recorder) -> list[str]:
    """Marked tests whose programs were all cachable: on a JAX that caches host
    callbacks (0.11+), or with checks that use none, the marker buys nothing."""
    unneeded = []
    for record in recorder.tests.values():
        total = record.total()
        if ERRORS in record.markers and total.uncachable == 0 and total.requests:
            unneeded.append(record.nodeid)
    return unneeded


def unmarked_uncachable(data: dict[str, Any]) -> list[str]:
    """Tests not marked ``jax_errors`` that compiled uncachable programs."""
    return [
        test["nodeid"]
        for test in data["uncachable_tests"]
        if not test["marked"] and not test["outside"]
    ]


# -- terminal ----------------------------------------------------------------------------


def _secs(value: float) -> str:
    return f"{value:.2f}s"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _usage(usage: dict[str, int] | None) -> str:
    if usage is None:
        return "?"
    return f"{usage['entries']} entries, {format_size(usage['bytes'])}"


def render(data: dict[str, Any], *, verbosity: int, durations: int) -> list[str]:
    """Terminal lines for the ``jax compilation cache`` section."""
    cache, totals, cachable = data["cache"], data["totals"], data["cachable"]
    saved = _saved(cachable)
    summary = (
        f"{cachable['hits']}/{cachable['lookups']} cachable lookups hit "
        f"({_rate(cachable['hit_rate'])}), "
        f"{_secs(totals['compile_secs'] - totals['outside_secs'])} compiling{saved}"
        f"{_outside(totals)} - {cache['dir']}"
    )
    if verbosity < 0:
        lines = [f"jax cache: {summary}"]
        lines += [f"jax cache: {notice}" for notice in _problems(data)]
        return lines

    lines = [
        f"cache: {cache['dir']} (from {cache['source']}), {cache['store']}, {cache['mode']}",
        f"compiles: {totals['requests'] + totals['uncached']} programs: "
        f"{totals['hits']} hits, {totals['misses']} misses, "
        f"{totals['uncachable']} uncachable, {totals['uncached']} with the cache off"
        + _unwritten(totals),
        f"hit rate: {_rate(cachable['hit_rate'])} of cachable lookups"
        + _errors_line(data["errors"]),
        f"time: {_secs(totals['compile_secs'])} compiling{_outside_time(totals)}, "
        f"{_secs(totals['retrieval_secs'])} loading hits{saved}{_waits(totals)}; "
        f"{_secs(totals['trace_secs'])} tracing, {_secs(totals['lower_secs'])} lowering",
    ]
    lines += _store_lines(data)
    lines += _remote_lines(data)
    lines += _slowest(data, durations)
    lines += _uncachable_lines(data)
    if data["unneeded_markers"]:
        lines.append(
            f"marked {ERRORS}, yet every program was cachable (the marker may be unneeded): "
            + ", ".join(data["unneeded_markers"][:5])
        )
    lines += _not_written_lines(data)
    lines += _miss_lines(data)
    if verbosity > 0:
        lines += _contents_line(data["cache"])
        lines += _worker_lines(data)
    lines += [f"notice: {problem}" for problem in _problems(data)]
    return lines


def compiled_outside(totals: dict[str, Any]) -> str:
    """``12 programs compiled outside the cachable set (136.43s: 11 uncachable, 1 not
    written)``: where a warm run's compile time goes ("" when nothing did)."""
    if not totals["outside"]:
        return ""
    kinds = [
        (totals["uncachable"], "uncachable"),
        (totals["unwritten"], "not written"),
        (totals["uncached"], "cache off"),
    ]
    detail = ", ".join(f"{count} {kind}" for count, kind in kinds if count)
    programs = "program" if totals["outside"] == 1 else "programs"
    return (
        f"{totals['outside']} {programs} compiled outside the cachable set "
        f"({_secs(totals['outside_secs'])}: {detail})"
    )


def _outside_time(totals: dict[str, Any]) -> str:
    outside = totals["outside_secs"]
    return f" ({_secs(outside)} of it outside the cachable set)" if totals["outside"] else ""


def _outside(totals: dict[str, Any]) -> str:
    outside = compiled_outside(totals)
    return f"; {outside}" if outside else ""


def _unwritten(totals: dict[str, Any]) -> str:
    if not totals["unwritten"]:
        return ""
    return f", {totals['unwritten']} not written (reasons below)"


def _waits(totals: dict[str, Any]) -> str:
    waited = totals.get("wait_secs", 0.0)
    return f", {_secs(waited)} waiting for other workers' compiles" if waited else ""


def _saved(counts: dict[str, Any]) -> str:
    if counts["hits"] == 0:
        return ""
    if counts["saved_unknown"] == counts["hits"]:
        return ", compile time saved unknown"
    partial = " (at least)" if counts["saved_unknown"] else ""
    return f", {_secs(counts['saved_secs'])} saved{partial}"


def _errors_line(errors: dict[str, Any]) -> str:
    if errors["requests"] + errors["uncached"] == 0:
        return ""
    return (
        f" (excludes {ERRORS} tests: {errors['requests'] + errors['uncached']} programs, "
        f"{_secs(errors['compile_secs'])} compiling)"
    )


def _store_lines(data: dict[str, Any]) -> list[str]:
    cache, store = data["cache"], data["store"]
    cap = cache.get("max_size_bytes")
    line = f"store: {_usage(cache.get('before'))} before -> {_usage(cache.get('after'))} after"
    line += f" (cap {format_size(cap)})" if cap else " (no cap)"
    maintenance = cache.get("maintenance") or {}
    line += (
        f"; {store.get('writes', 0)} written, {maintenance.get('evicted', 0)} evicted, "
        f"{maintenance.get('pruned', 0)} pruned, {store.get('repaired', 0)} repaired"
    )
    extra = []
    if store.get("waited_hits"):
        extra.append(
            f"{store['waited_hits']} programs taken from another worker's compile "
            f"({_secs(store.get('wait_secs', 0.0))} waiting)"
        )
    for name, what in _REFUSED:
        if store.get(name):
            extra.append(f"{store[name]} {what}")
    if store.get("skipped_writes"):
        extra.append(f"{store['skipped_writes']} writes skipped (read-only)")
    if store.get("write_errors"):
        extra.append(f"{store['write_errors']} writes failed")
    if store.get("lock_timeouts"):
        extra.append(f"{store['lock_timeouts']} lock waits timed out")
    if maintenance and not maintenance.get("ran", True) and maintenance.get("reason"):
        extra.append(f"maintenance skipped: {maintenance['reason']}")
    lines = [line] + ([f"store: {', '.join(extra)}"] if extra else [])
    lines += [f"store: {reason}" for reason in maintenance.get("dropped_reasons", [])]
    usage = cache.get("after") or cache.get("before") or {}
    if usage.get("jax_files"):
        lines.append(
            f"store: {usage['jax_files']} files of JAX's own store "
            f"({format_size(usage['jax_bytes'])}) count toward the cap; never loaded"
        )
    return lines


# Entries found and not loaded: store statistic, what the report says of them.
_REFUSED = (
    ("untrusted", "entries not loaded: untrusted (unsigned, badly signed, or writable by others)"),
    ("foreign", "entries not loaded: written on another machine"),
    ("wrong_key", "entries under another program's key removed"),
    ("odd_files", "odd files where entries should be (unreadable, links, FIFOs): skipped"),
)


def slowest_phases(
    data: dict[str, Any], durations: int
) -> tuple[list[tuple[float, str, str, int, dict[str, Any]]], int]:
    """The test phases that spent most time compiling and loading, busiest first:
    (busy seconds, nodeid, phase, programs compiled, counts); ``durations`` of them (0:
    all, -1: none), and how many phases compiled at all."""
    rows = []
    for test in data["tests"]:
        for phase, counts in test["phases"].items():
            busy = counts["compile_secs"] + counts["retrieval_secs"]
            compiled = counts["misses"] + counts["uncachable"] + counts["unwritten"]
            compiled += counts["uncached"]
            if counts["requests"] + counts["uncached"]:
                rows.append((busy, test["nodeid"], phase, compiled, counts))
    if durations < 0:
        return [], len(rows)
    rows.sort(key=lambda row: row[0], reverse=True)
    return (rows if durations == 0 else rows[:durations]), len(rows)


def remote_figures(remote: dict[str, Any]) -> str:
    """What the session did with the remote tier, in one line."""
    return (
        f"{remote['hits']} hits, {remote['prefetched']} prefetched "
        f"({remote['prefetched_used']} used), {remote['uploads']} uploaded, "
        f"{remote['upload_failures']} uploads failed, {remote['not_uploaded']} not uploaded, "
        f"{remote['refused']} refused; {format_size(remote['bytes_down'])} down, "
        f"{format_size(remote['bytes_up'])} up, {_secs(remote['io_secs'])} remote I/O"
    )


def _remote_lines(data: dict[str, Any]) -> list[str]:
    remote = data.get("remote")
    if remote is None:
        return []
    namespace = remote["namespace"] or "?"
    return [
        f"remote: {remote['url']} (namespace {namespace}, {remote['mode']}): "
        + remote_figures(remote)
    ]


def _slowest(data: dict[str, Any], durations: int) -> list[str]:
    shown, total = slowest_phases(data, durations)
    if not shown:
        return []
    lines = [f"slowest compiling ({len(shown)} of {total} test phases):"]
    for busy, nodeid, phase, compiled, counts in shown:
        lines.append(
            f"  {_secs(busy):>8} {phase:<8} {nodeid}  "
            f"({compiled} compiled, {counts['hits']} from cache)"
        )
    return lines


def _uncachable_lines(data: dict[str, Any]) -> list[str]:
    tests = data["uncachable_tests"]
    if not tests:
        return []
    lines = ["uncachable compiles (host callbacks: jax.debug.print/callback, io_callback, checks):"]
    for test in tests:
        programs = ", ".join(test["programs"][:5])
        if test["outside"]:
            lines.append(f"  {test['nodeid']} (import or collection): {programs}")
        elif test["marked"]:
            lines.append(f"  {test['nodeid']} [{ERRORS}]: {programs}")
        else:
            lines.append(
                f"  {test['nodeid']}: {programs}  "
                f"<- not marked: add @pytest.mark.{ERRORS} to run it apart"
            )
    return lines


def _miss_lines(data: dict[str, Any]) -> list[str]:
    if not data["misses"]:
        return []
    lines = ["why programs missed:"]
    for miss in data["misses"]:
        lines.append(f"  {miss['count']:>5} {miss['reason']} (e.g. {', '.join(miss['examples'])})")
    return lines


def _not_written_lines(data: dict[str, Any]) -> list[str]:
    if not data["not_written"]:
        return []
    lines = ["compiled and not written, by reason:"]
    for group in data["not_written"]:
        lines.append(
            f"  {group['count']:>5} {group['reason']} ({_secs(group['secs'])}; "
            f"e.g. {', '.join(group['examples'])})"
        )
    return lines


def _contents_line(cache: dict[str, Any]) -> list[str]:
    """Whether the session changed what the cache holds: a CI job saves it only then."""
    if cache.get("changed") is None:
        return []
    state = "changed" if cache["changed"] else "unchanged"
    return [f"cache contents: {state} (digest {cache['digest']})"]


def _worker_lines(data: dict[str, Any]) -> list[str]:
    lines = []
    for worker, info in sorted(data["workers"].items()):
        store = info.get("store", {})
        lines.append(
            f"worker {worker}: {info.get('tests', 0)} tests, {store.get('hits', 0)} hits, "
            f"{store.get('writes', 0)} written, {store.get('waited_hits', 0)} waited"
        )
    return lines


def _problems(data: dict[str, Any]) -> list[str]:
    problems = list(data["cache"].get("notices", []))
    remote = data.get("remote")
    if remote is not None and remote["off"]:
        problems.append(f"remote {remote['url']}: {remote['off']}")
    for worker in data["lost_workers"]:
        problems.append(f"worker {worker} crashed: its compile records are missing")
    warnings = data["cache_warnings"]
    if warnings:
        problems.append(f"{len(warnings)} cache read/write warnings from JAX, e.g. {warnings[0]}")
    for error in data["store"].get("errors", [])[:3]:
        problems.append(f"store: {error}")
    if data["listener_errors"]:
        problems.append(f"accounting failed {len(data['listener_errors'])} times")
    return problems
