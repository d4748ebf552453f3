"""The README's commands work as written, on a fresh machine: each code block the README
marks ``<!-- tested: NAME -->`` is pasted into a shell, in a fresh virtual environment,
with the system's pip and with the newest pip. They install JAX and more: behind the
``readme`` marker, which the project's workflow runs (``pytest -m readme``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PROJECT, run_command

README = PROJECT / "README.md"
_TESTED = re.compile(r"<!-- tested: ([\w-]+) -->\n```[a-z]*\n(.*?)```", re.S)


def blocks() -> dict[str, str]:
    """The README's tested blocks, by name."""
    return {name: body for name, body in _TESTED.findall(README.read_text())}


def test_the_tested_blocks_are_the_quick_start() -> None:
    """The blocks a newcomer pastes first are the ones tested."""
    assert set(blocks()) == {"use", "demo", "tests"}
    assert "pip install pytest-jaxcache" in blocks()["use"]


def checkout(root: Path) -> Path:
    """The project as a clone of main holds it (tracked and new files, nothing built)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    target = root / "pytest-jaxcache"
    for name in listed:
        if (PROJECT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT / name, target / name)
    return target


def fresh_venv(root: Path, pip: str) -> Path:
    """A new virtual environment with the system's pip, or the newest pip."""
    venv = root / "venv"
    made = run_command([sys.executable, "-m", "venv", venv], root)
    assert made.ret == 0, made.errlines
    if pip == "newest":
        upgraded = run_command([venv / "bin/python", "-m", "pip", "install", "-U", "pip"], root)
        assert upgraded.ret == 0, upgraded.errlines[-20:]
    return venv


def shell(block: str, cwd: Path, venv: Path) -> pytest.RunResult:
    """The block as a user pastes it, in a shell whose python and pip are the venv's."""
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "VIRTUAL_ENV": str(venv)}
    return run_command(["bash", "-e", "-c", block], cwd, env=env, timeout=1200)


@pytest.mark.readme
@pytest.mark.parametrize("pip", ["system", "newest"])
def test_the_first_block_runs_in_a_user_project(tmp_path: Path, pip: str) -> None:
    """``pip install pytest-jaxcache`` then ``pytest --jax-cache-dir=.jaxcache -n auto``
    in a project (the demo suite): it installs (xdist included) and reports. The only
    change: the package comes from this checkout, not from the package index."""
    project = checkout(tmp_path)
    venv = fresh_venv(tmp_path, pip)
    block = blocks()["use"].replace("pip install pytest-jaxcache", f"pip install {project}")
    result = shell(block, project / "examples", venv)
    assert result.ret == 0, result.outlines[-30:] + result.errlines[-30:]
    assert any("jax compilation cache" in line for line in result.outlines)


@pytest.mark.readme
@pytest.mark.parametrize("pip", ["system", "newest"])
def test_the_quick_start_installs_and_runs(tmp_path: Path, pip: str) -> None:
    """The demo block, twice (the second run hits every cachable program); the tests
    block installs the test extra, and its test command collects the suite (running
    it in full is what CI does with the same command)."""
    project = checkout(tmp_path)
    venv = fresh_venv(tmp_path, pip)
    for _ in range(2):
        result = shell(blocks()["demo"], project, venv)
        assert result.ret == 0, result.outlines[-30:] + result.errlines[-30:]
    assert any("lookups hit (100.0%)" in line for line in result.outlines), result.outlines[-20:]
    install, _, command = blocks()["tests"].strip().partition(" && ")
    assert command == "python -m pytest"
    installed = shell(install, project, venv)
    assert installed.ret == 0, installed.errlines[-30:]
    collected = shell(f"{command} --collect-only -q", project, venv)
    assert collected.ret == 0, collected.outlines[-30:]
