"""The README says what the code does. Its tables and maps are checked against the code
(the options, the modules, the cache directory's layout). Its commands work as written,
on a fresh machine: each code block the README marks ``<!-- tested: NAME -->`` is pasted
into a shell, in a fresh virtual environment, with the system's pip and with the newest
pip. Those install JAX and more: behind the ``readme`` marker, which the project's
workflow runs (``pytest -m readme``)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PROJECT, run_command

from pytest_jaxcache import layout, settings

README = PROJECT / "README.md"
PACKAGE = PROJECT / "pytest_jaxcache"
_TESTED = re.compile(r"<!-- tested: ([\w-]+) -->\n```[a-z]*\n(.*?)```", re.S)


def blocks() -> dict[str, str]:
    """The README's tested blocks, by name."""
    return {name: body for name, body in _TESTED.findall(README.read_text())}


def block_after(heading: str) -> str:
    """The first code block after ``heading`` (a line of the README)."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    return text[text.index("```", start) :].split("```")[1]


def test_the_options_table_is_the_option_table() -> None:
    """Each row of the README's options table is an option of ``settings.OPTIONS``, with
    exactly the spellings it has (command line, ini, environment), and every option has
    a row."""
    text = README.read_text()
    table = text[text.index("| command line | ini |") :].split("\n\n")[0].splitlines()[2:]
    rows = {}
    for row in table:
        cells = row.split("|")[1:4]
        names = [re.findall(r"`([^`=]+)", cell)[:1] for cell in cells]
        rows[names[0][0]] = (names[1][0] if names[1] else None, names[2][0] if names[2] else None)
    assert rows == {option.cli: (option.ini, option.env) for option in settings.OPTIONS}


def test_the_module_map_names_every_module_once() -> None:
    """The README's map of the package lists every module, and nothing else; every
    module says in its docstring what it is for."""
    listed, package = [], ""
    for line in block_after("### Layout").splitlines()[2:]:
        name = line.split()[0]
        if name.endswith("/"):
            package = name
        else:
            listed.append(package + name if line.startswith("    ") else name)
    found = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    )
    assert sorted(listed) == found
    for path in PACKAGE.rglob("*.py"):
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path} says nothing"


def test_the_directory_tree_names_every_part_of_the_layout() -> None:
    """The README's picture of a cache directory names each sub-directory and file of
    ``layout.py``."""
    tree = block_after("## How it works")
    for name in (*layout.SUBDIRECTORIES, *layout.FILES):
        assert name in tree, name


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
