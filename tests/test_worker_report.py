"""Unit tests of what a worker sends its controller: the typed worker report survives
the trip through plain builtins (what execnet carries), refuses another version, and
the controller folds reports in one way (figures summed field by field)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from pytest_jaxcache.explain import Miss
from pytest_jaxcache.jaxhooks import InstallFacts
from pytest_jaxcache.recorder import HIT, MISS, CompileRecord, Counts, Records, TestRecord
from pytest_jaxcache.session import CacheSession
from pytest_jaxcache.settings import Settings
from pytest_jaxcache.store import StoreStats
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
                )
            ],
            compiles=[
                CompileRecord("jit_f", HIT, 0.01, f"t.py::test_{worker}", "call", worker, "k1"),
                CompileRecord("jit_g", MISS, 0.49, f"t.py::test_{worker}", "call", worker, ""),
            ],
            cache_warnings=["t.py::x (call): Error reading persistent compilation cache entry"],
            listener_errors=["ValueError: bad"],
        ),
        store=StoreStats(hits=hits, writes=1, bytes_written=123, errors=[f"read {worker}: odd"]),
        misses=[Miss(f"jit_g-{'0' * 64}", "new program: no earlier session compiled it")],
        notices=["cache dir not writable: using it read-only"],
        installed=InstallFacts("pytest-jaxcache store", "0.10.2", "0.10.2"),
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


def test_controller_absorbs_worker_reports() -> None:
    """The controller merges records, sums store figures over its own process and every
    worker (one way), keeps each worker's report, names a lost worker, and learns the
    JAX versions from a worker when it never imported JAX itself."""
    session = CacheSession(settings=Settings())
    session.absorb("gw0", sample("gw0", 3))
    session.absorb("gw1", sample("gw1", 5))
    session.lose("gw2")
    assert set(session.workers) == {"gw0", "gw1"}
    assert session.lost_workers == ["gw2"]
    total = session.total_stats()
    assert (total.hits, total.writes, total.bytes_written) == (8, 2, 246)
    assert total.errors == ["read gw0: odd", "read gw1: odd"]
    assert set(session.recorder.tests) == {"t.py::test_gw0", "t.py::test_gw1"}
    assert [c.worker for c in session.recorder.compiles] == ["gw0", "gw0", "gw1", "gw1"]
    assert session.notices == ["cache dir not writable: using it read-only"]
    assert session.installed() == InstallFacts("pytest-jaxcache store", "0.10.2", "0.10.2")
