"""Benchmark-only pytest plugin: sums JAX's backend compile time in this process.

Loaded with ``-p benchmarks_compile_timer`` and ``PYTHONPATH`` pointing at
``benchmarks/``. When ``$JAXCACHE_BENCH_TIMER_DIR`` is set it registers a
``jax.monitoring`` duration listener before any conftest loads and, at session end,
writes ``{"backend_compile_secs": ..., "compiles": ...}`` to ``<dir>/<pid>.json``:
one file per process, so the figures of xdist workers add up. It works the same with
and without pytest-jaxcache, which makes every benchmark variant comparable.

``/jax/core/compile/backend_compile_duration`` wraps JAX's cache lookup, the compile
and the write, so on a warm cache it measures the time spent loading hits.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

ENV = "JAXCACHE_BENCH_TIMER_DIR"
EVENT = "/jax/core/compile/backend_compile_duration"


class CompileTimer:
    """A ``jax.monitoring`` duration listener that sums one event."""

    def __init__(self) -> None:
        self.secs = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, event: str, duration_secs: float, **kwargs: str | int) -> None:
        if event != EVENT:
            return
        with self._lock:
            self.secs += float(duration_secs)
            self.count += 1

    def as_dict(self) -> dict[str, float | int]:
        return {"backend_compile_secs": self.secs, "compiles": self.count}


_TIMER = CompileTimer()
_registered = False


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Listen before a conftest can import JAX and compile."""
    global _registered
    if not os.environ.get(ENV) or _registered:
        return
    import jax.monitoring

    jax.monitoring.register_event_duration_secs_listener(_TIMER)
    _registered = True


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write this process's sum; the benchmark adds up every process's file."""
    directory = os.environ.get(ENV)
    if not directory or not _registered:
        return
    path = Path(directory, f"{os.getpid()}.json")
    path.write_text(json.dumps(_TIMER.as_dict()))
