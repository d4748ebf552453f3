"""One process's share of a pytest session: open the store, configure JAX when it is
imported, account what happened, and (on the controller, or the only process) fold in
the workers' reports, run maintenance and build the report. The pytest hooks in
:mod:`pytest_jaxcache.plugin` only call into this."""

from __future__ import annotations

import errno
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pytest_jaxcache import explain, jaxhooks, keys, ownership, trust
from pytest_jaxcache.bookkeeping import Bookkeeping
from pytest_jaxcache.cachedir import CacheDir
from pytest_jaxcache.keydump import KeyDump
from pytest_jaxcache.maintenance import Maintenance, MaintenanceResult, Usage, jax_files_usage
from pytest_jaxcache.recorder import HIT, MISS, Recorder
from pytest_jaxcache.remote import Remote, RemoteStats
from pytest_jaxcache.settings import Mode, Settings, StoreKind
from pytest_jaxcache.store import ENTRIES, Policy, Store, StoreStats
from pytest_jaxcache.worker_report import WorkerReport

# A cache that exists but cannot take writes (a read-only mount, another user's restored
# cache, a full disk) is still worth reading.
_READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC}


class UnusableCache(Exception):
    """The configured directory is not a cache we may use: a usage error."""


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # cannot even look
        return False


def _why(error: OSError) -> str:
    return "disk full" if error.errno == errno.ENOSPC else (error.strerror or str(error))


@dataclass
class CacheSession:
    settings: Settings
    policy: Policy = field(default_factory=Policy)
    recorder: Recorder = field(default_factory=Recorder)
    started_at: float = field(default_factory=time.time)
    worker: str = ""  # this process's xdist worker id; "" on the controller or alone
    mode: Mode = Mode.READWRITE
    store: Store | None = None
    remote: Remote | None = None
    directory: CacheDir | None = None  # the local directory, whichever store serves it
    installation: jaxhooks.Installation | None = None
    notices: list[str] = field(default_factory=list)
    fingerprint: dict[str, str] = field(default_factory=dict)
    before: Usage | None = None
    after: Usage | None = None
    maintenance: MaintenanceResult | None = None
    workers: dict[str, WorkerReport] = field(default_factory=dict)
    lost_workers: list[str] = field(default_factory=list)
    key_dump: KeyDump | None = None
    _cancel_install: Callable[[], None] = lambda: None

    # -- start ------------------------------------------------------------------------

    def start(self) -> None:
        """Open the store (and the remote tier behind it); configure JAX when it is
        imported (at once if it already is). Raises :class:`jaxhooks.JaxMissing`, before
        any directory is made, and :class:`UnusableCache`."""
        jaxhooks.ensure_installed()
        self.mode = self.settings.mode
        if self.settings.store is StoreKind.OURS:
            self.store = self._open_store()
            self.directory = None if self.store is None else self.store.directory
            self._open_remote()
        elif self.settings.cache_dir is not None:
            self.directory = CacheDir(self.settings.cache_dir)
        self._cancel_install = jaxhooks.when_jax_imported(self._install)

    def _open_remote(self) -> None:
        url = self.settings.remote_url
        if url is None or self.store is None:
            return
        self.remote = Remote(
            url,
            timeout_secs=self.settings.remote_timeout_secs,
            readonly=self.settings.remote_mode is Mode.READONLY,
        )
        self.store.remote = self.remote
        self.remote.connect_in_background()
        if self.settings.xla_caches != "none":  # XLA's caches cannot live in a bucket
            self.notices.append(
                f"with a remote tier, jax_persistent_cache_enable_xla_caches is none "
                f"(not {self.settings.xla_caches!r})"
            )
            self.settings = replace(self.settings, xla_caches="none")

    def _location(self) -> str | None:
        """Where JAX is pointed: our directory, JAX's own directory or URL, or nowhere."""
        if self.settings.store is StoreKind.OURS:
            return None if self.store is None else str(self.store.root)
        if self.settings.location.path is not None:
            return str(self.settings.location.path)
        return self.settings.location.url

    def _install(self) -> None:
        """Runs inside ``import jax``: report a failure, never raise it into the import."""
        try:
            self.installation = jaxhooks.install(
                self.settings,
                self.recorder,
                store=self.store,
                location=self._location(),
                key_dump=self._key_dump(),
            )
        except Exception as error:
            self.notices.append(f"could not configure JAX: {type(error).__name__}: {error}")
            return
        self.notices.extend(self.installation.notices)
        if self.store is not None and self.installation.ours:
            self.installation.on_first_compile = self._stamp_fingerprint

    def _key_dump(self) -> KeyDump | None:
        """``--jax-cache-explain``'s writer, when it has programs to match and a store
        that records key parts."""
        if not self.settings.explain or self.settings.explain_dir is None:
            return None
        if self.store is None:
            self.notices.append(
                "--jax-cache-explain needs the pytest-jaxcache store (--jax-cache-store=ours)"
            )
            return None
        self.key_dump = KeyDump(self.settings.explain_dir, self.settings.explain, self.store)
        return self.key_dump

    def _open_store(self) -> Store | None:
        """Our store on the configured directory, or ``None`` (with a notice) when it
        cannot be used; :class:`UnusableCache` when the directory is not ours."""
        root = self.settings.cache_dir
        assert root is not None
        directory = self._adopt(root)
        if directory is None:
            return None
        odd = ownership.odd_layout(directory)
        if odd:
            self.notices.append(f"cannot use {root}: {'; '.join(odd)}: running uncached")
            directory.close()
            return None
        store = Store(
            directory,
            readonly=self.mode is Mode.READONLY,
            lock_timeout_secs=self.settings.lock_timeout_secs,
            policy=self.policy,
        )
        if not store.readonly and not store.writable():
            self._use_read_only(root, "not writable")
            store.readonly = True
        namespaces = [f"{ENTRIES}/{machine}" for machine in store.namespaces()]
        subs = [*ownership.SUBDIRECTORIES, *namespaces]
        problems = trust.other_writers_of_tree(directory, subs)
        if problems and not self.policy.others_may_write:
            self.notices.append(
                f"not loading from {root}: {problems[0]}"
                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                + ", so others could plant code that your tests would run; running uncached."
                " Fix: chmod go-w (or chown) it, or, if it is shared on purpose, pass "
                "--jax-cache-shared or sign entries with JAX_CACHE_SIGNING_KEY"
            )
            directory.close()
            return None
        if problems:
            why = "entries must be signed" if self.policy.signer.signs else "--jax-cache-shared"
            self.notices.append(f"{root} can be written by others ({problems[0]}): loading ({why})")
        return store

    def _adopt(self, root: Path) -> CacheDir | None:
        """The cache directory, tagged as ours: a directory that is someone else's is a
        usage error; one that cannot be created or written a notice (uncached, or
        read-only when it already is a cache)."""
        readonly = self.mode is Mode.READONLY
        try:
            return ownership.adopt(root, readonly=readonly)
        except ownership.NotOurs as error:
            raise UnusableCache(f"{self.settings.dir_source}: {error}") from None
        except FileNotFoundError:
            if readonly:
                self.notices.append(f"read-only cache {root} does not exist: running uncached")
                return None
            self.notices.append(f"cannot create {root}: running uncached")
            return None
        except OSError as error:
            if readonly or error.errno not in _READ_ONLY_ERRNOS or not _is_dir(root):
                self.notices.append(f"cannot use {root} ({_why(error)}): running uncached")
                return None
            try:  # an existing cache that we cannot write (or tag): still worth reading
                directory = ownership.adopt(root, readonly=True)
            except ownership.NotOurs as problem:
                raise UnusableCache(f"{self.settings.dir_source}: {problem}") from None
            except OSError as problem:
                self.notices.append(f"cannot use {root} ({_why(problem)}): running uncached")
                return None
            self._use_read_only(root, _why(error))
            return directory

    def _use_read_only(self, root: Path, why: str) -> None:
        self.notices.append(f"{root} is {why}: using it read-only")
        self.mode = Mode.READONLY

    def _stamp_fingerprint(self) -> None:
        """Called inside the first compile, when the backend exists: fix which machine's
        namespace this process reads and writes, and what its entries record about the
        session's environment."""
        assert self.store is not None
        self.fingerprint = jaxhooks.fingerprint()
        session_id = trust.fingerprint_id(self.fingerprint)
        self.store.bind(
            trust.namespace(self.fingerprint), trust.machine_of(self.fingerprint), session_id
        )
        if not self.store.readonly:
            try:
                Bookkeeping(self.store.directory).save_fingerprint(session_id, self.fingerprint)
            except OSError as error:
                self.store.stats.note(f"fingerprint: {error}")
        if self.remote is not None and self.settings.prefetch:
            used = self.remote.used_before(self.store.machine, session_id)
            self.store.prefetch(
                {name for names in used for name in names},
                wait_secs=4 * self.settings.remote_timeout_secs,
            )

    def measure_before(self) -> None:
        self.before = self._usage()

    def _usage(self) -> Usage | None:
        try:
            if self.store is not None:
                return Maintenance(self.store.directory).usage()
            if self.directory is not None:
                return jax_files_usage(self.directory)
        except OSError as error:
            self.notices.append(f"cannot measure {self.settings.where}: {error}")
        return None

    # -- xdist ------------------------------------------------------------------------

    def become_worker(self, worker_id: str, controller: dict[str, Any] | None) -> None:
        """An xdist worker takes the controller's session start: entries it writes
        belong to that session, not to one of their own, when misses are explained."""
        self.worker = worker_id
        self.recorder.worker = worker_id
        if controller is not None:
            self.started_at = float(controller["started_at"])

    def controller_input(self) -> dict[str, Any]:
        return {"started_at": self.started_at}

    def worker_report(self) -> WorkerReport:
        return WorkerReport(
            records=self.recorder.export(),
            store=self.store.stats if self.store is not None else StoreStats(),
            misses=self.explain_misses(),
            notices=list(self.notices) + (self.key_dump.errors if self.key_dump else []),
            installed=None if self.installation is None else self.installation.facts,
            remote=self._flushed_remote(),
            prefetched=sorted(self.store.prefetched) if self.store is not None else [],
            fingerprint=dict(self.fingerprint),
        )

    def _flushed_remote(self) -> RemoteStats:
        """This process's remote figures, once its uploads are done (or given up)."""
        if self.remote is None:
            return RemoteStats()
        self.remote.flush(3 * self.settings.remote_timeout_secs)
        return self.remote.stats

    def absorb(self, worker: str, report: WorkerReport) -> None:
        """Fold a finished worker's report into this (controller) session."""
        self.recorder.merge(worker, report.records)
        self.workers[worker] = report
        for notice in report.notices:
            if notice not in self.notices:
                self.notices.append(notice)

    def lose(self, worker: str) -> None:
        """A worker crashed before it could report."""
        self.lost_workers.append(worker)

    # -- finish -----------------------------------------------------------------------

    def explain_misses(self) -> list[explain.Miss]:
        """This process's misses, each with its reason."""
        if self.store is None:
            return []
        missed = [c for c in self.recorder.compiles if c.outcome == MISS and c.key]
        try:
            return explain.explain(
                self.store,
                {c.key for c in missed},
                before=self.started_at,
                current=self.fingerprint,
                parts=self.recorder.missed_parts,
                refused={c.key: c.refused for c in missed if c.refused},
            )
        except OSError as error:
            self.notices.append(f"cannot explain misses: {error}")
            return []

    def total_stats(self) -> StoreStats:
        """What the store did in this session: this process and every worker."""
        stats = StoreStats()
        if self.store is not None:
            stats.add(self.store.stats)
        for sent in self.workers.values():
            stats.add(sent.store)
        return stats

    def finish(self) -> None:
        """Controller (or only process): maintenance under the directory lock, when
        there can be work: this session wrote, pruning is on, the cache was over its cap
        already, or a killed writer left a temporary file. A warm run skips it."""
        self._record_used()
        if self.store is None:
            self.after = self._usage()
            return
        if self.store.readonly:
            self.after = self.before
            self.maintenance = MaintenanceResult(ran=False, reason="read-only")
            return
        maintenance = Maintenance(self.store.directory, self._machine() or None)
        cap = self.settings.max_size_bytes
        over_cap = cap is not None and (self.before is None or self.before.bytes > cap)
        try:
            leftovers = maintenance.has_temporaries()  # a writer was killed mid-write
        except OSError:
            leftovers = False
        stats, remote = self.total_stats(), self.total_remote()
        # Entries downloaded from the remote were written locally too.
        changed = stats.writes or stats.repaired or stats.wrong_key
        changed = changed or remote.hits or remote.prefetched
        if not (changed or leftovers or over_cap or self.settings.prune_after_sessions):
            self.after = self.before  # this session changed nothing: no second scan
        else:
            self.maintenance = maintenance.maintain(
                max_size_bytes=cap,
                prune_after_sessions=self.settings.prune_after_sessions,
                session_start=self.started_at,
            )
            self.after = self._usage()
        self._record_contents()

    def _record_contents(self) -> None:
        """Keep contents.json (digest, entries, bytes) in step with what the cache holds,
        for CI steps that key a saved cache on it; rewritten only when it changed."""
        assert self.store is not None
        if self.after is None:
            return
        books = Bookkeeping(self.store.directory)
        if books.contents_digest() == self.after.digest:
            return
        try:
            books.save_contents(self.after.digest, self.after.entries, self.after.bytes)
        except OSError as error:
            self.notices.append(f"could not record the cache's contents: {error}")

    @property
    def changed(self) -> bool | None:
        """Whether the cache's contents changed in this session (``None``: unknown)."""
        if self.before is None or self.after is None:
            return None
        return self.before.digest != self.after.digest

    def _fingerprint(self) -> dict[str, str]:
        """This session's fingerprint, as this process (or, on an xdist controller that
        never imported JAX, a worker) knows it."""
        if self.fingerprint:
            return dict(self.fingerprint)
        for sent in self.workers.values():
            if sent.fingerprint:
                return dict(sent.fingerprint)
        return {}

    def _machine(self) -> dict[str, str]:
        return trust.machine_of(self._fingerprint())

    def total_remote(self) -> RemoteStats:
        """What the session did with the remote: this process and every worker."""
        stats = RemoteStats()
        stats.add(self._flushed_remote())
        prefetched = set(self.store.prefetched) if self.store is not None else set()
        for sent in self.workers.values():
            stats.add(sent.remote)
            prefetched.update(sent.prefetched)
        hit = {keys.file_name(c.key) for c in self.recorder.compiles if c.outcome == HIT}
        stats.prefetched_used = len(prefetched & hit)
        return stats

    def _record_used(self) -> None:
        """Tell the remote what this session used: the next session of this
        fingerprint, on any machine of the fleet, prefetches it."""
        fingerprint = self._fingerprint()
        if self.remote is None or not fingerprint:
            return
        used = {
            keys.file_name(c.key)
            for c in self.recorder.compiles
            if c.key and c.outcome in (HIT, MISS)
        }
        self.remote.record_used(
            trust.namespace(fingerprint), trust.fingerprint_id(fingerprint), used
        )

    def installed(self) -> jaxhooks.InstallFacts | None:
        """Store kind and JAX versions: this process's, or (an xdist controller that
        never imported JAX) a worker's."""
        if self.installation is not None:
            return self.installation.facts
        for sent in self.workers.values():
            if sent.installed is not None:
                return sent.installed
        return None

    def build_report(self) -> dict[str, Any]:
        misses = self.explain_misses()
        for worker_report in self.workers.values():
            misses += worker_report.misses
        installed = self.installed()
        store_kind = "none (JAX never imported)" if installed is None else installed.store
        cache = {
            "dir": self.settings.where,
            "source": str(self.settings.dir_source),
            "store": store_kind,
            "mode": self.mode.value,
            "notices": self.notices,
            "max_size_bytes": self.settings.max_size_bytes,
            "before": None if self.before is None else asdict(self.before),
            "after": None if self.after is None else asdict(self.after),
            "maintenance": None if self.maintenance is None else asdict(self.maintenance),
            "changed": self.changed,
            "digest": None if self.after is None else self.after.digest,
        }
        remote = None
        if self.remote is not None:
            fingerprint = self._fingerprint()
            remote = {
                "url": self.remote.url,
                "namespace": trust.namespace(fingerprint) if fingerprint else None,
                "mode": "readonly" if self.remote.readonly else "readwrite",
                "off": self.remote.off_reason or None,
                **asdict(self.total_remote()),
            }
        from pytest_jaxcache import report

        return report.build(
            self.recorder,
            cache=cache,
            jax_versions={
                "jax": None if installed is None else installed.jax,
                "jaxlib": None if installed is None else installed.jaxlib,
            },
            store_stats=asdict(self.total_stats()),
            remote=remote,
            misses=explain.summarise(misses),
            miss_reasons={miss.key: miss.reason for miss in misses},
            workers={
                worker: {
                    "store": asdict(sent.store),
                    "misses": [asdict(miss) for miss in sent.misses],
                    "tests": len(sent.records.tests),
                    "installed": None if sent.installed is None else asdict(sent.installed),
                }
                for worker, sent in self.workers.items()
            },
            lost_workers=self.lost_workers,
        )

    def stop(self) -> None:
        self._cancel_install()
        if self.installation is not None:
            self.installation.uninstall()
            self.installation = None


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def append_text(path: Path, text: str) -> None:
    """Append ``text`` (a job summary: other steps append to the same file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
