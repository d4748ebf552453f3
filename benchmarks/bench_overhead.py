"""Bench 2: the plugin's overhead on a suite that compiles nothing, and its import time.

A generated module imports jax at the top (as a JAX suite would) and defines 500
trivial test functions. ``pytest -q -p no:randomly`` runs it in three variants:

- on: the plugin with a cache (``--jax-cache-dir`` a temporary directory, reused like a
  user's cache);
- installed: the plugin installed, no cache asked for (no option, no ini, no
  environment): what every pytest run of a user who has it installed pays;
- off: ``-p no:jaxcache``.

Each repeat runs the three back to back, the order rotating; figures are medians of
per-repeat ratios to ``off``, serially and with ``-n 2``.

Import time: ``python -X importtime -c "import pytest_jaxcache.plugin"``, repeated; the
figure is what the plugin's own modules cost (the cumulative microseconds of the
``pytest_jaxcache`` modules, less every module inside them that ``import pytest`` imports
itself, ``pytest`` and ``typing`` among them: a session has imported those before it
loads any plugin) over the cumulative microseconds of importing ``pytest`` in the same
run. A second command, ``import pytest`` first, gives the plugin's cost on top of what
pytest itself imports (the stdlib modules both use are then already loaded). Bytecode is
written once (untimed) and read by every measured run, as on a user's machine.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from benchlib import (
    BenchError,
    Context,
    Run,
    Summary,
    Workspace,
    bytecode_env,
    cpu,
    fmt_ratio,
    interleave,
    prime,
    ratios,
    run_pytest,
    run_timed,
    section,
    subprocess_env,
    summarise,
    table,
    verdict,
    wall,
)

NAME = "overhead"
TITLE = "Bench 2: overhead on trivial tests, and import time"
N_TESTS = 500
TARGET = 1.02  # on / off, serial, median wall
INSTALLED_TOLERANCE = 0.01  # installed / off: 1.00 within the noise
IMPORT_TARGET_US = 5000  # the plugin's own import time (absolute, this machine)
SUMMARY_MARK = "jax cache:"  # the plugin's one-line summary under -q
ON, INSTALLED, OFF = "on", "installed", "off"
LABELS = {
    ON: "plugin on (`--jax-cache-dir`)",
    INSTALLED: "plugin installed, no cache asked for",
    OFF: "`-p no:jaxcache`",
}
PACKAGE = "pytest_jaxcache"
IMPORT_ALONE = "import pytest_jaxcache.plugin"
IMPORT_AFTER_PYTEST = "import pytest; import pytest_jaxcache.plugin"


def repeats(quick: bool) -> tuple[int, int, int]:
    """(serial repeats, ``-n 2`` repeats, import-time repeats)."""
    return (3, 3, 5) if quick else (15, 5, 21)


def write_suite(dest: Path, n_tests: int = N_TESTS) -> Path:
    """A rootdir with its own ini and ``n_tests`` trivial tests in one module."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "pytest.ini").write_text("[pytest]\n")
    body = ["import jax  # noqa: F401  (a JAX suite imports it)\n"]
    body += [f"\ndef test_{i}():\n    assert {i} + 1 > {i}\n" for i in range(n_tests)]
    (dest / "test_trivial.py").write_text("\n".join(body))
    return dest


def _run(variant: str, extra: list[str], suite: Path, cache: Path, ws: Workspace) -> Run:
    args = {
        ON: [f"--jax-cache-dir={cache}"],
        INSTALLED: [],
        OFF: ["-p", "no:jaxcache"],
    }[variant]
    run = run_pytest([*args, *extra], cwd=suite, workspace=ws, timer=False)
    active = SUMMARY_MARK in run.output
    if active != (variant == ON):
        state = "active" if active else "inactive"
        raise BenchError(f"plugin {state} in: {args + extra}:\n{run.output[-2000:]}")
    if f"{N_TESTS} passed" not in run.output:
        raise BenchError(f"expected {N_TESTS} passed:\n{run.output[-2000:]}")
    return run


def _variant(
    variant: str, extra: list[str], suite: Path, cache: Path, ws: Workspace, _index: int
) -> Run:
    return _run(variant, extra, suite, cache, ws)


def _measure(
    label: str, count: int, extra: list[str], suite: Path, cache: Path, ws: Workspace
) -> list[dict[str, Run]]:
    return interleave(
        count,
        f"{NAME}: {label}",
        {name: partial(_variant, name, extra, suite, cache, ws) for name in LABELS},
    )


# -- import time -------------------------------------------------------------------------

_IMPORTTIME = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|( *)(\S+)\s*$")


@dataclass(frozen=True)
class ImportLine:
    self_us: int
    cumulative_us: int
    depth: int
    module: str


@dataclass(frozen=True)
class ImportTimes:
    """One ``-X importtime`` run: the plugin's own modules and pytest, in microseconds."""

    plugin_us: int  # pytest_jaxcache modules, cumulative, less the pytest they import
    plugin_self_us: int  # the self time of pytest_jaxcache modules only
    pytest_us: int  # importing pytest, cumulative (0: already imported before)


def parse_importtime(text: str) -> list[ImportLine]:
    lines = []
    for raw in text.splitlines():
        found = _IMPORTTIME.match(raw)
        if found:
            self_us, cumulative, indent, module = found.groups()
            lines.append(ImportLine(int(self_us), int(cumulative), len(indent) // 2, module))
    return lines


def _ours(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def _pytests(module: str) -> bool:
    return module in ("pytest", "_pytest") or module.startswith(("pytest.", "_pytest."))


def import_times(lines: list[ImportLine], pytests_own: frozenset[str] = frozenset()) -> ImportTimes:
    """Walk the import tree (a module's line follows the lines of what it imported, one
    level deeper): the cumulative time of the outermost pytest_jaxcache modules, less
    the outermost modules inside them that are pytest's or that ``import pytest``
    imports itself (``pytests_own``); pytest's cumulative time wherever it was
    imported."""
    plugin = plugin_self = pytest_us = 0
    # parents[i]: the line that imported line i (None at the top)
    parents: list[int | None] = [None] * len(lines)
    pending: dict[int, list[int]] = {}  # depth -> lines waiting for their parent
    for index, line in enumerate(lines):
        for child in pending.pop(line.depth + 1, []):
            parents[child] = index
        pending.setdefault(line.depth, []).append(index)

    def inside(index: int, test: Callable[[str], bool]) -> bool:
        parent = parents[index]
        while parent is not None:
            if test(lines[parent].module):
                return True
            parent = parents[parent]
        return False

    for index, line in enumerate(lines):
        if _ours(line.module):
            plugin_self += line.self_us
            if not inside(index, _ours):
                plugin += line.cumulative_us
        elif _pytests(line.module) and not inside(index, _pytests):
            pytest_us += line.cumulative_us
            if inside(index, _ours):
                plugin -= line.cumulative_us
        elif (
            line.module in pytests_own
            and inside(index, _ours)
            and not inside(index, lambda module: module in pytests_own or _pytests(module))
        ):
            plugin -= line.cumulative_us
    return ImportTimes(plugin, plugin_self, pytest_us)


def pytests_own_modules(cwd: Path, ws: Workspace) -> frozenset[str]:
    """What ``import pytest`` imports (stdlib modules such as ``typing`` included)."""
    env = subprocess_env(bytecode_env(ws))
    timed = run_timed([sys.executable, "-X", "importtime", "-c", "import pytest"], cwd=cwd, env=env)
    return frozenset(line.module for line in parse_importtime(timed.output))


def _import_run(
    code: str, cwd: Path, ws: Workspace, pytests_own: frozenset[str] = frozenset()
) -> ImportTimes:
    env = subprocess_env(bytecode_env(ws))
    timed = run_timed([sys.executable, "-X", "importtime", "-c", code], cwd=cwd, env=env)
    times = import_times(parse_importtime(timed.output), pytests_own)
    if times.plugin_us <= 0:
        raise BenchError(f"no {PACKAGE} module in the import times of {code!r}")
    return times


def _import_variant(
    code: str, cwd: Path, ws: Workspace, pytests_own: frozenset[str], _index: int
) -> ImportTimes:
    return _import_run(code, cwd, ws, pytests_own)


def _measure_imports(count: int, cwd: Path, ws: Workspace) -> list[dict[str, ImportTimes]]:
    codes = {"alone": IMPORT_ALONE, "after": IMPORT_AFTER_PYTEST}
    for code in codes.values():
        _import_run(code, cwd, ws)  # untimed: writes the bytecode
    own = pytests_own_modules(cwd, ws)
    return interleave(
        count,
        f"{NAME}: import time",
        {name: partial(_import_variant, code, cwd, ws, own) for name, code in codes.items()},
    )


def _import_rows(runs: list[dict[str, ImportTimes]]) -> tuple[list[list[str]], str]:
    alone = [r["alone"] for r in runs]
    after = [r["after"] for r in runs]
    share = summarise([t.plugin_us / t.pytest_us for t in alone])
    self_share = summarise([t.plugin_self_us / t.pytest_us for t in alone])
    # In the second command pytest was imported first: its time is that run's.
    after_share = summarise([t.plugin_us / t.pytest_us for t in after])
    absolute = summarise([float(t.plugin_us) for t in alone])
    absolute_after = summarise([float(t.plugin_us) for t in after])
    rows = [
        [
            f'`python -X importtime -c "{IMPORT_ALONE}"`: {PACKAGE} modules, cumulative '
            "less what `import pytest` imports itself",
            fmt_ratio(share, 3),
        ],
        [f"the same, self time of {PACKAGE} modules only", fmt_ratio(self_share, 3)],
        [
            f'`python -X importtime -c "{IMPORT_AFTER_PYTEST}"`: what the plugin adds after pytest',
            fmt_ratio(after_share, 3),
        ],
    ]
    ok = absolute.median < IMPORT_TARGET_US
    note = (
        f"Import time of the plugin's own modules (absolute, this machine, {absolute.n} "
        f"runs, median (min-max)): {absolute.median:.0f} us ({absolute.low:.0f}-"
        f"{absolute.high:.0f}) importing it alone; {absolute_after.median:.0f} us "
        f"({absolute_after.low:.0f}-{absolute_after.high:.0f}) after `import pytest`. "
        f"Target < {IMPORT_TARGET_US} us (alone): {verdict(ok)}."
    )
    return rows, note


# -- the section -------------------------------------------------------------------------


def _installed_verdict(value: Summary) -> str:
    near = abs(value.median - 1.0) <= INSTALLED_TOLERANCE
    return verdict(near or value.low <= 1.0 <= value.high)


def _rows(label: str, runs: list[dict[str, Run]]) -> list[list[object]]:
    on_wall, on_cpu = ratios(runs, ON, OFF, wall), ratios(runs, ON, OFF, cpu)
    in_wall, in_cpu = ratios(runs, INSTALLED, OFF, wall), ratios(runs, INSTALLED, OFF, cpu)
    serial = label == "serial"
    return [
        [
            label,
            f"{LABELS[ON]} / off",
            len(runs),
            fmt_ratio(on_wall, 3),
            fmt_ratio(on_cpu, 3),
            f"<= {TARGET:.2f}" if serial else "-",
            verdict(on_wall.median <= TARGET) if serial else "-",
        ],
        [
            label,
            f"{LABELS[INSTALLED]} / off",
            len(runs),
            fmt_ratio(in_wall, 3),
            fmt_ratio(in_cpu, 3),
            "1.00 (within noise)",
            _installed_verdict(in_wall),
        ],
    ]


def run(ctx: Context) -> str:
    """Run bench 2 and return its markdown section."""
    ws = ctx.workspace
    suite = write_suite(ws.path("trivial-suite"))
    cache = ws.path("trivial-cache")
    prime(suite, ws)
    _run(ON, [], suite, cache, ws)  # untimed: create the cache dir, as a user has it
    serial_count, xdist_count, import_count = repeats(ctx.quick)
    serial = _measure("serial", serial_count, [], suite, cache, ws)
    xdist = _measure("-n 2", xdist_count, ["-n", "2"], suite, cache, ws)
    imports = _measure_imports(import_count, suite, ws)
    intro = (
        f"{N_TESTS} trivial tests in one module that imports jax, run as "
        "`python -m pytest -q -p no:randomly` in three variants: "
        + "; ".join(f"{key}: {label}" for key, label in LABELS.items())
        + ". Each repeat runs the three back to back, the order rotating; cells: median "
        "(min-max) of the per-repeat ratios to `-p no:jaxcache` of wall time and of CPU "
        "time, both including interpreter start and `import jax`."
    )
    headers = [
        "run",
        "variant",
        "repeats",
        "wall time ratio",
        "CPU time ratio",
        "target (median wall)",
        "",
    ]
    rows = _rows("serial", serial) + _rows("`-n 2`", xdist)
    import_rows, import_note = _import_rows(imports)
    imports_table = table(
        [f"import time ({len(imports)} runs each, interleaved)", "/ importing pytest, same run"],
        import_rows,
    )
    note = (
        "CPU time (user + system, of pytest and the workers it waited for) is the less "
        "noisy figure on a shared machine: other jobs stretch wall time, not CPU time. "
        "Bytecode is written under the benchmark's temporary directory "
        "(`PYTHONPYCACHEPREFIX`) and read by every measured run."
    )
    return section(TITLE, intro, table(headers, rows), note, imports_table, import_note)
