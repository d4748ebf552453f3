"""A pytest plugin for child sessions (``-p hide_seams``, with ``tests/`` on
``PYTHONPATH``): the private JAX names listed in ``JAXCACHE_HIDE_SEAMS``
(comma-separated qualified names, as :mod:`pytest_jaxcache.jax.seams` lists them) look
absent to the plugin, as on a JAX that lacks them. JAX itself is left whole: only the
plugin's one lookup (:func:`pytest_jaxcache.jax.seams.find`) is told they are missing.
Used by the tests of each seam's absence and by ``bench_keyparts``."""

from __future__ import annotations

import os
from typing import Any

from pytest_jaxcache.jax import seams

HIDDEN = frozenset(filter(None, os.environ.get("JAXCACHE_HIDE_SEAMS", "").split(",")))
_find = seams.find


def _find_unless_hidden(private: seams.Private) -> Any:
    if private.qualname in HIDDEN:
        return seams.ABSENT
    return _find(private)


seams.find = _find_unless_hidden
