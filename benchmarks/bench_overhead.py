"""Bench 2: the plugin's overhead on a suite that compiles nothing.

A generated module imports jax at the top (as a JAX suite would) and defines 500
trivial test functions. ``pytest -q -p no:randomly`` runs it with the plugin on
(``--jax-cache-dir`` a temporary directory, reused like a user's cache) and off
(``-p no:jaxcache``), in pairs whose order alternates; the figure is the median of the
per-pair ratios, serially and with ``-n 2``.
"""

from __future__ import annotations

from pathlib import Path

from benchlib import (
    BenchError,
    Context,
    Run,
    Summary,
    Workspace,
    alternate,
    pair_row,
    prime,
    run_pytest,
    section,
    table,
)

NAME = "overhead"
TITLE = "Bench 2: overhead on trivial tests"
N_TESTS = 500
TARGET = 1.02
SUMMARY_MARK = "jax cache:"  # the plugin's one-line summary under -q


def repeats(quick: bool) -> tuple[int, int]:
    """(serial pairs, ``-n 2`` pairs)."""
    return (3, 3) if quick else (15, 5)


def write_suite(dest: Path, n_tests: int = N_TESTS) -> Path:
    """A rootdir with its own ini and ``n_tests`` trivial tests in one module."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "pytest.ini").write_text("[pytest]\n")
    body = ["import jax  # noqa: F401  (a JAX suite imports it)\n"]
    body += [f"\ndef test_{i}():\n    assert {i} + 1 > {i}\n" for i in range(n_tests)]
    (dest / "test_trivial.py").write_text("\n".join(body))
    return dest


def _run(plugin: bool, extra: list[str], suite: Path, cache: Path, ws: Workspace) -> Run:
    args = ["--jax-cache-dir", str(cache)] if plugin else ["-p", "no:jaxcache"]
    run = run_pytest([*args, *extra], cwd=suite, workspace=ws, timer=False)
    active = SUMMARY_MARK in run.output
    if active != plugin:
        raise BenchError(f"plugin {'inactive' if plugin else 'active'} in: {args + extra}")
    if f"{N_TESTS} passed" not in run.output:
        raise BenchError(f"expected {N_TESTS} passed:\n{run.output[-2000:]}")
    return run


def _measure(
    label: str, pairs: int, extra: list[str], suite: Path, cache: Path, ws: Workspace
) -> tuple[Summary, Summary]:
    """(wall, CPU) on / off ratios over ``pairs`` pairs, the order alternating."""
    return alternate(
        pairs,
        f"{NAME}: {label}",
        lambda _: _run(True, extra, suite, cache, ws),
        lambda _: _run(False, extra, suite, cache, ws),
    )


def run(ctx: Context) -> str:
    """Run bench 2 and return its markdown section."""
    ws = ctx.workspace
    suite = write_suite(ws.path("trivial-suite"))
    cache = ws.path("trivial-cache")
    prime(suite, ws)
    _run(True, [], suite, cache, ws)  # untimed: create the cache dir, as a user has it
    serial_pairs, xdist_pairs = repeats(ctx.quick)
    serial = _measure("serial", serial_pairs, [], suite, cache, ws)
    xdist = _measure("-n 2", xdist_pairs, ["-n", "2"], suite, cache, ws)
    intro = (
        f"{N_TESTS} trivial tests in one module that imports jax, run as "
        "`python -m pytest -q -p no:randomly` with the plugin on (`--jax-cache-dir`, "
        "an existing cache dir) against `-p no:jaxcache`. Each pair runs both back to "
        "back, the order alternating; cells: median (min-max) of the per-pair ratios "
        "of wall time and of CPU time, both including interpreter start and "
        "`import jax`."
    )
    rows = [pair_row("serial", serial, TARGET), pair_row("`-n 2`", xdist, None)]
    headers = [
        "run",
        "pairs",
        "plugin on / off, wall time",
        "plugin on / off, CPU time",
        "target (median wall)",
        "",
    ]
    note = (
        "CPU time (user + system, of pytest and the workers it waited for) is the less "
        "noisy figure on a shared machine: other jobs stretch wall time, not CPU time."
    )
    return section(TITLE, intro, table(headers, rows), note)
