"""Per-test accounting: turns JAX's monitoring events into one record per compile.

JAX emits, for one compile: ``compile_requests_use_cache`` (a lookup), then either
``cache_hits`` or, when it writes the program, ``cache_misses``; and finally
``backend_compile_duration`` with the program's name, which wraps the lookup, the
compile and the write. Cache events carry no name, so they are kept per thread until
that closing event. A lookup with neither hit nor write is an *uncachable* compile
when the program has host callbacks (and JAX gave no other reason), and *unwritten* when
JAX or the store gave another reason (a size or time threshold, a failed write); a
compile with no lookup ran with the cache off (the codes and words are
:mod:`pytest_jaxcache.reasons`').

Listeners run inside the user's compile: :meth:`Recorder.on_event` and
:meth:`Recorder.on_duration` swallow every exception (and count it) rather than raise.

A recorder holds one process's records; a worker's reach the controller as
:class:`Records` (see :mod:`pytest_jaxcache.worker_report`), where the snapshot
(:mod:`pytest_jaxcache.snapshot`) folds them together.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any

from pytest_jaxcache.reasons import (
    HIT,
    HOST_CALLBACKS,
    MISS,
    UNCACHABLE,
    UNCACHED,
    UNKNOWN,
    UNWRITTEN,
)
from pytest_jaxcache.tally import MAX_MESSAGES, Tally

REQUEST_EVENT = "/jax/compilation_cache/compile_requests_use_cache"
HIT_EVENT = "/jax/compilation_cache/cache_hits"
WRITE_EVENT = "/jax/compilation_cache/cache_misses"
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"

OUTSIDE_TESTS = "<outside tests>"  # conftest/module import, collection, session fixtures
OUTSIDE_PHASE = "collect"


@dataclass
class Counts(Tally):
    """Compile figures of one test phase (or of a whole session, when summed)."""

    requests: int = 0
    hits: int = 0
    misses: int = 0
    uncachable: int = 0
    unwritten: int = 0
    uncached: int = 0
    compile_secs: float = 0.0  # backend time of compiles that did real work
    outside_secs: float = 0.0  # of compile_secs: programs outside the cachable set
    retrieval_secs: float = 0.0  # backend time of hits: read and deserialise
    saved_secs: float = 0.0  # recorded compile time of hit programs, less retrieval
    saved_unknown: int = 0  # hits whose original compile time is not known
    wait_secs: float = 0.0  # waiting for another process's compile of the same program
    trace_secs: float = 0.0
    lower_secs: float = 0.0

    @property
    def compiles(self) -> int:
        return self.hits + self.misses + self.uncachable + self.unwritten + self.uncached

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Counts:
        return cls(**{item.name: data[item.name] for item in fields(cls)})


@dataclass
class CompileRecord:
    """One program that went through the backend compile path."""

    name: str
    outcome: str
    secs: float
    test: str
    phase: str
    worker: str = ""
    key: str = ""  # the cache key, when our store saw the lookup
    refused: str = ""  # why an entry found for the key was not loaded
    waited_secs: float = 0.0  # of ``secs``, spent waiting for another process's compile
    unwritten: str = ""  # why it was not written: a reasons code ("" when it was, or a hit)
    detail: str = ""  # what goes with the code (a threshold, JAX's message)
    source: str = ""  # a hit's entry: written in an earlier session, this one, or remote
    # Whether JAX lowered the program in this process (False: the lowering tier served
    # its module, and JAX's lowering, which emits the lowering event, never ran).
    lowered: bool = True


@dataclass
class TestRecord:
    """One test (or the work outside tests): its compile figures by phase, and when it
    ran, for how long and how it ended (the timeline and the shards' history)."""

    __test__ = False  # not a test class, whatever pytest thinks of the name
    nodeid: str
    phases: dict[str, Counts] = field(default_factory=dict)
    markers: list[str] = field(default_factory=list)
    worker: str = ""
    started: float = 0.0  # when its setup began (time.time())
    wall_secs: float = 0.0  # setup, call and teardown
    outcome: str = ""  # passed, failed, skipped ("" outside tests)

    def total(self) -> Counts:
        total = Counts()
        for counts in self.phases.values():
            total.add(counts)
        return total


@dataclass
class Records:
    """Everything a recorder holds: what a worker sends back, what the report reads."""

    tests: list[TestRecord] = field(default_factory=list)
    compiles: list[CompileRecord] = field(default_factory=list)
    cache_warnings: list[str] = field(default_factory=list)
    listener_errors: list[str] = field(default_factory=list)


@dataclass
class _Pending:
    """Cache events of the compile now running in one thread."""

    requested: bool = False
    hit: bool = False
    written: bool = False
    host_callbacks: bool | None = None  # None: not known (JAX's compile not wrapped)
    key: str = ""
    stored_compile_secs: float | None = None
    refused: str = ""
    unwritten: str = ""  # why the program was not written (a reasons code)
    detail: str = ""
    source: str = ""
    parts: dict[str, str] = field(default_factory=dict)  # its key's part digests
    facts: dict[str, str] = field(default_factory=dict)  # what else explains a miss
    waited_secs: float = 0.0
    trace_secs: float = 0.0
    lower_secs: float = 0.0


class Recorder:
    """Collects the compile records of one process (and, on an xdist controller, the
    records its workers sent back)."""

    def __init__(self, worker: str = "") -> None:
        self.worker = worker
        self.tests: dict[str, TestRecord] = {}
        self.compiles: list[CompileRecord] = []
        self.cache_warnings: list[str] = []
        self.listener_errors: list[str] = []
        # This process's missed keys: the digests of their parts and the facts of their
        # programs (explained here, at the end of the session; not sent anywhere).
        self.missed_parts: dict[str, dict[str, str]] = {}
        self.missed_facts: dict[str, dict[str, str]] = {}
        self._context: tuple[str, str, tuple[str, ...]] = (OUTSIDE_TESTS, OUTSIDE_PHASE, ())
        self._bypassed = False
        self._local = threading.local()
        self._lock = threading.Lock()

    # -- context, set by the pytest hooks -------------------------------------------------

    def begin(self, nodeid: str, phase: str, markers: tuple[str, ...] = ()) -> None:
        """Attribute what compiles from now on to ``nodeid``'s ``phase``; its setup
        starts the test's clock."""
        self._context = (nodeid, phase, markers)
        if phase == "setup":
            record = self._test(nodeid)
            record.started = time.time()
            record.markers = sorted(set(record.markers) | set(markers))

    def end(self, outcome: str = "") -> None:
        """The current test is over (``outcome``: passed, failed or skipped)."""
        nodeid = self._context[0]
        if nodeid != OUTSIDE_TESTS:
            record = self._test(nodeid)
            if record.started:
                record.wall_secs = max(0.0, time.time() - record.started)
            record.outcome = outcome
        self._context = (OUTSIDE_TESTS, OUTSIDE_PHASE, ())

    def set_bypassed(self, bypassed: bool) -> None:
        """While bypassed, compiles count as uncached whatever JAX reports."""
        self._bypassed = bypassed

    def _test(self, nodeid: str) -> TestRecord:
        record = self.tests.get(nodeid)
        if record is None:
            record = self.tests[nodeid] = TestRecord(nodeid, worker=self.worker)
        return record

    def _counts(self) -> tuple[Counts, str, str]:
        nodeid, phase, markers = self._context
        record = self._test(nodeid)
        if markers and not set(markers) <= set(record.markers):
            record.markers = sorted(set(record.markers) | set(markers))
        phases = record.phases
        counts = phases.get(phase)
        if counts is None:
            counts = phases[phase] = Counts()
        return counts, nodeid, phase

    # -- JAX monitoring listeners (must never raise) ----------------------------------------

    def _pending(self) -> _Pending:
        pending: _Pending | None = getattr(self._local, "pending", None)
        if pending is None:
            pending = self._local.pending = _Pending()
        return pending

    def on_event(self, event: str, **kwargs: Any) -> None:
        try:
            if event == REQUEST_EVENT:
                self._pending().requested = True
            elif event == HIT_EVENT:
                self._pending().hit = True
            elif event == WRITE_EVENT:
                self._pending().written = True
        except Exception as error:
            self._listener_failed(error)

    def on_duration(self, event: str, duration: float, **kwargs: Any) -> None:
        try:
            if event == BACKEND_COMPILE_EVENT:
                pending = self._pending()
                self._local.pending = None  # whatever happens next, this compile is over
                self._close_compile(pending, str(kwargs.get("fun_name", "?")), float(duration))
            elif event == TRACE_EVENT:
                with self._lock:
                    self._counts()[0].trace_secs += float(duration)
            elif event == LOWER_EVENT:
                self._local.lowered = True  # the next compile in this thread was lowered
                with self._lock:
                    self._counts()[0].lower_secs += float(duration)
        except Exception as error:
            self._listener_failed(error)

    def start_compile(self, host_callbacks: bool | None) -> None:
        """A compile begins in this thread: drop anything a failed one left behind."""
        self._local.pending = _Pending(host_callbacks=host_callbacks)

    def note_lookup(
        self,
        key: str,
        stored_compile_secs: float | None,
        *,
        refused: str = "",
        waited_secs: float = 0.0,
        source: str = "",
    ) -> None:
        """Our store looked ``key`` up: on a hit, its program once took
        ``stored_compile_secs`` to compile (``None``: unknown, or a miss) and its entry
        came from ``source``; ``refused`` says why an entry that exists was not loaded;
        ``waited_secs`` went on waiting for another process's compile (not compile time
        of ours)."""
        pending = self._pending()
        pending.key = key
        pending.stored_compile_secs = stored_compile_secs
        pending.refused = refused or pending.refused
        pending.waited_secs += waited_secs
        pending.source = source

    def note_unwritten(self, code: str, detail: str = "") -> None:
        """The compile under way in this thread will not be written, for the reason
        ``code`` (:mod:`pytest_jaxcache.reasons`): host callbacks make it *uncachable*;
        any other reason, a threshold say, makes it *unwritten*, also when it has
        callbacks."""
        pending = self._pending()
        pending.unwritten, pending.detail = code, detail[:300]

    def note_key_parts(self, parts: dict[str, str], facts: dict[str, str]) -> None:
        """The digests of the parts of the key of the compile under way, and the facts
        of its program (to explain its miss)."""
        pending = self._pending()
        pending.parts, pending.facts = parts, facts

    def note_cache_warning(self, message: str) -> None:
        """JAX warned about a cache read or write; we counted it instead."""
        with self._lock:
            nodeid, phase, _ = self._context
            self.cache_warnings.append(f"{nodeid} ({phase}): {message}")

    def _listener_failed(self, error: Exception) -> None:
        if len(self.listener_errors) < MAX_MESSAGES:
            self.listener_errors.append(f"{type(error).__name__}: {error}")

    def _close_compile(self, pending: _Pending, name: str, secs: float) -> None:
        if self._bypassed or not pending.requested:
            outcome = UNCACHED
        elif pending.hit:
            outcome = HIT
        elif pending.written and not pending.unwritten:
            outcome = MISS
        elif pending.unwritten == HOST_CALLBACKS or (
            not pending.unwritten and pending.host_callbacks is not False
        ):
            outcome = UNCACHABLE
        else:
            outcome = UNWRITTEN
        waited = min(pending.waited_secs, secs)
        secs -= waited  # waiting for another process is neither compiling nor loading
        lowered = bool(getattr(self._local, "lowered", False))
        self._local.lowered = False
        with self._lock:
            counts, nodeid, phase = self._counts()
            counts.wait_secs += waited
            if outcome != UNCACHED:
                counts.requests += 1
            if outcome == HIT:
                counts.hits += 1
                counts.retrieval_secs += secs
                if pending.stored_compile_secs is None:
                    counts.saved_unknown += 1
                else:
                    counts.saved_secs += max(0.0, pending.stored_compile_secs - secs)
            else:
                counts.compile_secs += secs
                if outcome != MISS:
                    counts.outside_secs += secs
                if outcome == MISS:
                    counts.misses += 1
                    if pending.key and pending.parts:
                        self.missed_parts[pending.key] = pending.parts
                        self.missed_facts[pending.key] = pending.facts
                elif outcome == UNCACHABLE:
                    counts.uncachable += 1
                elif outcome == UNWRITTEN:
                    counts.unwritten += 1
                else:
                    counts.uncached += 1
            self.compiles.append(
                CompileRecord(
                    name,
                    outcome,
                    secs,
                    nodeid,
                    phase,
                    self.worker,
                    pending.key,
                    pending.refused,
                    waited,
                    *self._why_not(outcome, pending),
                    pending.source if outcome == HIT else "",
                    lowered,
                )
            )

    @staticmethod
    def _why_not(outcome: str, pending: _Pending) -> tuple[str, str]:
        """The not-written code and detail of a compile of ``outcome``."""
        if outcome == UNCACHABLE:
            return HOST_CALLBACKS, ""
        if outcome == UNWRITTEN:
            return pending.unwritten or UNKNOWN, pending.detail
        return "", ""

    # -- xdist --------------------------------------------------------------------------

    def export(self) -> Records:
        return Records(
            tests=list(self.tests.values()),
            compiles=list(self.compiles),
            cache_warnings=list(self.cache_warnings),
            listener_errors=list(self.listener_errors),
        )
