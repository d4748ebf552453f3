"""Bench: what signed entries cost on a warm run (issue 8).

The examples suite's warm run, with ``JAX_CACHE_SIGNING_KEY`` set (every entry loaded
is verified with HMAC-SHA256) and without, each on its own filled cache. Pairs run
back to back, the order alternating; cells are medians (min-max) of per-pair ratios
signed / unsigned.
"""

from __future__ import annotations

from benchlib import (
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
    caches = {True: ws.path("signed-cache"), False: ws.path("unsigned-cache")}

    def session(signed: bool) -> Run:
        args = ["-p", "no:cacheprovider", "--jax-cache-dir", str(caches[signed])]
        env = SECRET if signed else {}
        report = ws.path("report.json")
        return run_pytest(args, cwd=suite, workspace=ws, extra_env=env, report=report)

    for signed in caches:  # fill both caches (untimed)
        session(signed)

    def warm(signed: bool) -> Run:
        run = session(signed)
        require_hit_rate(run, 1.0)
        return run

    wall, cpu = alternate(
        pairs(ctx.quick), f"{NAME}: warm", lambda _: warm(True), lambda _: warm(False)
    )
    intro = (
        f"Suite: {ctx.suite_label()}, warm. With `JAX_CACHE_SIGNING_KEY` set (each entry "
        "verified with HMAC-SHA256 before it is loaded) against without; cells: median "
        "(min-max) of per-pair ratios signed / unsigned."
    )
    headers = ["run", "pairs", "wall, signed / unsigned", "CPU, signed / unsigned", "target", ""]
    rows = [pair_row("warm", (wall, cpu), TARGET)]
    return section(TITLE, intro, table(headers, rows))
