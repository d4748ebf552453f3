"""Bench: splitting a suite by what each test will cost: shards, per-shard downloads from
a remote, and ``--dist=jaxcache``.

A generated suite (240 tests; 96 with ``--quick``) whose programs' compile times differ
by about 100x: a jitted chain of ``n`` steps (a matmul every third step), ``n`` from 1 to
150 with a heavy tail, so that most programs are cheap and a few are costly, on inputs
of 4 to 19 rows, so that some tests share a program; plus 4 tests marked ``jax_errors``
whose programs have a host callback (never cached). One earlier session, cold, with the
plugin (and ``--jax-cache-remote`` on moto's S3 server on 127.0.0.1, and pytest-split's
``--store-durations`` when pytest-split installs) leaves a cache with the history of one
full session, the bucket filled, and pytest-split's durations file.

- (a) Shards: 4 jobs, run one after the other, each in its own copy of the restored
  cache: cold (a fresh cache holding only the earlier session's ``history/``: it knows
  the tests, not their entries) and warm (the whole cache); ``--jax-cache-shard=K/4``,
  and pytest-split (``--splits 4 --group K``, ``least_duration``, the durations of the
  earlier session) side by side under the same conditions. Figure: slowest shard's wall
  time / the mean shard's (1.00 = perfectly balanced).
- (b) Per-shard downloads: each shard a fresh machine (history only, no entry) with the
  remote: bytes downloaded (the report's ``remote.bytes_down``) / the bytes of every
  entry in the namespace; and the bytes of the entries its own tests used, for scale.
- (c) ``-n 2`` on the whole suite: ``--dist=jaxcache`` / ``--dist=load``, cold (history,
  no entries) and warm (the whole cache), pairs with the order alternating.

Every run is checked: every test ran exactly once over a set of shards, everything
passed, the scheduler had its history.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from benchlib import (
    BenchError,
    Context,
    Run,
    Summary,
    Workspace,
    alternate,
    fmt_pct,
    fmt_ratio,
    log,
    pair_row,
    prime,
    pythonpath,
    ratio,
    rotate,
    run_pytest,
    section,
    subprocess_env,
    summarise,
    table,
    verdict,
)

# tests/ is on sys.path: benchlib puts it there.
from emulators import Emulator, object_sizes, start_s3

from pytest_jaxcache.keys import file_name
from pytest_jaxcache.recorder import OUTSIDE_TESTS

NAME = "distribution"
TITLE = "Bench: distribution by predicted cost (shards, per-shard prefetch, `--dist=jaxcache`)"
SHARDS = 4
MODULES = 8
ERROR_TESTS = 4
BASE_ARGS = ("-p", "no:cacheprovider")
COLD_SHARD_TARGET = 1.25
WARM_SHARD_TARGET = 1.15
COLD_DIST_TARGET = 0.9
WARM_DIST_TARGET = 1.0
NO_HISTORY = "no history of earlier sessions"
GOLDEN = 0.6180339887498949
TAIL = 4  # the higher, the fewer costly programs
ROW_KINDS = 16
OURS, SPLIT = "jaxcache", "split"
COLD, WARM = "cold", "warm"
HIT, MISS = "hit", "miss"
SHARDERS = {OURS: "`--jax-cache-shard=K/4`", SPLIT: "pytest-split `--splits 4 --group K`"}


@dataclass(frozen=True)
class Plan:
    tests: int
    max_steps: int
    shard_repeats: int
    cold_pairs: int
    warm_pairs: int


def plan(quick: bool) -> Plan:
    return Plan(96, 150, 1, 1, 1) if quick else Plan(240, 150, 2, 2, 3)


# -- the suite ---------------------------------------------------------------------------

MODULE = """
import jax
import jax.numpy as jnp
import numpy as np
import pytest


def chain(n):
    def program(x):
        for step in range(n):
            if step % 3 == 0:
                x = jnp.tanh(x @ x.T * 0.01 + step)
            else:
                x = jnp.sin(x * 0.9 + step)
        return x

    program.__name__ = f"chain_{{n}}"
    return program


@pytest.mark.parametrize(("n", "rows"), [{params}])
def test_chain(n, rows):
    x = np.linspace(-1.0, 1.0, rows * 8, dtype=np.float32).reshape(rows, 8)
    assert np.isfinite(np.asarray(jax.jit(chain(n))(x))).all()
"""

CHECKED = f"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

seen = []


@pytest.mark.jax_errors
@pytest.mark.parametrize("k", range({ERROR_TESTS}))
def test_checked(k):
    def program(v):
        jax.debug.callback(lambda a: seen.append(a.shape), v)  # a host callback: never cached
        return jnp.sum(v * v) * k

    x = np.full(8, 1.0, np.float32)
    assert float(jax.jit(program)(x)) == 8.0 * k
"""


def programs_of(count: int, max_steps: int) -> list[tuple[int, int]]:
    """Each test's program, (chain length, rows of its input): lengths spread over
    1..max_steps with a heavy tail (``max_steps ** u**4``, ``u`` low-discrepancy in
    [0, 1): deterministic), so most programs are cheap and a few are costly; rows cycle
    over 4..19, so cheap programs are mostly distinct and some tests share a program."""
    return [
        (max(1, round(max_steps ** (((i * GOLDEN) % 1.0) ** TAIL))), 4 + i % ROW_KINDS)
        for i in range(count)
    ]


def write_suite(dest: Path, count: int, max_steps: int) -> list[tuple[int, int]]:
    """The suite in ``dest``: ``count`` chain tests over :data:`MODULES` modules and
    :data:`ERROR_TESTS` marked ones; returns each chain test's program."""
    dest.mkdir(parents=True)
    (dest / "pytest.ini").write_text("[pytest]\n")
    programs = programs_of(count, max_steps)
    for module in range(MODULES):
        params = ", ".join(
            f'pytest.param({n}, {rows}, id="t{i}-n{n}-r{rows}")'
            for i, (n, rows) in enumerate(programs)
            if i % MODULES == module
        )
        (dest / f"test_chain_{module}.py").write_text(MODULE.format(params=params))
    (dest / "test_checked.py").write_text(CHECKED)
    return programs


# -- runs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What every run of the bench shares."""

    suite: Path
    tests: int  # every test of the suite, marked ones included
    earlier: Path  # the cache the earlier session left
    durations: Path | None  # pytest-split's, None without pytest-split
    split_path: Path | None  # where pytest-split is installed
    s3: Emulator
    url: str
    ws: Workspace
    known: set[str] = field(default_factory=set)  # the earlier session's tests


def ran(run: Run) -> set[str]:
    """The tests the session ran (from its report)."""
    return {
        test["nodeid"]
        for test in run.require_report()["tests"]
        if test["nodeid"] != OUTSIDE_TESTS and test["outcome"] in ("passed", "failed", "skipped")
    }


def _pytest(setup: Setup, args: list[str], label: str, env: dict[str, str] | None = None) -> Run:
    run = run_pytest(
        [*BASE_ARGS, *args],
        cwd=setup.suite,
        workspace=setup.ws,
        extra_env=env,
        timer=False,
        report=setup.ws.path(f"report-{label}.json"),
    )
    if run.require_report()["lost_workers"]:
        raise BenchError(f"{label}: workers crashed: {run.require_report()['lost_workers']}")
    if setup.known and not ran(run) <= setup.known:
        # A path given as a separate argument (`--opt PATH`) that exists changes pytest's
        # rootdir, hence every test id: the history would know none of them.
        odd = sorted(ran(run) - setup.known)[:3]
        raise BenchError(f"{label}: test ids unknown to the earlier session: {odd}")
    return run


def cold_copy(setup: Setup) -> Path:
    """A fresh cache that holds only the earlier session's history."""
    cache = setup.ws.fresh("cold-cache")
    shutil.copytree(setup.earlier / "history", cache / "history")
    return cache


def warm_copy(setup: Setup) -> Path:
    """A copy of the whole cache the earlier session left."""
    cache = setup.ws.path("warm-cache")
    shutil.copytree(setup.earlier, cache, symlinks=True)
    return cache


def _split_env(setup: Setup) -> dict[str, str]:
    assert setup.split_path is not None
    return {"PYTHONPATH": pythonpath(setup.split_path)}


def install_pytest_split(ws: Workspace) -> tuple[Path | None, str]:
    """pytest-split in a directory of its own (``pip install --target``: the benchmark's
    environment is left as it is); (None, why) when it does not install."""
    target = ws.fresh("pytest-split")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target),
         "pytest-split"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return None, (done.stdout + done.stderr).strip().splitlines()[-1:][0]
    versions = sorted(p.name for p in target.glob("pytest_split-*.dist-info"))
    return target, versions[0].removesuffix(".dist-info").replace("_", "-") if versions else "?"


def earlier_session(setup: Setup) -> Run:
    """The earlier session: cold, the remote filled, history and durations written."""
    args = [f"--jax-cache-dir={setup.earlier}", f"--jax-cache-remote={setup.url}"]
    env = dict(setup.s3.env)
    if setup.durations is not None:
        args += ["--store-durations", f"--durations-path={setup.durations}"]
        env.update(_split_env(setup))
    log(f"{NAME}: the earlier session (cold, fills the bucket, writes the history)")
    run = _pytest(setup, args, "earlier", env)
    remote = run.require_report()["remote"] or {}
    if remote.get("off") or not remote.get("uploads") or remote.get("not_uploaded"):
        raise BenchError(f"the earlier session did not fill the bucket: {remote}")
    if len(ran(run)) != setup.tests:
        raise BenchError(f"the earlier session ran {len(ran(run))} of {setup.tests} tests")
    setup.known.update(ran(run))
    if not list((setup.earlier / "history").glob("*.json")):
        raise BenchError("the earlier session wrote no history")
    if setup.durations is not None and not setup.durations.is_file():
        raise BenchError("pytest-split wrote no durations file")
    return run


# -- (a) shards --------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardSet:
    """The runs of one set of 4 shards, by shard number (1-based)."""

    runs: dict[int, Run]

    def walls(self) -> list[float]:
        return [self.runs[k].wall_secs for k in sorted(self.runs)]

    def test_secs(self) -> list[float]:
        return [
            sum(
                float(t["wall_secs"])
                for t in self.runs[k].require_report()["tests"]
                if t["nodeid"] != OUTSIDE_TESTS
            )
            for k in sorted(self.runs)
        ]

    def predicted(self) -> list[float] | None:
        shards = [self.runs[k].require_report()["shard"] for k in sorted(self.runs)]
        if any(shard is None for shard in shards):
            return None
        return [float(shard["predicted_secs"]) for shard in shards]


def max_over_mean(values: list[float]) -> float:
    return ratio(max(values), sum(values) / len(values))


def _shard_args(setup: Setup, sharder: str, index: int, cache: Path) -> list[str]:
    args = [f"--jax-cache-dir={cache}"]
    if sharder == OURS:
        return [*args, f"--jax-cache-shard={index}/{SHARDS}"]
    assert setup.durations is not None
    split = ["--splits", str(SHARDS), "--group", str(index), f"--durations-path={setup.durations}"]
    return [*args, *split, "--splitting-algorithm", "least_duration"]


def shard_set(setup: Setup, sharder: str, state: str, repeat: int) -> ShardSet:
    """4 shards, one after the other, each in its own copy of the restored cache."""
    runs: dict[int, Run] = {}
    for index in rotate(range(1, SHARDS + 1), repeat):
        log(f"{NAME}: (a) {sharder} {state}, shard {index}/{SHARDS}")
        cache = cold_copy(setup) if state == COLD else warm_copy(setup)
        env = _split_env(setup) if sharder == SPLIT else None
        label = f"shard-{sharder}-{state}-{index}"
        runs[index] = _pytest(setup, _shard_args(setup, sharder, index, cache), label, env)
        notices = " ".join(runs[index].require_report()["cache"]["notices"])
        if sharder == OURS and NO_HISTORY in notices:
            raise BenchError(f"{label}: the shard had no history")
    sets = [ran(runs[k]) for k in sorted(runs)]
    every = set().union(*sets)
    if sum(len(s) for s in sets) != len(every) or len(every) != setup.tests:
        raise BenchError(
            f"{sharder} {state}: the shards ran {sum(len(s) for s in sets)} tests, "
            f"{len(every)} distinct, of {setup.tests}"
        )
    return ShardSet(runs)


def shards_bench(setup: Setup, repeats: int, sharders: list[str]) -> list[dict[str, ShardSet]]:
    blocks = [(sharder, state) for state in (COLD, WARM) for sharder in sharders]
    out: list[dict[str, ShardSet]] = []
    for repeat in range(repeats):
        log(f"{NAME}: (a) shards: repeat {repeat + 1}/{repeats}")
        done = {}
        for sharder, state in rotate(blocks, repeat):
            done[f"{sharder}-{state}"] = shard_set(setup, sharder, state, repeat)
        out.append(done)
    return out


def _shard_rows(results: list[dict[str, ShardSet]], sharders: list[str]) -> list[list[str]]:
    rows = []
    for state, target in ((COLD, COLD_SHARD_TARGET), (WARM, WARM_SHARD_TARGET)):
        for sharder in sharders:
            sets = [r[f"{sharder}-{state}"] for r in results]
            walls = summarise(max_over_mean(s.walls()) for s in sets)
            tests = summarise(max_over_mean(s.test_secs()) for s in sets)
            predicted = [p for s in sets if (p := s.predicted()) is not None]
            counts = [len(ran(s.runs[k])) for s in sets for k in sorted(s.runs)]
            rows.append(
                [
                    f"{state}, {SHARDERS[sharder]}",
                    fmt_ratio(walls),
                    fmt_ratio(tests),
                    fmt_ratio(summarise(max_over_mean(p) for p in predicted)) if predicted else "-",
                    f"{min(counts)}-{max(counts)}",
                    f"<= {target:.2f}" if sharder == OURS else "-",
                    verdict(walls.median <= target) if sharder == OURS else "-",
                ]
            )
    return rows


# -- (b) per-shard downloads -------------------------------------------------------------


@dataclass(frozen=True)
class Download:
    shard: int
    run: Run
    bytes_down: int
    needed: int  # bytes of the entries its tests used
    hit_rate: float | None
    prefetched: int
    remote_hits: int


def downloads_bench(setup: Setup) -> tuple[list[Download], int, int]:
    """Each shard a fresh machine with the history only; (downloads, namespace entry
    bytes, namespace entries)."""
    sizes = object_sizes(setup.s3, setup.url)
    found: list[Download] = []
    namespace: str | None = None
    for index in range(1, SHARDS + 1):
        log(f"{NAME}: (b) shard {index}/{SHARDS}, fresh machine, with the remote")
        args = [
            f"--jax-cache-dir={cold_copy(setup)}",
            f"--jax-cache-remote={setup.url}",
            f"--jax-cache-shard={index}/{SHARDS}",
        ]
        run = _pytest(setup, args, f"download-{index}", dict(setup.s3.env))
        report = run.require_report()
        remote = report["remote"] or {}
        if remote.get("off"):
            raise BenchError(f"(b) shard {index}: the remote was turned off: {remote['off']}")
        namespace = remote.get("namespace") or namespace
        used = {file_name(c["key"]) for c in report["compiles"] if c["key"] and c["outcome"] == HIT}
        needed = sum(sizes.get(f"{namespace}/{name}", 0) for name in used)
        rate = report["cachable"]["hit_rate"]
        found.append(
            Download(
                index,
                run,
                int(remote.get("bytes_down", 0)),
                needed,
                None if rate is None else float(rate),
                int(remote.get("prefetched", 0)),
                int(remote.get("hits", 0)),
            )
        )
    entries = {
        path: size
        for path, size in sizes.items()
        if namespace is not None and path.startswith(f"{namespace}/") and path.count("/") == 1
    }
    if not entries:
        raise BenchError(f"no entries in the bucket's namespace {namespace}: {sorted(sizes)[:5]}")
    return found, sum(entries.values()), len(entries)


def _download_rows(found: list[Download], total: int) -> list[list[str]]:
    rows = [
        [
            f"shard {d.shard}/{SHARDS}",
            f"{ratio(d.bytes_down, total):.3f}",
            f"{ratio(d.needed, total):.3f}",
            f"{ratio(d.bytes_down, d.needed):.2f}" if d.needed else "-",
            f"{d.prefetched} / {d.remote_hits}",
            fmt_pct(d.hit_rate),
        ]
        for d in found
    ]
    down = sum(d.bytes_down for d in found)
    needed = sum(d.needed for d in found)
    rows.append(
        [
            "all 4 shards",
            f"{ratio(down, total):.3f}",
            f"{ratio(needed, total):.3f}",
            f"{ratio(down, needed):.2f}" if needed else "-",
            f"{sum(d.prefetched for d in found)} / {sum(d.remote_hits for d in found)}",
            "-",
        ]
    )
    return rows


# -- (c) -n 2 ----------------------------------------------------------------------------


def dist_run(setup: Setup, dist: str, state: str) -> Run:
    cache = cold_copy(setup) if state == COLD else warm_copy(setup)
    args = [f"--jax-cache-dir={cache}", "-n", "2", f"--dist={dist}"]
    run = _pytest(setup, args, f"dist-{dist}-{state}")
    if len(ran(run)) != setup.tests:
        raise BenchError(f"-n 2 --dist={dist} {state} ran {len(ran(run))} of {setup.tests} tests")
    notices = " ".join(run.require_report()["cache"]["notices"])
    if dist == OURS and NO_HISTORY in notices:
        raise BenchError(f"-n 2 --dist=jaxcache {state}: the scheduler had no history")
    return run


def _dist_variant(setup: Setup, dist: str, state: str, _index: int) -> Run:
    return dist_run(setup, dist, state)


def dist_bench(setup: Setup, p: Plan) -> dict[str, tuple[Summary, Summary]]:
    figures = {}
    for state, pairs in ((COLD, p.cold_pairs), (WARM, p.warm_pairs)):
        figures[state] = alternate(
            pairs,
            f"{NAME}: (c) -n 2 {state}, jaxcache / load",
            partial(_dist_variant, setup, OURS, state),
            partial(_dist_variant, setup, "load", state),
        )
    return figures


# -- the section -------------------------------------------------------------------------


def compile_spread(earlier: Run) -> tuple[float, float, int]:
    """From the earlier (cold) session: the costliest written program's compile time
    over the cheapest's, the costliest over the median, and how many programs."""
    secs = sorted(
        float(c["secs"])
        for c in earlier.require_report()["compiles"]
        if c["outcome"] == MISS and "chain_" in c["name"]
    )
    if not secs:
        return 0.0, 0.0, 0
    return ratio(secs[-1], secs[0]), ratio(secs[-1], secs[len(secs) // 2]), len(secs)


def run(ctx: Context) -> str:
    """Run the distribution bench and return its markdown section."""
    ws = ctx.workspace
    p = plan(ctx.quick)
    suite = ws.path("dist-suite")
    programs = write_suite(suite, p.tests, p.max_steps)
    prime(suite, ws)
    split_path, split_note = install_pytest_split(ws)
    log(f"{NAME}: pytest-split: {split_note if split_path else 'not installed: ' + split_note}")
    sharders = [OURS, SPLIT] if split_path is not None else [OURS]
    s3 = start_s3()
    try:
        setup = Setup(
            suite=suite,
            tests=p.tests + ERROR_TESTS,
            earlier=ws.path("earlier-cache"),
            durations=ws.path("test-durations.json") if split_path is not None else None,
            split_path=split_path,
            s3=s3,
            url=s3.url("distribution"),
            ws=ws,
        )
        earlier = earlier_session(setup)
        shard_results = shards_bench(setup, p.shard_repeats, sharders)
        downloads, namespace_bytes, namespace_entries = downloads_bench(setup)
        dist = dist_bench(setup, p)
    finally:
        s3.kill()
    spread, over_median, written = compile_spread(earlier)
    intro = (
        f"A generated suite of {p.tests} tests over {MODULES} modules (a jitted chain of n "
        f"steps, n from 1 to {p.max_steps} with a heavy tail, inputs of 4 to "
        f"{3 + ROW_KINDS} rows: {len(set(programs))} distinct programs, so tests share "
        f"some) and {ERROR_TESTS} `jax_errors` tests (host "
        "callbacks). In the earlier, cold session, the costliest chain compiled "
        f"{spread:.0f}x as long as the cheapest ({over_median:.1f}x the median, {written} "
        "programs written). pytest-split: "
        + (split_note if split_path is not None else f"not installed ({split_note})")
        + ". Cells: median (min-max) over repeats."
    )
    shards_table = table(
        [
            "(a) 4 shards, serial, each in its own copy of the restored cache",
            "slowest / mean shard, wall",
            "slowest / mean, tests' own time",
            "slowest / mean, the plugin's prediction",
            "tests per shard",
            "target (wall)",
            "",
        ],
        _shard_rows(shard_results, sharders),
    )
    shards_note = (
        f"{p.shard_repeats} repeat(s), the four sets (cold and warm, each sharder) in a "
        "rotated order. Wall = the whole `pytest` process (start, `import jax`, collection "
        "of the whole suite, the shard's tests), what a CI job waits for; tests' own time "
        "= the sum of the shard's tests' wall times in its report. Cold: the restored "
        "cache holds the earlier session's `history/` and no entry."
    )
    downloads_table = table(
        [
            "(b) fresh machine, shard K/4, with the remote",
            "bytes down / namespace bytes",
            "bytes its tests used / namespace",
            "bytes down / bytes used",
            "prefetched / read-through hits",
            "cachable hit rate",
        ],
        _download_rows(downloads, namespace_bytes),
    )
    downloads_note = (
        f"The namespace: {namespace_entries} entries. Each shard starts from a cache holding "
        "only the history; what it downloads is its own tests' entries (prefetch), plus "
        "read-through for any it lacked. Sizes, not times."
    )
    dist_table = table(
        ["(c) `-n 2`, the whole suite", "pairs", "wall, jaxcache / load", "CPU", "target", ""],
        [
            pair_row("cold (history, no entries)", dist[COLD], COLD_DIST_TARGET),
            pair_row("warm (the whole cache)", dist[WARM], WARM_DIST_TARGET),
        ],
    )
    return section(
        TITLE, intro, shards_table, shards_note, downloads_table, downloads_note, dist_table
    )
