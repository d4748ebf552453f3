"""The house rules a machine can check: the package and the tests are linted, formatted
and strictly typed (the configuration is ``pyproject.toml``'s). They are tests so that CI,
which runs the README's one test command, enforces them."""

from __future__ import annotations

import subprocess
import sys

from helpers import PROJECT


def run_tool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=PROJECT, capture_output=True, text=True, timeout=600
    )


def test_ruff_finds_nothing_and_the_code_is_formatted() -> None:
    checked = run_tool("ruff", "check", "pytest_jaxcache", "tests", "benchmarks", "examples")
    assert checked.returncode == 0, checked.stdout[-4000:]
    formatted = run_tool(
        "ruff", "format", "--check", "pytest_jaxcache", "tests", "benchmarks", "examples"
    )
    assert formatted.returncode == 0, formatted.stdout[-4000:]


def test_mypy_strict_passes_on_the_package_and_the_tests() -> None:
    typed = run_tool("mypy")
    assert typed.returncode == 0, typed.stdout[-4000:]
