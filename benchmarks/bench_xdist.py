"""Bench 4: ``-n 2`` with the plugin: duplicate compiles, then a warm run.

Cold ``-n 2`` runs of the examples suite on fresh cache directories, with single-flight
(the default: a worker that misses waits for the worker compiling the same program)
and without it (``--jax-cache-lock-timeout=0``: a worker that finds the lock taken
compiles at once). Programs compiled by more than one worker =
``store.writes`` (summed over workers, from the JSON report) minus the entries in the
directory after the run (a fresh directory, no eviction). Then a warm ``-n 2`` run on
the single-flight directory: hit rate and warm / cold wall time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (
    BenchError,
    Context,
    Run,
    Summary,
    Workspace,
    copy_examples,
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

NAME = "xdist"
TITLE = "Bench 4: xdist (`-n 2`): single-flight and warm hits"
BASE_ARGS = ("-p", "no:cacheprovider", "-n", "2")
SF, NO_SF, WARM = "sf", "no_sf", "warm"
LABELS = {
    SF: "cold, single-flight (default)",
    NO_SF: "cold, `--jax-cache-lock-timeout=0`",
    WARM: "warm (single-flight dir again)",
}
BLOCKS: tuple[tuple[str, ...], ...] = ((SF, WARM), (NO_SF,))


def repeats(quick: bool) -> int:
    return 1 if quick else 2


@dataclass(frozen=True)
class Outcome:
    """One ``-n 2`` run and what its report says about the store."""

    run: Run
    writes: int
    entries: int
    waited_hits: int
    lock_timeouts: int
    hit_rate: float | None

    @property
    def duplicates(self) -> int:
        return self.writes - self.entries


@dataclass
class Repeat:
    outcomes: dict[str, Outcome] = field(default_factory=dict)


def _outcome(run: Run) -> Outcome:
    report = run.require_report()
    store, cache = report["store"], report["cache"]
    maintenance = cache.get("maintenance") or {}
    if maintenance.get("evicted") or maintenance.get("pruned"):
        raise BenchError("entries were evicted or pruned: duplicates cannot be counted")
    if report["lost_workers"]:
        raise BenchError(f"workers crashed: {report['lost_workers']}")
    rate = report["cachable"]["hit_rate"]
    return Outcome(
        run=run,
        writes=int(store["writes"]),
        entries=int((cache.get("after") or {}).get("entries", 0)),
        waited_hits=int(store.get("waited_hits", 0)),
        lock_timeouts=int(store.get("lock_timeouts", 0)),
        hit_rate=None if rate is None else float(rate),
    )


def _run_variant(key: str, suite: Path, dirs: dict[str, Path], ws: Workspace) -> Outcome:
    cache = dirs[NO_SF] if key == NO_SF else dirs[SF]
    args = [*BASE_ARGS, f"--jax-cache-dir={cache}"]
    if key == NO_SF:
        args.append("--jax-cache-lock-timeout=0")
    run = run_pytest(args, cwd=suite, workspace=ws, report=ws.path(f"report-{key}.json"))
    return _outcome(run)


def _run_repeat(index: int, total: int, suite: Path, ws: Workspace) -> Repeat:
    dirs = {SF: ws.path("cache-sf"), NO_SF: ws.path("cache-no-sf")}
    repeat = Repeat()
    for block in rotate(BLOCKS, index):
        for key in block:
            log(f"{NAME}: repeat {index + 1}/{total}: -n 2 {LABELS[key]}")
            repeat.outcomes[key] = _run_variant(key, suite, dirs, ws)
    return repeat


def _vs_sf(repeats_: list[Repeat], key: str, attribute: str) -> Summary:
    def figure(r: Repeat) -> float:
        mine = getattr(r.outcomes[key].run, attribute)
        return ratio(mine, getattr(r.outcomes[SF].run, attribute))

    return summarise(figure(r) for r in repeats_)


def _variant_rows(repeats_: list[Repeat]) -> list[list[str]]:
    rows = []
    for key, label in LABELS.items():
        outs = [r.outcomes[key] for r in repeats_]
        cold = key != WARM
        worst = worst_rate([o.hit_rate for o in outs])
        rows.append(
            [
                label,
                fmt_count([o.duplicates for o in outs]) if cold else "-",
                fmt_count([o.writes for o in outs]),
                fmt_count([o.waited_hits for o in outs]),
                fmt_count([o.lock_timeouts for o in outs]),
                fmt_pct(worst) if not cold else "-",
                fmt_ratio(_vs_sf(repeats_, key, "compile_secs")),
                fmt_ratio(_vs_sf(repeats_, key, "wall_secs")),
                fmt_ratio(_vs_sf(repeats_, key, "cpu_secs")),
            ]
        )
    return rows


def _target_rows(repeats_: list[Repeat]) -> list[list[str]]:
    sf_dups = max(r.outcomes[SF].duplicates for r in repeats_)
    worst = worst_rate([r.outcomes[WARM].hit_rate for r in repeats_])
    no_sf = fmt_count([r.outcomes[NO_SF].duplicates for r in repeats_])
    return [
        [
            "duplicate compiles, single-flight (worst repeat)",
            str(sf_dups),
            "0",
            verdict(sf_dups == 0),
        ],
        ["duplicate compiles, lock timeout 0 (for contrast)", no_sf, "-", "-"],
        [
            "warm `-n 2` cachable hit rate (worst repeat)",
            fmt_pct(worst),
            "100%",
            verdict(worst == 1.0),
        ],
        ["warm / cold wall time, `-n 2`", fmt_ratio(_vs_sf(repeats_, WARM, "wall_secs")), "-", "-"],
    ]


def run(ctx: Context) -> str:
    """Run bench 4 and return its markdown section."""
    suite = copy_examples(ctx.workspace.path("examples"), ctx.example_files)
    prime(suite, ctx.workspace)
    total = repeats(ctx.quick)
    repeats_ = [_run_repeat(i, total, suite, ctx.workspace) for i in range(total)]
    intro = (
        f"Suite: {ctx.suite_label()}, `python -m pytest -q -p no:randomly "
        f"-p no:cacheprovider -n 2 --jax-cache-dir=DIR`, {total} repeat(s), each on "
        "fresh directories, variants in a rotated order. Duplicate compiles = "
        "`store.writes` (all workers, JSON report) - entries after the run. Counts: "
        "median (min-max) over repeats; ratios to that repeat's single-flight cold run: "
        "median (min-max). Backend compile from the timer plugin, summed over workers."
    )
    headers = [
        "run",
        "duplicate compiles",
        "store writes",
        "waited hits",
        "lock timeouts",
        "cachable hit rate (worst)",
        "backend compile / SF cold",
        "wall / SF cold",
        "CPU / SF cold",
    ]
    variants = table(headers, _variant_rows(repeats_))
    targets = table(["figure", "value", "target", ""], _target_rows(repeats_))
    return section(TITLE, intro, variants, targets)
