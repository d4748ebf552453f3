"""The session as a Markdown section for a CI job summary (``$GITHUB_STEP_SUMMARY``).

Pure: made from the JSON document :func:`pytest_jaxcache.report.build` returns, with the
same figures (and the same arithmetic) as the terminal section.
"""

from __future__ import annotations

from typing import Any

from pytest_jaxcache.markers import ERRORS
from pytest_jaxcache.report import compiled_outside, remote_figures, slowest_phases
from pytest_jaxcache.settings import format_size

_SHOWN = 10  # rows of each table; the rest is counted


def _cell(text: object) -> str:
    """Table-safe text: a pipe would end the cell, a newline the row."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _code(text: object) -> str:
    return f"`{_cell(text).replace('`', chr(39))}`"


def _secs(value: float) -> str:
    return f"{value:.2f} s"


def _usage(usage: dict[str, Any] | None) -> str:
    if usage is None:
        return "?"
    return f"{usage['entries']} entries, {format_size(usage['bytes'])}"


def _table(header: list[str], align: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _contents(cache: dict[str, Any]) -> str:
    text = f"{_usage(cache.get('before'))} → {_usage(cache.get('after'))}"
    changed = cache.get("changed")
    if changed is None:
        return text
    state = "**changed**" if changed else "unchanged"
    digest = f" (digest {_code(cache['digest'])})" if cache.get("digest") else ""
    return f"{text}: {state}{digest}"


def markdown(data: dict[str, Any], *, durations: int = 10) -> str:
    """The job summary section of one session."""
    cache, totals, cachable = data["cache"], data["totals"], data["cachable"]
    rate = cachable["hit_rate"]
    maintenance = cache.get("maintenance") or {}
    store = data["store"]
    rows = [
        [
            "Hit rate",
            ("n/a" if rate is None else f"**{100 * rate:.1f}%**")
            + f" ({cachable['hits']}/{cachable['lookups']} cachable lookups)",
        ],
        ["Outside the cachable set", compiled_outside(totals) or "nothing compiled"],
        [
            "Time",
            f"{_secs(totals['compile_secs'] - totals['outside_secs'])} compiling cachable "
            f"programs, {_secs(totals['retrieval_secs'])} loading hits, "
            f"{_secs(cachable['saved_secs'])} saved",
        ],
        ["Cache", _cell(f"{cache['dir']} ({cache['store']}, {cache['mode']})")],
        ["Contents", _contents(cache)],
        [
            "Store",
            f"{store.get('writes', 0)} written, {maintenance.get('evicted', 0)} evicted, "
            f"{maintenance.get('dropped', 0)} dropped, {maintenance.get('pruned', 0)} pruned, "
            f"{store.get('repaired', 0)} repaired",
        ],
    ]
    remote = data.get("remote")
    if remote is not None:
        state = f"off: {remote['off']}" if remote["off"] else remote_figures(remote)
        rows.append(["Remote", _cell(f"{remote['url']} ({remote['mode']}): {state}")])
    lines = ["### JAX compilation cache", "", *_table(["", ""], ["---", "---"], rows), ""]
    lines += _slowest(data, durations)
    lines += _uncachable(data)
    lines += _not_written(data)
    lines += _misses(data)
    notices = list(cache.get("notices", []))
    if notices:
        lines += ["**Notices**", "", *(f"- {_cell(notice)}" for notice in notices), ""]
    return "\n".join(lines) + "\n"


def _slowest(data: dict[str, Any], durations: int) -> list[str]:
    rows, total = slowest_phases(data, durations)
    if not rows:
        return []
    table = [
        [_secs(busy), phase, _code(nodeid), str(compiled), str(counts["hits"])]
        for busy, nodeid, phase, compiled, counts in rows
    ]
    return [
        f"<details><summary>Slowest compiling test phases ({len(rows)} of {total})</summary>",
        "",
        *_table(
            ["compile + load", "phase", "test", "compiled", "from cache"],
            ["---:", "---", "---", "---:", "---:"],
            table,
        ),
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
            _secs(group["secs"]),
            ", ".join(_code(e) for e in group["examples"]),
        ]
        for group in data["not_written"]
    ]
    if not rows:
        return []
    header = ["programs", "why", "compiling", "for example"]
    return _section("Compiled and not written", header, ["---:", "---", "---:", "---"], rows)


def _misses(data: dict[str, Any]) -> list[str]:
    rows = [
        [str(miss["count"]), _cell(miss["reason"]), ", ".join(_code(e) for e in miss["examples"])]
        for miss in data["misses"]
    ]
    if not rows:
        return []
    header = ["programs", "why", "for example"]
    return _section("Why programs missed", header, ["---:", "---", "---"], rows)
