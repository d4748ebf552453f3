"""One process's share of a session: what an xdist worker sends its controller at the
end of its session, and what the controller (or the only process) adds of its own.
Typed and versioned, turned into plain builtins to cross execnet and back.

The worker fills it in ``pytest_sessionfinish`` (``config.workeroutput``); the
controller reads it in ``pytest_testnodedown``. A worker that crashed sends nothing, and
a report of another version (a mixed install) is refused rather than misread.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pytest_jaxcache.environment import InstallFacts
from pytest_jaxcache.reasons import Miss
from pytest_jaxcache.recorder import CompileRecord, Counts, Records, TestRecord
from pytest_jaxcache.stats import LoweringStats, RemoteStats, StoreStats

VERSION = 4
EXCHANGE_KEY = "jaxcache"  # in workerinput (controller -> worker) and workeroutput


class ReportVersionError(ValueError):
    """The worker runs another version of pytest-jaxcache than the controller."""


@dataclass
class WorkerReport:
    """One process's share of the session."""

    records: Records = field(default_factory=Records)
    store: StoreStats = field(default_factory=StoreStats)
    misses: list[Miss] = field(default_factory=list)  # this process's misses, explained
    notices: list[str] = field(default_factory=list)
    installed: InstallFacts | None = None
    remote: RemoteStats = field(default_factory=RemoteStats)
    remote_off: str = ""  # why this process turned the remote tier off ("": it did not)
    prefetched: list[str] = field(default_factory=list)  # entries it downloaded ahead
    fingerprint: dict[str, str] = field(default_factory=dict)  # stamped on its entries
    shard: dict[str, Any] | None = None  # a shard's selection: what it ran and predicted
    lowering: LoweringStats | None = None  # the lowering tier's figures, when it was on

    def to_builtins(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "records": asdict(self.records),
            "store": asdict(self.store),
            "misses": [{**asdict(miss), "parts": list(miss.parts)} for miss in self.misses],
            "notices": list(self.notices),
            "installed": None if self.installed is None else asdict(self.installed),
            "remote": asdict(self.remote),
            "remote_off": self.remote_off,
            "prefetched": list(self.prefetched),
            "fingerprint": dict(self.fingerprint),
            "shard": None if self.shard is None else dict(self.shard),
            "lowering": None if self.lowering is None else asdict(self.lowering),
        }

    @classmethod
    def from_builtins(cls, data: dict[str, Any]) -> WorkerReport:
        if data.get("version") != VERSION:
            raise ReportVersionError(
                f"worker report version {data.get('version')!r}, expected {VERSION}"
            )
        records = data["records"]
        installed = data["installed"]
        return cls(
            records=Records(
                tests=[_test(item) for item in records["tests"]],
                compiles=[CompileRecord(**item) for item in records["compiles"]],
                cache_warnings=list(records["cache_warnings"]),
                listener_errors=list(records["listener_errors"]),
            ),
            store=StoreStats(**data["store"]),
            misses=[
                Miss(item["key"], item["reason"], item["cause"], tuple(item["parts"]))
                for item in data["misses"]
            ],
            notices=list(data["notices"]),
            installed=None if installed is None else InstallFacts(**installed),
            remote=RemoteStats(**data["remote"]),
            remote_off=str(data["remote_off"]),
            prefetched=[str(name) for name in data["prefetched"]],
            fingerprint={str(k): str(v) for k, v in data["fingerprint"].items()},
            shard=None if data["shard"] is None else dict(data["shard"]),
            lowering=None if data["lowering"] is None else LoweringStats(**data["lowering"]),
        )


def _test(data: dict[str, Any]) -> TestRecord:
    return TestRecord(
        nodeid=data["nodeid"],
        phases={phase: Counts.from_dict(counts) for phase, counts in data["phases"].items()},
        markers=list(data["markers"]),
        worker=data["worker"],
        started=float(data["started"]),
        wall_secs=float(data["wall_secs"]),
        outcome=str(data["outcome"]),
    )
