"""Unit tests of the recorder, fed JAX's real event names: one record per compile, the
test and phase it belongs to, the outcome and why, and nothing raised into a compile."""

from __future__ import annotations

import json
import threading

import pytest
from recording import compile_

from pytest_jaxcache import reasons
from pytest_jaxcache.reasons import HIT, MISS, UNCACHABLE, UNCACHED, UNWRITTEN
from pytest_jaxcache.recorder import (
    BACKEND_COMPILE_EVENT,
    HIT_EVENT,
    LOWER_EVENT,
    OUTSIDE_PHASE,
    OUTSIDE_TESTS,
    REQUEST_EVENT,
    TRACE_EVENT,
    Recorder,
)
from pytest_jaxcache.tally import MAX_MESSAGES
from pytest_jaxcache.worker_report import WorkerReport


@pytest.mark.parametrize(
    "outcome, times",
    [
        (HIT, (0.25, 0.0, 0.75)),
        (MISS, (0.0, 0.25, 0.0)),
        (UNCACHABLE, (0.0, 0.25, 0.0)),
        (UNCACHED, (0.0, 0.25, 0.0)),
    ],
)
def test_recorder_classifies_each_outcome(outcome: str, times: tuple[float, ...]) -> None:
    """Request/hit/write events followed by the backend compile give one record with
    the outcome, the program name, and the test and phase that compiled it."""
    recorder = Recorder(worker="gw3")
    recorder.begin("t::x", "setup")
    compile_(recorder, "jit_fn", outcome, 0.25, stored=1.0)
    [record] = recorder.compiles
    assert (record.name, record.outcome, record.secs) == ("jit_fn", outcome, 0.25)
    assert (record.test, record.phase, record.worker) == ("t::x", "setup", "gw3")
    counts = recorder.tests["t::x"].phases["setup"]
    assert counts.compiles == 1
    assert counts.requests == (0 if outcome == UNCACHED else 1)
    assert (counts.retrieval_secs, counts.compile_secs, counts.saved_secs) == times


def test_recorder_context_and_durations() -> None:
    """Compiles outside a test go to '<outside tests>'; trace and lowering time go to
    the current phase; a hit's saving is never negative."""
    recorder = Recorder()
    compile_(recorder, "jit_import", MISS, 0.1)
    recorder.begin("t::x", "call")
    recorder.on_duration(TRACE_EVENT, 0.5)
    recorder.on_duration(LOWER_EVENT, 0.25)
    compile_(recorder, "jit_slow_load", HIT, 2.0, stored=1.0)
    recorder.end()
    outside = recorder.tests[OUTSIDE_TESTS].phases[OUTSIDE_PHASE]
    assert outside.misses == 1
    call = recorder.tests["t::x"].phases["call"]
    assert (call.trace_secs, call.lower_secs) == (0.5, 0.25)
    assert call.saved_secs == 0.0
    assert recorder.compiles[-1].test == "t::x"


def test_bypassed_compiles_count_as_uncached() -> None:
    """While bypassed (jax_no_cache), even a reported hit counts as uncached."""
    recorder = Recorder()
    recorder.begin("t::x", "call")
    recorder.set_bypassed(True)
    compile_(recorder, "jit_f", HIT, 0.1, stored=1.0)
    recorder.set_bypassed(False)
    compile_(recorder, "jit_f", HIT, 0.1, stored=1.0)
    assert [c.outcome for c in recorder.compiles] == [UNCACHED, HIT]


def test_pending_events_are_per_thread() -> None:
    """Cache events of a compile in one thread do not leak into another thread's."""
    recorder = Recorder()
    recorder.begin("t::x", "call")
    recorder.on_event(REQUEST_EVENT)
    recorder.on_event(HIT_EVENT)
    other = threading.Thread(
        target=recorder.on_duration, args=(BACKEND_COMPILE_EVENT, 0.3), kwargs={"fun_name": "b"}
    )
    other.start()
    other.join()
    recorder.on_duration(BACKEND_COMPILE_EVENT, 0.01, fun_name="a")
    assert [(c.name, c.outcome) for c in recorder.compiles] == [("b", UNCACHED), ("a", HIT)]


def test_listeners_never_raise_on_garbage() -> None:
    """Bad arguments are swallowed and counted, never raised into the user's compile;
    the error list stays bounded."""
    recorder = Recorder()
    recorder.begin("t::x", "call")
    recorder.on_duration(BACKEND_COMPILE_EVENT, "x", fun_name="f")  # type: ignore[arg-type]
    recorder.on_duration(TRACE_EVENT, None)  # type: ignore[arg-type]
    recorder.on_duration(LOWER_EVENT, object())  # type: ignore[arg-type]
    recorder.on_event(REQUEST_EVENT, weird=object(), duration="x")
    recorder.on_event(123, fun_name=None)  # type: ignore[arg-type]
    recorder.on_duration("/some/other/duration", 0.1, anything=[1, 2])
    assert recorder.compiles == []
    assert len(recorder.listener_errors) == 3
    assert recorder.listener_errors[0].startswith("ValueError")
    assert recorder.listener_errors[1].startswith("TypeError")
    for _ in range(2 * MAX_MESSAGES):
        recorder.on_duration(TRACE_EVENT, "y")  # type: ignore[arg-type]
    assert len(recorder.listener_errors) == MAX_MESSAGES


def test_cache_warning_names_context() -> None:
    """A JAX cache warning is recorded with the test and phase it happened in."""
    recorder = Recorder()
    recorder.begin("t::x", "teardown")
    recorder.note_cache_warning("Error reading persistent compilation cache entry")
    assert recorder.cache_warnings == [
        "t::x (teardown): Error reading persistent compilation cache entry"
    ]


def test_export_round_trips_through_a_worker_report() -> None:
    """What a worker ships comes back equal on the controller."""
    worker = Recorder(worker="gw0")
    worker.begin("t::x", "setup")
    compile_(worker, "jit_a", HIT, 0.01, 0.5, source=reasons.THIS_SESSION)
    worker.end("failed")
    worker.note_cache_warning("w")
    worker.on_duration(TRACE_EVENT, "bad")  # type: ignore[arg-type]
    shipped = WorkerReport(records=worker.export()).to_builtins()
    assert WorkerReport.from_builtins(json.loads(json.dumps(shipped))).records == worker.export()


def test_each_test_is_timed_and_its_outcome_kept() -> None:
    """A test's clock starts at its setup and stops when it ends, with its outcome; the
    work outside tests has neither."""
    recorder = Recorder()
    recorder.begin("t::x", "setup", ("jax_errors",))
    recorder.begin("t::x", "call", ("jax_errors",))
    recorder.end("skipped")
    compile_(recorder, "jit_import", MISS, 0.1)
    test = recorder.tests["t::x"]
    assert test.started > 0 and test.wall_secs >= 0 and test.outcome == "skipped"
    assert test.markers == ["jax_errors"]
    outside = recorder.tests[OUTSIDE_TESTS]
    assert (outside.started, outside.outcome) == (0.0, "")


@pytest.mark.parametrize(
    "code, host_callbacks, outcome",
    [
        (reasons.HOST_CALLBACKS, True, UNCACHABLE),
        (reasons.MIN_COMPILE_TIME, True, UNWRITTEN),  # a threshold, whatever the callbacks
        ("", True, UNCACHABLE),  # nothing heard, callbacks: JAX never writes those
        ("", None, UNCACHABLE),  # nothing heard, nothing known
        ("", False, UNWRITTEN),  # nothing heard, no callbacks: a reason we did not hear
        (reasons.STORE_WRITE_FAILED, False, UNWRITTEN),
    ],
)
def test_why_not_written_decides_the_outcome(
    code: str, host_callbacks: bool | None, outcome: str
) -> None:
    """A looked-up program that was not written is uncachable only for host callbacks;
    its record carries the reason's code (unknown when nothing was heard), never a
    threshold it did not hear."""
    recorder = Recorder()
    recorder.begin("t::x", "call")
    recorder.start_compile(host_callbacks=host_callbacks)
    recorder.on_event(REQUEST_EVENT)
    if code:
        recorder.note_unwritten(code, "0.5")
    recorder.on_duration(BACKEND_COMPILE_EVENT, 0.01, fun_name="jit(f)")
    [record] = recorder.compiles
    assert record.outcome == outcome
    expected = code if outcome == UNWRITTEN else reasons.HOST_CALLBACKS
    assert record.unwritten == (expected or reasons.UNKNOWN)
    words = reasons.why_compiled(record.outcome, record.unwritten, record.detail, None)
    assert ("min-compile-time" in words) == (record.unwritten == reasons.MIN_COMPILE_TIME)
    assert "min-entry-size" not in words
