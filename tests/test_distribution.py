"""Splitting a suite by what each test will cost, end to end with real sessions: shards
across (simulated) CI jobs restored from one cache, ``-n`` inside a shard, per-shard
prefetch from a real object store, ``--dist=jaxcache`` cold and warm with ``jax_errors``
tests kept on one worker, and the timeline file."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from emulators import Emulator
from helpers import once_per_run, run_session, write_files

from pytest_jaxcache.recorder import OUTSIDE_TESTS

pytestmark = pytest.mark.slow

# Programs of very different compile costs: a loop unrolled 2 to 60 times.
SUITE = {
    "test_costs.py": """
import jax
import jax.numpy as jnp
import numpy as np
import pytest


def unrolled(n):
    def program(x):
        for step in range(n):
            x = jnp.tanh(x * 0.9 + step)
        return x

    program.__name__ = f"unrolled_{n}"
    return program


@pytest.mark.parametrize("n", [2, 4, 8, 16, 30, 60])
def test_cost(n):
    x = np.linspace(-1.0, 1.0, 16, dtype=np.float32)
    assert np.isfinite(np.asarray(jax.jit(unrolled(n))(x))).all()


@pytest.mark.jax_errors
@pytest.mark.parametrize("k", [1, 2, 3])
def test_checked(k):
    x = np.full(4, float(k), np.float32)
    assert float(jax.jit(lambda v: jnp.sum(v) * k)(x)) == 4.0 * k * k
""",
}
ALL = {f"test_costs.py::test_cost[{n}]" for n in (2, 4, 8, 16, 30, 60)}
ALL |= {f"test_costs.py::test_checked[{k}]" for k in (1, 2, 3)}
_PASSED = re.compile(r"(\d+) passed")


def ran(report: dict[str, Any]) -> dict[str, str]:
    """nodeid -> worker of every test the session ran."""
    return {t["nodeid"]: t["worker"] for t in report["tests"] if t["nodeid"] != OUTSIDE_TESTS}


@pytest.fixture(scope="module")
def restored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache with the history of one full (cold) session: what every CI job of a
    matrix restores. Once per test run: jobs copy it."""

    def build(root: Path) -> None:
        write_files(root, SUITE)
        result, report = run_session(root, "--jax-cache-dir=cache", "-p", "no:xdist")
        result.assert_outcomes(passed=len(ALL))
        assert set(ran(report)) == ALL
        assert list((root / "cache" / "history").glob("*.json"))

    root, _ = once_per_run(tmp_path_factory, "history", build)
    return root / "cache"


def job(root: Path, restored: Path, name: str) -> Path:
    """A CI job's checkout with the restored cache."""
    checkout = root / name
    write_files(checkout, SUITE)
    shutil.copytree(restored, checkout / "cache")
    return checkout


def test_shards_split_every_test_exactly_once_by_predicted_cost(
    tmp_path: Path, restored: Path
) -> None:
    """Three jobs restored from one cache run shards 1/3, 2/3 and 3/3: every test in
    exactly one shard, each shard's report says which shard it was, how many tests it
    had, and what it predicted; the costliest test sits alone with the cheap ones."""
    shards = []
    for index in (1, 2, 3):
        checkout = job(tmp_path, restored, f"job{index}")
        result, report = run_session(
            checkout, "--jax-cache-dir=cache", "-p", "no:xdist", f"--jax-cache-shard={index}/3"
        )
        assert result.ret == 0, result.outlines[-20:]
        shard = report["shard"]
        assert (shard["index"], shard["count"], shard["collected"]) == (index, 3, len(ALL))
        assert shard["tests"] == len(ran(report)) > 0
        assert shard["predicted_secs"] > 0 and shard["history"] == len(ALL)
        assert f"{len(ALL) - shard['tests']} deselected" in result.outlines[-1]
        said = f"shard: {index} of 3, {shard['tests']} of {len(ALL)} tests ({len(ALL)} known"
        assert any(line.startswith(said) for line in result.outlines), result.outlines[-30:]
        shards.append(set(ran(report)))
    assert set.union(*shards) == ALL
    assert sum(len(shard) for shard in shards) == len(ALL)
    costliest = next(shard for shard in shards if "test_costs.py::test_cost[60]" in shard)
    assert len(costliest & {f"test_costs.py::test_cost[{n}]" for n in (30, 16)}) <= 1


def test_a_shard_with_workers_selects_the_same_tests(tmp_path: Path, restored: Path) -> None:
    """``-n 2`` inside a shard: both workers select the same tests (xdist would stop on
    different collections), the same as the shard without workers."""
    alone, _ = run_session(
        job(tmp_path, restored, "alone"), "--jax-cache-dir=cache", "-p", "no:xdist",
        "--jax-cache-shard=2/3",
    )  # fmt: skip
    result, report = run_session(
        job(tmp_path, restored, "workers"), "--jax-cache-dir=cache", "-n", "2",
        "--jax-cache-shard=2/3",
    )  # fmt: skip
    assert result.ret == 0, result.outlines[-20:]
    assert report["shard"]["tests"] == len(ran(report))
    selected = alone.parseoutcomes().get("passed")
    assert selected == report["shard"]["tests"] == result.parseoutcomes()["passed"]


@pytest.mark.parametrize("workers", ["2", "3"])
def test_the_scheduler_keeps_jax_errors_tests_on_one_worker(
    tmp_path: Path, restored: Path, workers: str
) -> None:
    """``--dist=jaxcache``: cold (no history: said once, tests go out in collection
    order) and warm (by predicted cost): every test passes, and the marked tests all
    ran on one worker."""
    write_files(tmp_path, SUITE)
    cold, cold_report = run_session(
        tmp_path, "--jax-cache-dir=cache", "-n", workers, "--dist=jaxcache"
    )
    cold.assert_outcomes(passed=len(ALL))
    assert any("no history of earlier sessions yet" in n for n in cold_report["cache"]["notices"])
    warm_dir = job(tmp_path, restored, "warm")
    warm, warm_report = run_session(
        warm_dir, "--jax-cache-dir=cache", "-n", workers, "--dist=jaxcache"
    )
    warm.assert_outcomes(passed=len(ALL))
    assert not any("no history" in n for n in warm_report["cache"]["notices"])
    for report in (cold_report, warm_report):
        marked = {w for nodeid, w in ran(report).items() if "test_checked" in nodeid}
        assert len(marked) == 1, ran(report)
        assert set(ran(report)) == ALL


def test_the_timeline_file_draws_what_the_report_holds(tmp_path: Path, restored: Path) -> None:
    """--jax-cache-timeline writes one self-contained page whose bars are the report's
    tests (its rendering is checked in a real browser by test_timeline)."""
    checkout = job(tmp_path, restored, "timeline")
    page = checkout / "out" / "timeline.html"
    result, report = run_session(
        checkout, "--jax-cache-dir=cache", "-n", "2", f"--jax-cache-timeline={page}"
    )
    result.assert_outcomes(passed=len(ALL))
    text = page.read_text()
    found = re.search(
        r'<script type="application/json" id="jaxcache-timeline-data">(.*?)</script>', text, re.S
    )
    assert found is not None
    bars = json.loads(found.group(1))
    assert {bar["nodeid"] for bar in bars} == ALL
    assert {bar["lane"] for bar in bars} == set(ran(report).values())
    walls = {t["nodeid"]: t["wall_secs"] for t in report["tests"]}
    assert all(bar["wall"] == pytest.approx(walls[bar["nodeid"]], abs=1e-6) for bar in bars)
    assert re.search(r"""(src|href)=["']?https?:""", text) is None  # nothing to fetch


def test_a_shard_prefetches_only_what_its_tests_used(tmp_path: Path, s3: Emulator) -> None:
    """One machine fills the bucket (and its history); a fresh shard job, given that
    history and no entry, prefetches the entries its own tests used, not all of them."""
    url = s3.url("shards")
    first = tmp_path / "first"
    write_files(first, SUITE)
    remote = (f"--jax-cache-remote={url}", "-p", "no:xdist")
    result, report = run_session(first, "--jax-cache-dir=cache", *remote, env=s3.env)
    result.assert_outcomes(passed=len(ALL))
    uploaded = report["remote"]["uploads"]
    fresh = tmp_path / "fresh"
    write_files(fresh, SUITE)
    shutil.copytree(first / "cache" / "history", fresh / "cache" / "history")
    result, report = run_session(
        fresh, "--jax-cache-dir=cache", *remote, "--jax-cache-shard=1/2", env=s3.env
    )
    assert result.ret == 0, result.outlines[-20:]
    prefetched = report["remote"]
    assert 0 < prefetched["prefetched"] < uploaded, (prefetched, uploaded)
    assert prefetched["prefetched_used"] == prefetched["prefetched"]
