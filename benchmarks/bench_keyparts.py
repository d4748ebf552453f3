"""Bench: what recording the parts of each cache key costs (issue 11).

The examples suite with the plugin, recording key parts (the default) and not
(``-p benchmarks_no_key_parts``, which makes the plugin behave as on a JAX without the
seam), cold (each run on a fresh cache) and warm (each variant on its own filled
cache). Pairs run back to back, the order alternating; cells are medians (min-max) of
the per-pair ratios with / without.
"""

from __future__ import annotations

from benchlib import (
    Context,
    PluginVariant,
    alternate,
    copy_examples,
    pair_row,
    prime,
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


def run(ctx: Context) -> str:
    """Run the bench and return its markdown section."""
    ws = ctx.workspace
    suite = copy_examples(ws.path("examples"), ctx.example_files)
    prime(suite, ws)
    on, off = PluginVariant(suite, ws), PluginVariant(suite, ws, args=OFF)
    for variant in (on, off):
        variant.fill()
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
