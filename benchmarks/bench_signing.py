"""Bench: what signed entries cost on a warm run (issue 8).

The examples suite's warm run, with ``JAX_CACHE_SIGNING_KEY`` set (every entry loaded
is verified with HMAC-SHA256) and without, each on its own filled cache. Pairs run
back to back, the order alternating; cells are medians (min-max) of per-pair ratios
signed / unsigned.
"""

from __future__ import annotations

from benchlib import (
    Context,
    PluginVariant,
    Workspace,
    alternate,
    copy_examples,
    pair_row,
    prime,
    section,
    table,
)

NAME = "signing"
TITLE = "Bench: signed entries, warm run"
TARGET = 1.02
SECRET = {"JAX_CACHE_SIGNING_KEY": "benchmark-signing-key"}


def pairs(quick: bool) -> int:
    return 2 if quick else 8


def run(ctx: Context) -> str:
    """Run the bench and return its markdown section."""
    ws: Workspace = ctx.workspace
    suite = copy_examples(ws.path("examples"), ctx.example_files)
    prime(suite, ws)
    signed, unsigned = PluginVariant(suite, ws, env=SECRET), PluginVariant(suite, ws)
    for variant in (signed, unsigned):
        variant.fill()
    wall, cpu = alternate(pairs(ctx.quick), f"{NAME}: warm", signed.warm, unsigned.warm)
    intro = (
        f"Suite: {ctx.suite_label()}, warm. With `JAX_CACHE_SIGNING_KEY` set (each entry "
        "verified with HMAC-SHA256 before it is loaded) against without; cells: median "
        "(min-max) of per-pair ratios signed / unsigned."
    )
    headers = ["run", "pairs", "wall, signed / unsigned", "CPU, signed / unsigned", "target", ""]
    rows = [pair_row("warm", (wall, cpu), TARGET)]
    return section(TITLE, intro, table(headers, rows))
