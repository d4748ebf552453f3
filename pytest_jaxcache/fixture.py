"""The ``jax_cache`` fixture: the current test's compile figures, and an assertion
that a function's programs come from the persistent cache."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from pytest_jaxcache import explain, reasons
from pytest_jaxcache.jax import runtime
from pytest_jaxcache.reasons import HIT, MISS
from pytest_jaxcache.recorder import CompileRecord, Counts
from pytest_jaxcache.session import CacheSession

T = TypeVar("T")


def _why(record: CompileRecord, miss: reasons.Miss | None) -> str:
    """Why a program of the second run was not served, in the report's words; a miss
    between two identical runs says so (its key changed by itself)."""
    why = reasons.why_compiled(record.outcome, record.unwritten, record.detail, miss)
    if miss is not None and miss.cause not in (reasons.NEW, reasons.REFUSED):
        return f"its key changed between two identical runs: {why}"
    return why or "not found in the cache"


class JaxCache:
    """Handed to tests that ask for the ``jax_cache`` fixture."""

    def __init__(self, session: CacheSession | None, nodeid: str) -> None:
        self._session = session
        self._nodeid = nodeid

    @property
    def enabled(self) -> bool:
        """Whether a persistent cache is configured for this session."""
        return self._session is not None and self._session.store is not None

    def counts(self) -> Counts:
        """This test's figures so far (setup and call)."""
        total = Counts()
        if self._session is not None:
            record = self._session.recorder.tests.get(self._nodeid)
            if record is not None:
                total.add(record.total())
        return total

    def compiles(self) -> list[CompileRecord]:
        """The programs this test has compiled or loaded so far."""
        if self._session is None:
            return []
        return [c for c in self._session.recorder.compiles if c.test == self._nodeid]

    def assert_cached(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` (filling the cache if needed), drop JAX's in-memory caches, run it
        again and fail unless every program of the second run was a persistent-cache
        hit. Returns the second run's result."""
        session = self._session
        if session is None or session.store is None:
            pytest.fail(
                "jax_cache.assert_cached needs a persistent cache: run with --jax-cache-dir"
            )
        runtime.block_until_ready(fn(*args, **kwargs))
        runtime.clear_in_memory_caches()
        store, recorder = session.store, session.recorder
        first_compile = len(recorder.compiles)
        before = time.time()
        result = fn(*args, **kwargs)
        runtime.block_until_ready(result)
        compiled = recorder.compiles[first_compile:]
        if not compiled:
            pytest.fail("assert_cached: the function compiled nothing, so nothing was checked")
        failed = [c for c in compiled if c.outcome != HIT]
        if failed:
            missed = [c.key for c in compiled if c.outcome == MISS and c.key]
            misses = {
                miss.key: miss
                for miss in explain.explain(
                    store,
                    missed,
                    before=before,
                    current=session.fingerprint,
                    parts=recorder.missed_parts,
                    facts=recorder.missed_facts,
                )
            }
            lines = [f"  {c.name}: {c.outcome}: {_why(c, misses.get(c.key))}" for c in failed]
            pytest.fail(
                f"{len(failed)} of {len(compiled)} programs did not come from the persistent "
                "cache:\n" + "\n".join(lines),
                pytrace=False,
            )
        return result
