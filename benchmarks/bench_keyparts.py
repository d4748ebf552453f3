"""Bench: what recording the parts of each cache key costs (issue 11).

The examples suite with the plugin, recording key parts (the default) and not
(``-p benchmarks_no_key_parts``, which makes the plugin behave as on a JAX without the
seam), cold (each run on a fresh cache) and warm (each variant on its own filled
cache). Pairs run back to back, the order alternating; cells are medians (min-max) of
the per-pair ratios with / without.
"""

from __future__ import annotations

from pathlib import Path

from benchlib import (
    BenchError,
    Context,
    Run,
    Workspace,
    alternate,
    copy_examples,
    pair_row,
    prime,
    require_hit_rate,
    run_pytest,
    section,
    table,
)

NAME = "keyparts"
TITLE = "Bench: recording cache-key parts"
COLD_TARGET = 1.02
WARM_TARGET = 1.02  # "nothing measurable": within the noise of a 2-core shared machine
OFF = ("-p", "benchmarks_no_key_parts")


def pairs(quick: bool) -> int:
    return 2 if quick else 6


class Variant:
    """The plugin with or without key parts, on caches it owns."""

    def __init__(self, suite: Path, workspace: Workspace, *, key_parts: bool) -> None:
        self.suite, self.workspace, self.key_parts = suite, workspace, key_parts
        self.warm_cache = workspace.path("warm-cache")

    def run(self, cache: Path) -> Run:
        args = ["-p", "no:cacheprovider", "--jax-cache-dir", str(cache)]
        args += [] if self.key_parts else list(OFF)
        report = self.workspace.path("report.json")
        return run_pytest(args, cwd=self.suite, workspace=self.workspace, report=report)

    def cold(self, _index: int) -> Run:
        run = self.run(self.workspace.path("cold-cache"))
        if not run.require_report()["store"]["writes"]:  # a cold run writes every program
            raise BenchError(f"a cold run wrote nothing:\n{run.output[-2000:]}")
        return run

    def warm(self, _index: int) -> Run:
        run = self.run(self.warm_cache)
        require_hit_rate(run, 1.0)
        return run


def run(ctx: Context) -> str:
    """Run the bench and return its markdown section."""
    ws = ctx.workspace
    suite = copy_examples(ws.path("examples"), ctx.example_files)
    prime(suite, ws)
    on, off = (Variant(suite, ws, key_parts=flag) for flag in (True, False))
    for variant in (on, off):  # fill each warm cache (untimed)
        variant.run(variant.warm_cache)
    count = pairs(ctx.quick)
    cold = alternate(count, f"{NAME}: cold", on.cold, off.cold)
    warm = alternate(count, f"{NAME}: warm", on.warm, off.warm)
    intro = (
        f"Suite: {ctx.suite_label()}. The plugin recording each key's parts (default) "
        "against the plugin not recording them (`-p benchmarks_no_key_parts`); cells: "
        "median (min-max) of per-pair ratios with / without, pairs back to back with "
        "the order alternating."
    )
    headers = ["run", "pairs", "wall, with / without", "CPU, with / without", "target", ""]
    rows = [pair_row("cold", cold, COLD_TARGET), pair_row("warm", warm, WARM_TARGET)]
    return section(TITLE, intro, table(headers, rows))
