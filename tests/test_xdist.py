"""The shared store under real xdist workers: merged reports, single flight, every
distribution mode, early stops, interrupts and crashed workers.

Every session runs in a fresh interpreter (JAX's cache config is process-global). One
cold ``-n 2`` run fills a cache that each warm test copies, so most tests pay for one
warm session only.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from helpers import ColdCache, RunJax, assert_all_hits, cold_session, write_files

from pytest_jaxcache.recorder import OUTSIDE_TESTS
from pytest_jaxcache.stats import StoreStats

pytestmark = pytest.mark.slow


# Two modules, one distinct program per test (numpy inputs: no helper programs such as
# broadcast_in_dim are compiled). ``test_beta`` is one xdist group for --dist loadgroup.
SUITE = {
    "test_alpha.py": """
import jax
import jax.numpy as jnp
import numpy as np
import pytest


def double_sin(v):
    return jnp.sin(v) * 2.0


@pytest.mark.parametrize("n", range(4))
def test_alpha(n):
    x = np.arange(n + 1, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(double_sin)(x)), np.sin(x) * 2.0, rtol=1e-5)
""",
    "test_beta.py": """
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.xdist_group("beta")


def half_cos(v):
    return jnp.cos(v) * 0.5


@pytest.mark.parametrize("n", range(4))
def test_beta(n):
    x = np.arange(n + 1, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(half_cos)(x)), np.cos(x) * 0.5, rtol=1e-5)
""",
}
SUITE_TESTS = {f"test_alpha.py::test_alpha[{n}]" for n in range(4)} | {
    f"test_beta.py::test_beta[{n}]" for n in range(4)
}

# Every test compiles the SAME program: a fresh function object per test, so each test
# really looks the program up (no in-memory reuse). The session fixture lines the workers
# up so that their first lookups overlap while one of them compiles.
SINGLE_FLIGHT = {
    "conftest.py": """
import os
import pathlib
import time

import pytest


@pytest.fixture(scope="session")
def all_workers_ready():
    barrier = pathlib.Path(os.environ["JAXCACHE_TEST_BARRIER"])
    barrier.mkdir(exist_ok=True)
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    (barrier / os.environ.get("PYTEST_XDIST_WORKER", "main")).touch()
    deadline = time.monotonic() + 120
    while len(list(barrier.iterdir())) < count and time.monotonic() < deadline:
        time.sleep(0.001)
""",
    "test_same.py": """
import jax
import jax.numpy as jnp
import numpy as np
import pytest


def make_program():
    def shared_program(x):
        # Each step uses x once: XLA cannot duplicate work across steps (a step that
        # used x twice made JAX 0.6's CPU compiler blow up exponentially).
        for step in range(40):
            x = jnp.tanh(jnp.roll(x, step) * 0.9 + 0.1)
        return x

    return shared_program


@pytest.mark.parametrize("n", range(6))
def test_same_program(n, all_workers_ready):
    x = np.linspace(0.0, 1.0, 64, dtype=np.float32)
    assert np.isfinite(np.asarray(jax.jit(make_program())(x))).all()
""",
}

# The store's counters (hits, misses, writes, waits...): each worker has its own.
COUNTERS = [field.name for field in fields(StoreStats) if field.type == "int"]

_VERBOSE_XDIST = re.compile(r"^\[(gw\d+)\] \[\s*\d+%\] (PASSED|FAILED|ERROR|SKIPPED) (\S+)")
_VERBOSE_LOCAL = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED)")


# -- helpers ------------------------------------------------------------------------------


def outcomes_by_worker(lines: Iterable[str]) -> dict[str, tuple[str, str]]:
    """nodeid -> (worker, outcome) from ``-v`` output ("" for the worker without xdist)."""
    found: dict[str, tuple[str, str]] = {}
    for line in lines:
        match = _VERBOSE_XDIST.match(line)
        if match:
            found[match.group(3)] = (match.group(1), match.group(2))
            continue
        match = _VERBOSE_LOCAL.match(line)
        if match:
            found[match.group(1)] = ("", match.group(2))
    return found


def assert_every_compile_hit(report: dict[str, Any]) -> None:
    """A warm session: every cachable lookup hit, and every compile of every worker too."""
    assert_all_hits(report)
    totals = report["totals"]
    assert totals["hits"] == totals["requests"]
    assert report["store"]["hits"] == report["cachable"]["hits"]
    assert not [c for c in report["compiles"] if c["outcome"] != "hit"]


def assert_worker_figures(report: dict[str, Any], workers: set[str]) -> None:
    """``report["workers"]`` holds exactly ``workers``, each with its own figures: its
    test count is the tests the report puts on it, its store's hits and misses are its
    compile records', its explained misses are its missed keys, it names the installed
    store and JAX; and the store's counters are the sums of the workers' (the controller
    compiles nothing)."""
    assert set(report["workers"]) == workers
    tests = Counter(t["worker"] for t in report["tests"] if t["nodeid"] != OUTSIDE_TESTS)
    for worker, info in report["workers"].items():
        compiles = [c for c in report["compiles"] if c["worker"] == worker]
        outcomes = Counter(c["outcome"] for c in compiles)
        assert info["tests"] == tests[worker], worker
        assert info["store"]["hits"] == outcomes["hit"], (worker, info["store"])
        assert info["store"]["misses"] == outcomes["miss"], (worker, info["store"])
        missed = sorted(c["key"] for c in compiles if c["outcome"] == "miss")
        assert sorted(miss["key"] for miss in info["misses"]) == missed, worker
        assert info["installed"] == {"store": report["cache"]["store"], **report["jax"]}, worker
    everywhere = Counter(c["outcome"] for c in report["compiles"])
    assert (report["store"]["hits"], report["store"]["misses"]) == (
        everywhere["hit"],
        everywhere["miss"],
    )
    processes = list(report["workers"].values()) or [report]  # without xdist: one process
    for name in COUNTERS:
        summed = sum(info["store"][name] for info in processes)
        assert summed == report["store"][name], name
    assert report["store"]["wait_secs"] == pytest.approx(
        sum(info["store"]["wait_secs"] for info in processes)
    )


def assert_clean_output(output: str) -> None:
    """No internal error and no traceback through the plugin's code."""
    assert "INTERNALERROR" not in output
    assert "pytest_jaxcache/" not in output
    assert "jax compilation cache" in output


@pytest.fixture(scope="module")
def cold_cache(tmp_path_factory: pytest.TempPathFactory) -> ColdCache:
    """One cold ``-n 2`` session of SUITE; warm tests copy its cache."""
    return cold_session(tmp_path_factory, "cold-xdist", SUITE, "-n", "2")


@pytest.fixture
def warm_dir(pytester: pytest.Pytester, cold_cache: ColdCache) -> Path:
    """pytester.path holds SUITE and a copy of the cold cache (at ``cache``)."""
    return cold_cache.copy_to(pytester.path, SUITE)


# -- the report merges every worker --------------------------------------------------------


def test_cold_run_compiles_every_program_once(cold_cache: ColdCache) -> None:
    """The shared cold run: all eight tests reported, each program written once, each
    worker's figures its own."""
    report = cold_cache.report
    assert {t["nodeid"] for t in report["tests"]} == SUITE_TESTS
    assert_worker_figures(report, {"gw0", "gw1"})
    assert report["lost_workers"] == []
    misses = [c["name"] for c in report["compiles"] if c["outcome"] == "miss"]
    assert report["store"]["writes"] == len(misses) == report["cachable"]["misses"] > 0
    assert report["cache"]["after"]["entries"] == report["store"]["writes"]


def test_report_merges_every_worker(run_jax: RunJax, warm_dir: Path) -> None:
    """Warm ``-n 2``: 100% hits, every test in the report under the worker xdist ran it
    on, both workers' figures present and summed, per-worker lines with ``-v``."""
    result, report = run_jax("-n", "2", "--dist", "load", "-v", "--jax-cache-dir=cache")
    assert result.ret == 0
    assert_every_compile_hit(report)

    ran = outcomes_by_worker(result.outlines)
    assert set(ran) == SUITE_TESTS
    reported = {t["nodeid"]: t["worker"] for t in report["tests"]}
    assert reported == {nodeid: worker for nodeid, (worker, _) in ran.items()}
    assert set(reported.values()) == {"gw0", "gw1"}

    assert_worker_figures(report, {"gw0", "gw1"})
    workers = report["workers"]
    assert sum(w["tests"] for w in workers.values()) == len(SUITE_TESTS)
    assert [line for line in result.outlines if line.startswith("worker gw")] == [
        f"worker {worker}: {workers[worker]['tests']} tests, {workers[worker]['tests']} hits, "
        "0 written, 0 waited"
        for worker in ("gw0", "gw1")
    ]
    assert report["lost_workers"] == []


# -- single flight -------------------------------------------------------------------------


def single_flight_session(run_jax: RunJax, base: Path, attempt: int) -> dict[str, Any]:
    """One cold ``-n 2 --dist load`` session of SINGLE_FLIGHT on a fresh cache: the
    program compiled once, by one worker, whether or not the lookups overlapped."""
    barrier = {"JAXCACHE_TEST_BARRIER": str(base / f"barrier{attempt}")}
    result, report = run_jax(
        "-n", "2", "--dist", "load", f"--jax-cache-dir=c{attempt}", env=barrier
    )
    assert result.ret == 0
    result.assert_outcomes(passed=6)

    misses = [(c["name"], c["worker"]) for c in report["compiles"] if c["outcome"] == "miss"]
    assert [name for name, _ in misses] == ["jit(shared_program)"], f"compiled: {misses}"
    store, cachable = report["store"], report["cachable"]
    assert cachable["requests"] == 6  # one lookup per test
    assert cachable["misses"] == 1 and cachable["hits"] == 5
    assert store["hits"] == cachable["hits"]
    assert store["writes"] == store["misses"] == 1
    assert store["lock_timeouts"] == 0
    assert store["waited_hits"] <= store["lock_waits"]
    assert_worker_figures(report, {"gw0", "gw1"})
    assert report["lost_workers"] == []
    return report


def test_single_flight_across_workers(run_jax: RunJax, pytester: pytest.Pytester) -> None:
    """Cold ``-n 2 --dist load``, six tests, one program: it is compiled by exactly one
    worker; the other waits for the entry instead of compiling it too, and the report's
    hit/wait figures add up, per worker and in all. Retried on a fresh cache (at most 3
    times) until the workers' lookups really overlapped; the no-duplicate check holds on
    every attempt."""
    write_files(pytester.path, SINGLE_FLIGHT)
    reports: list[dict[str, Any]] = []
    for attempt in range(3):
        reports.append(single_flight_session(run_jax, pytester.path, attempt))
        if reports[-1]["store"]["lock_waits"] > 0:
            break  # the lookups overlapped: no need to try again
    report = reports[-1]
    store = report["store"]
    assert store["lock_waits"] > 0, f"the lookups never overlapped in {len(reports)} attempts"
    # the waiting worker got the other's entry: a hit, never a second compile
    assert store["waited_hits"] == store["lock_waits"]
    workers = report["workers"]
    compiled = {worker for worker, info in workers.items() if info["store"]["writes"]}
    waited = {worker for worker, info in workers.items() if info["store"]["lock_waits"]}
    assert len(compiled) == len(waited) == 1 and compiled != waited, workers
    # and its wait is reported as waiting, not as compile or load time
    waits = [c for c in report["compiles"] if c["waited_secs"] > 0]
    assert [(c["outcome"], c["worker"]) for c in waits] == [("hit", *waited)] * store["waited_hits"]
    assert store["wait_secs"] == pytest.approx(sum(c["waited_secs"] for c in waits))
    assert report["totals"]["wait_secs"] == pytest.approx(store["wait_secs"])


# -- every way of running pytest -----------------------------------------------------------


def _test(nodeid: str) -> str:
    return nodeid


def _module(nodeid: str) -> str:
    return nodeid.split("::")[0]


def _group(nodeid: str) -> str:
    """xdist appends "@<group>" to the ids of tests in an xdist_group."""
    return "beta" if nodeid.endswith("@beta") else nodeid


@pytest.mark.parametrize(
    "args, workers, unit, largest_unit",
    [
        pytest.param(("-n", "0"), {""}, _test, 1, id="n0"),
        pytest.param(("-p", "no:xdist"), {""}, _test, 1, id="no-xdist"),
        pytest.param(("-n", "2", "--dist", "loadgroup"), {"gw0", "gw1"}, _group, 4, id="loadgroup"),
        pytest.param(("-n", "2", "--dist", "loadfile"), {"gw0", "gw1"}, _module, 4, id="loadfile"),
        pytest.param(("-n", "2", "--dist", "worksteal"), {"gw0", "gw1"}, _test, 1, id="worksteal"),
    ],
)  # --dist load: test_report_merges_every_worker
def test_warm_run_hits_everything(
    run_jax: RunJax,
    warm_dir: Path,
    args: tuple[str, ...],
    workers: set[str],
    unit: Callable[[str], str],
    largest_unit: int,
) -> None:
    """After the shared cold run, each way of running the suite hits every program, and
    the report carries every test under the worker that ran it; what the distribution
    mode keeps together (a group, a module) ran on one worker."""
    result, report = run_jax(*args, "-v", "--jax-cache-dir=cache")
    assert result.ret == 0
    result.assert_outcomes(passed=len(SUITE_TESTS))
    assert_every_compile_hit(report)
    assert report["cachable"]["requests"] == len(SUITE_TESTS)
    assert_clean_output(result.stdout.str())

    ran = outcomes_by_worker(result.outlines)
    reported = {t["nodeid"]: t["worker"] for t in report["tests"]}
    assert reported == {nodeid: worker for nodeid, (worker, _) in ran.items()}
    assert len(reported) == len(SUITE_TESTS)
    assert set(reported.values()) <= workers
    assert_worker_figures(report, workers - {""})
    assert report["lost_workers"] == []

    placed: dict[str, set[str]] = {}
    for nodeid, worker in reported.items():
        placed.setdefault(unit(nodeid), set()).add(worker)
    assert all(len(on) == 1 for on in placed.values()), placed
    sizes = [sum(unit(n) == name for n in reported) for name in placed]
    assert max(sizes) == largest_unit


FAILING = {
    "test_b_fail.py": """
def test_fails():
    assert 1 == 2
""",
}
ALPHA_TESTS = {n for n in SUITE_TESTS if n.startswith("test_alpha.py")}


def _early_stop(
    run_jax: RunJax, pytester: pytest.Pytester, exit_code: pytest.ExitCode, *args: str
) -> tuple[dict[str, tuple[str, str]], dict[str, str], dict[str, Any]]:
    """Run the warm suite with a failing test between its two modules (the session ends
    with ``exit_code``); return what ran (nodeid -> worker, outcome), what the report
    holds (nodeid -> worker), and the report."""
    write_files(pytester.path, FAILING)
    result, report = run_jax(*args, "-v", "--jax-cache-dir=cache")
    assert result.ret == exit_code
    assert result.parseoutcomes()["failed"] == 1
    assert report, "no JSON report after an early stop"
    assert_clean_output(result.stdout.str())
    ran = outcomes_by_worker(result.outlines)
    assert ran["test_b_fail.py::test_fails"][1] == "FAILED"
    assert report["lost_workers"] == []
    tests = [t for t in report["tests"] if t["nodeid"] != OUTSIDE_TESTS]
    outcomes = {t["nodeid"]: t["outcome"] for t in tests}
    assert outcomes == {nodeid: outcome.lower() for nodeid, (_, outcome) in ran.items()}
    return ran, {t["nodeid"]: t["worker"] for t in tests}, report


def test_maxfail_stops_in_order_and_still_reports(
    run_jax: RunJax, pytester: pytest.Pytester, warm_dir: Path
) -> None:
    """``-n 0 --maxfail=1``: test_alpha.py ran, test_b_fail.py stopped the session
    before test_beta.py, and the report holds exactly what ran, all of it hits."""
    ran, reported, report = _early_stop(
        run_jax, pytester, pytest.ExitCode.TESTS_FAILED, "-n", "0", "--maxfail=1"
    )
    passed = {n for n, (_, outcome) in ran.items() if outcome == "PASSED"}
    assert passed == ALPHA_TESTS
    assert reported == {n: "" for n in ran}  # what passed, and the test that failed
    assert_every_compile_hit(report)
    assert_worker_figures(report, set())


def test_x_under_xdist_still_reports(
    run_jax: RunJax, pytester: pytest.Pytester, warm_dir: Path
) -> None:
    """``-n 2 -x``: the session stops early (xdist: INTERRUPTED); the report is still
    written with what passed (whatever the workers got to), each under the worker that
    ran it, both workers' figures present, and no program of theirs compiled."""
    ran, reported, report = _early_stop(
        run_jax, pytester, pytest.ExitCode.INTERRUPTED, "-n", "2", "-x"
    )
    assert reported == {n: w for n, (w, _) in ran.items()}
    assert_every_compile_hit(report)
    assert_worker_figures(report, {"gw0", "gw1"})


INTERRUPT = {
    "test_zz_interrupt.py": """
def test_interrupts():
    raise KeyboardInterrupt


def test_never_runs():
    pass
""",
}


def test_keyboard_interrupt_still_reports(
    run_jax: RunJax, pytester: pytest.Pytester, warm_dir: Path
) -> None:
    """A test raising KeyboardInterrupt (``-n 0``): the session ends INTERRUPTED, the
    report is written with the tests that ran, and no traceback comes from the plugin."""
    write_files(pytester.path, INTERRUPT)
    result, report = run_jax("-n", "0", "--jax-cache-dir=cache")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    output = result.stdout.str() + result.stderr.str()
    assert "KeyboardInterrupt" in output
    assert_clean_output(output)
    assert report, "no JSON report after KeyboardInterrupt"
    interrupted = "test_zz_interrupt.py::test_interrupts"
    tests = {t["nodeid"]: t["outcome"] for t in report["tests"]}
    assert tests == {**{nodeid: "passed" for nodeid in SUITE_TESTS}, interrupted: ""}
    assert_every_compile_hit(report)


CRASH = {
    "test_crash.py": """
import os
import signal


def test_worker_dies():
    os.kill(os.getpid(), signal.SIGKILL)
""",
}


def test_crashed_worker_is_named(
    run_jax: RunJax, pytester: pytest.Pytester, warm_dir: Path
) -> None:
    """A worker SIGKILLed mid-session: xdist replaces it (gw2), the session completes,
    the report names the crashed worker in lost_workers, keeps the records and figures
    of the survivor and of the replacement (and only theirs), and the terminal says
    which records are missing."""
    write_files(pytester.path, CRASH)
    result, report = run_jax("-n", "2", "-v", "--jax-cache-dir=cache")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=len(SUITE_TESTS), failed=1)
    output = result.stdout.str()
    assert "INTERNALERROR" not in output and "pytest_jaxcache/" not in output

    match = re.search(r"worker '(gw\d+)' crashed while running 'test_crash.py", output)
    assert match, output
    crashed = match.group(1)
    assert f"replacing crashed worker {crashed}" in output
    assert report["lost_workers"] == [crashed]
    assert f"notice: worker {crashed} crashed: its compile records are missing" in output
    [survivor] = {"gw0", "gw1"} - {crashed}
    assert_worker_figures(report, {survivor, "gw2"})

    ran = outcomes_by_worker(result.outlines)
    survivors = {n: w for n, (w, o) in ran.items() if o == "PASSED" and w != crashed}
    reported = {t["nodeid"]: t["worker"] for t in report["tests"]}
    assert reported == survivors
    assert_every_compile_hit(report)
