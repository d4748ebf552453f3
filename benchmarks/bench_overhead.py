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
    fmt_ratio,
    log,
    prime,
    ratio,
    run_pytest,
    section,
    summarise,
    table,
    verdict,
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


def _pair(
    index: int, extra: list[str], suite: Path, cache: Path, ws: Workspace
) -> tuple[float, float]:
    """One on/off pair, the order alternating with ``index``; returns the on / off
    ratios of wall time and of CPU time."""
    runs: dict[bool, Run] = {}
    order = (True, False) if index % 2 == 0 else (False, True)
    for plugin in order:
        runs[plugin] = _run(plugin, extra, suite, cache, ws)
    on, off = runs[True], runs[False]
    return ratio(on.wall_secs, off.wall_secs), ratio(on.cpu_secs, off.cpu_secs)


def _measure(
    label: str, pairs: int, extra: list[str], suite: Path, cache: Path, ws: Workspace
) -> tuple[Summary, Summary]:
    """(wall, CPU) on / off ratios over ``pairs`` pairs."""
    walls, cpus = [], []
    for index in range(pairs):
        log(f"{NAME}: {label}: pair {index + 1}/{pairs}")
        wall, cpu = _pair(index, extra, suite, cache, ws)
        walls.append(wall)
        cpus.append(cpu)
    return summarise(walls), summarise(cpus)


def _row(label: str, figures: tuple[Summary, Summary], target: bool) -> list[object]:
    wall, cpu = figures
    return [
        label,
        wall.n,
        fmt_ratio(wall, 3),
        fmt_ratio(cpu, 3),
        f"<= {TARGET:.2f}" if target else "-",
        verdict(wall.median <= TARGET) if target else "-",
    ]


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
    rows = [_row("serial", serial, True), _row("`-n 2`", xdist, False)]
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
