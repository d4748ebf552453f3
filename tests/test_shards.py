"""Shards and the scheduler's plan, as pure functions: every test in exactly one shard,
whatever the collection and the history; balanced by predicted cost; the same on every
machine; and tests that would compile the same program kept together when the cache
lacks it."""

from __future__ import annotations

import json
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_jaxcache import history as history_module
from pytest_jaxcache.history import History, TestCost
from pytest_jaxcache.layout import is_entry_name
from pytest_jaxcache.scheduler import plan
from pytest_jaxcache.settings import Shard, parse_shard
from pytest_jaxcache.shards import LOAD_SECS, assign, predict, select, stable_shard

P = [f"jit_p{i}-{i:064x}" for i in range(6)]

nodeids = st.lists(
    st.text(alphabet="abcdefgh_/:[]0123456789.", min_size=1, max_size=30),
    unique=True,
    max_size=60,
)


@st.composite
def collections_and_histories(draw: st.DrawFn) -> tuple[list[str], History, set[str], set[str]]:
    tests = draw(nodeids)
    seen = draw(st.lists(st.sampled_from(tests), unique=True) if tests else st.just([]))
    costs = {
        nodeid: TestCost(
            wall_secs=draw(st.floats(0, 100)),
            compile_secs=draw(st.floats(0, 50)),
            programs=tuple(draw(st.lists(st.sampled_from(P), unique=True, max_size=3))),
        )
        for nodeid in seen
    }
    programs = {name: draw(st.floats(0, 20)) for name in P}
    present = set(draw(st.lists(st.sampled_from(P), unique=True)))
    marked = set(draw(st.lists(st.sampled_from(tests), unique=True) if tests else st.just([])))
    return tests, History(costs, programs), present, marked


@given(collections_and_histories(), st.integers(1, 7))
def test_every_test_is_in_exactly_one_shard(
    case: tuple[list[str], History, set[str], set[str]], count: int
) -> None:
    tests, past, present, marked = case
    chosen = [
        select(tests, Shard(index, count), past, present, marked)[0]
        for index in range(1, count + 1)
    ]
    flat = [nodeid for shard in chosen for nodeid in shard]
    assert sorted(flat) == sorted(tests) and len(flat) == len(set(flat))
    for shard in chosen:  # each shard keeps the collection's order
        assert shard == [nodeid for nodeid in tests if nodeid in set(shard)]
    again = [select(tests, Shard(i, count), past, present, marked)[0] for i in range(1, count + 1)]
    assert again == chosen  # deterministic


def test_shards_are_balanced_by_cost_longest_first() -> None:
    """Six known tests of 8, 7, 6, 5, 4, 3 s on two shards: 8+5+4 against 7+6+3."""
    costs = {f"t{secs}": float(secs) for secs in (8, 7, 6, 5, 4, 3)}
    shards = assign(costs, costs, set(), 2)
    loads = [sum(costs[t] for t, s in shards.items() if s == shard) for shard in (0, 1)]
    assert sorted(loads) == [16.0, 17.0]


def test_marked_tests_are_balanced_as_a_group_of_their_own() -> None:
    costs = {"a": 10.0, "b": 9.0, "e1": 1.0, "e2": 1.0}
    shards = assign(costs, costs, {"e1", "e2"}, 2)
    assert {shards["e1"], shards["e2"]} == {0, 1}


def test_unseen_tests_are_spread_by_a_stable_hash() -> None:
    shards = assign(["new[1]", "new[2]"], {}, set(), 3)
    assert shards == {name: stable_shard(name, 3) for name in ("new[1]", "new[2]")}


def test_a_test_costs_its_compiles_only_where_the_cache_lacks_them() -> None:
    """Cold last time (10 s, 9 of them compiling p0 and p1): warm now, it costs its
    1 s of running and two loads; with p1 gone, p1's compile time too."""
    past = History(
        {"t": TestCost(wall_secs=10.0, compile_secs=9.0, programs=(P[0], P[1]))},
        {P[0]: 4.0, P[1]: 5.0},
    )
    assert predict(["t"], past, {P[0], P[1]}) == {"t": pytest.approx(1.0 + 2 * LOAD_SECS)}
    assert predict(["t"], past, {P[0]}) == {"t": pytest.approx(1.0 + LOAD_SECS + 5.0)}
    assert predict(["u"], past, set()) == {}


@pytest.mark.parametrize("text", ["0/2", "3/2", "2", "a/b", "1/1001", "1/2/3"])
def test_a_shard_is_k_of_n(text: str) -> None:
    with pytest.raises(ValueError):
        parse_shard(text)
    assert parse_shard(" 2 / 4 ") == Shard(2, 4) and parse_shard("") is None


def test_the_plan_keeps_the_compilers_of_a_missing_program_together() -> None:
    """Tests that used p0 (now missing) form one unit, led by the first; a test whose
    program is present stands alone; the marked tests form one unit; costliest
    first."""
    past = History(
        {
            "a": TestCost(wall_secs=5.0, compile_secs=4.0, programs=(P[0],)),
            "b": TestCost(wall_secs=5.0, compile_secs=4.0, programs=(P[0],)),
            "c": TestCost(wall_secs=1.0, programs=(P[1],)),
            "d": TestCost(wall_secs=2.0),
            "e": TestCost(wall_secs=1.0, errors=True),
            "f": TestCost(wall_secs=1.0, errors=True),
        },
        {P[0]: 4.0},
    )
    collection = ["a", "b", "c", "d", "e", "f"]
    units = plan(collection, past, {P[1]}, {"e", "f"}, workers=1)
    names = [[collection[i] for i in unit.indices] for unit in units]
    assert names[0] == ["a", "b"]
    assert ["e", "f"] in names and ["c"] in names and ["d"] in names
    assert sorted(i for unit in units for i in unit.indices) == list(range(6))
    assert [unit.cost for unit in units] == sorted((unit.cost for unit in units), reverse=True)
    assert units[0].cost == pytest.approx(1 + 1 + 4 + LOAD_SECS)  # p0 compiled once
    split = plan(collection, past, {P[1]}, {"e", "f"}, workers=4)  # a+b > a fair share
    assert [[collection[i] for i in unit.indices] for unit in split][:2] == [["a"], ["b"]]


@given(
    st.binary(max_size=2048)
    | st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=15,
    ).map(lambda value: json.dumps({"version": 1, "tests": value, "programs": value}).encode())
)
def test_a_history_of_anything_reads_as_bounded_records(data: bytes) -> None:
    """History is outside input (a restored cache): whatever it holds, what is read is
    a set of records with bounded numbers and entry names."""
    past = history_module.parse(data)
    for cost in past.tests.values():
        assert 0 <= cost.wall_secs <= history_module.MAX_SECS
        assert all(is_entry_name(name) for name in cost.programs)
    assert all(0 <= secs <= history_module.MAX_SECS for secs in past.programs.values())
    assert all(0 <= cost.at <= history_module.MAX_TIME for cost in past.tests.values())


def _at_the_caps(item: str, per_item: int) -> bytes:
    """A history document of as many ``item`` s (each ``per_item`` commas and colons)
    as the caps let through, in place of the tests."""
    count = history_module.MAX_ITEMS // per_item - 10
    body = ",".join(item.format(i=i) for i in range(count))
    return ('{"version":1,"programs":{},"tests":{' + body + "}}").encode()


@pytest.mark.parametrize(
    "data",
    [
        _at_the_caps('"{i}":{{}}', 2),
        _at_the_caps('"{i}":{{"a":{i}}}', 3),
        _at_the_caps('"{i}":{{"programs":["' + "a" * 20 + '"]}}', 3),
        json.dumps(
            {"version": 1, "tests": {"t": {"programs": ["a" * 17] * 299_000}}, "programs": {}}
        ).encode(),
    ],
    ids=["empty records", "small records", "strings", "one long list"],
)
def test_a_history_at_its_caps_parses_in_bounded_memory(data: bytes) -> None:
    """Whatever shape a history file has, parsing what the caps let through makes at
    most a few tens of MB of objects (a 32 MB file of short strings once took 430 MB);
    one just over them is not parsed at all."""
    assert history_module.within_caps(data)
    tracemalloc.start()
    try:
        history_module.parse(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"{peak} bytes"
    assert not history_module.within_caps(data + b"," * (history_module.MAX_ITEMS // 10))


def test_each_tests_newest_record_wins_a_merge() -> None:
    older = History({"a": TestCost(1.0, at=10.0), "b": TestCost(2.0, at=30.0)})
    newer = History({"b": TestCost(3.0, at=20.0), "c": TestCost(4.0, at=20.0)})
    walls = {nodeid: cost.wall_secs for nodeid, cost in older.merged(newer).tests.items()}
    assert walls == {"a": 1.0, "b": 2.0, "c": 4.0}


def test_a_history_too_large_for_the_caps_keeps_the_newest_records() -> None:
    """A suite whose records do not fit the caps keeps those of the tests that ran
    last, and the programs they used: what is written can always be read back."""
    name = "jit_f-" + "a" * 64
    tests = {
        f"tests/test_x.py::test_{i}": TestCost(1.0, programs=(name,), at=float(i))
        for i in range(40_000)
    }
    data = History(tests, {name: 1.0}).to_json()
    back = history_module.parse(data)
    assert history_module.within_caps(data) and 0 < len(back.tests) < len(tests)
    oldest_kept = min(cost.at for cost in back.tests.values())
    assert set(back.tests) == {n for n, c in tests.items() if c.at >= oldest_kept}
    assert back.programs == {name: 1.0}
