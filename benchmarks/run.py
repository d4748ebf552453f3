"""Run the pytest-jaxcache benchmarks; print markdown tables of ratios.

    python benchmarks/run.py                  # everything (about an hour on 2 cores)
    python benchmarks/run.py --quick          # smoke run: fewer repeats, smaller suites
    python benchmarks/run.py --only store     # one benchmark (repeatable, or a,b)
    python benchmarks/run.py --only lowering --lowering-suite DIR   # on a suite of yours

The tables also go to ``benchmarks/results/latest.md``. Every figure is a ratio of
variants measured side by side in the same run, interleaved and repeated: the machine
is shared and noisy. The only absolute figures are the two whose targets are absolute,
each printed in a line labelled ``(absolute, ...)``: the install seconds of ``installs``
and the plugin's import time of ``overhead``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from benchlib import BenchError, Context, Workspace, log  # noqa: E402

# name -> module, in the order they run. Each module is imported only when its
# benchmark is selected: ``--only installs`` needs nothing but the standard library
# (the CI job that measures installs has nothing installed), the others need the
# plugin, JAX and the test extra.
BENCHES: dict[str, str] = {
    "examples": "bench_examples",
    "overhead": "bench_overhead",
    "store": "bench_store",
    "xdist": "bench_xdist",
    "signing": "bench_signing",
    "keyparts": "bench_keyparts",
    "lowering": "bench_lowering",
    "roundtrip": "bench_roundtrip",
    "remote": "bench_remote",
    "hostile": "bench_hostile",
    "distribution": "bench_distribution",
    "installs": "bench_installs",
}
SMALL_SUITE = ("test_vmap.py", "test_checks.py")
RESULTS = BENCH_DIR / "results" / "latest.md"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: fewer repeats, and the small examples suite unless --suite full",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only these benchmarks ({', '.join(BENCHES)}); repeatable or comma-separated",
    )
    parser.add_argument(
        "--suite",
        choices=("full", "small"),
        help=f"examples/ suite for benches 1 and 4: full (default) or small "
        f"({', '.join(SMALL_SUITE)}; default with --quick)",
    )
    parser.add_argument(
        "--lowering-suite",
        type=Path,
        metavar="DIR",
        help="the lowering bench on this suite instead of examples/: a directory of tests, "
        "copied as is and run with -n 2 (benchmarks/README.md: optax's tests)",
    )
    return parser.parse_args(argv)


def selected(only: list[str] | None) -> list[str]:
    """Benchmark names to run, in their canonical order; exits on an unknown name."""
    if not only:
        return list(BENCHES)
    names = {name.strip() for item in only for name in item.split(",") if name.strip()}
    unknown = names - set(BENCHES)
    if unknown:
        raise SystemExit(
            f"unknown benchmark(s): {', '.join(sorted(unknown))}; choose from {', '.join(BENCHES)}"
        )
    return [name for name in BENCHES if name in names]


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _load() -> str:
    try:
        return "/".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        return "?"


def header(args: argparse.Namespace, ctx: Context, names: list[str], load_before: str) -> str:
    """What was run, where: enough to judge how comparable two result files are."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# pytest-jaxcache benchmarks",
        "",
        f"- {now}; mode: {'quick' if args.quick else 'full'}; benchmarks: {', '.join(names)}",
        f"- examples suite: {ctx.suite_label()}"
        + (f"; lowering suite: {ctx.lowering_suite}" if ctx.lowering_suite else ""),
        f"- pytest-jaxcache {_version('pytest-jaxcache')}, jax {_version('jax')}, "
        f"jaxlib {_version('jaxlib')}, pytest {_version('pytest')}, "
        f"pytest-xdist {_version('pytest-xdist')}, Python {platform.python_version()}",
        f"- {os.cpu_count()} CPUs; load average (1/5/15 min) before: {load_before}, "
        f"after: {_load()}",
        "- All figures are ratios of variants run side by side (interleaved, repeated), "
        "because this machine is shared; the only absolute times are in lines labelled "
        "`(absolute, ...)`, where the target itself is absolute.",
    ]
    return "\n".join(lines)


def bench(name: str) -> Callable[[Context], str]:
    """The ``run`` function of benchmark ``name`` (its module imported now)."""
    module = importlib.import_module(BENCHES[name])
    if name != module.NAME:
        raise SystemExit(f"{BENCHES[name]}.NAME is {module.NAME!r}, registered as {name!r}")
    runner: Callable[[Context], str] = module.run
    return runner


def run_benches(names: list[str], ctx: Context) -> tuple[list[str], bool]:
    """Each benchmark's section; a failed benchmark gets a section saying why."""
    sections, ok = [], True
    for name in names:
        started = time.monotonic()
        try:
            sections.append(bench(name)(ctx))
        except BenchError as error:
            ok = False
            sections.append(f"## {name}\n\n**failed**:\n\n```\n{error}\n```")
        except Exception:  # a bug in a benchmark: the others still run
            ok = False
            sections.append(f"## {name}\n\n**crashed**:\n\n```\n{traceback.format_exc()}```")
        log(f"{name}: done in {time.monotonic() - started:.0f} s")
    return sections, ok


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = selected(args.only)
    suite = args.suite or ("small" if args.quick else "full")
    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="jaxcache-bench-") as tmp:
        ctx = Context(
            quick=args.quick,
            workspace=Workspace(Path(tmp)),
            example_files=SMALL_SUITE if suite == "small" else None,
            lowering_suite=args.lowering_suite,
        )
        sections, ok = run_benches(names, ctx)
    text = "\n\n".join([header(args, ctx, names, load_before), *sections]) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    log(f"written to {RESULTS.relative_to(BENCH_DIR.parent)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
