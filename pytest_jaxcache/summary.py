"""The session as a Markdown section for a CI job summary (``$GITHUB_STEP_SUMMARY``).

Pure: made from the snapshot (:mod:`pytest_jaxcache.snapshot`), with the same figures and
the same words as the terminal section.
"""

from __future__ import annotations

from typing import Any

from pytest_jaxcache.formats import format_secs
from pytest_jaxcache.markers import ERRORS
from pytest_jaxcache.terminal import (
    compiled_outside,
    lookups_hit,
    lowering_figures,
    remote_figures,
    saved,
    shard_figures,
    usage,
)

_SHOWN = 10  # rows of each table; the rest is counted


def _cell(text: object) -> str:
    """Table-safe text: a pipe would end the cell, a newline the row."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _code(text: object) -> str:
    return f"`{_cell(text).replace('`', chr(39))}`"


def _table(header: list[str], align: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _contents(cache: dict[str, Any]) -> str:
    text = f"{usage(cache['before'])} → {usage(cache['after'])}"
    changed = cache.get("changed")
    if changed is None:
        return text
    state = "**changed**" if changed else "unchanged"
    digest = f" (digest {_code(cache['digest'])})" if cache.get("digest") else ""
    return f"{text}: {state}{digest}"


def markdown(snapshot: dict[str, Any]) -> str:
    """The job summary section of one session."""
    cache, totals = snapshot["cache"], snapshot["totals"]
    maintenance = cache["maintenance"] or {}
    store = snapshot["store"]
    rows = [
        ["Hit rate", f"**{lookups_hit(snapshot)}**"],
        ["Outside the cachable set", compiled_outside(totals) or "nothing compiled"],
        [
            "Time",
            f"{format_secs(totals['inside_secs'])} compiling "
            f"cachable programs, {format_secs(totals['retrieval_secs'])} loading hits"
            f"{saved(snapshot['cachable'])}",
        ],
        ["Cache", _cell(f"{cache['dir']} ({cache['store']}, {cache['mode']})")],
        ["Contents", _contents(cache)],
        [
            "Store",
            f"{store['writes']} written, {maintenance.get('evicted', 0)} evicted, "
            f"{maintenance.get('dropped', 0)} dropped, {maintenance.get('pruned', 0)} pruned, "
            f"{store['repaired']} repaired",
        ],
    ]
    remote = snapshot["remote"]
    if remote is not None:
        state = f"off: {remote['off']}" if remote["off"] else remote_figures(remote)
        rows.append(["Remote", _cell(f"{remote['url']} ({remote['mode']}): {state}")])
    if snapshot["shard"] is not None:
        rows.append(["Shard", _cell(shard_figures(snapshot["shard"]))])
    lowering = snapshot["lowering"]
    if lowering is not None and lowering["ran"]:
        rows.append(["Lowering", _cell(f"{lowering['mode']}: {lowering_figures(lowering)}")])
    lines = ["### JAX compilation cache", "", *_table(["", ""], ["---", "---"], rows), ""]
    lines += _slowest(snapshot)
    lines += _timeline(snapshot)
    lines += _uncachable(snapshot)
    lines += _not_written(snapshot)
    lines += _misses(snapshot)
    if lowering is not None and lowering["mismatches"]:
        lines += ["**Lowered modules that differed from a fresh lowering**", ""]
        lines += [f"- {_code(line)}" for line in lowering["mismatches"]] + [""]
    notices = list(cache["notices"])
    if notices:
        lines += ["**Notices**", "", *(f"- {_cell(notice)}" for notice in notices), ""]
    return "\n".join(lines) + "\n"


def _slowest(snapshot: dict[str, Any]) -> list[str]:
    rows = snapshot["slowest_compiling"]
    if not rows:
        return []
    table = [
        [
            format_secs(row["compile_secs"]),
            row["phase"],
            _code(row["nodeid"]),
            str(row["compiled"]),
            str(row["hits"]),
        ]
        for row in rows
    ]
    title = f"Slowest compiling test phases ({len(rows)} of {snapshot['phases_compiling']})"
    return [
        f"<details><summary>{title}</summary>",
        "",
        *_table(
            ["compiling", "phase", "test", "compiled", "from cache"],
            ["---:", "---", "---", "---:", "---:"],
            table,
        ),
        "",
        "</details>",
        "",
    ]


def _timeline(snapshot: dict[str, Any]) -> list[str]:
    """The longest tests on a gantt chart (GitHub renders Mermaid)."""
    from pytest_jaxcache import timeline

    bars = timeline.bars_of(snapshot)
    if not bars:
        return []
    return [
        "<details><summary>Timeline of the longest tests</summary>",
        "",
        timeline.mermaid(bars),
        "",
        "</details>",
        "",
    ]


def _section(title: str, header: list[str], align: list[str], rows: list[list[str]]) -> list[str]:
    """A titled table of at most :data:`_SHOWN` rows, and how many more there were."""
    more = [f"_and {len(rows) - _SHOWN} more_", ""] if len(rows) > _SHOWN else []
    return [f"#### {title}", "", *_table(header, align, rows[:_SHOWN]), "", *more]


def _uncachable(data: dict[str, Any]) -> list[str]:
    rows = [
        [
            _code(test["nodeid"]),
            ", ".join(_code(p) for p in test["programs"][:5]),
            "import or collection"
            if test["outside"]
            else (f"marked {ERRORS}" if test["marked"] else f"**not marked {ERRORS}**"),
        ]
        for test in data["uncachable_tests"]
    ]
    if not rows:
        return []
    header = ["test", "programs", ""]
    return _section("Uncachable compiles (host callbacks)", header, ["---"] * 3, rows)


def _not_written(data: dict[str, Any]) -> list[str]:
    rows = [
        [
            str(group["count"]),
            _cell(group["reason"]),
            format_secs(group["secs"]),
            ", ".join(_code(e) for e in group["examples"]),
            _cell(group["remedy"]),
        ]
        for group in data["not_written"]
    ]
    if not rows:
        return []
    header = ["programs", "why", "compiling", "for example", "remedy"]
    align = ["---:", "---", "---:", "---", "---"]
    return _section("Compiled and not written", header, align, rows)


def _misses(data: dict[str, Any]) -> list[str]:
    rows = [
        [
            str(miss["count"]),
            _cell(miss["reason"]),
            ", ".join(_code(e) for e in miss["examples"]),
            ", ".join(_code(t) for t in miss["tests"][:5]),
        ]
        for miss in data["misses"]
    ]
    if not rows:
        return []
    header = ["programs", "why", "for example", "in tests"]
    return _section("Why programs missed", header, ["---:", "---", "---", "---"], rows)
