"""One process's share of a pytest session: open the store, install the JAX hooks,
gather figures, and (on the controller or the only process) run maintenance and build
the report. The pytest hooks in :mod:`pytest_jaxcache.plugin` only call into this."""

from __future__ import annotations

import errno
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pytest_jaxcache import explain, jaxhooks
from pytest_jaxcache.recorder import Recorder
from pytest_jaxcache.settings import Mode, Settings
from pytest_jaxcache.store import Store, StoreStats

# A cache that exists but cannot take writes (a read-only mount, another user's restored
# cache, a full disk) is still worth reading.
_READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC}


@dataclass
class CacheSession:
    settings: Settings
    recorder: Recorder
    use_our_store: bool = True
    started_at: float = field(default_factory=time.time)
    store: Store | None = None
    installation: jaxhooks.Installation | None = None
    notices: list[str] = field(default_factory=list)
    before: dict[str, int] | None = None
    after: dict[str, int] | None = None
    maintenance: dict[str, Any] | None = None
    mode: Mode = Mode.READWRITE
    fingerprint: dict[str, str] = field(default_factory=dict)
    _cancel_install: Callable[[], None] = lambda: None

    # -- start ------------------------------------------------------------------------

    def start(self) -> None:
        """Open the store; configure JAX when it is imported (at once if it already
        is). Raises :class:`jaxhooks.JaxMissing`, before any directory is made."""
        jaxhooks.ensure_installed()
        self.mode = self.settings.mode
        self.store = self._open_store()
        self._cancel_install = jaxhooks.when_jax_imported(self._install)

    def _install(self) -> None:
        """Runs inside ``import jax``: report a failure, never raise it into the import."""
        try:
            self.installation = jaxhooks.install(
                self.settings, self.store, self.recorder, use_our_store=self.use_our_store
            )
        except Exception as error:
            self.notices.append(f"could not configure JAX: {type(error).__name__}: {error}")
            return
        self.notices.extend(self.installation.notices)
        if self.store is not None and self.installation.ours:
            self.installation.on_first_compile = self._stamp_fingerprint

    def measure_before(self) -> None:
        if self.store is not None:
            self.before = asdict(self.store.usage())

    def _open_store(self) -> Store | None:
        if self.settings.remote_url is not None:
            self.notices.append(
                f"{self.settings.remote_url} is remote: JAX's own store serves it (needs "
                "etils[epath] and gcsfs for gs://); no single flight, integrity checks or "
                "eviction"
            )
            return None
        root = self.settings.cache_dir
        assert root is not None
        readonly = self.mode is Mode.READONLY
        store = Store(root, readonly=readonly, lock_timeout_secs=self.settings.lock_timeout_secs)
        if readonly:
            if not root.is_dir():
                self.notices.append(f"read-only cache {root} does not exist: running uncached")
                return None
            return store
        try:
            store.create()
        except OSError as error:
            if error.errno not in _READ_ONLY_ERRNOS or not (root / "entries").is_dir():
                self.notices.append(
                    f"cannot use {root} ({error.strerror or error}): running uncached"
                )
                return None
            why = "disk full" if error.errno == errno.ENOSPC else f"not writable ({error.strerror})"
            self.notices.append(f"{root} is {why}: using it read-only")
            self.mode = Mode.READONLY
            return Store(root, readonly=True, lock_timeout_secs=self.settings.lock_timeout_secs)
        return store

    def _stamp_fingerprint(self) -> None:
        """Called inside the first compile, when the backend exists: fix what this
        process's entries record about their environment."""
        assert self.store is not None
        self.fingerprint = jaxhooks.fingerprint()
        digest = hashlib.sha256(json.dumps(self.fingerprint, sort_keys=True).encode())
        self.store.fingerprint = digest.digest()[:8]
        self.store.save_fingerprint(self.store.fingerprint, self.fingerprint)

    def become_worker(self, worker_id: str, controller: dict[str, Any] | None) -> None:
        """An xdist worker takes the controller's session start: entries it writes
        belong to that session, not to one of their own, when misses are explained."""
        self.recorder.worker = worker_id
        if controller is not None:
            self.started_at = float(controller["started_at"])

    def controller_input(self) -> dict[str, Any]:
        return {"started_at": self.started_at}

    # -- finish -----------------------------------------------------------------------

    def explain_misses(self) -> list[explain.Miss]:
        if self.store is None:
            return []
        keys = self.store.missed.keys() & self.store.written
        return explain.explain(self.store, keys, before=self.started_at, current=self.fingerprint)

    def worker_output(self) -> dict[str, Any]:
        """What a worker sends back: plain builtins only."""
        stats = self.store.stats.as_dict() if self.store is not None else {}
        return {
            "records": self.recorder.export(),
            "store": stats,
            "misses": [asdict(miss) for miss in self.explain_misses()],
            "notices": self.notices,
            "installed": self.installed(),
        }

    def finish(self) -> None:
        """Controller (or only process): maintenance under the directory lock, when
        there can be work: this session wrote, pruning is on, the cache was over its cap
        already, or a killed writer left a temporary file. A warm run skips it."""
        if self.store is None:
            return
        writes = self.total_stats().writes
        cap = self.settings.max_size_bytes
        over_cap = cap is not None and (self.before is None or self.before["bytes"] > cap)
        leftovers = self.store.has_temporaries()  # a writer was killed mid-write
        if not (writes or leftovers or over_cap or self.settings.prune_after_sessions):
            # This session changed nothing: the start's figures stand (no second scan).
            self.after = self.before if self.before is not None else asdict(self.store.usage())
            return
        result = self.store.maintain(
            max_size_bytes=self.settings.max_size_bytes,
            prune_after_sessions=self.settings.prune_after_sessions,
            session_start=self.started_at,
        )
        self.maintenance = result.as_dict()
        self.after = asdict(self.store.usage())

    def total_stats(self) -> StoreStats:
        """What the store did in this session: this process and every worker."""
        stats = StoreStats()
        if self.store is not None:
            _add_stats(stats, self.store.stats.as_dict())
        for info in self.recorder.workers.values():
            _add_stats(stats, info.get("store", {}))
        return stats

    def build_report(self) -> dict[str, Any]:
        stats = self.total_stats()
        misses = self.explain_misses()
        for info in self.recorder.workers.values():
            misses += [explain.Miss(**miss) for miss in info.get("misses", [])]
        installed = self._installed_facts()
        cache = {
            "dir": self.settings.location,
            "source": str(self.settings.dir_source),
            "store": installed["store"] if self.store is not None else "none",
            "mode": self.mode.value,
            "notices": self.notices,
            "max_size_bytes": self.settings.max_size_bytes,
            "before": self.before,
            "after": self.after,
            "maintenance": self.maintenance,
        }
        versions = {"jax": installed["jax"], "jaxlib": installed["jaxlib"]}
        from pytest_jaxcache import report

        return report.build(
            self.recorder,
            cache=cache,
            jax_versions=versions,
            store_stats=stats.as_dict(),
            misses=explain.summarise(misses),
        )

    def _installed_facts(self) -> dict[str, Any]:
        """Store kind and JAX versions: this process's, or (an xdist controller that
        never imported JAX) a worker's."""
        if self.installation is not None:
            return self.installed()
        for info in self.recorder.workers.values():
            if info.get("installed"):
                return dict(info["installed"])
        return {"store": "none (JAX never imported)", "jax": None, "jaxlib": None}

    def installed(self) -> dict[str, Any]:
        installation = self.installation
        if installation is None:
            return {}
        return {
            "store": installation.store_kind,
            "jax": installation.jax_version,
            "jaxlib": installation.jaxlib_version,
        }

    def stop(self) -> None:
        self._cancel_install()
        if self.installation is not None:
            self.installation.uninstall()
            self.installation = None


def _add_stats(total: StoreStats, data: dict[str, Any]) -> None:
    for name, value in data.items():
        current = getattr(total, name, None)
        if isinstance(current, int) and isinstance(value, int):
            setattr(total, name, current + value)
        elif isinstance(current, list) and isinstance(value, list):
            for message in value:
                total.note(str(message))


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
