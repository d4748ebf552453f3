"""A timeline of a test session: one lane per xdist worker (or CI shard), one bar per test.

:func:`html` renders a self-contained page for ``--jax-cache-timeline=FILE.html``: inline
SVG, CSS and one small script, no network at all (a Content-Security-Policy in the page
forbids every fetch, and lets only this module's own style and script run, by hash).
:func:`mermaid` renders the longest tests as a Mermaid gantt chart for a GitHub job
summary.

Everything in a :class:`Bar` comes from outside (reports from workers, other shards'
files), so both functions first pass each bar through :func:`sanitise`: numbers that are
not finite or negative become 0, compile and load are clamped into the wall time, and text
is made safe to carry through HTML, JSON and UTF-8. Standard library only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from html import escape
from typing import Any

from pytest_jaxcache.formats import format_duration, format_secs

__all__ = [
    "DATA_ELEMENT_ID",
    "Bar",
    "bars_of",
    "html",
    "lane_sort_key",
    "mermaid",
    "prepare",
    "sanitise",
]

DATA_ELEMENT_ID = "jaxcache-timeline-data"
"""The id of the ``<script type="application/json">`` element that holds the bars."""

# Caps on what outside values can make us draw. A node id longer than this is cut (with
# an ellipsis), so that one absurd parametrisation cannot blow the page up; longer than
# any real one we have seen. MAX_SECONDS (about 116 days) keeps every number printable
# in a short fixed form.
MAX_TEXT = 2000
MAX_LANE = 200
MAX_OUTCOME = 40
MAX_SECONDS = 1e7

# Layout of the chart, in CSS pixels.
_ROW_H = 24
_BAR_Y = 4
_BAR_H = 16
_AXIS_H = 26
_PAD_R = 16
_MIN_PLOT_W = 900
_MAX_PLOT_W = 20000
_PX_PER_BAR = 6  # the plot widens until the busiest lane averages this much per test
_MIN_TICK_PX = 90


@dataclass(frozen=True)
class Bar:
    """One test on the timeline. All times in seconds."""

    lane: str  # "gw0", "gw1", ... or "main" (no xdist), or "shard 2/4"
    nodeid: str
    start: float  # since the session started
    wall: float  # setup + call + teardown
    compile_secs: float  # of wall: compiling
    load_secs: float  # of wall: loading programs from the cache
    outcome: str  # "passed" | "failed" | "skipped" | "error"

    @property
    def run_secs(self) -> float:
        """The rest of the wall time: neither compiling nor loading (never negative), to the
        microsecond like every time of a sanitised bar."""
        return max(0.0, round(self.wall - self.compile_secs - self.load_secs, 6))


# --------------------------------------------------------------------------- sanitising


def _seconds(value: object) -> float:
    """A duration or offset from outside: finite, >= 0, <= MAX_SECONDS, to the microsecond.

    Rounding keeps the page small and makes the numbers in the JSON, the data attributes
    and the drawing the same decimal strings.
    """
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return 0.0
    if not math.isfinite(number) or number <= 0.0:
        return 0.0
    return round(min(number, MAX_SECONDS), 6)


def _text(value: object) -> str:
    """Text from outside, made safe to write as UTF-8 and to read back from HTML unchanged.

    Lone surrogates (from bytes decoded with surrogateescape) cannot be encoded, so they
    become U+FFFD; so does NUL, which an HTML parser turns into U+FFFD anyway.
    """
    text = "" if value is None else value if isinstance(value, str) else str(value)
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text.replace("\x00", "\ufffd")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def sanitise(bar: Bar) -> Bar:
    """The bar as it is drawn: every number finite and >= 0, compile + load <= wall.

    When compile + load exceed the wall time, compile keeps its share first (it is the
    number this plugin is about) and load gets what is left.
    """
    wall = _seconds(bar.wall)
    compile_secs = min(_seconds(bar.compile_secs), wall)
    load_secs = min(_seconds(bar.load_secs), round(wall - compile_secs, 6))
    return Bar(
        lane=_cut(_text(bar.lane).strip(), MAX_LANE) or "main",
        nodeid=_cut(_text(bar.nodeid), MAX_TEXT),
        start=_seconds(bar.start),
        wall=wall,
        compile_secs=compile_secs,
        load_secs=load_secs,
        outcome=_cut(_text(bar.outcome).strip().lower(), MAX_OUTCOME) or "unknown",
    )


def lane_sort_key(lane: str) -> tuple[tuple[int, int, str], ...]:
    """Natural order: "gw2" before "gw10", "shard 2/4" before "shard 10/12".

    Runs of ASCII digits compare by value (by length, then digits, so that no int() is
    needed on hostile lengths); other runs compare case-insensitively.
    """
    key: list[tuple[int, int, str]] = []
    for part in re.split(r"([0-9]+)", lane):
        if not part:
            continue
        if part.isdigit():
            digits = part.lstrip("0") or "0"
            key.append((0, len(digits), digits))
        else:
            key.append((1, 0, part.casefold()))
    # The end sorts before anything ("a" < "a9"), and the whole text breaks ties ("gw01"
    # and "gw1", "A" and "a"): a total order, the same on every run.
    key.append((-1, 0, lane))
    return tuple(key)


def prepare(bars: Iterable[Bar]) -> list[Bar]:
    """The sanitised bars in drawing order: lanes in natural order, then by start.

    This is also the order of the embedded JSON and of the bar groups in the SVG.
    """
    clean = [sanitise(bar) for bar in bars]
    order = sorted(
        range(len(clean)), key=lambda i: (lane_sort_key(clean[i].lane), clean[i].start, i)
    )
    return [clean[i] for i in order]


# ------------------------------------------------------------------------------- HTML


def _num(value: float) -> str:
    """Shortest decimal form of an already rounded number: "2", "0.25", "1.5e-05"."""
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def _px(value: float) -> str:
    """A pixel coordinate to 1/100 px (the drawing is exact to well under a pixel)."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _attr(text: str) -> str:
    """Escape for an attribute value or element text. CR is written as a character
    reference because an HTML parser turns a raw CR (and CRLF) into LF."""
    return escape(text, quote=True).replace("\r", "&#13;")


def _json_for_script(value: object) -> str:
    """JSON that cannot end its <script> element early or open a comment: no '<' at all
    (so no '</script' and no '<!--'), and ASCII only."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _tick_label(secs: float, step: float, clock: bool) -> str:
    """An axis label: "2.5s" on short sessions, "12:30" (or "1:02:30") past a minute."""
    if not clock:
        decimals = max(0, -math.floor(math.log10(step) + 1e-9))
        return f"{secs:.{decimals}f}s"
    minutes, rest = divmod(round(secs), 60)
    if minutes < 60:
        return f"{minutes}:{rest:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{rest:02d}"


# Past 10 s between ticks, steps that read well on a clock.
_CLOCK_STEPS = tuple(60.0 * m for m in (0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 1440))


def _tick_step(px_per_sec: float) -> float:
    """The smallest step that puts ticks at least _MIN_TICK_PX apart: 1, 2 or 5 times a
    power of ten up to 10 s, then whole clock units."""
    want = _MIN_TICK_PX / px_per_sec
    if want > 10:
        for step in _CLOCK_STEPS:
            if step >= want:
                return step
        return 86400.0 * math.ceil(want / 86400.0)
    exponent = math.floor(math.log10(want))
    for mantissa in (1.0, 2.0, 5.0):
        if mantissa * 10.0**exponent >= want:
            return mantissa * 10.0**exponent
    return 10.0 ** (exponent + 1)


_STYLE = """\
:root{color-scheme:light;--c:#e66101;--l:#3d85c6;--r:#b4b4b4;--fail:#b00020}
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
margin:16px;color:#1f2328;background:#fff}
h1{font-size:18px;margin:0 0 4px}
.summary{margin:0 0 8px;color:#57606a}
.legend{margin:0 0 10px}
.legend span{display:inline-block;margin-right:14px}
.sw{display:inline-block;width:12px;height:12px;vertical-align:-2px;margin-right:4px}
.sw.c{background:var(--c)}.sw.l{background:var(--l)}.sw.r{background:var(--r)}
.sw.o{border:2px solid var(--fail);width:8px;height:8px}
.wrap{overflow-x:auto;border:1px solid #d0d7de}
svg{display:block;font-size:11px}
.row{fill:#f6f8fa}
.grid{stroke:#d8dee4;stroke-width:1}
.tick{fill:#57606a}
.lane-label{fill:#1f2328}
.c{fill:var(--c)}.l{fill:var(--l)}.r{fill:var(--r)}
.o{fill:none;stroke:var(--fail);stroke-width:2}
.skipped rect{opacity:.45}
.b:hover rect{filter:brightness(.85)}
.empty{padding:24px;border:1px dashed #d0d7de;color:#57606a}
#tip{position:fixed;z-index:1;max-width:640px;padding:6px 8px;background:#1f2328;color:#fff;
border-radius:4px;pointer-events:none;white-space:pre-wrap;overflow-wrap:anywhere}
#tip b{font-weight:600}
"""

# The tooltip: reads the hovered bar's data attributes and writes text nodes only (never
# HTML), so no node id can inject anything. Every lookup is guarded: it must not throw.
_SCRIPT = """\
(function(){
var tip=document.getElementById("tip"),svg=document.querySelector("svg.tl");
if(!tip||!svg)return;
function n(v){var x=parseFloat(v);return isFinite(x)&&x>0?x:0;}
function s(x){return x.toFixed(3)+"s";}
function hide(){tip.hidden=true;}
svg.addEventListener("mousemove",function(e){
var t=e.target,g=t&&t.closest?t.closest("g.b"):null;
if(!g){hide();return;}
var d=g.dataset,w=n(d.wall),c=n(d.compile),l=n(d.load),r=Math.max(0,w-c-l);
var b=document.createElement("b");b.textContent=d.nodeid||"";
tip.replaceChildren(b,document.createTextNode("\\n"+(d.outcome||"")+" on "+(d.lane||"")+
" \\u00b7 start +"+s(n(d.start))+"\\nwall "+s(w)+" = compile "+s(c)+" + load "+s(l)+
" + run "+s(r)));
tip.hidden=false;
var x=e.clientX+14,y=e.clientY+14,bw=tip.offsetWidth,bh=tip.offsetHeight;
if(x+bw>innerWidth)x=Math.max(0,e.clientX-bw-14);
if(y+bh>innerHeight)y=Math.max(0,e.clientY-bh-14);
tip.style.left=x+"px";tip.style.top=y+"px";
});
svg.addEventListener("mouseleave",hide);
})();
"""


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


# No fetch of any kind (default-src 'none'); only this module's own style and script,
# pinned by hash, so that even an escaping bug could not run injected script. The icon
# link is data: so that browsers do not ask for /favicon.ico.
_CSP = (
    "default-src 'none'; img-src data:; base-uri 'none'; form-action 'none'; "
    f"style-src {_csp_hash(_STYLE)}; script-src {_csp_hash(_SCRIPT)}"
)


def _bar_markup(bar: Bar, x0: float, px_per_sec: float) -> str:
    failed = bar.outcome in ("failed", "error")
    classes = "b"
    if failed:
        classes += " f"
    elif bar.outcome == "skipped":
        classes += " skipped"
    title = (
        f"{bar.nodeid}\n{bar.outcome} on {bar.lane}, start +{format_duration(bar.start)}\n"
        f"wall {format_duration(bar.wall)} = compile {format_duration(bar.compile_secs)}"
        f" + load {format_duration(bar.load_secs)} + run {format_duration(bar.run_secs)}"
    )
    parts = [
        f'<g class="{classes}" data-nodeid="{_attr(bar.nodeid)}" data-lane="{_attr(bar.lane)}"'
        f' data-outcome="{_attr(bar.outcome)}" data-start="{_num(bar.start)}"'
        f' data-wall="{_num(bar.wall)}" data-compile="{_num(bar.compile_secs)}"'
        f' data-load="{_num(bar.load_secs)}"><title>{_attr(title)}</title>'
    ]
    # Segments sit side by side; each edge is computed from the cumulative seconds so that
    # rounding never accumulates along the bar.
    left = x0 + bar.start * px_per_sec
    edges = (0.0, bar.compile_secs, round(bar.compile_secs + bar.load_secs, 6), bar.wall)
    segments = zip(("c", "l", "r"), edges, edges[1:], strict=False)
    for cls, lo, hi in segments:
        if hi <= lo:
            continue
        x = left + lo * px_per_sec
        width = (hi - lo) * px_per_sec
        parts.append(
            f'<rect class="{cls}" x="{_px(x)}" y="{_BAR_Y}" width="{_px(width)}"'
            f' height="{_BAR_H}"/>'
        )
    if failed:
        parts.append(
            f'<rect class="o" x="{_px(left)}" y="{_BAR_Y - 1}"'
            f' width="{_px(max(bar.wall * px_per_sec, 1.0))}" height="{_BAR_H + 2}"/>'
        )
    parts.append("</g>")
    return "".join(parts)


def _svg(bars: Sequence[Bar]) -> tuple[str, float]:
    lanes: dict[str, list[Bar]] = {}
    for bar in bars:
        lanes.setdefault(bar.lane, []).append(bar)
    span = max((bar.start + bar.wall for bar in bars), default=0.0) or 1.0
    busiest = max(len(lane_bars) for lane_bars in lanes.values())
    plot_w = float(min(_MAX_PLOT_W, max(_MIN_PLOT_W, busiest * _PX_PER_BAR)))
    px_per_sec = plot_w / span
    longest_label = max(len(lane) for lane in lanes)
    label_w = float(min(220, max(60, 8 + 7 * min(longest_label, 30))))
    x0 = label_w
    width = x0 + plot_w + _PAD_R
    height = _AXIS_H + _ROW_H * len(lanes) + 4

    out = [
        f'<svg class="tl" xmlns="http://www.w3.org/2000/svg" width="{_px(width)}"'
        f' height="{height}" viewBox="0 0 {_px(width)} {height}"'
        f' data-px-per-sec="{px_per_sec!r}" data-x0="{_px(x0)}" role="img"'
        ' aria-label="Test timeline">'
    ]
    # Lane stripes and labels first, grid on top of the stripes, bars over everything.
    for index, lane in enumerate(lanes):
        y = _AXIS_H + index * _ROW_H
        label = lane if len(lane) <= 30 else lane[:29] + "\u2026"
        if index % 2 == 0:
            out.append(f'<rect class="row" x="0" y="{y}" width="{_px(width)}" height="{_ROW_H}"/>')
        out.append(
            f'<text class="lane-label" x="6" y="{y + 16}" data-lane="{_attr(lane)}">'
            f"<title>{_attr(lane)}</title>{_attr(label)}</text>"
        )
    step = _tick_step(px_per_sec)
    count = math.floor(span / step + 1e-9)
    clock = span >= 60 and step >= 1
    for k in range(count + 1):
        secs = k * step
        x = _px(x0 + secs * px_per_sec)
        out.append(
            f'<line class="grid" x1="{x}" x2="{x}" y1="{_AXIS_H - 6}" y2="{height}"/>'
            f'<text class="tick" x="{x}" y="{_AXIS_H - 10}" text-anchor="middle">'
            f"{_tick_label(secs, step, clock)}</text>"
        )
    for index, lane_bars in enumerate(lanes.values()):
        out.append(f'<g class="lane" transform="translate(0 {_AXIS_H + index * _ROW_H})">')
        out.extend(_bar_markup(bar, x0, px_per_sec) for bar in lane_bars)
        out.append("</g>")
    out.append("</svg>")
    return "".join(out), span


def html(bars: Sequence[Bar], *, title: str) -> str:
    """A self-contained HTML page drawing ``bars``, one lane per worker or shard.

    The sanitised bars (see :func:`prepare`) are embedded as JSON in
    ``<script type="application/json" id="jaxcache-timeline-data">``, in the same order as
    the ``<g class="b">`` groups of the SVG, each of which carries the same values in its
    data attributes (data-nodeid, data-lane, data-outcome, data-start, data-wall,
    data-compile, data-load). Segment widths are the seconds times the SVG's
    ``data-px-per-sec``.
    """
    shown = prepare(bars)
    safe_title = _cut(_text(title), MAX_TEXT)
    data = _json_for_script([asdict(bar) for bar in shown])
    head = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{_attr(safe_title)}</title>\n<style>{_STYLE}</style></head>\n<body>\n"
        f"<h1>{_attr(safe_title)}</h1>\n"
    )
    tail = (
        f'<script type="application/json" id="{DATA_ELEMENT_ID}">{data}</script>\n'
        f"<script>{_SCRIPT}</script>\n</body></html>\n"
    )
    if not shown:
        return (
            head + '<p class="empty">Nothing to show: no tests were recorded in this'
            " session.</p>\n" + tail
        )
    svg, span = _svg(shown)
    lanes = len({bar.lane for bar in shown})
    failed = sum(bar.outcome in ("failed", "error") for bar in shown)
    summary = (
        f"{len(shown)} test{'s' if len(shown) != 1 else ''} on {lanes}"
        f" lane{'s' if lanes != 1 else ''} over {format_duration(span)}:"
        f" compiling {format_duration(math.fsum(bar.compile_secs for bar in shown))},"
        f" loading from the cache {format_duration(math.fsum(bar.load_secs for bar in shown))},"
        f" running {format_duration(math.fsum(bar.run_secs for bar in shown))}"
        + (f"; {failed} failed or errored" if failed else "")
        + "."
    )
    legend = (
        '<p class="legend"><span><i class="sw c"></i>compiling</span>'
        '<span><i class="sw l"></i>loading from the cache</span>'
        '<span><i class="sw r"></i>running (the rest)</span>'
        '<span><i class="sw o"></i>failed or error</span></p>\n'
    )
    return (
        head
        + f'<p class="summary">{_attr(summary)}</p>\n'
        + legend
        + f'<div class="wrap">{svg}</div>\n<div id="tip" hidden></div>\n'
        + tail
    )


# ---------------------------------------------------------------------------- Mermaid

# Words that start a statement in Mermaid's gantt grammar (matched case-insensitively);
# a task named like one would be read as that statement.
_MERMAID_KEYWORDS = (
    "accdescr",
    "acctitle",
    "axisformat",
    "call",
    "click",
    "dateformat",
    "excludes",
    "gantt",
    "href",
    "inclusiveenddates",
    "includes",
    "section",
    "tickinterval",
    "title",
    "todaymarker",
    "topaxis",
    "weekday",
    "weekend",
)
_MERMAID_NAME = 60
# ':' ends a task name, ';' and '#' end a statement or start a comment, '%' can start a
# comment or a directive, braces a directive; the rest is in case a label is read as
# HTML. U+FB02 and U+00B6 are what Mermaid encodes entities into while it parses.
_MERMAID_SPECIAL = frozenset(":;#%{}<>\"'`\\&\ufb02\u00b6")


def _mermaid_text(text: str, limit: int) -> str:
    """Text for a Mermaid task or section name.

    Mermaid decodes ``#<number>;`` entity codes in labels, so every character that its
    gantt grammar treats specially is written that way: ':' ends a task name, ';' and '#'
    end a statement or start a comment, '%%' starts a comment, newlines end the line. Text
    longer than ``limit`` keeps its end (where a node id has the test's name).
    """
    text = " ".join(text.split())  # newlines, tabs and runs of blanks: one space
    if len(text) > limit:
        text = "\u2026" + text[-(limit - 1) :]
    out: list[str] = []
    for char in text:
        if char in _MERMAID_SPECIAL or not char.isprintable():
            out.append(f"#{ord(char)};")
        else:
            out.append(char)
    escaped = "".join(out) or "#8203;"  # an empty name is a syntax error: zero-width space
    if escaped.lower().startswith(_MERMAID_KEYWORDS):
        escaped = f"#{ord(escaped[0])};{escaped[1:]}"
    return escaped


def mermaid(bars: Sequence[Bar], *, max_bars: int = 40) -> str:
    """The ``max_bars`` longest tests as a fenced Mermaid gantt chart (```mermaid ... ```).

    Times are milliseconds since the session started (``dateFormat x``, so Mermaid reads
    them as instants just after 1970-01-01); the axis shows seconds since the start
    (``%s``, seconds since the epoch: time-zone free, unlike ``%M:%S``, which the viewer's
    browser would shift by half an hour in UTC+5:30). One section per lane. A failed test
    is ``crit``, one that compiled is ``active``, one that only loaded from the cache is
    ``done``.
    """
    shown = prepare(bars)
    try:
        limit = max(0, int(max_bars))
    except (TypeError, ValueError, OverflowError):
        limit = 0
    longest = sorted(range(len(shown)), key=lambda i: (-shown[i].wall, i))[:limit]
    kept = [shown[i] for i in sorted(longest)]  # back in lane, then start, order
    left_out = len(shown) - len(kept)
    span = max((bar.start + bar.wall for bar in kept), default=0.0)
    if not shown:
        title = "No tests were recorded"
    elif left_out:
        title = f"The {len(kept)} longest of {len(shown)} tests ({left_out} more not shown)"
    else:
        title = f"All {len(shown)} test{'s' if len(shown) != 1 else ''}"
    lines = [
        "```mermaid",
        "gantt",
        f"    title {title}, seconds since the session started",
        "    dateFormat x",
        # whole seconds, or to the millisecond where d3 would put ticks under a second apart
        f"    axisFormat {'%s' if span >= 15 else '%s.%L'}",
        "    todayMarker off",
        "    %% crit: failed or error, active: compiled, done: only loaded from the cache",
    ]
    lane = None
    for bar in kept:
        if bar.lane != lane:
            lane = bar.lane
            lines.append(f"    section {_mermaid_text(lane, 40)}")
        details = [format_secs(bar.wall)]
        if bar.compile_secs > 0:
            details.append(f"compile {format_secs(bar.compile_secs)}")
        if bar.load_secs > 0:
            details.append(f"load {format_secs(bar.load_secs)}")
        name = _mermaid_text(bar.nodeid, _MERMAID_NAME)
        label = f"{name} ({', '.join(details)})"
        if bar.outcome in ("failed", "error"):
            tag = "crit, "
        elif bar.compile_secs > 0:
            tag = "active, "
        elif bar.load_secs > 0:
            tag = "done, "
        else:
            tag = ""
        start_ms = round(bar.start * 1000)
        end_ms = max(start_ms + 1, round((bar.start + bar.wall) * 1000))
        lines.append(f"    {label} :{tag}{start_ms}, {end_ms}")
    lines.append("```")
    return "\n".join(lines) + "\n"


def bars_of(snapshot: Mapping[str, Any]) -> list[Bar]:
    """One bar per test of a session's snapshot that ran (``tests[]``): its worker's
    lane (``main`` without xdist; with a shard, the shard beside it), its start from the
    session's first test, and its compile and load times summed over its phases."""
    shard = snapshot.get("shard")
    suffix = f" shard {shard['index']}/{shard['count']}" if isinstance(shard, dict) else ""
    ran = [test for test in snapshot.get("tests") or () if test.get("started")]
    if not ran:
        return []
    first = min(float(test["started"]) for test in ran)
    bars = []
    for test in ran:
        phases = list((test.get("phases") or {}).values())
        bars.append(
            Bar(
                lane=f"{test.get('worker') or 'main'}{suffix}",
                nodeid=str(test.get("nodeid", "")),
                start=float(test["started"]) - first,
                wall=float(test.get("wall_secs") or 0.0),
                compile_secs=sum(float(phase.get("compile_secs", 0.0)) for phase in phases),
                load_secs=sum(float(phase.get("retrieval_secs", 0.0)) for phase in phases),
                outcome=str(test.get("outcome") or "unknown"),
            )
        )
    return bars
