"""Bench: the CI round trip of issue 9: archive the cache as actions/cache does,
restore it into another checkout at another path, run warm there.

Checkout A (a copy of the examples suite, its own HOME) fills ``--jax-cache-dir=.jaxcache``
in one untimed cold run. Then each repeat runs, in a rotated order, two blocks:

- warm in place: the same command in A again;
- the round trip: archive A's ``.jaxcache`` the way actions/cache does (``tar --posix
  -cf cache.tzst --exclude cache.tzst -P -C A --files-from manifest.txt
  --use-compress-program "zstd -T0"``, the manifest naming ``.jaxcache``), extract it into
  a fresh checkout B at another path with another HOME (``tar -xf cache.tzst -P -C B
  --use-compress-program "zstd -d"``), and run warm in B.

Figures are ratios to that repeat's warm run in place; the restored run must hit every
cachable program.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from benchlib import (
    BenchError,
    Context,
    Run,
    Summary,
    Timed,
    Workspace,
    copy_examples,
    fmt_pct,
    fmt_ratio,
    log,
    prime,
    ratio,
    rotate,
    run_pytest,
    run_timed,
    section,
    summarise,
    table,
    verdict,
    worst_rate,
)

NAME = "roundtrip"
TITLE = "Bench: CI round trip (actions/cache archive, restore at another path)"
CACHE = ".jaxcache"
BASE_ARGS = ("-p", "no:cacheprovider", f"--jax-cache-dir={CACHE}")
IN_PLACE, TRIP = "in_place", "trip"
BLOCKS = (IN_PLACE, TRIP)
RESTORED_TARGET = 1.05
MIB = 1024 * 1024


def repeats(quick: bool) -> int:
    return 1 if quick else 3


@dataclass(frozen=True)
class Tools:
    tar: str
    zstd: str


@dataclass(frozen=True)
class Checkout:
    """A copy of the suite and the HOME its runner has."""

    path: Path
    home: Path


@dataclass(frozen=True)
class Trip:
    """Archive, extract and the warm run after the restore."""

    archive: Timed
    extract: Timed
    restored: Run
    cache_bytes: int
    archive_bytes: int


@dataclass(frozen=True)
class Repeat:
    in_place: Run
    trip: Trip


def find_tools() -> Tools:
    tar, zstd = shutil.which("tar"), shutil.which("zstd")
    if tar is None or zstd is None:
        raise BenchError("the round trip needs tar and zstd on PATH, as actions/cache does")
    return Tools(tar, zstd)


def tree_bytes(directory: Path) -> int:
    """Total size of the plain files under ``directory``."""
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def checkout(ctx: Context, name: str) -> Checkout:
    """A fresh, primed copy of the suite with a HOME of its own."""
    path = copy_examples(ctx.workspace.path(f"checkout-{name}"), ctx.example_files)
    prime(path, ctx.workspace)
    return Checkout(path, ctx.workspace.fresh(f"home-{name}"))


def run_suite(where: Checkout, ws: Workspace, label: str) -> Run:
    """The suite with the plugin and ``--jax-cache-dir=.jaxcache``, in ``where``."""
    run = run_pytest(
        BASE_ARGS,
        cwd=where.path,
        workspace=ws,
        extra_env={"HOME": str(where.home)},
        report=ws.path(f"report-{label}.json"),
    )
    used = run.require_report()["cache"]["dir"]
    if used != str(where.path / CACHE):
        raise BenchError(f"{label}: the session used {used}, not {where.path / CACHE}")
    return run


def hit_rate(run: Run) -> float | None:
    value = run.require_report()["cachable"]["hit_rate"]
    return None if value is None else float(value)


def round_trip(source: Checkout, ctx: Context, tools: Tools) -> Trip:
    """Archive ``source``'s cache, restore it into a fresh checkout, run warm there."""
    target = checkout(ctx, "b")
    scratch = ctx.workspace.fresh("actions-cache")
    archive, manifest = scratch / "cache.tzst", scratch / "manifest.txt"
    manifest.write_text(f"{CACHE}\n")
    cache_bytes = tree_bytes(source.path / CACHE)
    packed = run_timed(
        [tools.tar, "--posix", "-cf", archive, "--exclude", archive, "-P", "-C", source.path,
         "--files-from", manifest, "--use-compress-program", f"{tools.zstd} -T0"],
        cwd=source.path,
    )  # fmt: skip
    unpacked = run_timed(
        [tools.tar, "-xf", archive, "-P", "-C", target.path,
         "--use-compress-program", f"{tools.zstd} -d"],
        cwd=target.path,
    )  # fmt: skip
    restored = run_suite(target, ctx.workspace, "restored")
    if hit_rate(restored) != 1.0:
        rate = fmt_pct(hit_rate(restored))
        raise BenchError(f"the restored run hit {rate} of its cachable lookups, not 100%")
    return Trip(packed, unpacked, restored, cache_bytes, archive.stat().st_size)


def run_repeat(index: int, total: int, source: Checkout, ctx: Context, tools: Tools) -> Repeat:
    in_place: Run | None = None
    trip: Trip | None = None
    for block in rotate(BLOCKS, index):
        if block == IN_PLACE:
            log(f"{NAME}: repeat {index + 1}/{total}: warm in place")
            in_place = run_suite(source, ctx.workspace, "in-place")
        else:
            log(f"{NAME}: repeat {index + 1}/{total}: archive, extract, warm after restore")
            trip = round_trip(source, ctx, tools)
    if in_place is None or trip is None:
        raise BenchError("a block of the repeat did not run")
    return Repeat(in_place, trip)


def _step(r: Repeat, key: str) -> Run | Timed:
    steps: dict[str, Run | Timed] = {
        "in_place": r.in_place,
        "archive": r.trip.archive,
        "extract": r.trip.extract,
        "restored": r.trip.restored,
    }
    return steps[key]


def _vs_in_place(repeats_: list[Repeat], key: str, cpu: bool = False) -> Summary:
    """Over repeats: wall (or CPU) time of step ``key`` / that of the warm run in place."""

    def value(step: Run | Timed) -> float:
        return step.cpu_secs if cpu else step.wall_secs

    return summarise(ratio(value(_step(r, key)), value(r.in_place)) for r in repeats_)


# (key, label, digits): archive and extract take a small fraction of a warm run
STEPS = (
    ("in_place", "warm in place (checkout A)", 2),
    ("archive", "archive: `tar --posix -cf ... --use-compress-program 'zstd -T0'`", 3),
    ("extract", "extract into checkout B: `tar -xf ... --use-compress-program 'zstd -d'`", 3),
    ("restored", "warm after restore (checkout B, another path and HOME)", 2),
)


def _step_rows(repeats_: list[Repeat]) -> list[list[str]]:
    rates = {
        "in_place": fmt_pct(worst_rate([hit_rate(r.in_place) for r in repeats_])),
        "restored": fmt_pct(worst_rate([hit_rate(r.trip.restored) for r in repeats_])),
    }
    return [
        [
            label,
            fmt_ratio(_vs_in_place(repeats_, key), digits),
            fmt_ratio(_vs_in_place(repeats_, key, cpu=True), digits),
            rates.get(key, "-"),
        ]
        for key, label, digits in STEPS
    ]


def _target_rows(repeats_: list[Repeat]) -> list[list[str]]:
    restored = _vs_in_place(repeats_, "restored")
    worst = worst_rate([hit_rate(r.trip.restored) for r in repeats_])
    compression = summarise(ratio(r.trip.archive_bytes, r.trip.cache_bytes) for r in repeats_)
    return [
        [
            "warm after restore / warm in place, wall time",
            fmt_ratio(restored),
            f"<= {RESTORED_TARGET:.2f}",
            verdict(restored.median <= RESTORED_TARGET),
        ],
        [
            "restored run cachable hit rate (worst repeat)",
            fmt_pct(worst),
            "100%",
            verdict(worst == 1.0),
        ],
        ["archive size / cache directory bytes", fmt_ratio(compression), "-", "-"],
    ]


def _size_note(repeats_: list[Repeat]) -> str:
    def mib(values: list[int]) -> str:
        low, high = min(values) / MIB, max(values) / MIB
        return f"{low:.2f} MiB" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f} MiB"

    unchanged = sum(r.trip.restored.require_report()["cache"]["changed"] is False for r in repeats_)
    return (
        f"Sizes (not times, so absolute): cache directory "
        f"{mib([r.trip.cache_bytes for r in repeats_])}, archive "
        f"{mib([r.trip.archive_bytes for r in repeats_])}. Restored runs whose report says "
        f"the cache did not change (a save step would skip): {unchanged} of {len(repeats_)}."
    )


def run(ctx: Context) -> str:
    """Run the round-trip bench and return its markdown section."""
    tools = find_tools()
    source = checkout(ctx, "a")
    log(f"{NAME}: cold run filling {CACHE} in checkout A (untimed)")
    run_suite(source, ctx.workspace, "cold")
    total = repeats(ctx.quick)
    repeats_ = [run_repeat(i, total, source, ctx, tools) for i in range(total)]
    intro = (
        f"Suite: {ctx.suite_label()}, `python -m pytest -q -p no:randomly -p no:cacheprovider "
        f"--jax-cache-dir={CACHE}`. One untimed cold run fills the cache in checkout A; then "
        f"{total} repeat(s), each running (warm in place) and (archive, extract into a fresh "
        "checkout B at another path with another HOME, warm in B) in a rotated order. "
        "Archive and extract copy tests/test_ci_roundtrip.py, i.e. actions/cache's tar and "
        "zstd commands. Cells: median (min-max) over repeats of ratios to that repeat's "
        "warm run in place."
    )
    steps = table(
        ["step", "wall / warm in place", "CPU / warm in place", "cachable hit rate (worst)"],
        _step_rows(repeats_),
    )
    targets = table(["figure", "value", "target", ""], _target_rows(repeats_))
    return section(TITLE, intro, steps, targets, _size_note(repeats_))
