"""Tests marked ``jax_errors``, end to end: real pytest sessions in subprocesses, real JAX
on CPU, real xdist workers. Host callbacks found uncachable (marked or not), marked tests
run after the rest, the ``pytest_jaxcache_set_errors`` switch (a Torax-style global and
equinox's ``EQX_ON_ERROR``) never lets a program traced under one setting run under the
other, ``--jax-cache-strict``, and ``jax_no_cache``."""

from __future__ import annotations

import itertools
import re
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import CALLBACKS_CACHED, RunJax, Session, entries, write_files


def verbose_order(result: pytest.RunResult) -> list[str]:
    """Nodeids in the order ``-v`` (without xdist) reported them as passed."""
    order: list[str] = []
    for line in result.outlines:
        match = re.match(r"^(\S+::\S+) PASSED", line)
        if match:
            order.append(match.group(1))
    return order


# Where JAX decides whether programs with host callbacks are cached, the expectation is a
# parameter of the test, each value skipped under the JAX it does not describe.
UNCACHABLE_CALLBACKS = pytest.mark.skipif(
    CALLBACKS_CACHED, reason="JAX 0.11+ caches host callbacks"
)
CACHED_CALLBACKS = pytest.mark.skipif(
    not CALLBACKS_CACHED, reason="JAX <= 0.10 never writes host callbacks"
)


def outcome_counts(report: dict[str, Any], marked: bool) -> Counter[str]:
    """Outcomes of the report's compile records of marked (or unmarked) tests."""
    marked_ids = {t["nodeid"] for t in report["tests"] if "jax_errors" in t["markers"]}
    return Counter(c["outcome"] for c in report["compiles"] if (c["test"] in marked_ids) == marked)


def unmarked_uncachable(report: dict[str, Any]) -> list[str]:
    """Tests (not work at import or collection) listed uncachable without the marker."""
    return [
        t["nodeid"]
        for t in report["uncachable_tests"]
        if not t["marked"] and not t.get("outside", False)
    ]


# -- 1: real host callbacks are found, marked or not ----------------------------------------

CALLBACKS = """
    import equinox as eqx
    import jax
    import numpy as np
    from jax.experimental import io_callback


    def f_debug_callback(x):
        jax.debug.callback(lambda v: None, x)
        return x + 1


    def f_debug_print(x):
        jax.debug.print("x={x}", x=x)
        return x + 1


    def f_io_callback(x):
        shape = jax.ShapeDtypeStruct(x.shape, x.dtype)
        return io_callback(lambda v: np.asarray(v), shape, x) + 1


    def f_pure_callback(x):
        shape = jax.ShapeDtypeStruct(x.shape, x.dtype)
        return jax.pure_callback(lambda v: np.asarray(v), shape, x) + 1


    def f_error_if(x):
        return eqx.error_if(x, x < 0, "negative") + 1


    def f_plain(x):
        return x * 2 + 1


    WITH_CALLBACKS = [f_debug_callback, f_debug_print, f_io_callback, f_pure_callback, f_error_if]
    X = np.ones(3, np.float32)
"""

CALLBACK_TESTS = """
    import jax
    import numpy as np
    import pytest
    from callbacks import WITH_CALLBACKS, X, f_plain
    {mark}

    @pytest.mark.parametrize("fn", WITH_CALLBACKS, ids=lambda fn: fn.__name__)
    def test_callback(fn):
        assert float(np.asarray(jax.jit(fn)(X))[0]) == 2.0


    def test_plain():
        assert float(np.asarray(jax.jit(f_plain)(X))[0]) == 3.0
"""

CALLBACK_NAMES = [
    "f_debug_callback",
    "f_debug_print",
    "f_io_callback",
    "f_pure_callback",
    "f_error_if",
]


UNMARKED = {f"test_unmarked.py::test_callback[{n}]": f"jit({n})" for n in CALLBACK_NAMES}
MARKED = {f"test_marked.py::test_callback[{n}]": f"jit({n})" for n in CALLBACK_NAMES}


def _callback_session(pytester: pytest.Pytester, run_jax: RunJax) -> Session:
    """Every kind of host callback, in unmarked tests and in marked ones; the partition
    between cachable and errors counts follows the marker, whatever JAX does with
    callbacks."""
    write_files(
        pytester.path,
        {
            "callbacks.py": CALLBACKS,
            "test_unmarked.py": CALLBACK_TESTS.format(mark=""),
            "test_marked.py": CALLBACK_TESTS.format(mark="pytestmark = pytest.mark.jax_errors"),
        },
    )
    session = run_jax(f"--jax-cache-dir={pytester.path / 'cache'}")
    result, report = session
    result.assert_outcomes(passed=12)
    for group, is_marked in ((report["cachable"], False), (report["errors"], True)):
        counts = outcome_counts(report, marked=is_marked)
        assert group["hits"] == counts["hit"], (group, counts)
        assert group["misses"] == counts["miss"], (group, counts)
        assert group["uncachable"] == counts["uncachable"], (group, counts)
    assert report["errors"]["requests"] == 6  # one program per marked test
    return session


@CACHED_CALLBACKS
def test_host_callbacks_are_cached_by_jax_0_11(pytester: pytest.Pytester, run_jax: RunJax) -> None:
    """JAX 0.11+ caches programs with host callbacks: nothing is uncachable, and every
    marked test (its programs all cachable) is listed as a marker that may be unneeded."""
    _, report = _callback_session(pytester, run_jax)
    assert report["uncachable_tests"] == []
    assert set(report["unneeded_markers"]) == {*MARKED, "test_marked.py::test_plain"}


@UNCACHABLE_CALLBACKS
def test_host_callbacks_are_found_uncachable_marked_or_not(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """jax.debug.callback, jax.debug.print, io_callback, pure_callback and equinox.error_if:
    in an unmarked test each is listed as uncachable with its program and a 'not marked'
    hint; the same tests under a module-level ``pytestmark`` are listed as marked and stay
    out of the cachable counts. A marked test with only cachable programs is listed as a
    marker that may be unneeded."""
    result, report = _callback_session(pytester, run_jax)
    unmarked, marked = UNMARKED, MARKED
    listed = {t["nodeid"]: t for t in report["uncachable_tests"]}
    assert set(listed) == set(unmarked) | set(marked), listed
    for nodeid, program in unmarked.items():
        assert listed[nodeid]["marked"] is False
        assert listed[nodeid]["programs"] == [program]
        assert any(
            line.strip().startswith(f"{nodeid}: {program}") and "not marked" in line
            for line in result.outlines
        ), nodeid
    for nodeid, program in marked.items():
        assert listed[nodeid]["marked"] is True
        assert listed[nodeid]["programs"] == [program]
        assert f"  {nodeid} [jax_errors]: {program}" in result.outlines
    assert report["cachable"]["uncachable"] == 5
    assert report["errors"]["uncachable"] == 5
    # The hit rate counts only cachable lookups of unmarked tests: f_plain, written once.
    assert report["cachable"]["misses"] == 1
    assert report["cachable"]["hit_rate"] == 0.0
    assert report["errors"]["hits"] == 1  # the marked test_plain found f_plain
    assert report["unneeded_markers"] == ["test_marked.py::test_plain"]
    assert any("the marker may be unneeded" in line for line in result.outlines)


# -- 2: ordering ---------------------------------------------------------------------------

ORDER_SUITE = {
    "test_order.py": """
        import pytest


        @pytest.mark.jax_errors
        def test_m1():
            pass


        def test_u1():
            pass


        @pytest.mark.jax_errors
        def test_m2():
            pass


        def test_u2():
            pass


        @pytest.mark.jax_errors
        class TestMarkedClass:
            def test_c1(self):
                pass

            def test_c2(self):
                pass


        class TestPlainClass:
            def test_p1(self):
                pass
    """,
    "test_order_module.py": """
        import pytest

        pytestmark = pytest.mark.jax_errors


        def test_a():
            pass


        def test_b():
            pass
    """,
    "test_order_plain.py": """
        def test_z():
            pass
    """,
    "reverser.py": """
        import pytest


        # Stands in for pytest-randomly: reorders every item before the partition.
        @pytest.hookimpl(tryfirst=True)
        def pytest_collection_modifyitems(items):
            items.reverse()
    """,
}

# pytest's collection order of ORDER_SUITE, with whether each test is marked.
COLLECTED = [
    ("test_order.py::test_m1", True),
    ("test_order.py::test_u1", False),
    ("test_order.py::test_m2", True),
    ("test_order.py::test_u2", False),
    ("test_order.py::TestMarkedClass::test_c1", True),
    ("test_order.py::TestMarkedClass::test_c2", True),
    ("test_order.py::TestPlainClass::test_p1", False),
    ("test_order_module.py::test_a", True),
    ("test_order_module.py::test_b", True),
    ("test_order_plain.py::test_z", False),
]


def partition(collected: list[tuple[str, bool]]) -> list[str]:
    """The expected run order: unmarked tests, then marked ones, each group in order."""
    return [n for n, marked in collected if not marked] + [n for n, marked in collected if marked]


def test_marked_tests_run_last_in_stable_order(pytester: pytest.Pytester, run_jax: RunJax) -> None:
    """Test-, class- and module-level marks: unmarked tests run first and marked ones
    after, each group in collection order (a module [m1, u1, m2, u2] runs u1, u2, m1, m2);
    the markers pass ``--strict-markers``. After a plugin that reverses the items (as
    pytest-randomly shuffles them), the partition still holds and each group keeps the
    reversed order."""
    write_files(pytester.path, ORDER_SUITE)

    result, _ = run_jax("-v", "--strict-markers", "-p", "no:xdist")
    result.assert_outcomes(passed=len(COLLECTED))
    order = verbose_order(result)
    assert order == partition(COLLECTED)
    assert order[:2] == ["test_order.py::test_u1", "test_order.py::test_u2"]
    assert order.index("test_order.py::test_m1") < order.index("test_order.py::test_m2")

    result, _ = run_jax("-v", "--strict-markers", "-p", "no:xdist", "-p", "reverser")
    result.assert_outcomes(passed=len(COLLECTED))
    assert verbose_order(result) == partition(COLLECTED[::-1])


# -- 3: a Torax-style global switch ----------------------------------------------------------

TORAX_SUITE = {
    "checks.py": """
        import os
        from pathlib import Path

        import jax
        import jax.numpy as jnp
        import numpy as np

        ERRORS = {"on": False}
        FIRED = []


        def log(line):
            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            with open(Path(__file__).with_name(f"log-{worker}.txt"), "a") as handle:
                handle.write(line + "\\n")


        def _record(x):
            FIRED.append(float(x[0]))


        @jax.jit  # one function object for every test: only in-memory caches could leak
        def step(x):
            if ERRORS["on"]:  # read at trace time, like torax's enable_errors
                jax.debug.callback(_record, x)
            return jnp.sin(x) * 2.0


        def run_and_count():
            before = len(FIRED)
            jax.block_until_ready(step(np.ones(3, np.float32)))
            jax.effects_barrier()
            return len(FIRED) - before
    """,
    "conftest.py": """
        import checks


        def pytest_jaxcache_set_errors(config, enabled):
            checks.ERRORS["on"] = enabled
            checks.log(f"switch {int(enabled)}")
    """,
    "test_torax.py": """
        import pytest

        import checks


        def check(name, marked):
            fired = checks.run_and_count()
            checks.log(f"test {name} {int(marked)} {fired}")
            assert fired == (1 if marked else 0)


        def test_u1():
            check("u1", False)


        @pytest.mark.jax_errors
        def test_m1():
            check("m1", True)


        def test_u2():
            check("u2", False)


        @pytest.mark.jax_errors
        def test_m2():
            check("m2", True)


        def test_u3():
            check("u3", False)


        @pytest.mark.jax_errors
        def test_m3():
            check("m3", True)


        @pytest.mark.jax_errors
        def test_m_leak_control():
            # Flip the global WITHOUT clearing JAX's caches: the traced program keeps its
            # callback. This is the leak that the plugin's clear after a switch prevents.
            check("leak", True)
            checks.ERRORS["on"] = False
            try:
                assert checks.run_and_count() == 1
            finally:
                checks.ERRORS["on"] = True
    """,
}
TORAX_UNMARKED = ["u1", "u2", "u3"]
TORAX_MARKED = ["m1", "m2", "m3", "leak"]


def read_logs(base: Path) -> dict[str, list[tuple[str, ...]]]:
    """Per process: ('switch', '0'|'1') and ('test', name, marked, fired) in order;
    the logs are removed so that the next run starts empty."""
    logs = {}
    for path in sorted(base.glob("log-*.txt")):
        logs[path.stem[4:]] = [tuple(line.split()) for line in path.read_text().splitlines()]
        path.unlink()
    return logs


def switching_log(tests: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The log of a process that ran ``tests`` in that order: the hook before the first
    test and exactly at each crossing between marked and unmarked tests."""
    log: list[tuple[str, ...]] = []
    for marked, run in itertools.groupby(tests, key=lambda test: test[2]):
        log += [("switch", marked), *run]
    return log


def check_switching(logs: dict[str, list[tuple[str, ...]]]) -> None:
    """In every process the hook switched before the first test and exactly at each
    crossing between marked and unmarked tests; callbacks fired exactly in marked tests;
    every test ran once."""
    names = []
    for worker, lines in logs.items():
        tests = [line for line in lines if line[0] == "test"]
        assert tests, (worker, lines)
        assert lines == switching_log(tests), worker
        assert [fired for _, _, _, fired in tests] == [marked for _, _, marked, _ in tests], lines
        names += [name for _, name, _, _ in tests]
    assert sorted(names) == sorted(TORAX_UNMARKED + TORAX_MARKED)


def check_torax_report(report: dict[str, Any], checked_programs: list[str]) -> None:
    """Unmarked tests compiled only cachable programs; the marked tests' uncachable
    programs are ``checked_programs`` (the program traced with checks on, up to JAX
    0.10; none from 0.11)."""
    assert unmarked_uncachable(report) == []
    cachable = report["cachable"]
    assert cachable["uncachable"] == 0, cachable
    programs = {p for t in report["uncachable_tests"] for p in t["programs"]}
    assert sorted(programs) == checked_programs, report["uncachable_tests"]
    assert (report["errors"]["uncachable"] > 0) == bool(checked_programs), report["errors"]


def check_torax_warm(report: dict[str, Any], checked_programs: list[str]) -> None:
    """A warm run: :func:`check_torax_report`, and unmarked tests' programs all hit."""
    check_torax_report(report, checked_programs)
    cachable = report["cachable"]
    assert cachable["requests"] > 0, cachable
    assert cachable["misses"] == 0, cachable
    assert cachable["hit_rate"] == 1.0, cachable


@pytest.mark.parametrize(
    "checked_programs",
    [
        pytest.param(["jit(step)"], marks=UNCACHABLE_CALLBACKS, id="callbacks-uncachable"),
        pytest.param([], marks=CACHED_CALLBACKS, id="callbacks-cached"),
    ],
)
def test_torax_style_switch_never_leaks_programs_between_settings(
    pytester: pytest.Pytester, run_jax: RunJax, checked_programs: list[str]
) -> None:
    """A conftest flips a global read at trace time through ``pytest_jaxcache_set_errors``;
    every test calls the same module-level jitted function. Callbacks fire in marked tests
    and never in unmarked ones, interleaved [u, m, u, m, ...] without xdist and under
    ``-n 2`` with ``--dist loadgroup`` (grouped where xdist can still group, said where
    it cannot), ``--dist=jaxcache`` (marked tests on one worker, on every pytest) and
    ``--dist load``. Warm runs hit every program of unmarked tests."""
    write_files(pytester.path, TORAX_SUITE)
    cache = f"--jax-cache-dir={pytester.path / 'cache'}"
    n_tests = len(TORAX_UNMARKED) + len(TORAX_MARKED)

    result, cold = run_jax(cache, "-p", "no:xdist")
    result.assert_outcomes(passed=n_tests)
    logs = read_logs(pytester.path)
    check_switching(logs)
    assert [line[1] for line in logs["main"] if line[0] == "test"] == [
        *TORAX_UNMARKED,
        *TORAX_MARKED,
    ]
    assert [line[1] for line in logs["main"] if line[0] == "switch"] == ["0", "1"]
    check_torax_report(cold, checked_programs)
    assert cold["cachable"]["misses"] >= 1  # the unchecked step was written

    result, warm = run_jax(cache, "-p", "no:xdist")
    result.assert_outcomes(passed=n_tests)
    check_switching(read_logs(pytester.path))
    check_torax_warm(warm, checked_programs)

    result, grouped = run_jax(cache, "-n", "2", "--dist", "loadgroup", "-v")
    result.assert_outcomes(passed=n_tests)
    check_switching(read_logs(pytester.path))
    marked_ids = [t["nodeid"] for t in grouped["tests"] if "jax_errors" in t["markers"]]
    suffixed = bool(marked_ids) and all(n.endswith("@jax_errors") for n in marked_ids)
    said = any("--dist loadgroup did not group" in n for n in grouped["cache"]["notices"])
    assert marked_ids and suffixed != said  # grouped by xdist, or said not to be
    check_torax_warm(grouped, checked_programs)

    result, scheduled = run_jax(cache, "-n", "2", "--dist=jaxcache", "-v")
    result.assert_outcomes(passed=n_tests)
    logs = read_logs(pytester.path)
    check_switching(logs)
    marked_workers = {
        w for w, lines in logs.items() for line in lines if line[:1] == ("test",) and line[2] == "1"
    }
    assert len(marked_workers) == 1, logs  # on every pytest and xdist
    check_torax_warm(scheduled, checked_programs)

    result, loaded = run_jax(cache, "-n", "2", "--dist", "load")
    result.assert_outcomes(passed=n_tests)
    check_switching(read_logs(pytester.path))
    check_torax_warm(loaded, checked_programs)


# -- 4: an equinox-style switch ------------------------------------------------------------

EQX_SUITE = {
    "eqxchecks.py": """
        import equinox as eqx
        import jax
        import jax.numpy as jnp


        @jax.jit  # one function object for every test
        def safe_log(x):
            return jnp.log(eqx.error_if(x, x <= 0, "safe_log: input must be positive"))
    """,
    "conftest.py": """
        import os

        import equinox._errors


        # equinox (0.13) reads EQX_ON_ERROR once, at import (equinox/_config.py), and
        # error_if reads the copy in equinox._errors when a function is traced: setting
        # the environment variable after import changes nothing. So the switch sets that
        # copy too (and the variable, for an equinox that reads it at trace time).
        def pytest_jaxcache_set_errors(config, enabled):
            value = "raise" if enabled else "nan"
            os.environ["EQX_ON_ERROR"] = value
            if hasattr(equinox._errors, "EQX_ON_ERROR"):
                equinox._errors.EQX_ON_ERROR = value
    """,
    "test_eqx.py": """
        import math

        import numpy as np
        import pytest

        from eqxchecks import safe_log

        BAD = np.array([-1.0], np.float32)


        def nan_semantics():
            assert math.isnan(float(safe_log(BAD)[0]))
            assert float(safe_log(np.array([1.0], np.float32))[0]) == 0.0


        def raises():
            with pytest.raises(Exception, match="input must be positive"):
                safe_log(BAD).block_until_ready()


        def test_u1():
            nan_semantics()


        @pytest.mark.jax_errors
        def test_m1():
            raises()


        def test_u2():
            nan_semantics()


        @pytest.mark.jax_errors
        def test_m2():
            raises()
    """,
}


@pytest.mark.parametrize(
    "uncachable",
    [
        pytest.param(
            [("test_eqx.py::test_m1", ["jit(safe_log)"])],
            marks=UNCACHABLE_CALLBACKS,
            id="callbacks-uncachable",
        ),
        pytest.param([], marks=CACHED_CALLBACKS, id="callbacks-cached"),
    ],
)
def test_equinox_style_switch_raise_when_marked_nan_otherwise(
    pytester: pytest.Pytester, run_jax: RunJax, uncachable: list[tuple[str, list[str]]]
) -> None:
    """The switch sets equinox's EQX_ON_ERROR: marked tests see ``error_if`` raise on bad
    input, unmarked ones see NaN, though all call the same jitted function in the order
    [u, m, u, m]. Unmarked tests' programs (no callback under 'nan') are cachable."""
    write_files(pytester.path, EQX_SUITE)
    result, report = run_jax(f"--jax-cache-dir={pytester.path / 'cache'}", "-p", "no:xdist")
    result.assert_outcomes(passed=4)
    assert unmarked_uncachable(report) == []
    unmarked_programs = [
        c for c in report["compiles"] if c["name"] == "jit(safe_log)" and "::test_u" in c["test"]
    ]
    assert [c["outcome"] for c in unmarked_programs] == ["miss"]
    # JAX <= 0.10: the checked program is uncachable; 0.11+ caches it.
    assert [(t["nodeid"], t["programs"]) for t in report["uncachable_tests"]] == uncachable


# -- 5: --jax-cache-strict -----------------------------------------------------------------

STRICT_TEST = """
    import jax
    import numpy as np
    import pytest
    {mark}

    def with_callback(x):
        jax.debug.callback(lambda v: None, x)
        return x + 1


    def test_callback():
        assert float(np.asarray(jax.jit(with_callback)(np.ones(2, np.float32)))[0]) == 2.0
"""


def write_strict_suite(base: Path) -> str:
    """The same test with a host callback, unmarked and marked; the cache option."""
    write_files(
        base,
        {
            "test_unmarked_cb.py": STRICT_TEST.format(mark=""),
            "test_marked_cb.py": STRICT_TEST.format(mark="pytestmark = pytest.mark.jax_errors"),
        },
    )
    return f"--jax-cache-dir={base / 'cache'}"


def strict_lines(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if line.startswith("--jax-cache-strict")]


@UNCACHABLE_CALLBACKS
def test_strict_fails_the_session_on_unmarked_uncachable_tests(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """``--jax-cache-strict`` (or ini ``jax_cache_strict = true``): exit code 1 when an
    unmarked test compiled uncachable programs although every test passed, and the
    terminal says why."""
    cache = write_strict_suite(pytester.path)

    result, report = run_jax(cache, "--jax-cache-strict", "test_unmarked_cb.py")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert unmarked_uncachable(report) == ["test_unmarked_cb.py::test_callback"]
    assert strict_lines(result) == [
        "--jax-cache-strict: 1 tests not marked jax_errors compiled uncachable programs: "
        "failing the session"
    ]

    pytester.makeini("[pytest]\njax_cache_strict = true\n")
    result, report = run_jax(cache, "test_unmarked_cb.py")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert len(strict_lines(result)) == 1, result.outlines


@CACHED_CALLBACKS
def test_strict_has_nothing_to_fail_when_jax_caches_callbacks(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """JAX 0.11+ caches programs with host callbacks: an unmarked test with one compiles
    nothing uncachable, and ``--jax-cache-strict`` passes the session."""
    cache = write_strict_suite(pytester.path)
    result, report = run_jax(cache, "--jax-cache-strict", "test_unmarked_cb.py")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    assert unmarked_uncachable(report) == []
    assert strict_lines(result) == []


def test_strict_passes_a_marked_test_with_host_callbacks(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """``--jax-cache-strict`` with the test with a host callback marked: exit code 0,
    and strict mode says nothing."""
    cache = write_strict_suite(pytester.path)
    result, report = run_jax(cache, "--jax-cache-strict", "test_marked_cb.py")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    assert unmarked_uncachable(report) == []
    assert "--jax-cache-strict" not in result.stdout.str()


# -- 6: jax_no_cache -----------------------------------------------------------------------

NO_CACHE_SUITE = """
    import jax
    import jax.numpy as jnp
    import numpy as np
    import pytest

    X = np.ones(3, np.float32)


    def before_fn(x):
        return jnp.sin(x) + 1.0


    def nocache_only(x):
        return jnp.cos(x) * 3.0


    def after_fn(x):
        return jnp.tanh(x) - 1.0


    def test_a_before():
        jax.jit(before_fn)(X).block_until_ready()


    @pytest.mark.jax_no_cache
    def test_b_no_cache():
        jax.clear_caches()  # so that before_fn, in the persistent cache, compiles again
        jax.jit(nocache_only)(X).block_until_ready()
        jax.jit(before_fn)(X).block_until_ready()  # cached by test_a, yet compiled


    def test_c_after():
        jax.jit(after_fn)(X).block_until_ready()
"""
NO_CACHE_ID = "test_nocache.py::test_b_no_cache"


def check_no_cache(report: dict[str, Any], cache: Path) -> None:
    """The marked test compiled both programs with the cache off; nothing of it stored."""
    bypassed = [c for c in report["compiles"] if c["test"] == NO_CACHE_ID]
    assert sorted((c["name"], c["outcome"]) for c in bypassed) == [
        ("jit(before_fn)", "uncached"),
        ("jit(nocache_only)", "uncached"),
    ]
    test = next(t for t in report["tests"] if t["nodeid"] == NO_CACHE_ID)
    assert test["markers"] == ["jax_no_cache"]
    assert test["phases"]["call"]["requests"] == 0
    assert test["phases"]["call"]["uncached"] == 2
    names = [path.name for path in entries(cache)]
    assert not [n for n in names if n.startswith("jit_nocache_only-")], names
    assert [n for n in names if n.startswith("jit_before_fn-")], names
    assert [n for n in names if n.startswith("jit_after_fn-")], names


def test_no_cache_marker_bypasses_the_cache_for_one_test(
    pytester: pytest.Pytester, run_jax: RunJax
) -> None:
    """``jax_no_cache``: the test's compiles are 'uncached' (no lookup, even of a program
    in the cache), its unique program is never stored; the tests before and after it
    write on a cold run and hit on a warm one."""
    pytester.makepyfile(test_nocache=textwrap.dedent(NO_CACHE_SUITE))
    cache = pytester.path / "cache"

    result, cold = run_jax(f"--jax-cache-dir={cache}", "-p", "no:xdist")
    result.assert_outcomes(passed=3)
    check_no_cache(cold, cache)
    written = {c["name"] for c in cold["compiles"] if c["outcome"] == "miss"}
    assert {"jit(before_fn)", "jit(after_fn)"} <= written
    assert any(line.endswith("2 with the cache off") for line in result.outlines)

    result, warm = run_jax(f"--jax-cache-dir={cache}", "-p", "no:xdist")
    result.assert_outcomes(passed=3)
    check_no_cache(warm, cache)
    others = [c for c in warm["compiles"] if c["test"] != NO_CACHE_ID]
    assert {c["name"] for c in others} >= {"jit(before_fn)", "jit(after_fn)"}
    assert all(c["outcome"] == "hit" for c in others), others
    assert warm["cachable"]["hit_rate"] == 1.0
    assert warm["store"]["writes"] == 0
