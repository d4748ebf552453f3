"""Bench 1: the examples suite, cold and warm, with and without the plugin.

Variants, all run in one copy of examples/ in a temporary directory:

- (a) no cache at all: ``-p no:jaxcache``;
- (b) what a user does without the plugin: ``-p no:jaxcache`` with
  ``JAX_COMPILATION_CACHE_DIR`` set to a fresh directory and JAX's defaults, cold then
  warm;
- (c) the plugin, cold: ``--jax-cache-dir`` a fresh directory;
- (d) the plugin, warm: the same directory again.

Each repeat runs the blocks (a), (b cold, b warm), (c, d) in a rotated order and its
ratios are taken against that repeat's (a); the table shows medians over repeats.
Backend compile time comes from ``benchmarks_compile_timer`` in every variant, and for
plugin runs also from the JSON report (totals compile_secs + retrieval_secs).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (
    Context,
    Run,
    Summary,
    Workspace,
    copy_examples,
    count_files,
    fmt_count,
    fmt_pct,
    fmt_ratio,
    log,
    prime,
    ratio,
    rotate,
    run_pytest,
    section,
    summarise,
    table,
    verdict,
    worst_rate,
)

NAME = "examples"
TITLE = "Bench 1: examples suite, cold and warm"

LABELS = {
    "a": "(a) no cache (`-p no:jaxcache`)",
    "b_cold": "(b) JAX cache dir via env, JAX defaults: cold",
    "b_warm": "(b) JAX cache dir via env, JAX defaults: warm",
    "c": "(c) plugin cold (`--jax-cache-dir` fresh)",
    "d": "(d) plugin warm",
}
BLOCKS: tuple[tuple[str, ...], ...] = (("a",), ("b_cold", "b_warm"), ("c", "d"))
PLUGIN_VARIANTS = ("c", "d")
BASE_ARGS = ("-p", "no:cacheprovider")
WARM_COMPILE_TARGET = 0.10


def repeats(quick: bool) -> int:
    return 1 if quick else 2


@dataclass
class Repeat:
    """The runs of one repeat, and how many entries each cached variant left."""

    runs: dict[str, Run] = field(default_factory=dict)
    entries: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Dirs:
    suite: Path
    jax_cache: Path
    plugin_cache: Path


def _run_variant(key: str, dirs: Dirs, workspace: Workspace) -> tuple[Run, int]:
    """Run one variant; return it and the number of entries its cache holds after."""
    if key == "a":
        run = run_pytest([*BASE_ARGS, "-p", "no:jaxcache"], cwd=dirs.suite, workspace=workspace)
        return run, 0
    if key.startswith("b"):
        run = run_pytest(
            [*BASE_ARGS, "-p", "no:jaxcache"],
            cwd=dirs.suite,
            workspace=workspace,
            extra_env={"JAX_COMPILATION_CACHE_DIR": str(dirs.jax_cache)},
        )
        return run, count_files(dirs.jax_cache, "-cache")
    run = run_pytest(
        [*BASE_ARGS, f"--jax-cache-dir={dirs.plugin_cache}"],
        cwd=dirs.suite,
        workspace=workspace,
        report=workspace.path(f"report-{key}.json"),
    )
    after = run.require_report()["cache"]["after"] or {}
    return run, int(after.get("entries", 0))


def _run_repeat(index: int, total: int, suite: Path, workspace: Workspace) -> Repeat:
    dirs = Dirs(suite, workspace.path("jax-cache"), workspace.path("plugin-cache"))
    repeat = Repeat()
    for block in rotate(BLOCKS, index):
        for key in block:
            log(f"{NAME}: repeat {index + 1}/{total}: {LABELS[key]}")
            repeat.runs[key], repeat.entries[key] = _run_variant(key, dirs, workspace)
    return repeat


Figure = Callable[[Run], float]
WALL: Figure = operator.attrgetter("wall_secs")
CPU: Figure = operator.attrgetter("cpu_secs")
TIMER: Figure = operator.attrgetter("compile_secs")
REPORT: Figure = Run.report_compile_secs


def _vs(
    repeats_: list[Repeat], key: str, base: str, top: Figure, bottom: Figure | None = None
) -> Summary:
    """Over repeats: ``top`` of variant ``key`` / ``bottom`` (default ``top``) of
    variant ``base`` in the same repeat."""
    below = bottom or top
    return summarise(ratio(top(r.runs[key]), below(r.runs[base])) for r in repeats_)


def _hit_rate(run: Run) -> float | None:
    value = run.require_report()["cachable"]["hit_rate"]
    return None if value is None else float(value)


def _worst_hit_rate(repeats_: list[Repeat], key: str) -> float | None:
    return worst_rate([_hit_rate(r.runs[key]) for r in repeats_])


def _variant_row(repeats_: list[Repeat], key: str) -> list[str]:
    plugin = key in PLUGIN_VARIANTS
    return [
        LABELS[key],
        fmt_ratio(_vs(repeats_, key, "a", WALL)),
        fmt_ratio(_vs(repeats_, key, "a", CPU)),
        fmt_ratio(_vs(repeats_, key, "a", TIMER)),
        fmt_ratio(_vs(repeats_, key, "a", REPORT, TIMER)) if plugin else "-",
        fmt_count([r.entries[key] for r in repeats_]) if key != "a" else "-",
        fmt_pct(_worst_hit_rate(repeats_, key)) if plugin else "-",
    ]


def _target_row(figure: str, value: Summary, target: float | None = None) -> list[str]:
    if target is None:
        return [figure, fmt_ratio(value), "-", "-"]
    return [figure, fmt_ratio(value), f"<= {target:.2f}", verdict(value.median <= target)]


def _target_rows(repeats_: list[Repeat]) -> list[list[str]]:
    hits = _worst_hit_rate(repeats_, "d")
    return [
        _target_row(
            "plugin warm / cold backend compile (timer)",
            _vs(repeats_, "d", "c", TIMER),
            WARM_COMPILE_TARGET,
        ),
        _target_row(
            "plugin warm / cold backend compile (report)",
            _vs(repeats_, "d", "c", REPORT),
            WARM_COMPILE_TARGET,
        ),
        [
            "plugin warm cachable hit rate (worst repeat)",
            fmt_pct(hits),
            "100%",
            verdict(hits == 1.0),
        ],
        _target_row("plugin warm / cold wall time", _vs(repeats_, "d", "c", WALL)),
        _target_row(
            "JAX defaults warm / cold backend compile", _vs(repeats_, "b_warm", "b_cold", TIMER)
        ),
        _target_row("JAX defaults warm / cold wall time", _vs(repeats_, "b_warm", "b_cold", WALL)),
    ]


def _agreement_note(repeats_: list[Repeat]) -> str:
    """Does the plugin's accounting agree with the independent timer?"""
    parts = [f"{k}: {fmt_ratio(_vs(repeats_, k, k, REPORT, TIMER))}" for k in PLUGIN_VARIANTS]
    return (
        "Cross-check, report compile+retrieval / timer backend compile (1.00 = the "
        "plugin's accounting matches the independent listener): " + ", ".join(parts) + "."
    )


def run(ctx: Context) -> str:
    """Run bench 1 and return its markdown section."""
    suite = copy_examples(ctx.workspace.path("examples"), ctx.example_files)
    prime(suite, ctx.workspace)
    total = repeats(ctx.quick)
    repeats_ = [_run_repeat(i, total, suite, ctx.workspace) for i in range(total)]
    intro = (
        f"Suite: {ctx.suite_label()}, run as `python -m pytest -q -p no:randomly "
        f"-p no:cacheprovider` in a temporary copy. {total} repeat(s); in each, the "
        "variants run back to back in a rotated order and every figure is a ratio to "
        "that repeat's (a). Cells: median (min-max) over repeats. Backend compile = "
        "sum of `/jax/core/compile/backend_compile_duration` over the session (timer "
        "plugin in every variant; the JSON report's totals compile_secs + "
        "retrieval_secs for plugin runs)."
    )
    variants = table(
        [
            "variant",
            "wall time / (a)",
            "CPU time / (a)",
            "backend compile / (a), timer",
            "backend compile / (a), report",
            "cache entries after",
            "cachable hit rate (worst)",
        ],
        [_variant_row(repeats_, key) for key in LABELS],
    )
    targets = table(["figure", "value", "target", ""], _target_rows(repeats_))
    return section(TITLE, intro, variants, targets, _agreement_note(repeats_))
