"""Unit tests of the snapshot (every figure, computed once) and of its renderers (the
terminal section and the quiet line), over recorders fed JAX's real event names. Every
snapshot built here goes through the invariant checker."""

from __future__ import annotations

import json
from typing import Any

import pytest
from recording import (
    ERR,
    A,
    B,
    C,
    E,
    F,
    Step,
    build,
    compile_,
    expected_counts,
    play,
    share,
)

from pytest_jaxcache import reasons, snapshot
from pytest_jaxcache.formats import format_secs, format_size
from pytest_jaxcache.maintenance import MaintenanceResult
from pytest_jaxcache.reasons import HIT, MISS, UNCACHABLE, UNCACHED, Miss
from pytest_jaxcache.recorder import (
    BACKEND_COMPILE_EVENT,
    OUTSIDE_PHASE,
    OUTSIDE_TESTS,
    REQUEST_EVENT,
    Counts,
    Recorder,
)
from pytest_jaxcache.stats import StoreStats
from pytest_jaxcache.terminal import render

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


def recorded(steps: list[Step] = SCENARIO, worker: str = "") -> Recorder:
    recorder = Recorder(worker=worker)
    recorder.begin(NO_COMPILES, "setup")
    recorder.end("passed")
    play(recorder, steps)
    return recorder


def line_with(lines: list[str], text: str) -> str:
    found = [line for line in lines if text in line]
    assert len(found) == 1, (text, lines)
    return found[0]


# -- figures ---------------------------------------------------------------------------------


def test_totals_cachable_and_errors() -> None:
    """Totals cover everything; the cachable set (and its hit rate) leaves out tests
    marked jax_errors, which get their own section."""
    data = build(recorded())
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
        assert data[section]["programs"] == expected.compiles
    assert data["cachable"]["hit_rate"] != data["totals"]["hit_rate"]


def test_every_test_is_listed_and_every_compile_once() -> None:
    """tests[] lists every test (those that compiled nothing too, with their clock);
    compiles[] every program; uncachable tests list each program once."""
    data = build(recorded())
    assert [t["nodeid"] for t in data["tests"]] == [NO_COMPILES, OUTSIDE_TESTS, A, B, C, E, F]
    by_id = {t["nodeid"]: t for t in data["tests"]}
    assert by_id[NO_COMPILES]["phases"] == {} and by_id[NO_COMPILES]["outcome"] == "passed"
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
    assert snapshot.unmarked_uncachable(data) == [B]


def test_the_snapshot_is_plain_json() -> None:
    """The document survives a JSON round trip unchanged and names its schema."""
    data = build(recorded())
    assert json.loads(json.dumps(data)) == data
    assert (data["schema"], data["version"]) == (snapshot.SCHEMA, snapshot.VERSION)


def test_misses_are_counted_once_per_compile_across_workers() -> None:
    """Each worker explains its own misses; the snapshot gives each missed compile the
    reason its own worker found, once: the per-reason counts add up to the misses
    (never doubled by the controller explaining them again)."""
    gw0, gw1 = Recorder(worker="gw0"), Recorder(worker="gw1")
    gw0.begin("t.py::a", "call")
    compile_(gw0, "jit_f", MISS, 0.1)
    compile_(gw0, "jit_g", MISS, 0.1)
    gw1.begin("t.py::b", "call")
    compile_(gw1, "jit_f", MISS, 0.1)  # the same key, compiled again (no single flight)
    new = Miss("jit_f-0123", reasons.NEW_PROGRAM, reasons.NEW)
    changed = Miss("jit_g-0123", reasons.describe_parts(["computation"]), reasons.KEY_PARTS)
    data = build(
        {
            "": share(Recorder()),
            "gw0": share(gw0, misses=[new, changed]),
            "gw1": share(gw1, misses=[new]),
        }
    )
    assert [(m["reason"], m["count"]) for m in data["misses"]] == [
        (reasons.NEW_PROGRAM, 2),
        (reasons.describe_parts(["computation"]), 1),
    ]
    assert sum(m["count"] for m in data["misses"]) == data["totals"]["misses"] == 3


def test_misses_nobody_caused_name_their_tests() -> None:
    """Misses of a cause no code change explains (constants, lowering) name the tests
    they happened in; other causes do not."""
    recorder = Recorder()
    recorder.begin("t.py::test_random", "call")
    compile_(recorder, "jit_noise", MISS, 0.1)
    recorder.begin("t.py::test_new", "call")
    compile_(recorder, "jit_fresh", MISS, 0.1)
    data = build(
        recorder,
        misses=[
            Miss("jit_noise-0123", reasons.CONSTANTS_DIFFER, reasons.CONSTANTS, ("computation",)),
            Miss("jit_fresh-0123", reasons.NEW_PROGRAM, reasons.NEW),
        ],
    )
    by_cause = {m["cause"]: m for m in data["misses"]}
    assert by_cause[reasons.CONSTANTS]["tests"] == ["t.py::test_random"]
    assert by_cause[reasons.NEW]["tests"] == []
    lines = render(data, verbosity=0)
    assert line_with(lines, "in t.py::test_random").strip() == "in t.py::test_random"


def test_hits_say_where_their_entries_came_from() -> None:
    """On a cold run, hits come from entries written earlier in this session (another
    worker or test) or from the remote: the snapshot counts each source, the section
    says so; a warm run's hits from earlier sessions need no word."""
    recorder = Recorder()
    recorder.begin("t.py::a", "call")
    compile_(recorder, "jit_f", HIT, 0.01, 0.2, source=reasons.THIS_SESSION)
    compile_(recorder, "jit_g", HIT, 0.01, 0.2, source=reasons.REMOTE)
    compile_(recorder, "jit_h", HIT, 0.01, 0.2, source=reasons.EARLIER)
    data = build(recorder)
    assert data["hit_sources"] == {
        reasons.EARLIER: 1,
        reasons.THIS_SESSION: 1,
        reasons.REMOTE: 1,
    }
    hits = line_with(render(data, verbosity=0), "hits: ")
    assert "1 from entries written earlier in this session" in hits
    assert "1 from the remote" in hits

    warm = Recorder()
    warm.begin("t.py::a", "call")
    compile_(warm, "jit_h", HIT, 0.01, 0.2, source=reasons.EARLIER)
    assert not any(line.startswith("hits: ") for line in render(build(warm), verbosity=0))


def test_not_written_groups_carry_their_remedy() -> None:
    """Programs not written are grouped by JAX's reason, with a remedy where one
    exists: host callbacks on JAX 0.10 (0.11 writes them), a threshold set too high."""
    recorder = Recorder()
    recorder.begin("t.py::a", "call")
    recorder.start_compile(host_callbacks=True)
    recorder.on_event(REQUEST_EVENT)
    recorder.on_duration(BACKEND_COMPILE_EVENT, 0.5, fun_name="jit(printing)")
    recorder.start_compile(host_callbacks=False)
    recorder.on_event(REQUEST_EVENT)
    recorder.note_unwritten(reasons.MIN_COMPILE_TIME, "1")
    recorder.on_duration(BACKEND_COMPILE_EVENT, 0.01, fun_name="jit(small)")
    report = share(recorder)
    from pytest_jaxcache.environment import InstallFacts

    report.installed = InstallFacts("pytest-jaxcache store", "0.10.2", "0.10.2")
    data = snapshot.build({"": report}, cache=snapshot.CacheState("/c", "default", "readwrite"))
    assert [(g["code"], g["count"], bool(g["remedy"])) for g in data["not_written"]] == [
        (reasons.HOST_CALLBACKS, 1, True),
        (reasons.MIN_COMPILE_TIME, 1, True),
    ]
    report.installed = InstallFacts("pytest-jaxcache store", "0.12.0", "0.12.0")
    newer = snapshot.build({"": report}, cache=snapshot.CacheState("/c", "default", "readwrite"))
    assert newer["not_written"][0]["remedy"] == ""
    lines = render(data, verbosity=0)
    assert line_with(lines, "remedy: JAX 0.11")


def test_no_cachable_lookup_has_no_rate() -> None:
    """No cachable lookup: the rate is unknown (n/a), not 0%."""
    recorder = Recorder()
    recorder.begin("t::x", "call")
    compile_(recorder, "jit_cb", UNCACHABLE, 0.1)
    data = build(recorder)
    assert data["cachable"]["hit_rate"] is None
    assert snapshot.hit_rate(Counts()) is None
    assert "(n/a)" in render(data, verbosity=-1)[0]


def test_uncachable_outside_tests_is_not_blamed_on_a_test() -> None:
    """An uncachable compile at import or collection time cannot be fixed by marking a
    test: no marker hint, and it does not count as an unmarked test for strict mode."""
    recorder = Recorder()
    compile_(recorder, "jit_import_print", UNCACHABLE, 0.1)
    data = build(recorder)
    lines = render(data, verbosity=0)
    assert not any(OUTSIDE_TESTS in line and "add @pytest.mark" in line for line in lines)
    assert snapshot.unmarked_uncachable(data) == []


# -- surfaces --------------------------------------------------------------------------------


def test_the_quiet_line_and_the_section_count_the_same_set() -> None:
    """At -q one line; it and the section's hit-rate line show the same numbers (the
    lookups outside jax_errors tests) in the same words, and say what they count."""
    data = build(recorded())
    cachable, totals, errors = data["cachable"], data["totals"], data["errors"]
    [quiet] = render(data, verbosity=-1)
    rate = line_with(render(data, verbosity=0), "hit rate: ")
    counted = (
        f"{cachable['hits']}/{cachable['lookups']} lookups hit "
        f"({100 * cachable['hit_rate']:.1f}%) outside jax_errors tests "
        f"({errors['programs']} programs there, {format_secs(errors['compile_secs'])} compiling)"
    )
    assert quiet.startswith(f"jax cache: {counted}, ")
    assert rate == f"hit rate: {counted}"
    assert f", {format_secs(totals['inside_secs'])} compiling" in quiet
    assert f"; {totals['outside']} programs compiled outside the cachable set" in quiet
    assert quiet.endswith("- /work/.jaxcache")

    noted = build(recorded(), notices=("cache dir not writable: using it read-only",))
    assert render(noted, verbosity=-1)[1:] == [
        "jax cache: cache dir not writable: using it read-only"
    ]


def test_without_jax_errors_tests_nothing_is_said_of_them() -> None:
    recorder = Recorder()
    recorder.begin("t::x", "call")
    compile_(recorder, "jit_a", HIT, 0.01, 0.5)
    [quiet] = render(build(recorder), verbosity=-1)
    assert "jax_errors" not in quiet and "1/1 lookups hit (100.0%)," in quiet


def test_the_default_section() -> None:
    """Where the cache is, what compiled (every program), the hit rate, times, store
    figures on one line; no per-worker lines; no notices."""
    data = build(recorded())
    lines = render(data, verbosity=0)
    totals = data["totals"]
    assert (
        lines[0]
        == "cache: /work/.jaxcache (from ini jax_cache_dir), none (JAX never imported), readwrite"
    )
    assert line_with(lines, "compiles: ") == (
        f"compiles: {len(SCENARIO)} programs: {totals['hits']} hits, {totals['misses']} "
        f"misses, {totals['uncachable']} uncachable, 0 not written, 1 with the cache off"
    )
    time_line = line_with(lines, "time: ")
    assert f"{format_secs(data['cachable']['saved_secs'])} saved" in time_line
    store = line_with(lines, "before ->")
    assert (
        f"2 entries, {format_size(2048)} before -> 5 entries, {format_size(3 * 2**20)} after"
        in store
    )
    assert f"(cap {format_size(2**30)})" in store and "1 evicted, 2 pruned" in store
    assert not any(line.startswith(("worker ", "notice: ")) for line in lines)
    assert F in line_with(lines, "marked jax_errors, yet every program was cachable")


def test_verbose_adds_worker_lines() -> None:
    """-v adds one line per worker, sorted, with its figures."""
    gw0 = recorded(worker="gw0")
    data = build(
        {
            "": share(Recorder()),
            "gw1": share(Recorder(worker="gw1"), store=StoreStats(hits=0)),
            "gw0": share(gw0, store=StoreStats(hits=4, writes=5, waited_hits=1)),
        }
    )
    workers = [line for line in render(data, verbosity=1) if line.startswith("worker ")]
    tests = sum(t.nodeid != OUTSIDE_TESTS for t in gw0.tests.values())
    assert workers == [
        f"worker gw0: {tests} tests, 4 hits, 5 written, 1 waited",
        "worker gw1: 0 tests, 0 hits, 0 written, 0 waited",
    ]


def _rows(lines: list[str], title: str) -> list[str]:
    start = [i for i, line in enumerate(lines) if line.startswith(title)]
    assert len(start) <= 1
    rows = []
    for line in lines[start[0] + 1 :] if start else []:
        if not line.startswith("  "):
            break
        rows.append(line)
    return rows


def test_slowest_compiling_lists_only_phases_that_compiled() -> None:
    """--jax-cache-durations: the phases that compiled, busiest first (0: all, N: N,
    -1: none); phases that only loaded are listed apart, under slowest loading."""
    recorder = Recorder()
    recorder.begin("t.py::loads", "call")
    for index in range(3):
        compile_(recorder, f"jit_{index}", HIT, 0.2, 1.0)
    recorder.begin("t.py::compiles", "call")
    compile_(recorder, "jit_big", MISS, 0.5)
    recorder.begin("t.py::small", "setup")
    compile_(recorder, "jit_small", MISS, 0.1)
    recorder.end("passed")

    every = render(build(recorder, durations=0), verbosity=0)
    assert "slowest compiling (2 of 2 test phases):" in every
    compiling = _rows(every, "slowest compiling")
    assert [row.split()[2] for row in compiling] == ["t.py::compiles", "t.py::small"]
    assert compiling[0].endswith("(1 compiled, 0 from cache)")
    assert f"{format_secs(0.5):>8}" in compiling[0]
    loading = _rows(every, "slowest loading")
    assert [row.split()[2] for row in loading] == ["t.py::loads"]
    assert loading[0].endswith("(0 compiled, 3 from cache)")

    top = render(build(recorder, durations=1), verbosity=0)
    assert "slowest compiling (1 of 2 test phases):" in top
    none = render(build(recorder, durations=-1), verbosity=0)
    assert not any(line.startswith("slowest") for line in none)


def test_uncachable_hint_only_when_unmarked() -> None:
    lines = render(build(recorded(), durations=-1), verbosity=0)
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


def test_saved_time_wording() -> None:
    """Saved time is 'unknown' when no hit knows its compile time, 'at least' when
    some don't, absent without hits."""
    unknown = render(_hits([None, None]), verbosity=0)
    assert ", compile time saved unknown" in line_with(unknown, "time: ")
    partial = _hits([None, 1.01])
    line = line_with(render(partial, verbosity=0), "time: ")
    assert f"{format_secs(partial['cachable']['saved_secs'])} saved (at least)" in line
    known = _hits([2.01])
    line = line_with(render(known, verbosity=0), "time: ")
    assert f"{format_secs(known['cachable']['saved_secs'])} saved;" in line
    assert "saved" not in line_with(render(_hits([]), verbosity=0), "time: ")


def test_problems_and_store_extras_on_one_store_line() -> None:
    """Notices, lost workers, JAX cache warnings, store errors and accounting failures
    are shown; unusual store figures, read-only skips and a skipped maintenance go on
    the one store line."""
    recorder = recorded()
    recorder.cache_warnings.extend(["t::x (call): first warning", "t::y (call): second"])
    recorder.listener_errors.extend(["ValueError: a", "TypeError: b"])
    store = StoreStats(
        writes=3,
        repaired=2,
        waited_hits=4,
        skipped_writes=5,
        write_errors=6,
        lock_timeouts=7,
        errors=["write jit_f-1: disk full", "e2", "e3", "e4"],
    )
    data = build(
        recorder,
        store=store,
        lost_workers=["gw7"],
        notices=("read-only cache /x does not exist: running uncached",),
        max_size_bytes=None,
        after=None,
        maintenance=MaintenanceResult(ran=False, reason="another session held the lock"),
    )
    lines = render(data, verbosity=0)
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
    [store_line] = [line for line in lines if line.startswith("store: ")]
    assert "-> ? after (no cap)" in store_line
    assert "3 written, 0 evicted, 0 pruned, 2 repaired" in store_line
    for text in (
        "4 programs taken from another worker's compile",
        "5 writes skipped (read-only)",
        "6 writes failed",
        "7 lock waits timed out",
        "maintenance skipped: another session held the lock",
    ):
        assert text in store_line
    assert render(data, verbosity=-1)[1:] == [f"jax cache: {notice}" for notice in notices]


def test_miss_reasons_are_listed_with_examples() -> None:
    recorder = Recorder()
    recorder.begin("t::x", "call")
    for name in ("jit_a", "jit_b", "jit_a"):
        compile_(recorder, name, MISS, 0.1)
    reason = "jaxlib 0.10.1 -> 0.10.2: every key changed"
    data = build(
        recorder,
        misses=[Miss(f"{n}-0123", reason, reasons.ENVIRONMENT) for n in ("jit_a", "jit_b")],
    )
    lines = render(data, verbosity=0)
    index = lines.index("why programs missed:")
    assert lines[index + 1] == f"      3 {reason} (e.g. jit_a, jit_b)"
    assert "why programs missed:" not in render(build(Recorder()), verbosity=0)
