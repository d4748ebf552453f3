"""One process's share of a pytest session: open the store (and the remote tier behind
it), configure JAX when it is imported, account what happens; and, on the controller or
the only process, fold in the workers' shares, run maintenance once and build the
snapshot once. The plugin objects of :mod:`pytest_jaxcache.roles` only call into this.

What only some sessions need is imported where it is used: the remote tier (a URL),
``--jax-cache-explain``'s key dumps, shards, explaining misses (there were some), and the
snapshot and maintenance (the controller or the only process; never a worker)."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_jaxcache import environment, history, keys, ownership, trust
from pytest_jaxcache.bookkeeping import Bookkeeping
from pytest_jaxcache.cachedir import CacheDir
from pytest_jaxcache.entry import MAX_ENTRY_BYTES
from pytest_jaxcache.environment import InstallFacts
from pytest_jaxcache.history import History
from pytest_jaxcache.jax import importing
from pytest_jaxcache.jax.installation import JAX_STORE, Installation
from pytest_jaxcache.layout import ENTRIES, NAMESPACE, SUBDIRECTORIES, namespace_dir
from pytest_jaxcache.reasons import HIT, MISS, Miss
from pytest_jaxcache.recorder import Recorder
from pytest_jaxcache.settings import Mode, Settings, StoreKind
from pytest_jaxcache.stats import RemoteStats
from pytest_jaxcache.store import Policy, Store, why_not
from pytest_jaxcache.worker_report import WorkerReport

if TYPE_CHECKING:
    from pytest_jaxcache.keydump import KeyDump
    from pytest_jaxcache.maintenance import MaintenanceResult, Usage
    from pytest_jaxcache.remote import Remote

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
    installation: Installation | None = None
    notices: list[str] = field(default_factory=list)
    fingerprint: dict[str, str] = field(default_factory=dict)
    before: Usage | None = None
    after: Usage | None = None
    maintenance: MaintenanceResult | None = None
    workers: dict[str, WorkerReport] = field(default_factory=dict)
    lost_workers: list[str] = field(default_factory=list)
    key_dump: KeyDump | None = None
    # What predicts each test's cost (shards, --dist=jaxcache): the history of earlier
    # sessions and the entries the cache held when this session started.
    history: History = field(default_factory=History)
    present: frozenset[str] = frozenset()
    shard: dict[str, Any] | None = None  # which tests this shard ran, and their prediction
    _prefetch_names: set[str] | None = None  # a shard prefetches its own tests' entries
    _cancel_install: Callable[[], None] = lambda: None
    _misses: list[Miss] | None = None
    _snapshot: dict[str, Any] | None = None

    # -- start ------------------------------------------------------------------------

    def start(self) -> None:
        """Open the store (and the remote tier behind it); configure JAX when it is
        imported (at once if it already is). Raises :class:`importing.JaxMissing`, before
        any directory is made, and :class:`UnusableCache`."""
        importing.ensure_installed()
        self.mode = self.settings.mode
        if self.settings.store is StoreKind.OURS:
            self.store = self._open_store()
            self.directory = None if self.store is None else self.store.directory
            self._open_remote()
        elif self.settings.cache_dir is not None:
            self.directory = CacheDir(self.settings.cache_dir)
        self._cancel_install = importing.when_jax_imported(self._install)

    def _open_remote(self) -> None:
        url = self.settings.remote_url
        if url is None or self.store is None:
            return
        from pytest_jaxcache.remote import Remote

        self.remote = Remote(
            url,
            timeout_secs=self.settings.remote_timeout_secs,
            readonly=self.settings.remote_mode is Mode.READONLY,
            signer=self.policy.signer,
            max_object_bytes=self.store.max_entry_bytes,
        )
        self.remote.tell_others_through(self.store.directory, self._session_id())
        self.store.second = self.remote
        self.remote.connect_in_background()
        if self.settings.xla_caches != "none":  # XLA's caches cannot live in a bucket
            self.notices.append(
                f"with a remote tier, jax_persistent_cache_enable_xla_caches is none "
                f"(not {self.settings.xla_caches!r})"
            )
            self.settings = self.settings._replace(xla_caches="none")

    def _session_id(self) -> str:
        """What the processes of this session share (the controller's start time)."""
        return f"{self.started_at:.6f}"

    def _location(self) -> str | None:
        """Where JAX is pointed: our directory, JAX's own directory or URL, or nowhere."""
        if self.settings.store is StoreKind.OURS:
            return None if self.store is None else str(self.store.root)
        if self.settings.location.path is not None:
            return str(self.settings.location.path)
        return self.settings.location.url

    def _install(self) -> None:
        """Runs inside ``import jax``: report a failure, never raise it into the import."""
        from pytest_jaxcache.jax.install import install

        try:
            self.installation = install(
                self.settings,
                self.recorder,
                store=self.store,
                location=self._location(),
                key_dump=self._key_dump(),
                mismatch_dir=self.settings.explain_dir,
            )
        except Exception as error:  # said in the report; the suite runs, uncached
            self.notices.append(f"could not configure JAX: {type(error).__name__}: {error}")
            return
        self.notices.extend(self.installation.notices)
        if self.store is not None and self.installation.ours:
            self.installation.on_first_use = self._first_use

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
        from pytest_jaxcache.keydump import KeyDump

        self.key_dump = KeyDump(self.settings.explain_dir, self.settings.explain, self.store)
        return self.key_dump

    def _open_store(self) -> Store | None:
        """Our store on the configured directory, or ``None`` (with a notice) when it
        cannot be used; :class:`UnusableCache` when the directory is not ours. Nothing is
        written in the directory (no tag, no sub-directory) before every check passed."""
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
        if not self._trusted(directory, root):
            directory.close()
            return None
        if self.mode is not Mode.READONLY:
            try:
                ownership.claim(directory)
            except OSError as error:
                self._use_read_only(root, why_not(error))
        # No entry is larger than the cap a read-write session keeps the cache under
        # (it could not be kept); a read-only session applies no cap.
        cap = None if self.mode is Mode.READONLY else self.settings.max_size_bytes
        store = Store(
            directory,
            readonly=self.mode is Mode.READONLY,
            lock_timeout_secs=self.settings.lock_timeout_secs,
            policy=self.policy,
            max_entry_bytes=min(cap, MAX_ENTRY_BYTES) if cap else MAX_ENTRY_BYTES,
        )
        store.session_started = self.started_at
        if not store.readonly and not store.writable():
            self._use_read_only(root, "not writable")
            store.readonly = True
        return store

    def _trusted(self, directory: CacheDir, root: Path) -> bool:
        """Whether nobody else could have written what we would load (or the user said
        that is fine); a notice either way when others can."""
        namespaces = [
            namespace_dir(name) for name, _ in directory.scan(ENTRIES) if NAMESPACE.fullmatch(name)
        ]
        problems = trust.other_writers_of_tree(directory, [*SUBDIRECTORIES, *namespaces])
        if problems and not self.policy.others_may_write:
            self.notices.append(
                f"not loading from {root}: {problems[0]}"
                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                + ", so others could plant code that your tests would run; running uncached."
                " Fix: chmod go-w (or chown) it, or, if it is shared on purpose, pass "
                "--jax-cache-shared or sign entries with JAX_CACHE_SIGNING_KEY"
            )
            return False
        if problems:
            why = "entries must be signed" if self.policy.signer.signs else "--jax-cache-shared"
            self.notices.append(f"{root} can be written by others ({problems[0]}): loading ({why})")
        return True

    def _adopt(self, root: Path) -> CacheDir | None:
        """The cache directory, if it is ours: a directory that is someone else's is a
        usage error; one that cannot be created or entered a notice (uncached)."""
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
                self.notices.append(f"cannot use {root} ({why_not(error)}): running uncached")
                return None
            try:  # an existing cache that we cannot write: still worth reading
                directory = ownership.adopt(root, readonly=True)
            except ownership.NotOurs as problem:
                raise UnusableCache(f"{self.settings.dir_source}: {problem}") from None
            except OSError as problem:
                self.notices.append(f"cannot use {root} ({why_not(problem)}): running uncached")
                return None
            self._use_read_only(root, why_not(error))
            return directory

    def _use_read_only(self, root: Path, why: str) -> None:
        self.notices.append(f"{root} is {why}: using it read-only")
        self.mode = Mode.READONLY

    def _first_use(self) -> None:
        """Called inside the first compile or lowering, when the backend exists: fix
        which machine's namespace this process reads and writes, what its entries record
        about the session's environment, and prefetch what earlier sessions used."""
        from pytest_jaxcache.jax.fingerprint import fingerprint

        assert self.store is not None
        self.fingerprint = fingerprint(self.notices)
        session_id = environment.fingerprint_id(self.fingerprint)
        self.store.bind(
            environment.namespace(self.fingerprint),
            environment.machine_of(self.fingerprint),
            session_id,
        )
        if not self.store.readonly:
            try:
                Bookkeeping(self.store.directory).save_fingerprint(session_id, self.fingerprint)
            except OSError as error:
                self.store.stats.note(f"fingerprint: {why_not(error)}")
        self._prefetch()

    def _prefetch(self) -> None:
        """Download ahead what earlier sessions used (a shard: what its own tests used)."""
        store, remote = self.store, self.remote
        if remote is None or store is None or not self.settings.prefetch or store.readonly:
            return
        if self.settings.shard is not None and self._prefetch_names is None:
            return  # the shard's tests are not known yet: prefetch once they are
        session_id = environment.fingerprint_id(self.fingerprint)
        remote.prefetch(store, session_id, self._prefetch_names)

    def measure_before(self, *, scheduled: bool = False) -> None:
        """What the cache holds as the session starts (the controller, or alone); with a
        shard or ``--dist=jaxcache``, also what predicts each test's cost."""
        predicts = scheduled or self.settings.shard is not None
        self.before = self._usage(keep_names=predicts)
        if predicts and self.store is not None:
            self.history = history.load(self.store.directory)

    def _usage(self, *, keep_names: bool = False) -> Usage | None:
        from pytest_jaxcache.maintenance import ENTRY, Maintenance, jax_files_usage, usage_of

        try:
            if self.store is not None:
                items = Maintenance(self.store.directory).inventory()
                if keep_names:
                    self.present = frozenset(item.name for item in items if item.kind == ENTRY)
                return usage_of(items)
            if self.directory is not None:
                return jax_files_usage(self.directory)
        except OSError as error:
            self.notices.append(f"cannot measure {self.settings.where}: {why_not(error)}")
        return None

    # -- shards -------------------------------------------------------------------------

    def select_shard(self, nodeids: list[str], marked: set[str]) -> set[str]:
        """The tests of this session's shard (every test in exactly one shard of the
        same history, entries and collection), and, with a remote, what it prefetches:
        the entries its own tests used before."""
        shard = self.settings.shard
        assert shard is not None
        from pytest_jaxcache import shards

        chosen, predicted = shards.select(nodeids, shard, self.history, self.present, marked)
        self.shard = {
            "index": shard.number,
            "count": shard.total,
            "tests": len(chosen),
            "collected": len(nodeids),
            "predicted_secs": predicted,
            "history": len(self.history.tests),
        }
        names: set[str] = set()
        for nodeid in chosen:
            cost = self.history.tests.get(nodeid)
            names.update(cost.programs if cost is not None else ())
        self._prefetch_names = names
        if self.store is not None and self.store.machine:  # the first compile came first
            self._prefetch()
        return set(chosen)

    # -- xdist ------------------------------------------------------------------------

    def become_worker(self, worker_id: str, controller: dict[str, Any] | None) -> None:
        """An xdist worker takes the controller's session start: entries it writes
        belong to that session, not to one of their own, when misses are explained."""
        self.worker = worker_id
        self.recorder.worker = worker_id
        if controller is not None:
            self.started_at = float(controller["started_at"])
            if "history" in controller:
                self.history = history.parse(str(controller["history"]).encode())
                self.present = frozenset(str(name) for name in controller["present"])
            if self.store is not None:
                self.store.session_started = self.started_at
            if self.remote is not None and self.store is not None:
                self.remote.tell_others_through(self.store.directory, self._session_id())

    def controller_input(self) -> dict[str, Any]:
        """What every worker must share with the controller: the session's start, and
        what predicts costs (so that every worker of a shard selects the same tests)."""
        sent: dict[str, Any] = {"started_at": self.started_at}
        if self.settings.shard is not None:
            sent["history"] = self.history.to_json().decode()
            sent["present"] = sorted(self.present)
        return sent

    def absorb(self, worker: str, report: WorkerReport) -> None:
        """Keep a finished worker's share for the snapshot."""
        self.workers[worker] = report

    def lose(self, worker: str) -> None:
        """A worker crashed before it could report."""
        self.lost_workers.append(worker)

    # -- this process's share ---------------------------------------------------------

    def explain_misses(self) -> list[Miss]:
        """This process's misses, each with its reason (computed once)."""
        if self._misses is not None:
            return self._misses
        self._misses = []
        missed = [c for c in self.recorder.compiles if c.outcome == MISS and c.key]
        if self.store is None or not missed:
            return self._misses
        from pytest_jaxcache import explain

        try:
            self._misses = explain.explain(
                self.store,
                {c.key for c in missed},
                before=self.started_at,
                current=self.fingerprint,
                parts=self.recorder.missed_parts,
                facts=self.recorder.missed_facts,
                refused={c.key: c.refused for c in missed if c.refused},
            )
        except OSError as error:
            self.notices.append(f"cannot explain misses: {why_not(error)}")
        return self._misses

    def _remote_stats(self, used: set[str], verified: set[str]) -> RemoteStats:
        """This process's remote figures, once its uploads are done (or given up) and,
        on the controller or alone, the manifest is written."""
        if self.remote is None:
            return RemoteStats()
        machine = environment.namespace(self._fingerprint()) if self._fingerprint() else ""
        session = environment.fingerprint_id(self._fingerprint()) if machine else ""
        return self.remote.finish(machine if not self.worker else "", session, used, verified)

    def share(self) -> WorkerReport:
        """What this process did: a worker sends it, the controller adds it to theirs."""
        used = {
            keys.file_name(c.key) for c in self._compiles() if c.key and c.outcome in (HIT, MISS)
        }
        verified = set(self.store.verified) if self.store is not None else set()
        for sent in self.workers.values():
            verified.update(sent.prefetched)
        remote = self._remote_stats(used, verified)
        notices = list(self.notices)
        if self.key_dump is not None:
            notices += self.key_dump.errors
        return WorkerReport(
            records=self.recorder.export(),
            store=self.store.stats if self.store is not None else WorkerReport().store,
            misses=self.explain_misses(),
            notices=notices,
            installed=self.installed(),
            remote=remote,
            remote_off=self.remote.off_reason if self.remote is not None else "",
            prefetched=sorted(self.remote.prefetched) if self.remote is not None else [],
            fingerprint=dict(self.fingerprint),
            shard=self.shard,
            lowering=self.installation.lowering if self.installation is not None else None,
        )

    def _compiles(self) -> list[Any]:
        """Every compile of the session this process knows of: its own and, on the
        controller, its workers'."""
        found = list(self.recorder.compiles)
        for sent in self.workers.values():
            found += sent.records.compiles
        return found

    def _fingerprint(self) -> dict[str, str]:
        """This session's fingerprint, as this process (or, on an xdist controller that
        never imported JAX, a worker) knows it."""
        if self.fingerprint:
            return dict(self.fingerprint)
        for sent in self.workers.values():
            if sent.fingerprint:
                return dict(sent.fingerprint)
        return {}

    def installed(self) -> InstallFacts | None:
        return None if self.installation is None else self.installation.facts

    # -- finish (the controller, or the only process) ----------------------------------

    def finish(self) -> dict[str, Any]:
        """Maintenance (when there can be work: this session wrote, pruning is on, the
        cache was over its cap, or a killed writer left a temporary file), the session
        recorded, the contents digest kept, and the snapshot built: once."""
        if self._snapshot is not None:
            return self._snapshot
        from pytest_jaxcache import snapshot

        own = self.share()
        shares = {"": own, **self.workers}
        self._maintain(shares)
        remote = None
        if self.remote is not None:
            remote = snapshot.RemoteState(
                self.remote.url, "readonly" if self.remote.readonly else "readwrite"
            )
        self._snapshot = snapshot.build(
            shares,
            cache=snapshot.CacheState(
                where=self.settings.where,
                source=str(self.settings.dir_source),
                mode=self.mode.value,
                notices=tuple(self.notices),
                max_size_bytes=self.settings.max_size_bytes,
                before=self.before,
                after=self.after,
                maintenance=self.maintenance,
                durations=self.settings.durations,
                wall_secs=time.time() - self.started_at,
                lowering=self.settings.lowering.value,
            ),
            remote=remote,
            lost_workers=self.lost_workers,
        )
        self._keep_history(self._snapshot)
        return self._snapshot

    def _keep_history(self, data: dict[str, Any]) -> None:
        """What each test cost, for the next session's shards and scheduler."""
        fingerprint = self._fingerprint()
        if self.store is None or self.store.readonly or not fingerprint:
            return
        session = history.of_session(data["tests"], data["compiles"], time.time())
        try:
            history.save(self.store.directory, environment.namespace(fingerprint), session)
        except OSError as error:
            data["cache"]["notices"].append(f"could not keep the tests' history: {why_not(error)}")

    def _maintain(self, shares: dict[str, WorkerReport]) -> None:
        from pytest_jaxcache.maintenance import Maintenance, MaintenanceResult

        if self.store is None:
            self.after = self._usage()
            return
        if self.store.readonly:
            self.after = self.before
            self.maintenance = MaintenanceResult(ran=False, reason="read-only")
            return
        machine = environment.machine_of(self._fingerprint())
        maintenance = Maintenance(self.store.directory, machine or None)
        cap = self.settings.max_size_bytes
        over_cap = cap is not None and (self.before is None or self.before.bytes > cap)
        try:
            leftovers = maintenance.has_temporaries()  # a writer was killed mid-write
        except OSError:
            leftovers = False
        changed = any(
            s.store.writes
            or s.store.repaired
            or s.store.wrong_key
            or s.store.resigned
            or s.remote.hits
            or s.remote.prefetched  # downloads were written locally too
            or (s.installed is not None and s.installed.store == JAX_STORE)  # not counted
            for s in shares.values()
        )
        if changed or leftovers or over_cap or self.settings.prune_after_sessions:
            self.maintenance = maintenance.maintain(
                max_size_bytes=cap,
                prune_after_sessions=self.settings.prune_after_sessions,
                session_start=self.started_at,
            )
            self.after = self._usage()
        else:  # this session changed nothing: no second scan, but it counts as a session
            self.maintenance = maintenance.record(self.started_at)
            self.after = self.before
        self._record_contents()

    def _record_contents(self) -> None:
        """Keep contents.json (digest, entries, bytes) in step with what the cache holds,
        for CI steps that key a saved cache on it; rewritten only when it changed."""
        assert self.store is not None
        if self.after is None:
            return
        try:
            Bookkeeping(self.store.directory).keep_contents(
                self.after.digest, self.after.entries, self.after.bytes
            )
        except OSError as error:
            self.notices.append(f"could not record the cache's contents: {why_not(error)}")

    def stop(self) -> None:
        self._cancel_install()
        if self.installation is not None:
            self.installation.uninstall()
            self.installation = None
