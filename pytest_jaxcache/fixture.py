"""The ``jax_cache`` fixture: the current test's compile figures, and an assertion
that a function's programs come from the persistent cache."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from pytest_jaxcache import explain, jaxhooks
from pytest_jaxcache.recorder import HIT, MISS, UNCACHABLE, UNWRITTEN, CompileRecord, Counts
from pytest_jaxcache.session import CacheSession

T = TypeVar("T")

_WHY = {
    UNCACHABLE: "looked up but never written (host callbacks, e.g. jax.debug.print, "
    "io_callback, error checks?)",
    UNWRITTEN: "not written: it compiled faster than --jax-cache-min-compile-time or is "
    "smaller than --jax-cache-min-entry-size",
}
# Between two identical runs a program's key should not change: when it does, an
# earlier entry of the same program differs in some part of its key.
_CHANGED = (explain.KEY_PARTS, explain.PROGRAM)


def _why(record: CompileRecord, misses: dict[str, explain.Miss]) -> str:
    if record.outcome == UNWRITTEN and record.unwritten:
        return f"not written: {record.unwritten}"
    miss = misses.get(record.key)
    if miss is not None and miss.cause in _CHANGED:
        return (
            f"its key changed between two identical runs ({miss.reason}): something "
            "non-deterministic is traced into the program (a captured constant, a random value?)"
        )
    return _WHY.get(record.outcome) or (miss.reason if miss else "not found in the cache")


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
        jaxhooks.block_until_ready(fn(*args, **kwargs))
        jaxhooks.clear_in_memory_caches()
        store, recorder = session.store, session.recorder
        first_compile = len(recorder.compiles)
        before = time.time()
        result = fn(*args, **kwargs)
        jaxhooks.block_until_ready(result)
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
                )
            }
            lines = [f"  {c.name}: {c.outcome}: {_why(c, misses)}" for c in failed]
            pytest.fail(
                f"{len(failed)} of {len(compiled)} programs did not come from the persistent "
                "cache:\n" + "\n".join(lines),
                pytrace=False,
            )
        return result
