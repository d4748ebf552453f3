"""Names the test modules import (fixtures live in conftest.py)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

RunJax = Callable[..., tuple[pytest.RunResult, dict[str, Any]]]

# Plugins that a development machine may have and these sessions do not use: off, so that
# each child session starts in about half the time (no-ops where they are not installed).
UNRELATED_PLUGINS = ("-p", "no:hypothesispytest", "-p", "no:benchmark", "-p", "no:jaxtyping")


def _jax_version() -> tuple[int, int]:
    major, minor = importlib.metadata.version("jax").split(".")[:2]
    return int(major), int(minor)


# Up to JAX 0.10 programs with host callbacks are looked up but never written; from 0.11
# they are cached. The one place where expectations legitimately depend on the JAX
# version: every test that branches on it says so.
CALLBACKS_CACHED = _jax_version() >= (0, 11)


def entries(cache_dir: Path) -> list[Path]:
    """The entry files of a pytest-jaxcache store."""
    folder = cache_dir / "entries"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def write_files(base: Path, files: dict[str, str]) -> None:
    """Write dedented ``files`` (paths relative to ``base``)."""
    for name, text in files.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())


def child_env() -> dict[str, str]:
    """This process's environment without anything that would steer a child's cache or
    xdist (an outer xdist worker, a developer's JAX_* variables)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("JAX_", "PYTEST_", "XLA_"))
    }
    env["JAX_PLATFORMS"] = "cpu"
    return env


def pytest_command(*args: str) -> list[str]:
    """A child pytest session, for tests that need ``subprocess`` rather than pytester
    (concurrent sessions, module-scoped cold runs)."""
    return [
        sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider",
        *UNRELATED_PLUGINS, *args,
    ]  # fmt: skip


@dataclass(frozen=True)
class ColdCache:
    """A cache filled by one cold session, and that session's JSON report."""

    cache: Path
    report: dict[str, Any]

    def copy_to(self, base: Path, files: dict[str, str]) -> Path:
        """Write ``files`` and a copy of the cache (at ``base/cache``) into ``base``."""
        write_files(base, files)
        shutil.copytree(self.cache, base / "cache")
        return base / "cache"


def cold_session(root: Path, files: dict[str, str], *args: str) -> ColdCache:
    """Write ``files`` into ``root`` and run one session there with a cache at
    ``root/cache`` (the session must pass)."""
    write_files(root, files)
    report = root / "report.json"
    proc = subprocess.run(
        pytest_command(*args, "--jax-cache-dir=cache", f"--jax-cache-report={report}"),
        cwd=root,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return ColdCache(root / "cache", json.loads(report.read_text()))


def assert_all_hits(report: dict[str, Any]) -> None:
    """Every cachable lookup of the session hit; nothing was written."""
    cachable = report["cachable"]
    assert cachable["requests"] > 0, cachable
    assert cachable["hits"] == cachable["requests"], cachable
    assert cachable["misses"] == 0, cachable
    assert cachable["hit_rate"] == 1.0, cachable
    assert report["store"]["writes"] == 0, report["store"]
