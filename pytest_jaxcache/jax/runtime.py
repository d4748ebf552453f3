"""Calls into JAX that the plugin makes while tests run: dropping in-memory caches,
waiting for results, and really bypassing the persistent cache for one test."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pytest_jaxcache.jax import seams
from pytest_jaxcache.jax.importing import import_jax


def reset_persistent_cache() -> bool:
    """JAX forgets its persistent cache (it is built again, lazily, on the next compile),
    without its INFO log line (suites assert ``caplog`` is empty). Whether it could."""
    reset = seams.find(seams.RESET_CACHE)
    if not seams.present(reset) or not callable(reset):
        return False
    logger = logging.getLogger(seams.RESET_CACHE.module)
    disabled, logger.disabled = logger.disabled, True
    try:
        reset()
    finally:
        logger.disabled = disabled
    return True


@contextmanager
def persistent_cache_disabled() -> Iterator[None]:
    """Really bypass the persistent cache: JAX computes no key, looks nothing up and
    writes nothing. Flipping the config alone does nothing once the cache is
    initialised, so JAX's cache state is reset on the way in and out."""
    jax: Any = import_jax()
    previous = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    reset_persistent_cache()
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", previous)
        reset_persistent_cache()


def clear_in_memory_caches() -> None:
    """Drop every traced and compiled program held in memory (public API)."""
    import_jax().clear_caches()


def block_until_ready(value: Any) -> Any:
    """Wait for asynchronous dispatch to finish (public API)."""
    return import_jax().block_until_ready(value)
