"""Bench: how the README's install commands resolve and install, per extra and per pip.

For each of ``.``, ``.[gcs]``, ``.[s3]`` and ``.[test]``, a fresh virtual environment
(``python -m venv``) runs ``python -m pip install -e "<checkout>[extra]"`` (the README's
commands, on a copy of this checkout as a clone holds it), with

- the system's pip: the one ``venv`` puts in (``ensurepip``'s), and
- the newest pip: ``python -m pip install -U pip`` first (not timed).

Figures: each install's wall time as a ratio to the plain ``.`` install with the same pip
in the same repeat, and whether resolution backtracked: the number of pip's
``INFO: pip is looking at multiple versions of ...`` lines (one per package it goes back
on). Each install has a 10-minute limit; one that runs past it is reported as such.
Before the timed installs, one untimed ``.[test]`` install per pip fills pip's caches
(the test extra holds every other extra): the timed installs run on a warm package cache.

The one absolute figure of the benchmarks is here, labelled as such: the seconds of each
install on this machine with a warm package cache, because the question is whether the
README's commands install in under 2 minutes there.

This benchmark needs only the standard library (the CI job that runs it has nothing
installed). Its children are pip in fresh environments: they get this process's
environment without what would point them at another environment (``PYTHONPATH``,
``PYTHONHOME``, ``VIRTUAL_ENV``), and pip's own settings (``PIP_*``, pip.conf) as a user's
shell has them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (
    REPO,
    BenchError,
    BenchTimeout,
    Context,
    Summary,
    Timed,
    Workspace,
    fmt_count,
    fmt_ratio,
    log,
    ratio,
    rotate,
    run_timed,
    section,
    summarise,
    table,
    verdict,
)

NAME = "installs"
TITLE = "Bench: installs per extra and pip (fresh virtual environments)"
EXTRAS = ("", "gcs", "s3", "test")
SYSTEM, NEWEST = "system", "newest"
PIPS = (SYSTEM, NEWEST)
INSTALL_TIMEOUT_SECS = 600.0
SETUP_TIMEOUT_SECS = 600.0
BACKTRACK = "INFO: pip is looking at multiple versions of"
BACKTRACK_TARGET = 3  # "a few" backtracking steps at most, per install
ABSOLUTE_TARGET_SECS = 120.0  # the README's commands (`.` and `.[test]`), warm cache
README_EXTRAS = ("", "test")


def repeats(quick: bool) -> int:
    return 1 if quick else 2


def spec(extra: str) -> str:
    return "." if not extra else f".[{extra}]"


@dataclass(frozen=True)
class Install:
    """One timed install (``timed`` None: it did not finish; ``failure`` says how)."""

    timed: Timed | None
    backtracks: int
    pip_version: str
    failure: str = ""
    backtracked: tuple[str, ...] = ()  # the packages pip went back on


@dataclass
class Repeat:
    installs: dict[tuple[str, str], Install] = field(default_factory=dict)  # (pip, extra)


def pip_env(venv: Path) -> dict[str, str]:
    """This environment, pointed at ``venv`` and nothing else (pip's settings kept)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")
    }
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "/usr/bin:/bin")])
    env["VIRTUAL_ENV"] = str(venv)
    return env


def checkout(dest: Path) -> Path:
    """A copy of the project as a clone holds it: tracked and new files, nothing built
    (as tests/test_readme.py copies it)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        ignore = shutil.ignore_patterns(
            ".git", "__pycache__", "*.egg-info", ".jaxcache", "build", "dist", "results"
        )
        shutil.copytree(REPO, dest, ignore=ignore)
        return dest
    for name in listed:
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def fresh_venv(ws: Workspace, pip: str) -> Path:
    """A new virtual environment with the system's pip, or the newest (untimed)."""
    root = ws.fresh(f"venv-{pip}")
    venv = root / "venv"
    run_timed([sys.executable, "-m", "venv", venv], cwd=root, env=pip_env(venv))
    if pip == NEWEST:
        run_timed(
            [venv / "bin" / "python", "-m", "pip", "install", "-U", "pip"],
            cwd=root,
            env=pip_env(venv),
            timeout=SETUP_TIMEOUT_SECS,
        )
    return venv


def pip_version(venv: Path) -> str:
    command: list[str | Path] = [venv / "bin" / "python", "-m", "pip", "--version"]
    done = run_timed(command, cwd=venv, env=pip_env(venv))
    parts = done.output.split()
    return parts[1] if len(parts) > 1 else "?"


def install(ws: Workspace, pip: str, extra: str, label: str) -> Install:
    """A fresh venv and checkout; ``pip install -e "<checkout>[extra]"`` timed; both
    removed afterwards (a venv with the test extra weighs about a gigabyte)."""
    venv = fresh_venv(ws, pip)
    source = checkout(ws.path("checkout"))
    version = pip_version(venv)
    target = f"{source}[{extra}]" if extra else str(source)
    command: list[str | Path] = [venv / "bin" / "python", "-m", "pip", "install", "-e", target]
    log(f"{NAME}: {label}: pip {version}: pip install -e {spec(extra)}")
    timed: Timed | None = None
    failure = ""
    try:
        timed = run_timed(command, cwd=venv.parent, env=pip_env(venv), timeout=INSTALL_TIMEOUT_SECS)
        output = timed.output
    except BenchTimeout as error:
        failure, output = "timed out", str(error)
    except BenchError as error:  # pip failed: reported, the other installs still run
        failure, output = "failed", str(error)
        log(f"{NAME}: {label}: pip install -e {spec(extra)} failed:\n{output[-3000:]}")
    finally:
        shutil.rmtree(venv.parent, ignore_errors=True)
        shutil.rmtree(source, ignore_errors=True)
    lines = [line for line in output.splitlines() if BACKTRACK in line]
    names = tuple(dict.fromkeys(_package(line) for line in lines))
    return Install(timed, len(lines), version, failure, names)


def _package(line: str) -> str:
    """The package a backtracking line names (``... multiple versions of NAME to ...``)."""
    rest = line.split(BACKTRACK, 1)[1].split()
    return rest[0] if rest else "?"


def warm_up(ws: Workspace) -> None:
    """One untimed install of the test extra (every other extra's packages) per pip."""
    for pip in PIPS:
        done = install(ws, pip, "test", f"warm-up ({pip} pip, untimed)")
        if done.timed is None:
            raise BenchError(f"the warm-up install of .[test] with the {pip} pip {done.failure}")


def run_repeat(index: int, total: int, ws: Workspace) -> Repeat:
    repeat = Repeat()
    for pip in rotate(PIPS, index):
        for extra in rotate(EXTRAS, index):
            label = f"repeat {index + 1}/{total}, {pip} pip"
            repeat.installs[pip, extra] = install(ws, pip, extra, label)
    return repeat


# -- figures -----------------------------------------------------------------------------


def _secs(inst: Install) -> float | None:
    return None if inst.timed is None else inst.timed.wall_secs


def _vs(repeats_: list[Repeat], top: tuple[str, str], bottom: tuple[str, str]) -> Summary | None:
    """Over repeats where both finished: seconds of ``top`` / seconds of ``bottom``."""
    values = []
    for r in repeats_:
        a, b = _secs(r.installs[top]), _secs(r.installs[bottom])
        if a is not None and b is not None:
            values.append(ratio(a, b))
    return summarise(values) if values else None


def _fmt(value: Summary | None) -> str:
    return "did not finish" if value is None else fmt_ratio(value)


def _unfinished(repeats_: list[Repeat], key: tuple[str, str]) -> int:
    return sum(r.installs[key].timed is None for r in repeats_)


def _finished(repeats_: list[Repeat], key: tuple[str, str]) -> str:
    failures = sorted({r.installs[key].failure for r in repeats_ if r.installs[key].failure})
    done = f"{len(repeats_) - _unfinished(repeats_, key)}/{len(repeats_)}"
    return done + (f" ({', '.join(failures)})" if failures else "")


def _rows(repeats_: list[Repeat]) -> list[list[str]]:
    rows = []
    for pip in PIPS:
        for extra in EXTRAS:
            key = (pip, extra)
            backtracks = [r.installs[key].backtracks for r in repeats_]
            ok = not _unfinished(repeats_, key) and max(backtracks) <= BACKTRACK_TARGET
            versions = sorted({r.installs[key].pip_version for r in repeats_})
            names = sorted({name for r in repeats_ for name in r.installs[key].backtracked})
            rows.append(
                [
                    f'`pip install -e "{spec(extra)}"`',
                    f"{pip} ({', '.join(versions)})",
                    "1" if not extra else _fmt(_vs(repeats_, key, (pip, ""))),
                    _fmt(_vs(repeats_, key, (SYSTEM, extra))) if pip == NEWEST else "-",
                    fmt_count(backtracks) + (f" ({', '.join(names)})" if names else ""),
                    _finished(repeats_, key),
                    verdict(ok),
                ]
            )
    return rows


def _absolute(repeats_: list[Repeat]) -> str:
    """The one absolute figure: seconds per install, this machine, warm package cache."""
    parts, readme_ok = [], True
    for pip in PIPS:
        for extra in EXTRAS:
            secs = [s for r in repeats_ if (s := _secs(r.installs[pip, extra])) is not None]
            if not secs:
                parts.append(f"{spec(extra)} {pip} pip: did not finish")
                readme_ok = readme_ok and extra not in README_EXTRAS
                continue
            value = summarise(secs)
            text = f"{value.median:.0f} s" + (
                "" if value.n == 1 else f" ({value.low:.0f}-{value.high:.0f})"
            )
            parts.append(f"{spec(extra)} {pip} pip: {text}")
            if extra in README_EXTRAS and value.median >= ABSOLUTE_TARGET_SECS:
                readme_ok = False
    return (
        "Install seconds (absolute, this machine, warm package cache; median (min-max) "
        "over repeats): " + "; ".join(parts) + ". The README's commands (`pip install -e .`,"
        f' `pip install -e ".[test]"`) under {ABSOLUTE_TARGET_SECS:.0f} s with either pip: '
        f"{verdict(readme_ok)}."
    )


def run(ctx: Context) -> str:
    """Run the installs bench and return its markdown section."""
    ws = ctx.workspace
    log(f"{NAME}: warming pip's caches (one untimed .[test] install per pip)")
    warm_up(ws)
    total = repeats(ctx.quick)
    repeats_ = [run_repeat(i, total, ws) for i in range(total)]
    intro = (
        f"For each extra, a fresh `python -m venv` (Python {sys.version.split()[0]}) and "
        '`python -m pip install -e "<checkout>[extra]"` on a fresh copy of this checkout, '
        "with the system's pip (the one `venv` installs) and with the newest pip "
        "(`pip install -U pip` first, untimed). One untimed `.[test]` install per pip "
        f"warms the package cache first. {total} repeat(s), the order of pips and extras "
        "rotating. Cells: median (min-max) over repeats of install time / the plain `.` "
        "install with the same pip in the same repeat; backtracking = pip's "
        f"`{BACKTRACK} ...` lines (target: at most {BACKTRACK_TARGET}); each install "
        f"limited to {INSTALL_TIMEOUT_SECS / 60:.0f} minutes (target: every one finishes)."
    )
    headers = [
        "install",
        "pip",
        "time / `.` (same pip)",
        "newest pip / system pip",
        "backtracking lines",
        "finished",
        "target",
    ]
    return section(TITLE, intro, table(headers, _rows(repeats_)), _absolute(repeats_))
