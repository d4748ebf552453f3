"""The session timeline (``--jax-cache-timeline``): the HTML page and the Mermaid chart.

The page is checked in a real headless Chromium, driven over the Chrome DevTools Protocol
on a pipe (``--remote-debugging-pipe``: file descriptors 3 and 4, messages separated by
NUL). That needs nothing but the standard library, no TCP port (nothing to race for, no
network), and no chromedriver whose version must match the browser; every console
message, uncaught exception and network request of the page arrives as an event on the
same ordered channel as the answers to our commands. Chromium is not optional here: CI
installs it (``apt-get install -y chromium``), so a missing one fails these tests.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_jaxcache.timeline import (
    DATA_ELEMENT_ID,
    MAX_SECONDS,
    MAX_TEXT,
    Bar,
    html,
    lane_sort_key,
    mermaid,
    prepare,
    sanitise,
)

# Hypothesis: the same examples on every run (a failure is then reproducible, never an
# accident of the seed), and no time limits (a slow CI machine is not a failure).
PROPERTIES = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

HOSTILE_FRAGMENTS = [
    "</script>",
    "<script>alert(1)</script>",
    "</SCRIPT >",
    "<!--",
    "-->",
    "]]>",
    "<svg onload=alert(1)>",
    "&amp;",
    "&lt;",
    "&#0;",
    '"',
    "'",
    "`",
    "\\",
    "\r\n",
    "\r",
    "\n",
    "\t",
    "\x00",
    "\x01",
    "\x7f",
    "\x85",
    "\u2028",
    "\ufeff",
    "\ud800",
    "\udfff",
    "\U0001f600",
    "e\u0301",
    "::",
    ";",
    "#",
    "%%",
    "%%{init: {'theme':'dark'}}%%",
    "#58;",
    "\ufb02\u00b0",
    "\u00b6\u00df",
    "section x",
    "title",
    "click",
    "[",
    "]",
    "tests/test_x.py::test_y[",
]


def hostile_text(max_parts: int = 6) -> st.SearchStrategy[str]:
    """Any code point (lone surrogates included) mixed with pieces known to break
    HTML, JSON in a script element, or Mermaid."""
    anything = st.text(st.characters(exclude_categories=()), max_size=12)
    return st.lists(
        st.one_of(st.sampled_from(HOSTILE_FRAGMENTS), anything), max_size=max_parts
    ).map("".join)


NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=1000),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from([0.0, -0.0, 1e-9, 4e-7, 5e-7, 1e300, MAX_SECONDS * 2, math.nan, -math.inf]),
)
LANES = st.one_of(
    st.sampled_from(["gw0", "gw1", "gw2", "gw10", "main", "shard 2/4", "shard 10/12", ""]),
    hostile_text(3),
)
OUTCOMES = st.one_of(
    st.sampled_from(["passed", "failed", "skipped", "error", " Failed ", "xfailed"]),
    hostile_text(2),
)
BARS = st.builds(
    Bar,
    lane=LANES,
    nodeid=hostile_text(),
    start=NUMBERS,
    wall=NUMBERS,
    compile_secs=NUMBERS,
    load_secs=NUMBERS,
    outcome=OUTCOMES,
)


def good_bar(i: int, lane: str = "gw0", **fields: Any) -> Bar:
    values: dict[str, Any] = {
        "lane": lane,
        "nodeid": f"tests/test_m.py::test_{i}",
        "start": float(i),
        "wall": 1.0,
        "compile_secs": 0.25,
        "load_secs": 0.25,
        "outcome": "passed",
    }
    values.update(fields)
    return Bar(**values)


# --------------------------------------------------------------------- reading the page


class PageParser(HTMLParser):
    """What a (stdlib) HTML parser makes of a page: tags, the bar groups' attributes, the
    segments of each bar, and the text of every script element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.svg: dict[str, str] = {}
        self.groups: list[dict[str, str]] = []
        self.segments: list[dict[str, dict[str, str]]] = []
        self.lane_labels: list[str] = []
        self.scripts: list[tuple[dict[str, str], str]] = []
        self._script: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        self.tags.append(tag)
        classes = values.get("class", "").split()
        if tag == "svg":
            self.svg = values
        elif tag == "g" and "b" in classes:
            self.groups.append(values)
            self.segments.append({})
        elif tag == "rect" and self.segments and classes and classes[0] in ("c", "l", "r"):
            self.segments[-1][classes[0]] = values
        elif tag == "text" and "lane-label" in classes:
            self.lane_labels.append(values["data-lane"])
        elif tag == "script":
            self._script = values
            self.scripts.append((values, ""))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser


def embedded_json(page: str) -> list[dict[str, Any]]:
    match = re.search(
        rf'<script type="application/json" id="{DATA_ELEMENT_ID}">(.*?)</script>', page, re.S
    )
    assert match is not None, "no data element in the page"
    raw = match.group(1)
    assert "<" not in raw, "the JSON must not contain '<' (it could end the script element)"
    data = json.loads(raw)
    assert isinstance(data, list)
    return data


def as_dicts(bars: Sequence[Bar]) -> list[dict[str, Any]]:
    return [asdict(bar) for bar in bars]


def run_secs(bar: dict[str, Any]) -> float:
    return Bar(**bar).run_secs


ALLOWED_TAGS = {
    "html", "head", "meta", "link", "title", "style", "body", "h1", "p", "span", "i",
    "div", "svg", "g", "rect", "text", "line", "script",
}  # fmt: skip


# ------------------------------------------------------------------------ sanitising


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (math.nan, 0.0),
        (math.inf, 0.0),
        (-math.inf, 0.0),
        (-3.0, 0.0),
        (-0.0, 0.0),
        (10**400, 0.0),  # float() overflows
        ("1.5", 1.5),
        ("nan", 0.0),
        ("soon", 0.0),
        (None, 0.0),
        (1e300, MAX_SECONDS),
        (1.23456789, 1.234568),
        (4e-7, 0.0),
        (3, 3.0),
    ],
)
def test_numbers_from_outside_are_clamped(raw: Any, expected: float) -> None:
    bar = sanitise(Bar("gw0", "t", raw, 1e7, 0.0, 0.0, "passed"))
    assert bar.start == expected
    assert not math.copysign(1.0, bar.start) < 0


def test_compile_and_load_are_clamped_into_the_wall_time() -> None:
    assert sanitise(Bar("gw0", "t", 0, 2.0, 5.0, 1.0, "passed")) == Bar(
        "gw0", "t", 0.0, 2.0, 2.0, 0.0, "passed"
    )
    over = sanitise(Bar("gw0", "t", 0, 2.0, 1.5, 1.0, "passed"))
    assert (over.compile_secs, over.load_secs, over.run_secs) == (1.5, 0.5, 0.0)
    nan_wall = sanitise(Bar("gw0", "t", 0, math.nan, 1.0, 1.0, "passed"))
    assert (nan_wall.wall, nan_wall.compile_secs, nan_wall.load_secs) == (0.0, 0.0, 0.0)
    fine = sanitise(Bar("gw0", "t", 0.5, 3.0, 1.0, 0.5, "passed"))
    assert fine.run_secs == 1.5


def test_text_from_outside_is_made_encodable_and_bounded() -> None:
    bar = sanitise(Bar("  ", "a\x00b\ud800c", 0, 1, 0, 0, " FAILED "))
    assert (bar.lane, bar.nodeid, bar.outcome) == ("main", "a\ufffdb\ufffdc", "failed")
    # a valid surrogate pair (as surrogateescape never makes, but str allows) is one char
    assert sanitise(Bar("gw0", "\ud83d\ude00", 0, 1, 0, 0, "passed")).nodeid == "\U0001f600"
    long = sanitise(Bar("gw0", "x" * (MAX_TEXT + 50), 0, 1, 0, 0, "")).nodeid
    assert len(long) == MAX_TEXT
    assert long.endswith("\u2026")
    assert sanitise(Bar("gw0", "t", 0, 1, 0, 0, "")).outcome == "unknown"


@given(BARS)
@PROPERTIES
def test_sanitised_bars_are_well_formed_and_stable(bar: Bar) -> None:
    clean = sanitise(bar)
    assert sanitise(clean) == clean
    for value in (clean.start, clean.wall, clean.compile_secs, clean.load_secs):
        assert math.isfinite(value)
        assert 0.0 <= value <= MAX_SECONDS
    assert clean.compile_secs <= clean.wall
    assert clean.compile_secs + clean.load_secs <= clean.wall + 1e-6
    assert clean.run_secs >= 0.0
    for text in (clean.lane, clean.nodeid, clean.outcome):
        text.encode("utf-8")  # no lone surrogates left
        assert "\x00" not in text


def test_lanes_sort_naturally() -> None:
    lanes = ["gw10", "gw2", "gw1", "gw0", "gw11", "gw3"]
    assert sorted(lanes, key=lane_sort_key) == ["gw0", "gw1", "gw2", "gw3", "gw10", "gw11"]
    shards = ["shard 10/12", "shard 2/12", "shard 1/12"]
    assert sorted(shards, key=lane_sort_key) == ["shard 1/12", "shard 2/12", "shard 10/12"]
    assert sorted(["b", "A", "a10", "a9"], key=lane_sort_key) == ["A", "a9", "a10", "b"]
    # hostile digit runs: compared without int() (which refuses over 4300 digits)
    assert sorted(["x" + "9" * 5000, "x" + "1" + "0" * 5000], key=lane_sort_key)[0][1] == "9"


def test_bars_are_drawn_lane_by_lane_in_natural_order_then_by_start() -> None:
    bars = [good_bar(i, lane) for i, lane in enumerate(["gw10", "gw2", "gw0", "gw2", "gw1"])]
    bars.append(good_bar(0, "gw2", nodeid="early"))
    order = [(bar.lane, bar.nodeid) for bar in prepare(bars)]
    assert order == [
        ("gw0", "tests/test_m.py::test_2"),
        ("gw1", "tests/test_m.py::test_4"),
        ("gw2", "early"),
        ("gw2", "tests/test_m.py::test_1"),
        ("gw2", "tests/test_m.py::test_3"),
        ("gw10", "tests/test_m.py::test_0"),
    ]
    parsed = parse(html(bars, title="t"))
    assert parsed.lane_labels == ["gw0", "gw1", "gw2", "gw10"]
    assert [g["data-nodeid"] for g in parsed.groups] == [nodeid for _, nodeid in order]


# ------------------------------------------------------------------------------ HTML


def test_empty_session_says_there_is_nothing_to_show() -> None:
    page = html([], title="Nothing <here>")
    assert "Nothing to show" in page
    assert "<svg" not in page
    assert embedded_json(page) == []
    assert "<title>Nothing &lt;here&gt;</title>" in page


def test_page_makes_no_request_and_runs_only_its_own_code() -> None:
    page = html([good_bar(0)], title="t")
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page)
    assert csp is not None
    assert "default-src 'none'" in csp.group(1)
    assert "unsafe-inline" not in csp.group(1)
    assert not re.search(r"\b(?:src|href)=\"(?!data:)", page)
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page


def test_segments_are_proportional_to_the_seconds() -> None:
    bars = [
        Bar("gw0", "a", 0.0, 10.0, 4.0, 1.0, "passed"),
        Bar("gw0", "b", 10.0, 2.5, 0.0, 2.5, "failed"),
        Bar("gw1", "c", 1.0, 0.0, 0.0, 0.0, "passed"),
    ]
    parsed = parse(html(bars, title="t"))
    px = float(parsed.svg["data-px-per-sec"])
    x0 = float(parsed.svg["data-x0"])
    a, b, c = parsed.segments
    assert float(a["c"]["width"]) == pytest.approx(4.0 * px, abs=0.01)
    assert float(a["l"]["width"]) == pytest.approx(1.0 * px, abs=0.01)
    assert float(a["r"]["width"]) == pytest.approx(5.0 * px, abs=0.01)
    assert float(a["c"]["x"]) == pytest.approx(x0, abs=0.01)
    assert float(a["l"]["x"]) == pytest.approx(x0 + 4.0 * px, abs=0.01)
    assert set(b) == {"l"}  # no zero-width segments
    assert float(b["l"]["x"]) == pytest.approx(x0 + 10.0 * px, abs=0.01)
    assert c == {}
    assert [g["class"] for g in parsed.groups] == ["b", "b f", "b"]


@given(st.lists(BARS, max_size=12), hostile_text())
@PROPERTIES
def test_html_embeds_exactly_the_sanitised_bars(bars: list[Bar], title: str) -> None:
    page = html(bars, title=title)
    page.encode("utf-8")
    expected = prepare(bars)
    data = embedded_json(page)
    # the JSON round-trips to the sanitised bars: in drawing order, and as a multiset of
    # sanitise() of each input (which does not rely on prepare()'s ordering)
    assert data == as_dicts(expected)
    assert sorted(map(repr, (Bar(**bar) for bar in data))) == sorted(
        repr(sanitise(bar)) for bar in bars
    )

    parsed = parse(page)
    # nothing a node id, lane, outcome or title says becomes markup
    assert set(parsed.tags) <= ALLOWED_TAGS
    assert [attrs for attrs, _ in parsed.scripts] == [
        {"type": "application/json", "id": DATA_ELEMENT_ID},
        {},
    ]
    assert json.loads(parsed.scripts[0][1]) == data
    assert len(re.findall("<script", page, re.I)) == 2
    assert len(re.findall("</script", page, re.I)) == 2
    # each group carries the same values as the JSON
    assert len(parsed.groups) == len(data)
    for group, bar in zip(parsed.groups, data, strict=True):
        assert group["data-nodeid"] == bar["nodeid"]
        assert group["data-lane"] == bar["lane"]
        assert group["data-outcome"] == bar["outcome"]
        assert float(group["data-start"]) == bar["start"]
        assert float(group["data-wall"]) == bar["wall"]
        assert float(group["data-compile"]) == bar["compile_secs"]
        assert float(group["data-load"]) == bar["load_secs"]
    if data:
        px = float(parsed.svg["data-px-per-sec"])
        x0 = float(parsed.svg["data-x0"])
        for segments, bar in zip(parsed.segments, data, strict=True):
            seconds = {"c": bar["compile_secs"], "l": bar["load_secs"], "r": run_secs(bar)}
            left = x0 + bar["start"] * px
            for cls in ("c", "l", "r"):
                width = float(segments[cls]["width"]) if cls in segments else 0.0
                assert width == pytest.approx(seconds[cls] * px, abs=0.02)
                if cls in segments:
                    assert float(segments[cls]["x"]) == pytest.approx(left, abs=0.02)
                    left += width


def test_five_thousand_bars_stay_small(tmp_path: Path) -> None:
    page = html(big_session(), title="5,000 tests")
    size = len(page.encode("utf-8"))
    (tmp_path / "big.html").write_text(page, encoding="utf-8")
    print(f"5,000 bars: {size} bytes ({size / 5000:.0f} per bar)")
    assert len(embedded_json(page)) == 5000
    assert size < 4_000_000, size


def big_session() -> list[Bar]:
    """5,000 tests on 8 workers, with node ids of realistic length, deterministic."""
    bars: list[Bar] = []
    clock = [0.0] * 8
    for i in range(5000):
        lane = i % 8
        wall = 0.05 + (i * 7919 % 1000) / 250.0
        compile_secs = wall * ((i * 31) % 5) / 10.0
        load_secs = wall * ((i * 17) % 3) / 10.0
        outcome = "failed" if i % 97 == 0 else "skipped" if i % 89 == 0 else "passed"
        bars.append(
            Bar(
                f"gw{lane}",
                f"tests/models/test_layer_{i % 40}.py::TestLayer::test_forward[dtype{i % 3}-{i}]",
                clock[lane],
                wall,
                compile_secs,
                load_secs,
                outcome,
            )
        )
        clock[lane] += wall + 0.01
    return bars


# --------------------------------------------------------------------------- Mermaid

ENTITY = re.compile(r"#(\d+);")
TASK = re.compile(
    r"^    (?P<name>[^:\n]+) :(?P<tag>crit, |active, |done, )?(?P<a>\d+), (?P<b>\d+)$"
)


def mermaid_lines(chart: str) -> list[str]:
    assert chart.startswith("```mermaid\ngantt\n")
    assert chart.endswith("\n```\n")
    return chart.splitlines()[2:-1]


def test_mermaid_escapes_what_breaks_gantt_syntax() -> None:
    chart = mermaid(
        [
            Bar("gw0", "tests/a.py::test[x:y;z#1%%{init}]", 1.5, 2.0, 1.0, 0.0, "passed"),
            Bar("gw0", "section two\nlines", 4.0, 1.0, 0.0, 1.0, "passed"),
            Bar("gw1: bad;#", "Title case", 0.0, 3.0, 0.0, 0.0, "failed"),
        ]
    )
    assert mermaid_lines(chart) == [
        "    title All 3 tests, seconds since the session started",
        "    dateFormat x",
        "    axisFormat %s.%L",
        "    todayMarker off",
        "    %% crit: failed or error, active: compiled, done: only loaded from the cache",
        "    section gw0",
        "    tests/a.py#58;#58;test[x#58;y#59;z#35;1#37;#37;#123;init#125;] (2.00s, compile 1.00s)"
        " :active, 1500, 3500",
        "    #115;ection two lines (1.00s, load 1.00s) :done, 4000, 5000",
        "    section gw1#58; bad#59;#35;",
        "    #84;itle case (3.00s) :crit, 0, 3000",
    ]


def test_mermaid_keeps_the_longest_tests_and_says_how_many_are_left_out() -> None:
    bars = [good_bar(i, f"gw{i % 3}", wall=float(i % 50) + 0.5) for i in range(100)]
    chart = mermaid(bars, max_bars=10)
    tasks = [TASK.match(line) for line in mermaid_lines(chart)]
    names = [m.group("name").split(" (")[0] for m in tasks if m]
    longest = sorted(bars, key=lambda bar: -bar.wall)[:10]
    assert sorted(names) == sorted(bar.nodeid.replace(":", "#58;") for bar in longest)
    assert "The 10 longest of 100 tests (90 more not shown)" in chart
    assert "\n    axisFormat %s\n" in chart
    assert [line for line in mermaid_lines(chart) if line.startswith("    section")] == [
        "    section gw0",
        "    section gw1",
        "    section gw2",
    ]


def test_mermaid_of_nothing() -> None:
    chart = mermaid([])
    assert "No tests were recorded" in chart
    assert not any(TASK.match(line) for line in mermaid_lines(chart))
    assert not any(TASK.match(line) for line in mermaid_lines(mermaid([good_bar(0)], max_bars=0)))


@given(st.lists(BARS, max_size=15), st.integers(min_value=-2, max_value=20))
@PROPERTIES
def test_mermaid_lines_are_always_valid_gantt_statements(bars: list[Bar], max_bars: int) -> None:
    chart = mermaid(bars, max_bars=max_bars)
    chart.encode("utf-8")
    lines = mermaid_lines(chart)
    assert lines[:5] == [
        lines[0],
        "    dateFormat x",
        lines[2],
        "    todayMarker off",
        "    %% crit: failed or error, active: compiled, done: only loaded from the cache",
    ]
    assert re.fullmatch(r"    title [^#;\n]+", lines[0])
    assert lines[2] in ("    axisFormat %s", "    axisFormat %s.%L")
    kept = min(len(bars), max(0, max_bars))
    if kept < len(bars):
        assert f"({len(bars) - kept} more not shown)" in lines[0]
    tasks = 0
    for line in lines[5:]:
        if line.startswith("    section "):
            body = line[len("    section ") :]
        else:
            match = TASK.match(line)
            assert match, line
            assert int(match.group("a")) < int(match.group("b"))
            body = match.group("name")
            tasks += 1
        plain = ENTITY.sub("", body)
        for char in ":;#%\n\r":
            assert char not in plain, (char, line)
        assert "\ufb02" not in plain
        assert "\u00b6" not in plain
        assert not body.lower().startswith(
            ("section", "title", "click", "dateformat", "axisformat", "excludes")
        )
        assert body.strip()
    assert tasks == kept


@given(hostile_text())
@PROPERTIES
def test_mermaid_task_names_decode_to_the_node_id(nodeid: str) -> None:
    """Mermaid turns '#<n>;' back into the character: what GitHub shows is the node id
    (blanks collapsed, and cut to its last 60 characters)."""
    chart = mermaid([Bar("gw0", nodeid, 0.0, 1.0, 0.0, 0.0, "passed")])
    match = TASK.match(mermaid_lines(chart)[-1])
    assert match
    shown = ENTITY.sub(lambda m: chr(int(m.group(1))), match.group("name"))
    shown = shown.removesuffix(" (1.00s)")
    expected = " ".join(sanitise(Bar("gw0", nodeid, 0, 0, 0, 0, "")).nodeid.split())
    if len(expected) > 60:
        expected = "\u2026" + expected[-59:]
    assert shown in (expected, "\u200b")
    assert (shown == "\u200b") == (expected == "")


# --------------------------------------------------------------------- headless Chromium

CHROMIUM_FLAGS = [
    "--headless",
    # As root Chromium refuses to start without it, and CI runs as root; the page is our
    # own file, so the renderer sandbox protects nothing here.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",  # a container's /dev/shm is often tiny
    # Without these, the browser's own background fetches meet a closed network.
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--remote-debugging-pipe",
]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Never a timing assertion: only how long to wait before declaring Chromium hung.
CDP_TIMEOUT = 120.0

# Moves the two pipe ends to descriptors 3 and 4 and runs Chromium. Duplicating them
# above 10 first means that no dup2() can overwrite the other end whatever numbers they
# had; every other descriptor of this process is close-on-exec (PEP 446).
_LAUNCHER = """\
import fcntl, os, sys
old = [int(fd) for fd in sys.argv[1:3]]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in old]
for fd in old:
    os.close(fd)
os.dup2(high[0], 3)
os.dup2(high[1], 4)
for fd in high:
    os.close(fd)
os.execv(sys.argv[3], sys.argv[3:])
"""


def find_chromium() -> str:
    configured = os.environ.get("PYTEST_JAXCACHE_CHROMIUM")
    if configured:
        if not os.access(configured, os.X_OK):
            pytest.fail(f"$PYTEST_JAXCACHE_CHROMIUM={configured!r} is not an executable")
        return configured
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "Chromium is needed for the timeline's browser tests and was not found (looked for "
        f"{', '.join(CHROMIUM_NAMES)} on PATH, and $PYTEST_JAXCACHE_CHROMIUM). "
        "Install it: apt-get update && apt-get install -y chromium",
        pytrace=False,
    )


class CdpError(Exception):
    pass


class Chromium:
    """A headless Chromium and a minimal DevTools client on its pipe."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.log_path = profile.parent / "chromium.log"
        commands_r, self._commands = os.pipe()
        self._replies, replies_w = os.pipe()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _LAUNCHER,
                    str(commands_r),
                    str(replies_w),
                    binary,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={profile}",
                    "about:blank",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(commands_r, replies_w),
            )
        os.close(commands_r)
        os.close(replies_w)
        self._poll = select.poll()  # not select(): it fails on descriptors above 1023
        self._poll.register(self._replies, select.POLLIN)
        self._buffer = bytearray()
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def log_tail(self) -> str:
        text = self.log_path.read_text(errors="replace")
        return f"\n--- Chromium's output ({self.log_path}) ---\n{text[-3000:]}"

    def _read(self, deadline: float) -> dict[str, Any]:
        while (end := self._buffer.find(b"\0")) < 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CdpError(f"no answer from Chromium in {CDP_TIMEOUT} s{self.log_tail()}")
            if self._poll.poll(remaining * 1000):
                chunk = os.read(self._replies, 1 << 20)
                if not chunk:
                    raise CdpError(f"Chromium closed its DevTools pipe{self.log_tail()}")
                self._buffer += chunk
        message = json.loads(self._buffer[:end])
        del self._buffer[: end + 1]
        assert isinstance(message, dict)
        return message

    def call(self, method: str, params: dict[str, Any] | None = None, session: str = "") -> Any:
        """Sends a command and returns its result; events that arrive first are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self._commands, data) :]
        except BrokenPipeError:
            raise CdpError(f"Chromium is gone (sending {method}){self.log_tail()}") from None
        deadline = time.monotonic() + CDP_TIMEOUT
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str, since: int, **params: Any) -> int:
        """Index in self.events of the first ``method`` event at or after ``since`` whose
        params include ``params``; reads more events until one comes."""
        deadline = time.monotonic() + CDP_TIMEOUT
        index = since
        while True:
            while index < len(self.events):
                event = self.events[index]
                if (
                    event.get("method") == method
                    and event.get("sessionId") == session
                    and all(event["params"].get(k) == v for k, v in params.items())
                ):
                    return index
                index += 1
            self.events.append(self._read(deadline))

    def close(self) -> None:
        try:
            self._next_id += 1
            os.write(
                self._commands,
                json.dumps({"id": self._next_id, "method": "Browser.close"}).encode() + b"\0",
            )
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._commands)
        os.close(self._replies)


class Page:
    """One tab showing one file, with what the page logged, threw and requested."""

    def __init__(self, browser: Chromium, path: Path) -> None:
        self.browser = browser
        self.url = path.as_uri()
        self.target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session: str = browser.call(
            "Target.attachToTarget", {"targetId": self.target, "flatten": True}
        )["sessionId"]
        self.first_event = len(browser.events)
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        since = len(browser.events)
        navigation = self.call("Page.navigate", {"url": self.url})
        assert "errorText" not in navigation, navigation
        # The load event that counts is the one after our document was committed (a late
        # one from about:blank would come before that).
        committed = self._wait_for_commit(since)
        browser.wait_for("Page.loadEventFired", self.session, committed + 1)
        assert self.evaluate("document.readyState + ' ' + location.href") == f"complete {self.url}"

    def _wait_for_commit(self, since: int) -> int:
        index = since
        while True:
            index = self.browser.wait_for("Page.frameNavigated", self.session, index)
            frame = self.browser.events[index]["params"]["frame"]
            if frame.get("url") == self.url and not frame.get("parentId"):
                return index
            index += 1

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return self.browser.call(method, params, self.session)

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def problems(self) -> list[str]:
        """Every console message, uncaught exception, browser log warning or error, and
        request for anything but the page itself, since the tab opened.

        A last round trip to the page first: the renderer sends its events in order, so
        everything the page did before it has then arrived.
        """
        self.evaluate("0")
        found = []
        for event in self.browser.events[self.first_event :]:
            if event.get("sessionId") != self.session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"uncaught: {params['exceptionDetails']}")
            elif method == "Runtime.consoleAPICalled":
                found.append(f"console.{params.get('type')}: {params.get('args')}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("warning", "error"):
                found.append(f"log: {params['entry']}")
            elif method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                if url != self.url and not url.startswith("data:"):
                    found.append(f"request: {url}")
        return found

    def close(self) -> None:
        self.browser.call("Target.closeTarget", {"targetId": self.target})


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    binary = find_chromium()
    profile = tmp_path_factory.mktemp("chromium") / "profile"
    chromium = Chromium(binary, profile)
    try:
        version = chromium.call("Browser.getVersion")
        print(f"browser: {version.get('product')}")
        yield chromium
    finally:
        chromium.close()


@pytest.fixture
def open_page(browser: Chromium) -> Iterator[Any]:
    pages: list[Page] = []

    def open_(path: Path) -> Page:
        page = Page(browser, path)
        pages.append(page)
        return page

    yield open_
    for page in pages:
        page.close()


# Reads, for each bar group in the drawing, its attributes and the rendered boxes (CSS
# pixels, as laid out) of its segments, next to the parsed JSON of the data element.
MEASURE = """(() => {
  const box = (el) => { const r = el.getBoundingClientRect();
                        return [r.left, r.top, r.width, r.height]; };
  const data = JSON.parse(document.getElementById(DATA_ID).textContent);
  const bars = Array.from(document.querySelectorAll("svg.tl g.b"), (g) => {
    const attrs = {};
    for (const a of g.attributes) attrs[a.name] = a.value;
    const seg = {};
    for (const r of g.querySelectorAll(":scope > rect")) seg[r.getAttribute("class")] = box(r);
    const title = g.querySelector(":scope > title");
    return {attrs, seg, title: title ? title.textContent : null};
  });
  // a label's baseline, from its geometry, not from font metrics (CI may lack fonts)
  const baseline = (t) => new DOMPoint(0, t.y.baseVal[0].value)
                            .matrixTransform(t.getScreenCTM()).y;
  const lanes = Array.from(document.querySelectorAll("svg.tl text.lane-label"),
                           (t) => [t.getAttribute("data-lane"), baseline(t)]);
  return JSON.stringify({data, bars, lanes, scripts: document.scripts.length,
                         text: document.body.innerText.slice(0, 4000)});
})()""".replace("DATA_ID", json.dumps(DATA_ELEMENT_ID))


def check_drawing(page: Page, bars: Sequence[Bar]) -> dict[str, Any]:
    """The rendered bars are the embedded JSON, which is the sanitised input: same count,
    order, node ids and numbers; widths and positions proportional to the seconds within
    a pixel; each bar in its lane's row; lanes top to bottom in natural order."""
    measured: dict[str, Any] = json.loads(page.evaluate(MEASURE))
    data, drawn = measured["data"], measured["bars"]
    assert data == as_dicts(prepare(bars))
    assert len(drawn) == len(data)
    for bar, shown in zip(data, drawn, strict=True):
        attrs = shown["attrs"]
        assert attrs["data-nodeid"] == bar["nodeid"]
        assert attrs["data-lane"] == bar["lane"]
        assert attrs["data-outcome"] == bar["outcome"]
        assert float(attrs["data-start"]) == bar["start"]
        assert float(attrs["data-wall"]) == bar["wall"]
        assert float(attrs["data-compile"]) == bar["compile_secs"]
        assert float(attrs["data-load"]) == bar["load_secs"]
        assert shown["title"].startswith(bar["nodeid"])
        assert ("o" in shown["seg"]) == (bar["outcome"] in ("failed", "error"))

    # One scale for all: fitted on every segment, then every width within a pixel of it.
    pairs = []
    for bar, shown in zip(data, drawn, strict=True):
        seconds = {"c": bar["compile_secs"], "l": bar["load_secs"], "r": run_secs(bar)}
        for cls, secs in seconds.items():
            box = shown["seg"].get(cls)
            pairs.append((secs, box[2] if box else 0.0))
    total = sum(secs * secs for secs, _ in pairs)
    assert total > 0
    scale = sum(secs * width for secs, width in pairs) / total
    assert scale > 0
    for secs, width in pairs:
        assert abs(width - scale * secs) <= 1.0, (secs, width, scale)

    # Left edges: start * scale from a common origin; segments follow one another.
    origins = []
    for bar, shown in zip(data, drawn, strict=True):
        boxes = [shown["seg"][cls] for cls in ("c", "l", "r") if cls in shown["seg"]]
        for before, after in itertools.pairwise(boxes):
            assert abs(before[0] + before[2] - after[0]) <= 1.0
        if boxes:
            origins.append(boxes[0][0] - scale * bar["start"])
    assert max(origins) - min(origins) <= 1.0

    # Rows: lanes top to bottom in natural order; the label nearest to each bar (by
    # height on the page) is its lane's.
    labels: list[tuple[str, float]] = [(lane, y) for lane, y in measured["lanes"]]
    assert [lane for lane, _ in sorted(labels, key=lambda item: item[1])] == sorted(
        {bar["lane"] for bar in data}, key=lane_sort_key
    )
    for bar, shown in zip(data, drawn, strict=True):
        for _, top, _, height in shown["seg"].values():
            nearest = min(labels, key=lambda item: abs(item[1] - (top + height / 2)))
            assert nearest[0] == bar["lane"]
    assert measured["scripts"] == 2
    return measured


HOSTILE_SESSION = [
    Bar("gw10", "tests/test_a.py::test_x[</script><script>alert(1)</script>]", 0, 3, 1, 0.5,
        "failed"),
    Bar("gw2", "tests/test_b.py::test_q[\"quotes\" & 'apostrophes' <b>bold</b>]", 0.5, 2, 0, 2,
        "passed"),
    Bar("gw2", "tests/test_b.py::test_lines[a\r\nb\rc\nd\te]", 2.6, 1.5, 0.2, 0.3, "skipped"),
    Bar("gw0", "tests/test_c.py::test_unicode[\u00e9\u6f22\U0001f600\u2028\u202e\ufeff]", 0.1,
        4, 4, 0, "error"),
    Bar("gw0", "tests/test_c.py::test_bad_numbers[nul\x00 lone\ud800]", math.nan, math.inf,
        -1, math.nan, "passed"),
    Bar("gw0", "tests/test_c.py::test_overfull", 4.2, 1, 5, 5, "passed"),
    Bar("gw1", "<!-- ]]> %%{init}%% #58; \u00b6\u00df", 1, 0.75, 0.25, 0.25, "PASSED"),
    Bar("gw1", "tests/test_d.py::test_zero", 2, 0, 0, 0, "passed"),
    Bar("gw1", "tests/test_d.py::test_cached", 2.5, 1.25, 0, 1, "passed"),
]  # fmt: skip


def test_browser_draws_what_the_json_says(tmp_path: Path, open_page: Any) -> None:
    path = tmp_path / "timeline.html"
    path.write_text(html(HOSTILE_SESSION, title="<script>alert('title')</script>"), "utf-8")
    page = open_page(path)
    measured = check_drawing(page, HOSTILE_SESSION)
    assert "9 tests on 4 lanes" in measured["text"]
    assert page.evaluate("document.title") == "<script>alert('title')</script>"
    assert page.problems() == []

    # Hover over the widest bar: the tooltip shows its details, and nothing throws.
    widest = max(range(len(measured["bars"])), key=lambda i: measured["data"][i]["wall"])
    x, y = page.evaluate(
        f"""(() => {{
          const g = document.querySelectorAll("svg.tl g.b")[{widest}];
          g.scrollIntoView({{block: "center", inline: "center"}});
          const r = g.querySelector("rect").getBoundingClientRect();
          return [r.left + r.width / 2, r.top + r.height / 2];
        }})()"""
    )
    page.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
    # Mouse moves are delivered with the next frame: two frames later it has been handled.
    tip = page.evaluate(
        """new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(() => {
             const tip = document.getElementById("tip");
             done([tip.hidden, tip.textContent]);
           })))"""
    )
    nodeid = measured["data"][widest]["nodeid"]
    assert tip[0] is False
    assert tip[1].startswith(nodeid + "\n")
    assert "wall 4.000s = compile 4.000s + load 0.000s + run 0.000s" in tip[1]
    page.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": 2, "y": 2})
    assert page.problems() == []


def test_browser_big_session(tmp_path: Path, open_page: Any) -> None:
    bars = big_session()
    path = tmp_path / "big.html"
    path.write_text(html(bars, title="5,000 tests"), "utf-8")
    page = open_page(path)
    check_drawing(page, bars)
    assert page.problems() == []


def test_browser_empty_page(tmp_path: Path, open_page: Any) -> None:
    path = tmp_path / "empty.html"
    path.write_text(html([], title="empty"), "utf-8")
    page = open_page(path)
    measured = json.loads(page.evaluate(MEASURE))
    assert measured["data"] == []
    assert measured["bars"] == []
    assert "Nothing to show" in measured["text"]
    assert page.problems() == []


def test_browser_harness_sees_what_it_must(tmp_path: Path, open_page: Any) -> None:
    """The checks above pass on silence; here the page misbehaves in each way they look
    for, so a harness that stopped hearing about it would fail."""
    path = tmp_path / "bad.html"
    path.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"script-src 'none'\">"
        "</head><body><img src='missing.png'><script>throw new Error('boom')</script>"
        "</body></html>",
        "utf-8",
    )
    page = open_page(path)
    problems = page.problems()
    assert any("missing.png" in problem for problem in problems), problems
    assert any("Content Security Policy" in problem for problem in problems), problems

    path = tmp_path / "throws.html"
    path.write_text(
        "<!DOCTYPE html><html><body><script>console.error('said'); null.x;</script></body></html>",
        "utf-8",
    )
    page = open_page(path)
    problems = page.problems()
    assert any(problem.startswith("uncaught:") for problem in problems), problems
    assert any(problem.startswith("console.error:") for problem in problems), problems
