"""Bench: the lowering tier (``--jax-cache-lowering``) on the examples suite (serially),
or on a suite of the user's (``run.py --lowering-suite DIR``, at ``-n 2``).

Warm variants, each on a cache of its own filled once beforehand (untimed), run back to
back in a rotated order per repeat:

- (j) JAX's own cache done right, warm: ``-p no:jaxcache`` with
  ``JAX_COMPILATION_CACHE_DIR`` and both thresholds at 0 (every program cached, as the
  plugin caches them);
- (p) the plugin, warm, lowering tier off (the default);
- (l) the plugin, warm, ``--jax-cache-lowering=on``.

Figures: wall and CPU of (l) against (j) and (p); the session's lowering time (JAX's
``jaxpr_to_mlir_module`` events, which time the tier's serving when it serves) of (l)
against (p). Then cold: ``on`` against ``off`` in alternating pairs (what storing the
modules costs). Last, one ``verify`` session over (l)'s cache: every served module must
equal a fresh lowering.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from benchlib import (
    BenchError,
    Context,
    PluginVariant,
    Run,
    Summary,
    alternate,
    copy_examples,
    cpu,
    fmt_ratio,
    interleave,
    pair_row,
    prime,
    ratios,
    require_hit_rate,
    run_pytest,
    section,
    table,
    verdict,
    wall,
)

NAME = "lowering"
TITLE = "Bench: the lowering tier, warm and cold"
WARM_WALL_TARGET = 0.80  # (l) / (j)
LOWERING_TARGET = 0.20  # lowering time, (l) / (p)
COLD_TARGET = 1.03  # cold on / cold off
TIER = ["--jax-cache-lowering=on"]


def _lower_secs(run: Run) -> float:
    """The session's time spent lowering: JAX's own lowerings (its jaxpr-to-MLIR events,
    which a served module does not emit) plus, with the tier, its keying, lookups and
    parsing over every program it saw."""
    report = run.require_report()
    tier = report["lowering"]
    return float(report["totals"]["lower_secs"]) + (float(tier["serve_secs"]) if tier else 0.0)


def _row(figure: str, value: Summary, target: float | None) -> list[str]:
    if target is None:
        return [figure, fmt_ratio(value), "-", "-"]
    return [figure, fmt_ratio(value), f"<= {target:.2f}", verdict(value.median <= target)]


def _suite(ctx: Context) -> tuple[Path, list[str], str]:
    """The suite, the arguments every variant adds, and how the section names them:
    examples/ serially, or the user's suite (``--lowering-suite``) at ``-n 2``."""
    if ctx.lowering_suite is None:
        suite = copy_examples(ctx.workspace.path("examples"), ctx.example_files)
        return suite, [], f"{ctx.suite_label()}, serial"
    suite = ctx.workspace.path("suite")
    ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache", ".jaxcache")
    shutil.copytree(ctx.lowering_suite, suite, ignore=ignore)
    return suite, ["-n", "2"], f"{ctx.lowering_suite} (--lowering-suite), `-n 2`"


def run(ctx: Context) -> str:
    """Run the bench and return its markdown section."""
    suite, extra, label = _suite(ctx)
    prime(suite, ctx.workspace)
    jax_cache = ctx.workspace.path("jax-cache")
    plugin = PluginVariant(suite, ctx.workspace, args=extra)
    tier = PluginVariant(suite, ctx.workspace, args=[*TIER, *extra])

    def jax_warm(_index: int = 0) -> Run:
        return run_pytest(
            ["-p", "no:cacheprovider", "-p", "no:jaxcache", *extra],
            cwd=suite,
            workspace=ctx.workspace,
            extra_env={
                "JAX_COMPILATION_CACHE_DIR": str(jax_cache),
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
            },
        )

    jax_warm()  # fills JAX's cache
    plugin.fill()
    tier.fill()

    def tier_warm(index: int = 0) -> Run:
        found = tier.warm(index)
        lowering = found.require_report()["lowering"]
        if not lowering or not lowering["hits"]:
            raise BenchError(f"the tier served nothing:\n{found.output[-2000:]}")
        return found

    repeats = 1 if ctx.quick else 3
    warm = interleave(repeats, f"{NAME}: warm", {"j": jax_warm, "p": plugin.warm, "l": tier_warm})
    served = warm[-1]["l"].require_report()["lowering"]

    pairs = 1 if ctx.quick else 2
    cold = alternate(pairs, f"{NAME}: cold", tier.cold, plugin.cold)

    verify = run_pytest(
        [
            "-p",
            "no:cacheprovider",
            f"--jax-cache-dir={tier.warm_cache}",
            "--jax-cache-lowering=verify",
            *extra,
        ],
        cwd=suite,
        workspace=ctx.workspace,
        report=ctx.workspace.path("report-verify.json"),
    )
    require_hit_rate(verify, 1.0)
    checked = verify.require_report()["lowering"]
    mismatched = int(checked["mismatched"])

    rows = [
        _row("warm wall, tier / JAX's cache", ratios(warm, "l", "j", wall), WARM_WALL_TARGET),
        _row("warm CPU, tier / JAX's cache", ratios(warm, "l", "j", cpu), None),
        _row("warm wall, tier / plugin without it", ratios(warm, "l", "p", wall), None),
        _row("warm wall, plugin without it / JAX's cache", ratios(warm, "p", "j", wall), None),
        _row(
            "warm lowering time, tier / without",
            ratios(warm, "l", "p", _lower_secs),
            LOWERING_TARGET,
        ),
        [
            "verify: modules that differ from a fresh lowering",
            f"{mismatched} of {checked['verified'] + mismatched} ({checked['relocated']} "
            "identical but for debug locations)",
            "0",
            verdict(mismatched == 0),
        ],
    ]
    pairs_table = table(
        ["cold, tier on / off", "pairs", "wall", "CPU", "target", ""],
        [pair_row("cold session", cold, COLD_TARGET)],
    )
    not_stored = ", ".join(f"{count} {why}" for why, count in sorted(served["not_stored"].items()))
    intro = (
        f"Suite: {label}. {repeats} warm repeat(s), the variants in a "
        "rotated order; cells: median (min-max) of per-repeat ratios. Lowering time is "
        "the session's `totals.lower_secs` (JAX's jaxpr-to-MLIR events: real lowerings) "
        "plus, with the tier, its `serve_secs` (keying, lookups, parsing). The last warm "
        f"(l) served {served['hits']} "
        f"modules and lowered {served['misses']} (not stored: {not_stored or 'none'})."
    )
    return section(TITLE, intro, table(["figure", "value", "target", ""], rows), pairs_table)
