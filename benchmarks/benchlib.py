"""Shared helpers: run pytest in a subprocess and time it, summarise ratios, render
markdown. Nothing here prints an absolute time: benchmarks report ratios of variants
measured side by side, because the machine they run on is shared and noisy.

Every child process gets the environment of the tests' children: ``child_env()`` of
``tests/helpers.py`` (imported from there, with ``tests/`` on ``sys.path``), which strips
what steers JAX, the cache, xdist or CI; a benchmark that needs a variable passes it
explicitly. This module imports nothing outside the standard library at import time, so
that ``run.py --only installs`` runs on a bare Python (the CI job that measures installs
has nothing installed yet)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
TESTS_DIR = REPO / "tests"
EXAMPLES = REPO / "examples"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))
TIMER_PLUGIN = "benchmarks_compile_timer"  # benchmarks/benchmarks_compile_timer.py
# pytest-benchmark, where installed, warns under xdist, and examples/ turns warnings
# into errors: it is blocked in every variant (a no-op where it is not installed).
PYTEST = (sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:benchmark")
# Options that take a path are always given as ``--option=PATH``: pytest picks its rootdir
# and ini file, before plugins add their options, from every argument naming an existing
# path, so ``--jax-cache-dir PATH`` (PATH existing) changes the rootdir, every test id
# with it, and drops the suite's pytest.ini.
RUN_TIMEOUT_SECS = 900.0

T = TypeVar("T")


class BenchError(RuntimeError):
    """A benchmarked run failed: its figures would mean nothing."""


class BenchTimeout(BenchError):
    """A timed command ran past its limit (and was killed)."""


def log(message: str) -> None:
    """Progress, on stderr, so that stdout holds only the tables."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- workspace ---------------------------------------------------------------------------


class Workspace:
    """Fresh, uniquely named directories under one temporary root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._count = 0

    def fresh(self, name: str) -> Path:
        """A new empty directory whose name starts with ``name``."""
        self._count += 1
        path = self.root / f"{self._count:04d}-{name}"
        path.mkdir(parents=True)
        return path

    def path(self, name: str) -> Path:
        """A new path that does not exist yet (for a cache dir or a report)."""
        self._count += 1
        return self.root / f"{self._count:04d}-{name}"


@dataclass(frozen=True)
class Context:
    """What every benchmark gets from ``run.py``."""

    quick: bool
    workspace: Workspace
    example_files: tuple[str, ...] | None  # None: the whole examples/ suite
    # A suite of the user's for the lowering bench instead of examples/ (run with -n 2).
    lowering_suite: Path | None = None

    def suite_label(self) -> str:
        if self.example_files is None:
            return "examples/ (all files)"
        return "examples/ subset: " + ", ".join(self.example_files)


def copy_examples(dest: Path, files: Sequence[str] | None) -> Path:
    """Copy examples/ (or its conftest, ini and the given test files) to ``dest``."""
    ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache", ".jaxcache")
    if files is None:
        shutil.copytree(EXAMPLES, dest, ignore=ignore)
        return dest
    dest.mkdir(parents=True)
    for name in ("conftest.py", "pytest.ini", *files):
        shutil.copy2(EXAMPLES / name, dest / name)
    return dest


# -- running pytest ----------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One timed pytest subprocess."""

    wall_secs: float
    cpu_secs: float  # user + system time of pytest and every process it waited for
    compile_secs: float  # sum of backend_compile_duration over all processes (timer)
    timer_files: int  # processes that reported to the timer
    report: dict[str, Any] | None  # pytest-jaxcache's JSON report, when asked for
    output: str

    def report_compile_secs(self) -> float:
        """``totals.compile_secs + totals.retrieval_secs`` from the JSON report."""
        totals = self.require_report()["totals"]
        return float(totals["compile_secs"]) + float(totals["retrieval_secs"])

    def require_report(self) -> dict[str, Any]:
        if self.report is None:
            raise BenchError("this run wrote no pytest-jaxcache report")
        return self.report


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The tests' child environment (``helpers.child_env``: nothing that steers JAX, the
    cache, xdist or CI), with the benchmarks directory and ``tests/`` on ``PYTHONPATH``
    (for ``-p benchmarks_compile_timer`` and ``-p hide_seams``), plus ``extra``."""
    from helpers import child_env  # tests/helpers.py: imports pytest and the plugin

    env = child_env()
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH_DIR), str(TESTS_DIR), *([path] if path else [])])
    env.update(extra or {})
    return env


def pythonpath(*first: Path) -> str:
    """A ``PYTHONPATH`` value for ``extra_env``: ``first``, then what
    :func:`subprocess_env` puts there (the benchmarks directory and ``tests/``)."""
    return os.pathsep.join(str(path) for path in (*first, BENCH_DIR, TESTS_DIR))


def bytecode_env(workspace: Workspace) -> dict[str, str]:
    """Bytecode written and read under the workspace (``PYTHONPYCACHEPREFIX``), even where
    ``PYTHONDONTWRITEBYTECODE`` is set: the plugin's modules, pytest's and the suite's are
    then loaded from bytecode after the first run, as on a user's machine, and nothing is
    written into the repository."""
    return {
        "PYTHONDONTWRITEBYTECODE": "",
        "PYTHONPYCACHEPREFIX": str(workspace.root / "pycache"),
    }


def run_pytest(
    args: Sequence[str],
    *,
    cwd: Path,
    workspace: Workspace,
    extra_env: Mapping[str, str] | None = None,
    timer: bool = True,
    report: Path | None = None,
) -> Run:
    """Run ``python -m pytest -q -p no:randomly -p no:benchmark ARGS`` in ``cwd`` and
    time it.

    With ``timer`` the compile-timer plugin is loaded; with ``report`` the
    pytest-jaxcache JSON report is written there and read back. Raises
    :class:`BenchError` when pytest does not exit 0.
    """
    env = {**bytecode_env(workspace), **(extra_env or {})}
    command = [*PYTEST, *args]
    timer_dir: Path | None = None
    if timer:
        from benchmarks_compile_timer import ENV as TIMER_ENV  # imports pytest

        timer_dir = workspace.fresh("timer")
        env[TIMER_ENV] = str(timer_dir)
        command += ["-p", TIMER_PLUGIN]
    if report is not None:
        command.append(f"--jax-cache-report={report}")
    timed = run_timed(command, cwd=cwd, env=subprocess_env(env))
    secs, files = read_timer(timer_dir) if timer_dir is not None else (0.0, 0)
    data = json.loads(report.read_text()) if report is not None else None
    return Run(timed.wall_secs, timed.cpu_secs, secs, files, data, timed.output)


@dataclass(frozen=True)
class Timed:
    """One timed command: wall and CPU time (user + system of it and its children)."""

    wall_secs: float
    cpu_secs: float
    output: str


def run_timed(
    command: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = RUN_TIMEOUT_SECS,
) -> Timed:
    """Run ``command`` in ``cwd`` (environment: ``env``, else :func:`subprocess_env`) and
    time it; raise :class:`BenchError` unless it exits 0 (with the tail of its output),
    :class:`BenchTimeout` when it runs past ``timeout`` seconds."""
    argv = [str(part) for part in command]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            env=dict(env) if env is not None else subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        out = expired.output or ""
        text = out.decode(errors="replace") if isinstance(out, bytes) else out
        tail = "\n".join(text.splitlines()[-40:])
        raise BenchTimeout(f"timed out after {timeout:.0f} s: {' '.join(argv)}\n{tail}") from None
    wall = time.perf_counter() - started
    cpu = _cpu_secs(resource.getrusage(resource.RUSAGE_CHILDREN)) - _cpu_secs(usage)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-40:])
        raise BenchError(f"exit {done.returncode}: {' '.join(argv)}\n{tail}")
    return Timed(wall, cpu, done.stdout)


def _cpu_secs(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def read_timer(directory: Path) -> tuple[float, int]:
    """Sum of backend compile seconds over the processes' files, and their number."""
    files = sorted(directory.glob("*.json"))
    if not files:
        raise BenchError(f"the compile timer wrote nothing in {directory}")
    total = sum(float(json.loads(f.read_text())["backend_compile_secs"]) for f in files)
    return total, len(files)


def prime(cwd: Path, workspace: Workspace) -> None:
    """One untimed collect-only run: writes bytecode and warms the page cache, so that
    the first timed variant pays no more than the others."""
    run_pytest(
        ["-p", "no:cacheprovider", "-p", "no:jaxcache", "--collect-only"],
        cwd=cwd,
        workspace=workspace,
        timer=False,
    )


def count_files(directory: Path, suffix: str = "") -> int:
    """Plain files in ``directory`` whose name ends with ``suffix``."""
    if not directory.is_dir():
        return 0
    return sum(1 for p in directory.iterdir() if p.is_file() and p.name.endswith(suffix))


# -- statistics --------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Median and range of repeated measurements of one ratio."""

    median: float
    low: float
    high: float
    n: int


def summarise(values: Iterable[float]) -> Summary:
    data = list(values)
    if not data:
        raise BenchError("nothing to summarise")
    return Summary(statistics.median(data), min(data), max(data), len(data))


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; ``inf`` when the denominator is zero."""
    return numerator / denominator if denominator else float("inf")


def rotate(items: Sequence[T], shift: int) -> list[T]:
    """``items`` rotated left by ``shift``: varies the order of variants per repeat."""
    if not items:
        return []
    shift %= len(items)
    return [*items[shift:], *items[:shift]]


# -- formatting --------------------------------------------------------------------------


def fmt_ratio(summary: Summary, digits: int = 2) -> str:
    """``median (min-max)`` of a ratio; just the value when the range is nil."""
    value, low, high = (f"{v:.{digits}f}" for v in (summary.median, summary.low, summary.high))
    return value if low == high else f"{value} ({low}-{high})"


def fmt_x(summary: Summary) -> str:
    """A large ratio as ``123x (100x-140x)``."""
    value = f"{summary.median:.0f}x" if summary.median >= 10 else f"{summary.median:.2f}x"
    if summary.n == 1:
        return value
    return f"{value} ({summary.low:.1f}x-{summary.high:.1f}x)"


def fmt_count(values: list[int]) -> str:
    """A count over repeats: ``3`` or ``3 (2-5)``."""
    low, high = min(values), max(values)
    middle = sorted(values)[len(values) // 2]
    return str(middle) if low == high else f"{middle} ({low}-{high})"


def worst_rate(rates: Sequence[float | None]) -> float | None:
    """The lowest of some hit rates; ``None`` if any is unknown (no lookups)."""
    known = [rate for rate in rates if rate is not None]
    return min(known) if known and len(known) == len(rates) else None


def fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def section(title: str, intro: str, *blocks: str) -> str:
    """A markdown section: heading, a paragraph, then tables or notes."""
    return "\n\n".join([f"## {title}", intro.strip(), *[b.strip() for b in blocks if b]])


# -- pairs -------------------------------------------------------------------------------


def alternate(
    pairs: int, label: str, first: Callable[[int], Run], second: Callable[[int], Run]
) -> tuple[Summary, Summary]:
    """Run ``first(i)`` and ``second(i)`` back to back ``pairs`` times, the order
    alternating; return (wall, CPU) summaries of the per-pair ratios first / second."""
    walls, cpus = [], []
    for index in range(pairs):
        log(f"{label}: pair {index + 1}/{pairs}")
        runs: dict[int, Run] = {}
        order = (0, 1) if index % 2 == 0 else (1, 0)
        for which in order:
            runs[which] = (first, second)[which](index)
        walls.append(ratio(runs[0].wall_secs, runs[1].wall_secs))
        cpus.append(ratio(runs[0].cpu_secs, runs[1].cpu_secs))
    return summarise(walls), summarise(cpus)


def interleave(
    repeats: int, label: str, variants: Mapping[str, Callable[[int], T]]
) -> list[dict[str, T]]:
    """Run every variant once per repeat, back to back, the order rotating from repeat to
    repeat (``variants[name](repeat_index)``); return each repeat's results by name."""
    names = list(variants)
    results: list[dict[str, T]] = []
    for index in range(repeats):
        log(f"{label}: repeat {index + 1}/{repeats}")
        done: dict[str, T] = {}
        for name in rotate(names, index):
            done[name] = variants[name](index)
        results.append(done)
    return results


def ratios(
    repeats: Sequence[Mapping[str, Any]], top: str, bottom: str, figure: Callable[[Any], float]
) -> Summary:
    """Over repeats: ``figure`` of variant ``top`` / that of ``bottom`` in the same repeat."""
    return summarise(ratio(figure(r[top]), figure(r[bottom])) for r in repeats)


def wall(run: Run | Timed) -> float:
    return run.wall_secs


def cpu(run: Run | Timed) -> float:
    return run.cpu_secs


def pair_row(label: str, figures: tuple[Summary, Summary], target: float | None) -> list[object]:
    """A table row of :func:`alternate`'s figures: label, pairs, wall and CPU ratios,
    and the wall ratio's target and verdict (``None``: no target)."""
    wall, cpu = figures
    return [
        label,
        wall.n,
        fmt_ratio(wall, 3),
        fmt_ratio(cpu, 3),
        "-" if target is None else f"<= {target:.2f}",
        "-" if target is None else verdict(wall.median <= target),
    ]


def require_hit_rate(run: Run, expected: float) -> None:
    """Raise :class:`BenchError` unless the session's cachable hit rate is ``expected``."""
    rate = run.require_report()["cachable"]["hit_rate"]
    if rate != expected:
        raise BenchError(f"cachable hit rate {rate}, expected {expected}:\n{run.output[-2000:]}")


class PluginVariant:
    """The plugin on a suite with extra arguments or environment, on caches of its own:
    a fresh one per cold run, and one warm cache that :meth:`fill` fills."""

    def __init__(
        self,
        suite: Path,
        workspace: Workspace,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.suite, self.workspace = suite, workspace
        self.args, self.env = list(args), dict(env or {})
        self.warm_cache = workspace.path("warm-cache")

    def run(self, cache: Path) -> Run:
        args = ["-p", "no:cacheprovider", f"--jax-cache-dir={cache}", *self.args]
        report = self.workspace.path("report.json")
        return run_pytest(
            args, cwd=self.suite, workspace=self.workspace, extra_env=self.env, report=report
        )

    def fill(self) -> None:
        """Fill the warm cache (untimed)."""
        self.run(self.warm_cache)

    def cold(self, _index: int = 0) -> Run:
        run = self.run(self.workspace.path("cold-cache"))
        if not run.require_report()["store"]["writes"]:  # a cold run writes every program
            raise BenchError(f"a cold run wrote nothing:\n{run.output[-2000:]}")
        return run

    def warm(self, _index: int = 0) -> Run:
        run = self.run(self.warm_cache)
        require_hit_rate(run, 1.0)
        return run
