"""Benchmark-only pytest plugin: turns off the recording of cache-key parts.

Loaded with ``-p benchmarks_no_key_parts`` (``benchmarks/`` on ``PYTHONPATH``), before
JAX is imported: :mod:`pytest_jaxcache.jaxhooks` then behaves as on a JAX without the
seam (no per-part digests recorded), so that ``bench_keyparts`` measures what recording
them costs. Never used outside ``benchmarks/``.
"""

from __future__ import annotations

from pytest_jaxcache import jaxhooks


def _no_key_parts(installation: jaxhooks.Installation) -> None:
    return None


jaxhooks._capture_key_parts = _no_key_parts
