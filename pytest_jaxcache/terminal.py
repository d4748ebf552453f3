"""The snapshot as terminal lines: the ``jax compilation cache`` section and, with
``-q``, one line. Pure: every figure is the snapshot's (:mod:`pytest_jaxcache.snapshot`);
only words and formats are added here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_jaxcache.formats import format_rate, format_secs, format_size
from pytest_jaxcache.markers import ERRORS
from pytest_jaxcache.reasons import EARLIER, REMOTE, THIS_SESSION

Snapshot = Mapping[str, Any]

# Entries found and not loaded: store statistic, what the report says of them.
_REFUSED = (
    ("untrusted", "entries not loaded: untrusted (unsigned, badly signed, or writable by others)"),
    ("foreign", "entries not loaded: written on another machine"),
    ("wrong_key", "entries under another program's key removed"),
    ("odd_files", "odd files where entries should be (unreadable, oversized, links, FIFOs)"),
    ("resigned", "entries signed with an old key signed again with the current one"),
)
_SOURCES = (
    (EARLIER, "from earlier sessions"),
    (THIS_SESSION, "from entries written earlier in this session (by another worker or test)"),
    (REMOTE, "from the remote"),
)


def lookups_hit(snapshot: Snapshot) -> str:
    """``273/273 lookups hit (100.0%)``, with what it counts when jax_errors tests are
    apart: the one wording of the hit rate, on the section and the quiet line."""
    cachable, errors = snapshot["cachable"], snapshot["errors"]
    text = (
        f"{cachable['hits']}/{cachable['lookups']} lookups hit "
        f"({format_rate(cachable['hit_rate'])})"
    )
    if errors["programs"]:
        text += (
            f" outside {ERRORS} tests ({errors['programs']} programs there, "
            f"{format_secs(errors['compile_secs'])} compiling)"
        )
    return text


def compiled_outside(totals: Mapping[str, Any]) -> str:
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
        f"({format_secs(totals['outside_secs'])}: {detail})"
    )


def saved(counts: Mapping[str, Any]) -> str:
    """``, 20.55s saved`` ("" without hits)."""
    if counts["hits"] == 0:
        return ""
    if counts["saved_unknown"] == counts["hits"]:
        return ", compile time saved unknown"
    partial = " (at least)" if counts["saved_unknown"] else ""
    return f", {format_secs(counts['saved_secs'])} saved{partial}"


def quiet_line(snapshot: Snapshot) -> str:
    totals = snapshot["totals"]
    outside = compiled_outside(totals)
    return (
        f"jax cache: {lookups_hit(snapshot)}, "
        f"{format_secs(totals['inside_secs'])} compiling"
        f"{saved(snapshot['cachable'])}{'; ' + outside if outside else ''} - "
        f"{snapshot['cache']['dir']}"
    )


def render(snapshot: Snapshot, *, verbosity: int) -> list[str]:
    """Terminal lines for the ``jax compilation cache`` section (one with ``-q``)."""
    if verbosity < 0:
        return [quiet_line(snapshot)] + [f"jax cache: {p}" for p in problems(snapshot)]
    cache, totals = snapshot["cache"], snapshot["totals"]
    lines = [
        f"cache: {cache['dir']} (from {cache['source']}), {cache['store']}, {cache['mode']}",
        f"compiles: {totals['programs']} programs: {totals['hits']} hits, "
        f"{totals['misses']} misses, {totals['uncachable']} uncachable, "
        f"{totals['unwritten']} not written, {totals['uncached']} with the cache off",
    ]
    lines += _sources(snapshot)
    lines.append(f"hit rate: {lookups_hit(snapshot)}")
    lines.append(
        f"time: {format_secs(totals['compile_secs'])} compiling{_outside_time(totals)}, "
        f"{format_secs(totals['retrieval_secs'])} loading hits{saved(snapshot['cachable'])}"
        f"{_waits(totals)}; {format_secs(totals['trace_secs'])} tracing, "
        f"{format_secs(totals['lower_secs'])} lowering"
    )
    lines += _store_lines(snapshot)
    lines += _remote_lines(snapshot)
    if snapshot["shard"] is not None:
        lines.append(f"shard: {shard_figures(snapshot['shard'])}")
    lines += _lowering_lines(snapshot)
    lines += _slowest(snapshot, loading=False)
    lines += _slowest(snapshot, loading=True)
    lines += _uncachable_lines(snapshot)
    if snapshot["unneeded_markers"]:
        lines.append(
            f"marked {ERRORS}, yet every program was cachable (the marker may be unneeded): "
            + ", ".join(snapshot["unneeded_markers"][:5])
        )
    lines += _not_written_lines(snapshot)
    lines += _miss_lines(snapshot)
    if verbosity > 0:
        lines += _contents_line(cache)
        lines += _worker_lines(snapshot)
    lines += [f"notice: {problem}" for problem in problems(snapshot)]
    return lines


def shard_figures(shard: Mapping[str, Any]) -> str:
    """Which shard ran, its share of the tests, what was predicted and what it took."""
    return (
        f"{shard['index']} of {shard['count']}, {shard['tests']} of {shard['collected']} tests "
        f"({shard['history']} known from earlier sessions); predicted "
        f"{format_secs(shard['predicted_secs'])}, the tests took {format_secs(shard['tests_secs'])}"
    )


def lowering_figures(lowering: Mapping[str, Any]) -> str:
    """What the lowering tier did, in one line."""
    # Not stored counts programs never looked up (no exact key) and misses that were
    # not written: no sum of these figures is another of them.
    not_stored = sum(lowering["not_stored"].values())
    line = (
        f"{lowering['hits']} modules served, {lowering['misses']} missed, "
        f"{lowering['stored']} stored, {not_stored} not stored; "
        f"{format_secs(lowering['saved_secs'])} saved"
    )
    if lowering["mode"] == "verify":
        line += (
            f"; verify: {lowering['verified']} identical to a fresh lowering "
            f"({lowering['relocated']} but for debug locations), "
            f"{lowering['mismatched']} differed"
        )
    if lowering["check_failed"]:
        line += f"; {lowering['check_failed']} failed the key check (not served again)"
    return line


def _lowering_lines(snapshot: Snapshot) -> list[str]:
    lowering = snapshot["lowering"]
    if lowering is None:
        return []
    if not lowering["ran"]:
        return [f"lowering: {lowering['mode']}, did not run (see the notices)"]
    lines = [f"lowering: {lowering['mode']}, {lowering_figures(lowering)}"]
    if lowering["not_stored"]:
        ranked = sorted(lowering["not_stored"].items(), key=lambda item: (-item[1], item[0]))
        lines.append("  not stored: " + ", ".join(f"{n} {why}" for why, n in ranked))
    lines += [f"  differed: {line}" for line in lowering["mismatches"]]
    lines += [f"  note: {error}" for error in lowering["errors"][:3]]
    return lines


def _sources(snapshot: Snapshot) -> list[str]:
    """Where hits came from, when not all from earlier sessions (a cold run's hits)."""
    sources = snapshot["hit_sources"]
    if not any(sources[name] for name, _ in _SOURCES[1:]):
        return []
    shown = [f"{sources[name]} {words}" for name, words in _SOURCES if sources[name]]
    return ["hits: " + ", ".join(shown)]


def _outside_time(totals: Mapping[str, Any]) -> str:
    if not totals["outside"]:
        return ""
    return f" ({format_secs(totals['outside_secs'])} of it outside the cachable set)"


def _waits(totals: Mapping[str, Any]) -> str:
    waited = totals["wait_secs"]
    return f", {format_secs(waited)} waiting for other workers' compiles" if waited else ""


def usage(usage: Mapping[str, Any] | None) -> str:
    if usage is None:
        return "?"
    return f"{usage['entries']} entries, {format_size(usage['bytes'])}"


def _store_lines(snapshot: Snapshot) -> list[str]:
    cache, store = snapshot["cache"], snapshot["store"]
    cap = cache["max_size_bytes"]
    maintenance = cache["maintenance"] or {}
    line = f"store: {usage(cache['before'])} before -> {usage(cache['after'])} after"
    line += f" (cap {format_size(cap)})" if cap else " (no cap)"
    line += (
        f"; {store['writes']} written, {maintenance.get('evicted', 0)} evicted, "
        f"{maintenance.get('pruned', 0)} pruned, {store['repaired']} repaired"
    )
    extra = []
    if store["waited_hits"]:
        extra.append(
            f"{store['waited_hits']} programs taken from another worker's compile "
            f"({format_secs(store['wait_secs'])} waiting)"
        )
    extra += [f"{store[name]} {what}" for name, what in _REFUSED if store[name]]
    if store["skipped_writes"]:
        extra.append(f"{store['skipped_writes']} writes skipped (read-only)")
    if store["write_errors"]:
        extra.append(f"{store['write_errors']} writes failed")
    if store["lock_timeouts"]:
        extra.append(f"{store['lock_timeouts']} lock waits timed out")
    if maintenance and not maintenance.get("ran", True) and maintenance.get("reason"):
        extra.append(f"maintenance skipped: {maintenance['reason']}")
    extra += list(maintenance.get("dropped_reasons", []))
    after = cache["after"] or cache["before"] or {}
    if after.get("jax_files"):
        extra.append(
            f"{after['jax_files']} files of JAX's own store "
            f"({format_size(after['jax_bytes'])}) count toward the cap; never loaded"
        )
    return [line + (f"; {'; '.join(extra)}" if extra else "")]


def remote_figures(remote: Mapping[str, Any]) -> str:
    """What the session did with the remote tier, in one line."""
    return (
        f"{remote['hits']} hits, {remote['prefetched']} prefetched "
        f"({remote['prefetched_used']} used), {remote['uploads']} uploaded, "
        f"{remote['upload_failures']} uploads failed, {remote['not_uploaded']} not uploaded, "
        f"{remote['refused']} refused; {format_size(remote['bytes_down'])} down, "
        f"{format_size(remote['bytes_up'])} up, {format_secs(remote['io_secs'])} remote I/O"
    )


def _remote_lines(snapshot: Snapshot) -> list[str]:
    remote = snapshot["remote"]
    if remote is None:
        return []
    namespace = remote["namespace"] or "?"
    state = f"off: {remote['off']}" if remote["off"] else "on"
    return [
        f"remote: {remote['url']} (namespace {namespace}, {remote['mode']}, {state}): "
        + remote_figures(remote)
    ]


def _slowest(snapshot: Snapshot, *, loading: bool) -> list[str]:
    rows = snapshot["slowest_loading" if loading else "slowest_compiling"]
    if not rows:
        return []
    total = snapshot["phases_loading" if loading else "phases_compiling"]
    title = "slowest loading" if loading else "slowest compiling"
    lines = [f"{title} ({len(rows)} of {total} test phases):"]
    for row in rows:
        secs = row["retrieval_secs"] if loading else row["compile_secs"]
        lines.append(
            f"  {format_secs(secs):>8} {row['phase']:<8} {row['nodeid']}  "
            f"({row['compiled']} compiled, {row['hits']} from cache)"
        )
    return lines


def _uncachable_lines(snapshot: Snapshot) -> list[str]:
    tests = snapshot["uncachable_tests"]
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


def _not_written_lines(snapshot: Snapshot) -> list[str]:
    if not snapshot["not_written"]:
        return []
    lines = ["compiled and not written, by reason:"]
    for group in snapshot["not_written"]:
        lines.append(
            f"  {group['count']:>5} {group['reason']} ({format_secs(group['secs'])}; "
            f"e.g. {', '.join(group['examples'])})"
        )
        if group["remedy"]:
            lines.append(f"        remedy: {group['remedy']}")
    return lines


def _miss_lines(snapshot: Snapshot) -> list[str]:
    if not snapshot["misses"]:
        return []
    lines = ["why programs missed:"]
    for miss in snapshot["misses"]:
        lines.append(f"  {miss['count']:>5} {miss['reason']} (e.g. {', '.join(miss['examples'])})")
        if miss["tests"]:
            shown = ", ".join(miss["tests"][:5])
            more = f" and {len(miss['tests']) - 5} more" if len(miss["tests"]) > 5 else ""
            lines.append(f"        in {shown}{more}")
    return lines


def _contents_line(cache: Mapping[str, Any]) -> list[str]:
    """Whether the session changed what the cache holds: a CI job saves it only then."""
    if cache["changed"] is None:
        return []
    state = "changed" if cache["changed"] else "unchanged"
    return [f"cache contents: {state} (digest {cache['digest']})"]


def _worker_lines(snapshot: Snapshot) -> list[str]:
    lines = []
    for worker, info in sorted(snapshot["workers"].items()):
        store = info["store"]
        lines.append(
            f"worker {worker}: {info['tests']} tests, {store['hits']} hits, "
            f"{store['writes']} written, {store['waited_hits']} waited"
        )
    return lines


def _remote_refusals(remote: Mapping[str, Any]) -> list[str]:
    """What the bucket held that was refused, in one line (none: nothing refused)."""
    refused = [
        (remote["foreign_names"], "names that are not entry names"),
        (remote["oversized"], "objects too large to be entries"),
        (remote["manifests_ignored"], "manifests ignored"),
    ]
    said = [f"{count} {words}" for count, words in refused if count]
    return [f"remote {remote['url']} held what was refused: {', '.join(said)}"] if said else []


def problems(snapshot: Snapshot) -> list[str]:
    """The notices: what went wrong or was turned off, one line each."""
    found = list(snapshot["cache"]["notices"])
    remote = snapshot["remote"]
    if remote is not None:
        if remote["off"]:
            found.append(f"remote {remote['url']} turned off: {remote['off']}")
        found += _remote_refusals(remote)
        found += [f"remote: {error}" for error in remote["errors"][:3]]
    for worker in snapshot["lost_workers"]:
        found.append(f"worker {worker} crashed: its compile records are missing")
    warnings = snapshot["cache_warnings"]
    if warnings:
        found.append(f"{len(warnings)} cache read/write warnings from JAX, e.g. {warnings[0]}")
    for error in snapshot["store"]["errors"][:3]:
        found.append(f"store: {error}")
    if snapshot["listener_errors"]:
        found.append(f"accounting failed {len(snapshot['listener_errors'])} times")
    return found
