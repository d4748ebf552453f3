"""Unit tests of the recorder (fed JAX's real event names) and of the report built
and rendered from it."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_jaxcache import markers, report
from pytest_jaxcache.explain import ENVIRONMENT, NEW, MissGroup
from pytest_jaxcache.recorder import (
    BACKEND_COMPILE_EVENT,
    HIT,
    HIT_EVENT,
    LOWER_EVENT,
    MISS,
    OUTSIDE_PHASE,
    OUTSIDE_TESTS,
    REQUEST_EVENT,
    TRACE_EVENT,
    UNCACHABLE,
    UNCACHED,
    UNWRITTEN,
    WRITE_EVENT,
    Counts,
    Recorder,
    Records,
)
from pytest_jaxcache.settings import format_size
from pytest_jaxcache.worker_report import WorkerReport

UNKNOWN = object()  # a hit whose stored compile time is not known


def compile_(
    recorder: Recorder, name: str, outcome: str, secs: float, stored: float | None = None
) -> None:
    """Emit the monitoring events JAX emits for one compile with ``outcome``."""
    if outcome != UNCACHED:
        recorder.on_event(REQUEST_EVENT)
        recorder.note_lookup(f"{name}-0123", stored if outcome == HIT else None)
    if outcome == HIT:
        recorder.on_event(HIT_EVENT)
    elif outcome == MISS:
        recorder.on_event(WRITE_EVENT)
    recorder.on_duration(BACKEND_COMPILE_EVENT, secs, fun_name=name)


@dataclass(frozen=True)
class Step:
    test: str
    phase: str
    markers: tuple[str, ...]
    name: str
    outcome: str
    secs: float
    stored: float | None = None


A, B, C, E, F = (f"tests/test_x.py::test_{x}" for x in "abcef")
ERR = (markers.ERRORS,)

SCENARIO = [
    Step(OUTSIDE_TESTS, OUTSIDE_PHASE, (), "jit_init", MISS, 0.1),
    Step(A, "call", (), "jit_a", HIT, 0.01, 0.5),
    Step(A, "call", (), "jit_a2", HIT, 0.02, 0.3),
    Step(A, "call", (), "jit_b", MISS, 0.4),
    Step(B, "setup", (), "jit_c", MISS, 0.2),
    Step(B, "call", (), "jit_cb", UNCACHABLE, 0.25),
    Step(B, "call", (), "jit_cb", UNCACHABLE, 0.35),
    Step(C, "call", ERR, "jit_err", UNCACHABLE, 0.6),
    Step(C, "call", ERR, "jit_e", HIT, 0.01, 1.0),
    Step(C, "call", ERR, "jit_f", MISS, 0.05),
    Step(E, "call", (), "jit_u", UNCACHED, 0.1),
    Step(F, "call", ERR, "jit_g", HIT, 0.03, None),
]
NO_COMPILES = "tests/test_x.py::test_d"


def play(recorder: Recorder, steps: list[Step]) -> None:
    """Drive ``recorder`` as the pytest hooks and JAX listeners would."""
    recorder.begin(NO_COMPILES, "call")
    recorder.end()
    for step in steps:
        if step.test == OUTSIDE_TESTS:
            recorder.end()
        else:
            recorder.begin(step.test, step.phase, tuple(step.markers))
        compile_(recorder, step.name, step.outcome, step.secs, step.stored)
        recorder.end()


def expected_counts(steps: list[Step]) -> Counts:
    """What the recorder should count for ``steps``, computed independently."""
    counts = Counts()
    for step in steps:
        counts.requests += step.outcome != UNCACHED
        counts.hits += step.outcome == HIT
        counts.misses += step.outcome == MISS
        counts.uncachable += step.outcome == UNCACHABLE
        counts.uncached += step.outcome == UNCACHED
        if step.outcome == HIT:
            counts.retrieval_secs += step.secs
            if step.stored is None:
                counts.saved_unknown += 1
            else:
                counts.saved_secs += max(0.0, step.stored - step.secs)
        else:
            counts.compile_secs += step.secs
    return counts


def cache_info(**overrides: Any) -> dict[str, Any]:
    """The ``cache`` section as the session builds it."""
    info: dict[str, Any] = {
        "dir": "/work/.jaxcache",
        "source": "ini jax_cache_dir",
        "store": "pytest-jaxcache",
        "mode": "readwrite",
        "notices": [],
        "max_size_bytes": 2**30,
        "before": {"entries": 2, "bytes": 2048},
        "after": {"entries": 5, "bytes": 3 * 2**20},
        "maintenance": {"ran": True, "evicted": 1, "pruned": 2},
    }
    info.update(overrides)
    return info


SCENARIO_WORKERS = {
    "gw0": {"store": {"hits": 4, "writes": 5, "waited_hits": 1}, "tests": 6},
    "gw1": {"store": {"hits": 0}, "tests": 1},
}


def build(
    recorder: Recorder,
    *,
    store: dict[str, Any] | None = None,
    misses: list[MissGroup] | None = None,
    workers: dict[str, dict[str, Any]] | None = None,
    lost_workers: list[str] | None = None,
    **cache: Any,
) -> dict[str, Any]:
    return report.build(
        recorder,
        cache=cache_info(**cache),
        jax_versions={"jax": "0.10.2", "jaxlib": "0.10.2"},
        store_stats={"hits": 0, "writes": 0, "errors": []} if store is None else store,
        misses=misses or [],
        miss_reasons={},
        workers=workers or {},
        lost_workers=lost_workers or [],
    )


def shipped(worker: Recorder) -> Records:
    """``worker``'s records as the controller receives them: through a worker report
    turned into JSON and back."""
    data = json.loads(json.dumps(WorkerReport(records=worker.export()).to_builtins()))
    return WorkerReport.from_builtins(data).records


def scenario_recorder() -> Recorder:
    """A controller recorder holding the scenario, shipped from worker gw0 as JSON."""
    worker = Recorder(worker="gw0")
    play(worker, SCENARIO)
    controller = Recorder()
    controller.merge("gw0", shipped(worker))
    other = Recorder(worker="gw1")
    other.begin("tests/test_y.py::test_other", "call")
    compile_(other, "jit_other", MISS, 0.05)
    controller.merge("gw1", shipped(other))
    return controller


def sec(value: float) -> str:
    return f"{value:.2f}s"


def line_with(lines: list[str], text: str) -> str:
    found = [line for line in lines if text in line]
    assert len(found) == 1, (text, lines)
    return found[0]


# -- recorder --------------------------------------------------------------------------------


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
    for _ in range(20):
        recorder.on_duration(TRACE_EVENT, "y")  # type: ignore[arg-type]
    assert len(recorder.listener_errors) == 10


def test_cache_warning_names_context() -> None:
    """A JAX cache warning is recorded with the test and phase it happened in."""
    recorder = Recorder()
    recorder.begin("t::x", "teardown")
    recorder.note_cache_warning("Error reading persistent compilation cache entry")
    assert recorder.cache_warnings == [
        "t::x (teardown): Error reading persistent compilation cache entry"
    ]


def test_export_merge_round_trip() -> None:
    """Records shipped as JSON come back equal; merge() rebuilds the worker's tests,
    counts and compiles on the controller, tagged with the worker id, and sums shared
    records (work outside tests)."""
    worker = Recorder(worker="gw0")
    play(worker, SCENARIO)
    worker.note_cache_warning("w")
    worker.on_duration(TRACE_EVENT, "bad")  # type: ignore[arg-type]
    assert shipped(worker) == worker.export()

    controller = Recorder()
    compile_(controller, "jit_controller", MISS, 0.5)  # the controller's own outside work
    controller.merge("gw0", shipped(worker))
    assert set(controller.tests) == set(worker.tests)
    assert {n: r.markers for n, r in controller.tests.items()} == {
        n: r.markers for n, r in worker.tests.items()
    }
    tests = [nodeid for nodeid in worker.tests if nodeid != OUTSIDE_TESTS]
    assert {n: (controller.tests[n].phases, controller.tests[n].worker) for n in tests} == {
        n: (worker.tests[n].phases, "gw0") for n in tests
    }
    outside = controller.tests[OUTSIDE_TESTS].phases[OUTSIDE_PHASE]
    assert outside.misses == 2 and outside.compile_secs == pytest.approx(0.6)
    assert [c.name for c in controller.compiles[1:]] == [c.name for c in worker.compiles]
    assert {c.worker for c in controller.compiles[1:]} == {"gw0"}
    assert controller.cache_warnings == worker.cache_warnings
    assert controller.listener_errors == worker.listener_errors


# -- build -----------------------------------------------------------------------------------


def test_build_totals_and_hit_rate() -> None:
    """Totals cover everything; the cachable section (and its hit rate) leaves out
    uncachable programs and tests marked jax_errors, which get their own section."""
    recorder = Recorder()
    play(recorder, SCENARIO)
    data = build(recorder)

    totals = expected_counts(SCENARIO)
    marked = expected_counts([s for s in SCENARIO if s.markers == ERR])
    unmarked = expected_counts([s for s in SCENARIO if s.markers != ERR])
    for section, expected in (("totals", totals), ("errors", marked), ("cachable", unmarked)):
        for name in ("requests", "hits", "misses", "uncachable", "uncached", "saved_unknown"):
            assert data[section][name] == getattr(expected, name), (section, name)
        for name in ("compile_secs", "retrieval_secs", "saved_secs"):
            assert data[section][name] == pytest.approx(getattr(expected, name)), (section, name)
        hits, misses = expected.hits, expected.misses
        assert data[section]["hit_rate"] == pytest.approx(hits / (hits + misses))
    assert data["cachable"]["hit_rate"] != data["totals"]["hit_rate"]


def test_build_tests_compiles_and_uncachable() -> None:
    """tests[] lists tests that compiled, with their phases; compiles[] every program;
    uncachable tests list each program once and say whether they are marked."""
    recorder = Recorder()
    play(recorder, SCENARIO)
    data = build(recorder)
    assert [t["nodeid"] for t in data["tests"]] == [OUTSIDE_TESTS, A, B, C, E, F]
    assert NO_COMPILES not in [t["nodeid"] for t in data["tests"]]
    by_id = {t["nodeid"]: t for t in data["tests"]}
    assert set(by_id[B]["phases"]) == {"setup", "call"}
    assert by_id[C]["markers"] == ["jax_errors"]
    assert [(c["name"], c["outcome"]) for c in data["compiles"]] == [
        (s.name, s.outcome) for s in SCENARIO
    ]
    assert data["uncachable_tests"] == [
        {"nodeid": B, "outside": False, "marked": False, "programs": ["jit_cb"]},
        {"nodeid": C, "outside": False, "marked": True, "programs": ["jit_err"]},
    ]
    assert data["unneeded_markers"] == [F]
    assert report.unmarked_uncachable(data) == [B]


def test_build_is_plain_json() -> None:
    """The document survives json round trip unchanged and names its schema."""
    data = build(
        scenario_recorder(),
        misses=[MissGroup("new program", NEW, (), 2, ("jit_a",))],
        workers=SCENARIO_WORKERS,
    )
    assert json.loads(json.dumps(data)) == data
    assert (data["schema"], data["version"]) == (report.SCHEMA, report.VERSION)
    assert data["misses"] == [
        {"reason": "new program", "cause": NEW, "parts": [], "count": 2, "examples": ["jit_a"]}
    ]
    assert set(data["workers"]) == {"gw0", "gw1"}


def test_hit_rate_none_without_cachable_lookups() -> None:
    """No cachable lookup: the rate is unknown (n/a), not 0%."""
    recorder = Recorder()
    recorder.begin("t::x", "call")
    compile_(recorder, "jit_cb", UNCACHABLE, 0.1)
    data = build(recorder)
    assert data["cachable"]["hit_rate"] is None
    assert report.hit_rate(Counts()) is None
    assert "(n/a)" in report.render(data, verbosity=-1, durations=10)[0]


def test_uncachable_outside_tests_is_not_blamed_on_a_test() -> None:
    """An uncachable compile at import or collection time cannot be fixed by marking a
    test: no marker hint, and it does not count as an unmarked test for strict mode."""
    recorder = Recorder()
    compile_(recorder, "jit_import_print", UNCACHABLE, 0.1)
    data = build(recorder)
    lines = report.render(data, verbosity=0, durations=10)
    assert not any(OUTSIDE_TESTS in line and "add @pytest.mark" in line for line in lines)
    assert report.unmarked_uncachable(data) == []


# -- render ----------------------------------------------------------------------------------


def test_render_quiet_is_one_line() -> None:
    """At -q: one summary line (hits/lookups and the rate, with one arithmetic: rate ==
    hits / lookups; the cachable set's compile time; what compiled outside the cachable
    set and its time; dir); a second only for a notice."""
    data = build(scenario_recorder())
    cachable, totals = data["cachable"], data["totals"]
    lines = report.render(data, verbosity=-1, durations=10)
    assert len(lines) == 1
    assert cachable["lookups"] == cachable["hits"] + cachable["misses"]
    assert cachable["hit_rate"] == cachable["hits"] / cachable["lookups"]
    prefix = f"jax cache: {cachable['hits']}/{cachable['lookups']} cachable lookups hit "
    assert lines[0].startswith(prefix + f"({100 * cachable['hit_rate']:.1f}%), ")
    inside = totals["compile_secs"] - totals["outside_secs"]
    assert f", {sec(inside)} compiling" in lines[0]
    assert totals["outside"] == totals["uncachable"] + totals["unwritten"] + totals["uncached"]
    outside = (
        f"; {totals['outside']} programs compiled outside the cachable set "
        f"({sec(totals['outside_secs'])}: {totals['uncachable']} uncachable"
    )
    assert outside in lines[0]
    assert lines[0].endswith("- /work/.jaxcache")

    noted = build(scenario_recorder(), notices=["cache dir not writable: using it read-only"])
    lines = report.render(noted, verbosity=-1, durations=10)
    assert len(lines) == 2
    assert lines[1] == "jax cache: cache dir not writable: using it read-only"


def test_render_default_sections() -> None:
    """At default verbosity: where the cache is, what compiled, the hit rate with the
    jax_errors share left out, times, store figures; no per-worker lines."""
    data = build(scenario_recorder())
    lines = report.render(data, verbosity=0, durations=10)
    totals, errors = data["totals"], data["errors"]
    assert lines[0] == "cache: /work/.jaxcache (from ini jax_cache_dir), pytest-jaxcache, readwrite"
    compiles = line_with(lines, "compiles: ")
    assert f"{totals['requests'] + totals['uncached']} programs" in compiles
    assert f"{totals['hits']} hits, {totals['misses']} misses" in compiles
    assert f"{totals['uncachable']} uncachable, {totals['uncached']} with the cache off" in compiles
    rate = line_with(lines, "hit rate: ")
    assert f"{100 * data['cachable']['hit_rate']:.1f}% of cachable lookups" in rate
    assert (
        f"excludes jax_errors tests: {errors['requests'] + errors['uncached']} programs, "
        f"{sec(errors['compile_secs'])} compiling" in rate
    )
    time_line = line_with(lines, "time: ")
    assert f"{sec(data['cachable']['saved_secs'])} saved (at least)" not in time_line
    assert f"{sec(data['cachable']['saved_secs'])} saved" in time_line
    store = line_with(lines, "before ->")
    assert (
        f"2 entries, {format_size(2048)} before -> 5 entries, {format_size(3 * 2**20)} after"
        in store
    )
    assert f"(cap {format_size(2**30)})" in store
    assert "1 evicted, 2 pruned" in store
    assert not any(line.startswith("worker ") for line in lines)
    assert not any(line.startswith("notice: ") for line in lines)
    assert F in line_with(lines, "marked jax_errors, yet every program was cachable")


def test_render_verbose_adds_worker_lines() -> None:
    """-v adds one line per worker, sorted, with its store figures."""
    data = build(scenario_recorder(), workers=SCENARIO_WORKERS)
    lines = report.render(data, verbosity=1, durations=10)
    workers = [line for line in lines if line.startswith("worker ")]
    assert workers == [
        "worker gw0: 6 tests, 4 hits, 5 written, 1 waited",
        "worker gw1: 1 tests, 0 hits, 0 written, 0 waited",
    ]


def _slowest_rows(lines: list[str]) -> list[str]:
    start = [i for i, line in enumerate(lines) if line.startswith("slowest compiling")]
    if not start:
        return []
    rows = []
    for line in lines[start[0] + 1 :]:
        if not line.startswith("  "):
            break
        rows.append(line)
    return rows


def test_render_durations() -> None:
    """--jax-cache-durations: 0 shows every test phase that compiled, N the N busiest
    (compile + load time), -1 none."""
    data = build(scenario_recorder())
    phases = [(t["nodeid"], p, c) for t in data["tests"] for p, c in t["phases"].items()]
    busiest = max(phases, key=lambda row: row[2]["compile_secs"] + row[2]["retrieval_secs"])

    everything = report.render(data, verbosity=0, durations=0)
    assert f"slowest compiling ({len(phases)} of {len(phases)} test phases):" in everything
    assert len(_slowest_rows(everything)) == len(phases)

    top = report.render(data, verbosity=0, durations=1)
    assert f"slowest compiling (1 of {len(phases)} test phases):" in top
    [row] = _slowest_rows(top)
    nodeid, phase, counts = busiest
    assert nodeid in row and phase in row
    assert sec(counts["compile_secs"] + counts["retrieval_secs"]) in row
    compiled = counts["misses"] + counts["uncachable"] + counts["uncached"]
    assert row.endswith(f"({compiled} compiled, {counts['hits']} from cache)")

    none = report.render(data, verbosity=0, durations=-1)
    assert not any(line.startswith("slowest compiling") for line in none)


def test_render_uncachable_hint_only_when_unmarked() -> None:
    """Uncachable tests are listed with their programs; only unmarked ones get the
    'add @pytest.mark.jax_errors' hint."""
    lines = report.render(build(scenario_recorder()), verbosity=0, durations=-1)
    assert any(line.startswith("uncachable compiles") for line in lines)
    unmarked = line_with(lines, f"  {B}")
    assert "jit_cb" in unmarked and "add @pytest.mark.jax_errors" in unmarked
    marked = line_with(lines, f"  {C}")
    assert "[jax_errors]: jit_err" in marked and "add @pytest.mark" not in marked


def _hits(stored: list[float | None]) -> dict[str, Any]:
    recorder = Recorder()
    recorder.begin("t::x", "call")
    for index, secs in enumerate(stored):
        compile_(recorder, f"jit_{index}", HIT, 0.01, stored=secs)
    compile_(recorder, "jit_new", MISS, 0.2)
    return build(recorder)


def test_render_saved_time_wording() -> None:
    """Saved time is 'unknown' when no hit knows its compile time, 'at least' when
    some don't, absent without hits."""
    unknown = report.render(_hits([None, None]), verbosity=0, durations=-1)
    assert ", compile time saved unknown" in line_with(unknown, "time: ")
    assert (
        "compile time saved unknown" in report.render(_hits([None]), verbosity=-1, durations=0)[0]
    )

    partial = _hits([None, 1.01])
    line = line_with(report.render(partial, verbosity=0, durations=-1), "time: ")
    assert f"{sec(partial['cachable']['saved_secs'])} saved (at least)" in line

    known = _hits([2.01])
    line = line_with(report.render(known, verbosity=0, durations=-1), "time: ")
    assert f"{sec(known['cachable']['saved_secs'])} saved;" in line

    line = line_with(report.render(_hits([]), verbosity=0, durations=-1), "time: ")
    assert "saved" not in line


def test_render_problems_and_store_extras() -> None:
    """Notices, lost workers, JAX cache warnings, store errors, accounting failures and
    unusual store figures are all shown."""
    recorder = scenario_recorder()
    recorder.cache_warnings.extend(["t::x (call): first warning", "t::y (call): second"])
    recorder.listener_errors.extend(["ValueError: a", "TypeError: b"])
    store = {
        "writes": 3,
        "repaired": 2,
        "waited_hits": 4,
        "skipped_writes": 5,
        "write_errors": 6,
        "lock_timeouts": 7,
        "errors": ["write jit_f-1: disk full", "e2", "e3", "e4"],
    }
    data = build(
        recorder,
        store=store,
        lost_workers=["gw7"],
        notices=["read-only cache /x does not exist: running uncached"],
        max_size_bytes=None,
        after=None,
        maintenance={"ran": False, "reason": "another session held the lock"},
    )
    lines = report.render(data, verbosity=0, durations=-1)
    notices = [line.removeprefix("notice: ") for line in lines if line.startswith("notice: ")]
    assert notices == [
        "read-only cache /x does not exist: running uncached",
        "worker gw7 crashed: its compile records are missing",
        "2 cache read/write warnings from JAX, e.g. t::x (call): first warning",
        "store: write jit_f-1: disk full",
        "store: e2",
        "store: e3",
        "accounting failed 2 times",
    ]
    store_line = line_with(lines, "before ->")
    assert "-> ? after (no cap)" in store_line
    assert "3 written, 0 evicted, 0 pruned, 2 repaired" in store_line
    extra = line_with(lines, "taken from another worker")
    for text in (
        "4 programs taken from another worker's compile",
        "5 writes skipped (read-only)",
        "6 writes failed",
        "7 lock waits timed out",
        "maintenance skipped: another session held the lock",
    ):
        assert text in extra
    quiet = report.render(data, verbosity=-1, durations=10)
    assert quiet[1:] == [f"jax cache: {notice}" for notice in notices]


def test_render_miss_reasons() -> None:
    """Miss explanations are listed with their count and example programs."""
    reason = "jaxlib 0.10.1 -> 0.10.2: every key changed"
    misses = [MissGroup(reason, ENVIRONMENT, (), 3, ("jit_a", "jit_b"))]
    lines = report.render(build(Recorder(), misses=misses), verbosity=0, durations=10)
    index = lines.index("why programs missed:")
    assert lines[index + 1].split() == [
        "3",
        "jaxlib",
        "0.10.1",
        "->",
        "0.10.2:",
        "every",
        "key",
        "changed",
        "(e.g.",
        "jit_a,",
        "jit_b)",
    ]
    assert not any(
        "why programs missed" in line
        for line in report.render(build(Recorder()), verbosity=0, durations=10)
    )


def test_unwritten_is_told_apart_from_host_callbacks() -> None:
    """A looked-up program that was not written is *uncachable* only when it has host
    callbacks; without any (a threshold kept it out) it is *unwritten*, outside the
    cachable set like the uncachable one (no hit rate without a cachable lookup), and no
    test is blamed; a compile that raised leaves nothing behind."""
    recorder = Recorder()
    recorder.begin("t::thresholds", "call")
    recorder.start_compile(host_callbacks=False)
    recorder.on_event(REQUEST_EVENT)
    recorder.on_duration(BACKEND_COMPILE_EVENT, 0.01, fun_name="jit(small)")
    recorder.begin("t::callbacks", "call")
    recorder.start_compile(host_callbacks=True)
    recorder.on_event(REQUEST_EVENT)
    recorder.on_duration(BACKEND_COMPILE_EVENT, 0.01, fun_name="jit(printing)")
    recorder.start_compile(host_callbacks=False)
    recorder.on_event(HIT_EVENT)  # a compile that raised before its closing event...
    recorder.start_compile(host_callbacks=None)  # ...is forgotten by the next one
    recorder.on_event(REQUEST_EVENT)
    recorder.on_event(WRITE_EVENT)
    recorder.on_duration(BACKEND_COMPILE_EVENT, 0.01, fun_name="jit(next)")
    recorder.end()
    assert [(c.name, c.outcome) for c in recorder.compiles] == [
        ("jit(small)", UNWRITTEN),
        ("jit(printing)", UNCACHABLE),
        ("jit(next)", MISS),
    ]
    data = build(recorder)
    assert data["totals"]["unwritten"] == 1 and data["totals"]["uncachable"] == 1
    assert [t["nodeid"] for t in data["uncachable_tests"]] == ["t::callbacks"]
    assert report.hit_rate(recorder.tests["t::thresholds"].total()) is None
    assert data["totals"]["outside"] == 2 and data["totals"]["lookups"] == 1
    assert data["totals"]["outside_secs"] == pytest.approx(0.02)
