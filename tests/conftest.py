"""Shared fixtures: run real pytest sessions in subprocesses (JAX's cache config is
process-global, so every session that uses the plugin gets a fresh interpreter)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers import UNRELATED_PLUGINS, RunJax

# Variables a developer's shell (or an outer xdist worker) may carry into the child.
_LEAKY_ENV = (
    "JAX_COMPILATION_CACHE_DIR",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
    "JAX_COMPILATION_CACHE_MAX_SIZE",
    "JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES",
    "PYTEST_XDIST_WORKER",
    "PYTEST_XDIST_WORKER_COUNT",
    "PYTEST_XDIST_TESTRUNUID",
    "PYTEST_ADDOPTS",
    "XLA_FLAGS",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _LEAKY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    return monkeypatch


@pytest.fixture
def run_jax(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch) -> RunJax:
    """Run pytest in a subprocess in ``pytester.path``; return the result and the
    JSON report (``{}`` when the session wrote none)."""
    counter = iter(range(1_000_000))

    def run(*args: str, timeout: float = 300) -> tuple[pytest.RunResult, dict[str, Any]]:
        report = pytester.path / f"jaxcache-report-{next(counter)}.json"
        result = pytester.runpytest_subprocess(
            *UNRELATED_PLUGINS,
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            f"--jax-cache-report={report}",
            *args,
            timeout=timeout,
        )
        data = json.loads(report.read_text()) if report.exists() else {}
        return result, data

    return run
