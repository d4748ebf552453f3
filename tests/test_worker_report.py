"""Unit tests of what a worker sends its controller: the typed worker report survives
the trip through plain builtins (what execnet carries), refuses another version, and
the snapshot folds the shares in one way (figures summed field by field)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from pytest_jaxcache import snapshot
from pytest_jaxcache.environment import InstallFacts
from pytest_jaxcache.reasons import HIT, MISS, Miss
from pytest_jaxcache.recorder import CompileRecord, Counts, Records, TestRecord
from pytest_jaxcache.stats import RemoteStats, StoreStats
from pytest_jaxcache.worker_report import VERSION, ReportVersionError, WorkerReport


def sample(worker: str, hits: int) -> WorkerReport:
    """A report with every field filled."""
    counts = Counts(requests=hits + 1, hits=hits, misses=1, compile_secs=0.5, trace_secs=0.1)
    return WorkerReport(
        records=Records(
            tests=[
                TestRecord(
                    f"t.py::test_{worker}",
                    phases={"setup": Counts(), "call": counts},
                    markers=["jax_errors"],
                    worker=worker,
                    started=1000.5,
                    wall_secs=0.25,
                    outcome="passed",
                )
            ],
            compiles=[
                CompileRecord(
                    "jit_f",
                    HIT,
                    0.01,
                    f"t.py::test_{worker}",
                    "call",
                    worker,
                    "k1",
                    source="remote",
                ),
                CompileRecord("jit_g", MISS, 0.49, f"t.py::test_{worker}", "call", worker, "k2"),
            ],
            cache_warnings=["t.py::x (call): Error reading persistent compilation cache entry"],
            listener_errors=["ValueError: bad"],
        ),
        store=StoreStats(hits=hits, writes=1, bytes_written=123, errors=[f"read {worker}: odd"]),
        misses=[Miss("k2", "new program: no earlier session compiled it")],
        notices=["cache dir not writable: using it read-only"],
        installed=InstallFacts("pytest-jaxcache store", "0.10.2", "0.10.2"),
        remote=RemoteStats(hits=1, bytes_down=10),
        remote_off="a deadline passed",
        prefetched=["jit_f-" + "1" * 64],
        fingerprint={"jax": "0.10.2"},
    )


def test_round_trip_through_json() -> None:
    """to_builtins() is plain JSON; from_builtins() gives back an equal report."""
    report = sample("gw0", 3)
    builtins = report.to_builtins()
    carried = json.loads(json.dumps(builtins))
    assert carried == builtins
    assert carried["version"] == VERSION
    assert WorkerReport.from_builtins(carried) == report


def test_empty_report_round_trips() -> None:
    """A worker that compiled nothing and never imported JAX."""
    report = WorkerReport()
    assert report.installed is None
    assert WorkerReport.from_builtins(json.loads(json.dumps(report.to_builtins()))) == report


@pytest.mark.parametrize("version", [None, 0, VERSION + 1, "1"])
def test_another_version_is_refused(version: object) -> None:
    """A report of another (or no) version is refused, naming both versions."""
    data = sample("gw0", 1).to_builtins()
    data["version"] = version
    with pytest.raises(ReportVersionError, match=f"expected {VERSION}"):
        WorkerReport.from_builtins(data)


def test_store_stats_sum_field_by_field() -> None:
    """Numbers add up; messages are joined without repeats."""
    total = StoreStats(hits=1, errors=["a"])
    total.add(StoreStats(hits=2, writes=3, lock_waits=1, errors=["a", "b"]))
    assert asdict(total) == asdict(StoreStats(hits=3, writes=3, lock_waits=1, errors=["a", "b"]))


def test_the_snapshot_folds_every_share_once() -> None:
    """Records of every process, store and remote figures summed over processes (one
    way), each worker's misses kept with its own compiles, a lost worker named, and the
    JAX versions learnt from a worker when the controller never imported JAX."""
    shares = {"": WorkerReport(), "gw0": sample("gw0", 3), "gw1": sample("gw1", 5)}
    data = snapshot.build(
        shares,
        cache=snapshot.CacheState("/c", "--jax-cache-dir", "readwrite"),
        lost_workers=["gw2"],
    )
    assert (data["store"]["hits"], data["store"]["writes"], data["store"]["bytes_written"]) == (
        8,
        2,
        246,
    )
    assert data["store"]["errors"] == ["read gw0: odd", "read gw1: odd"]
    assert [t["nodeid"] for t in data["tests"]] == ["t.py::test_gw0", "t.py::test_gw1"]
    assert [c["worker"] for c in data["compiles"]] == ["gw0", "gw0", "gw1", "gw1"]
    assert data["misses"] == [
        {
            "reason": "new program: no earlier session compiled it",
            "cause": "new",
            "parts": [],
            "count": 2,
            "examples": ["jit_g"],
            "tests": [],
        }
    ]
    assert data["cache"]["notices"] == ["cache dir not writable: using it read-only"]
    assert data["jax"] == {"jax": "0.10.2", "jaxlib": "0.10.2"}
    assert data["lost_workers"] == ["gw2"]
    assert set(data["workers"]) == {"gw0", "gw1"}
