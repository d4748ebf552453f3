"""What each test cost in earlier sessions: its wall time, how much of it went to
compiling and to loading programs, and which programs (entries) it used, with each
program's compile time. What shards and the xdist scheduler predict a test's cost from.

One file per machine namespace, ``history/<namespace>.json`` (the layout's grammar),
written at the end of every read-write session (merged with what it holds: a shard
updates its own tests and keeps the others'; each test's newest record wins, also when
``jaxcache merge`` joins the shards' caches); read at the start of one. Everything in it
is outside input: read with caps in bytes and in JSON items (what bounds the memory
parsing takes, whatever the shape), every name checked (programs must be entry names),
every number bounded; anything else reads as no history.
"""

from __future__ import annotations

import json
import math
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pytest_jaxcache.cachedir import CacheDir
from pytest_jaxcache.keys import file_name
from pytest_jaxcache.layout import HISTORY, RECORD_ID, RECORD_NAME, is_entry_name, record_name
from pytest_jaxcache.markers import ERRORS
from pytest_jaxcache.reasons import MISS

VERSION = 1
# The items (a comma or a colon each, counted before parsing, those inside strings too)
# bound the objects parsing makes: at most about 35 MB, whatever the document holds.
# Both caps hold about 18,000 tests of one program each, or 7,000 of ten; a larger
# suite keeps the records of the tests that ran last.
MAX_BYTES = 8 * 2**20
MAX_ITEMS = 300_000
MAX_TESTS = 100_000
MAX_PROGRAMS_PER_TEST = 256
MAX_NODEID = 2000
MAX_SECS = 7 * 24 * 3600.0
MAX_TIME = 1e11  # a Unix time, before the year 5000


@dataclass(frozen=True)
class TestCost:
    """One test, as its last session saw it."""

    __test__ = False  # not a test class, whatever pytest thinks of the name
    wall_secs: float
    compile_secs: float = 0.0
    load_secs: float = 0.0
    programs: tuple[str, ...] = ()  # the entries it compiled or loaded
    errors: bool = False  # marked jax_errors
    at: float = 0.0  # when it was recorded (Unix time; 0: unknown): the newest wins


@dataclass(frozen=True)
class History:
    """Every test seen, and the compile time of every program they used."""

    tests: Mapping[str, TestCost] = field(default_factory=dict)
    programs: Mapping[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.tests)

    def merged(self, newer: History) -> History:
        """This history with ``newer``'s records in place of its own, test by test,
        unless its own are more recent (a shard's session updates its tests and keeps
        the rest; a shard's cache merged later keeps the other shards' newer records)."""
        tests = dict(self.tests)
        for nodeid, cost in newer.tests.items():
            mine = tests.get(nodeid)
            if mine is None or cost.at >= mine.at:
                tests[nodeid] = cost
        return History(tests, {**self.programs, **newer.programs})

    def to_json(self) -> bytes:
        """The history as a document within the caps: the most recent records that fit
        (a suite too large for them keeps a history of the tests that ran last)."""
        ordered = sorted(self.tests.items(), key=lambda item: (-item[1].at, item[0]))
        keep = min(len(ordered), MAX_TESTS)
        while True:
            data = self._document(dict(ordered[:keep]))
            if within_caps(data) or keep == 0:
                return data
            keep = keep * 9 // 10

    def _document(self, tests: Mapping[str, TestCost]) -> bytes:
        used = {name for cost in tests.values() for name in cost.programs}
        document = {
            "version": VERSION,
            "tests": {
                nodeid: {
                    "wall": cost.wall_secs,
                    "compile": cost.compile_secs,
                    "load": cost.load_secs,
                    "programs": list(cost.programs),
                    "errors": cost.errors,
                    "at": cost.at,
                }
                for nodeid, cost in tests.items()
            },
            "programs": {name: secs for name, secs in self.programs.items() if name in used},
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def within_caps(data: bytes) -> bool:
    """Whether a history document is small enough to be read (:data:`MAX_BYTES`,
    :data:`MAX_ITEMS`)."""
    return len(data) <= MAX_BYTES and data.count(b",") + data.count(b":") <= MAX_ITEMS


def _bounded(value: object, most: float) -> float:
    """``value`` if it is a number from 0 to ``most`` (ValueError if not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("not a number")
    number = float(value)
    if not (math.isfinite(number) and 0 <= number <= most):
        raise ValueError("out of bounds")
    return number


def _secs(value: object) -> float:
    return _bounded(value, MAX_SECS)


def parse(data: bytes) -> History:
    """The history in ``data``: every test and program that checks out (a record that
    does not is left out); an empty history when the document is not ours."""
    if not within_caps(data):
        return History()
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return History()
    if not isinstance(document, dict) or document.get("version") != VERSION:
        return History()
    raw_tests, raw_programs = document.get("tests"), document.get("programs")
    if not isinstance(raw_tests, dict) or not isinstance(raw_programs, dict):
        return History()
    programs = {}
    for name, secs in list(raw_programs.items())[: MAX_TESTS * 4]:
        try:
            if is_entry_name(name):
                programs[name] = _secs(secs)
        except ValueError:
            continue
    tests = {}
    for nodeid, record in list(raw_tests.items())[:MAX_TESTS]:
        try:
            tests[nodeid] = _cost(nodeid, record)
        except (ValueError, TypeError):
            continue
    return History(tests, programs)


def _cost(nodeid: object, record: object) -> TestCost:
    if not isinstance(nodeid, str) or not 0 < len(nodeid) <= MAX_NODEID:
        raise ValueError("not a test id")
    if not isinstance(record, dict):
        raise ValueError("not a record")
    names = record.get("programs", [])
    if not isinstance(names, list) or len(names) > MAX_PROGRAMS_PER_TEST:
        raise ValueError("not a list of programs")
    return TestCost(
        wall_secs=_secs(record.get("wall")),
        compile_secs=_secs(record.get("compile", 0.0)),
        load_secs=_secs(record.get("load", 0.0)),
        programs=tuple(name for name in names if is_entry_name(name)),
        errors=record.get("errors") is True,
        at=_bounded(record.get("at", 0.0), MAX_TIME),
    )


def load(directory: CacheDir) -> History:
    """The newest history this cache holds (another machine's is a fair guess of this
    one's: the same tests, the same programs); empty when there is none."""
    try:
        found = [
            (info.st_mtime, name)
            for name, info in directory.scan(HISTORY)
            if RECORD_NAME.fullmatch(name) and stat.S_ISREG(info.st_mode)
        ]
    except OSError:
        return History()
    if not found:
        return History()
    try:
        data, _ = directory.read(HISTORY, max(found)[1], limit=MAX_BYTES)
    except OSError:
        return History()
    return parse(data)


def save(directory: CacheDir, namespace: str, session: History) -> None:
    """Merge ``session``'s records into the history of ``namespace``. Raises OSError."""
    if not RECORD_ID.fullmatch(namespace) or not session:
        return
    try:
        data, _ = directory.read(HISTORY, record_name(namespace), limit=MAX_BYTES)
        earlier = parse(data)
    except OSError:
        earlier = History()
    directory.write_atomic(HISTORY, record_name(namespace), earlier.merged(session).to_json())


def of_session(
    tests: Iterable[Mapping[str, object]], compiles: Iterable[Mapping[str, object]], at: float
) -> History:
    """A session's history from its snapshot's ``tests`` and ``compiles``, recorded at
    ``at`` (a program that was a hit keeps the compile time an earlier session
    recorded)."""
    at = min(max(at, 0.0), MAX_TIME)
    used: dict[str, list[str]] = {}
    programs: dict[str, float] = {}
    for record in compiles:
        key, test, outcome = record.get("key"), record.get("test"), record.get("outcome")
        if not (isinstance(key, str) and key and isinstance(test, str)):
            continue
        name = file_name(key)
        names = used.setdefault(test, [])
        if name not in names and len(names) < MAX_PROGRAMS_PER_TEST:
            names.append(name)
        secs = record.get("secs")
        if outcome == MISS and isinstance(secs, (int, float)):
            programs[name] = min(float(secs), MAX_SECS)
    costs = {}
    for test in tests:
        nodeid, outcome = test.get("nodeid"), test.get("outcome")
        wall, phases = test.get("wall_secs"), test.get("phases")
        if not isinstance(nodeid, str) or outcome not in ("passed", "failed", "skipped"):
            continue
        if not isinstance(wall, (int, float)) or not isinstance(phases, dict):
            continue
        compile_secs = sum(float(p.get("compile_secs", 0.0)) for p in phases.values())
        load_secs = sum(float(p.get("retrieval_secs", 0.0)) for p in phases.values())
        markers = test.get("markers")
        costs[nodeid] = TestCost(
            wall_secs=min(float(wall), MAX_SECS),
            compile_secs=min(compile_secs, MAX_SECS),
            load_secs=min(load_secs, MAX_SECS),
            programs=tuple(used.get(nodeid, ())),
            errors=isinstance(markers, list) and ERRORS in markers,
            at=at,
        )
    return History(costs, programs)
