"""Bench: what recording the parts of each cache key costs (issue 11).

The examples suite with the plugin, recording key parts (the default) and not: the test
plugin ``tests/hide_seams.py`` (``-p hide_seams``, ``tests/`` on ``PYTHONPATH``) with
``JAXCACHE_HIDE_SEAMS=jax._src.cache_key.get`` makes that one private JAX name look
absent to the plugin, which then records no key parts, as on a JAX without the seam
(each run of this variant is checked to say so). Cold (each run on a fresh cache) and
warm (each variant on its own filled cache). Pairs run back to back, the order
alternating; cells are medians (min-max) of the per-pair ratios with / without.
"""

from __future__ import annotations

from collections.abc import Callable

from benchlib import (
    BenchError,
    Context,
    PluginVariant,
    Run,
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
HIDDEN_SEAM = "jax._src.cache_key.get"
OFF_ARGS = ("-p", "hide_seams")
OFF_ENV = {"JAXCACHE_HIDE_SEAMS": HIDDEN_SEAM}


def pairs(quick: bool) -> int:
    return 2 if quick else 6


def recording_off(run: Run) -> Run:
    """``run``, after checking that its session recorded no key parts (the plugin says
    so in one notice naming the hidden seam)."""
    notices = run.require_report()["cache"]["notices"]
    if not any(HIDDEN_SEAM in notice for notice in notices):
        raise BenchError(f"-p hide_seams did not turn key parts off; notices: {notices}")
    return run


def checked(variant: Callable[[int], Run]) -> Callable[[int], Run]:
    return lambda index: recording_off(variant(index))


def run(ctx: Context) -> str:
    """Run the bench and return its markdown section."""
    ws = ctx.workspace
    suite = copy_examples(ws.path("examples"), ctx.example_files)
    prime(suite, ws)
    on, off = PluginVariant(suite, ws), PluginVariant(suite, ws, args=OFF_ARGS, env=OFF_ENV)
    for variant in (on, off):
        variant.fill()
    count = pairs(ctx.quick)
    cold = alternate(count, f"{NAME}: cold", on.cold, checked(off.cold))
    warm = alternate(count, f"{NAME}: warm", on.warm, checked(off.warm))
    intro = (
        f"Suite: {ctx.suite_label()}. The plugin recording each key's parts (default) "
        f"against the plugin not recording them (`-p hide_seams` with "
        f"`JAXCACHE_HIDE_SEAMS={HIDDEN_SEAM}`: the seam looks absent, as on a JAX without "
        "it); cells: median (min-max) of per-pair ratios with / without, pairs back to "
        "back with the order alternating."
    )
    headers = ["run", "pairs", "wall, with / without", "CPU, with / without", "target", ""]
    rows = [pair_row("cold", cold, COLD_TARGET), pair_row("warm", warm, WARM_TARGET)]
    return section(TITLE, intro, table(headers, rows))
