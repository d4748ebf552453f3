"""Per-test accounting: turns JAX's monitoring events into one record per compile.

JAX emits, for one compile: ``compile_requests_use_cache`` (a lookup), then either
``cache_hits`` or, when it writes the program, ``cache_misses``; and finally
``backend_compile_duration`` with the program's name, which wraps the lookup, the
compile and the write. Cache events carry no name, so they are kept per thread until
that closing event. A lookup with neither hit nor write is an *uncachable* compile
when the program has host callbacks (and JAX gave no other reason), and *unwritten* when
JAX or the store gave another reason (a size or time threshold, a failed write); a
compile with no lookup ran with the cache off.

Listeners run inside the user's compile: :meth:`Recorder.on_event` and
:meth:`Recorder.on_duration` swallow every exception (and count it) rather than raise.

A worker's records reach the controller as :class:`Records` (see
:mod:`pytest_jaxcache.worker_report`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from typing import Any

from pytest_jaxcache.tally import Tally

REQUEST_EVENT = "/jax/compilation_cache/compile_requests_use_cache"
HIT_EVENT = "/jax/compilation_cache/cache_hits"
WRITE_EVENT = "/jax/compilation_cache/cache_misses"
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"

HIT = "hit"
MISS = "miss"  # cachable: compiled, then written (or the write was attempted)
UNCACHABLE = "uncachable"  # looked up, compiled, never written: host callbacks
UNWRITTEN = "unwritten"  # looked up, compiled, not written: below a size/time threshold
UNCACHED = "uncached"  # compiled with the persistent cache off

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
    unwritten: str = ""  # why a program compiled with the cache on was not written


@dataclass
class TestRecord:
    __test__ = False  # not a test class, whatever pytest thinks of the name
    nodeid: str
    phases: dict[str, Counts] = field(default_factory=dict)
    markers: list[str] = field(default_factory=list)
    worker: str = ""

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
    unwritten: str = ""  # why the program was not written
    unwritten_for_callbacks: bool = False  # ... because it has host callbacks
    parts: dict[str, str] = field(default_factory=dict)  # its key's part digests
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
        # This process's missed keys: the digests of their parts (explained here, at
        # the end of the session; not sent to the controller).
        self.missed_parts: dict[str, dict[str, str]] = {}
        self._context: tuple[str, str, tuple[str, ...]] = (OUTSIDE_TESTS, OUTSIDE_PHASE, ())
        self._bypassed = False
        self._local = threading.local()
        self._lock = threading.Lock()

    # -- context, set by the pytest hooks -------------------------------------------------

    def begin(self, nodeid: str, phase: str, markers: tuple[str, ...] = ()) -> None:
        """Attribute what compiles from now on to ``nodeid``'s ``phase``. Cheap: a
        record is only made for a test that compiles."""
        self._context = (nodeid, phase, markers)

    def end(self) -> None:
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
    ) -> None:
        """Our store looked ``key`` up: on a hit, its program once took
        ``stored_compile_secs`` to compile (``None``: unknown, or a miss); ``refused``
        says why an entry that exists was not loaded; ``waited_secs`` went on waiting for
        another process's compile (not compile time of ours)."""
        pending = self._pending()
        pending.key = key
        pending.stored_compile_secs = stored_compile_secs
        pending.refused = refused or pending.refused
        pending.waited_secs += waited_secs

    def note_unwritten(self, reason: str, *, host_callbacks: bool = False) -> None:
        """The compile under way in this thread will not be written, for ``reason``
        (``host_callbacks``: because the program has host callbacks; any other reason,
        a threshold say, makes it *unwritten*, also when it has callbacks)."""
        pending = self._pending()
        pending.unwritten = reason
        pending.unwritten_for_callbacks = host_callbacks

    def note_key_parts(self, parts: dict[str, str]) -> None:
        """The digests of the parts of the key of the compile under way (to explain
        its miss)."""
        self._pending().parts = parts

    def note_cache_warning(self, message: str) -> None:
        """JAX warned about a cache read or write; we counted it instead."""
        with self._lock:
            nodeid, phase, _ = self._context
            self.cache_warnings.append(f"{nodeid} ({phase}): {message}")

    def _listener_failed(self, error: Exception) -> None:
        if len(self.listener_errors) < 10:
            self.listener_errors.append(f"{type(error).__name__}: {error}")

    def _close_compile(self, pending: _Pending, name: str, secs: float) -> None:
        if self._bypassed or not pending.requested:
            outcome = UNCACHED
        elif pending.hit:
            outcome = HIT
        elif pending.written and not pending.unwritten:
            outcome = MISS
        elif pending.host_callbacks is False or (
            pending.unwritten and not pending.unwritten_for_callbacks
        ):
            outcome = UNWRITTEN
        else:
            outcome = UNCACHABLE
        waited = min(pending.waited_secs, secs)
        secs -= waited  # waiting for another process is neither compiling nor loading
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
                    "" if outcome in (HIT, MISS, UNCACHED) else pending.unwritten,
                )
            )

    # -- xdist --------------------------------------------------------------------------

    def export(self) -> Records:
        return Records(
            tests=list(self.tests.values()),
            compiles=list(self.compiles),
            cache_warnings=list(self.cache_warnings),
            listener_errors=list(self.listener_errors),
        )

    def merge(self, worker: str, records: Records) -> None:
        """Fold a worker's records into this (controller) recorder."""
        for test in records.tests:
            record = self._test(test.nodeid)
            record.worker = worker
            record.markers = sorted(set(record.markers) | set(test.markers))
            for phase, counts in test.phases.items():
                record.phases.setdefault(phase, Counts()).add(counts)
        for compile_ in records.compiles:
            compile_.worker = worker
            self.compiles.append(compile_)
        self.cache_warnings.extend(records.cache_warnings)
        self.listener_errors.extend(records.listener_errors)
