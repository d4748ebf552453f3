"""Cache keys for CI caches (actions/cache), made from the session fingerprint.

A key names what makes entries unusable elsewhere, so that a cache is never restored
where nothing in it could load::

    jaxcache-Linux-x86_64-cpu1a2b3c4d5e6f-jax0.10.2-jaxlib0.10.2-<environment digest>

The visible parts change every key when they change (another OS, architecture, CPU,
jax or jaxlib: never fall back across them); the environment digest covers what changes
some keys or none (Python, XLA_FLAGS, key-relevant JAX config, the jaxlib build, the
backends). Restore keys fall back from the exact environment to the same machine and
versions, most specific first. The save key appends the cache's content digest, so an
unchanged cache is never saved again.

Pure functions of a fingerprint (:func:`pytest_jaxcache.jax.fingerprint.fingerprint`, the
one the plugin stamps on its entries): ``jaxcache key`` and the plugin compute the same
key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

from pytest_jaxcache.environment import CPU_FEATURES, JAX, JAXLIB, MACHINE, OS

DEFAULT_PREFIX = "jaxcache"
_VISIBLE = (OS, MACHINE, CPU_FEATURES, JAX, JAXLIB)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+]")  # a value never holds the separator
_UNSAFE_PREFIX = re.compile(r"[^A-Za-z0-9_.+-]")


def _part(value: str) -> str:
    return _UNSAFE.sub("_", value) or "_"


def machine_prefix(fingerprint: Mapping[str, str], prefix: str = DEFAULT_PREFIX) -> str:
    """``jaxcache-Linux-x86_64-cpu<features>-jax<version>-jaxlib<version>``."""
    get = fingerprint.get
    return "-".join(
        [
            _UNSAFE_PREFIX.sub("_", prefix) or DEFAULT_PREFIX,
            _part(get(OS, "?")),
            _part(get(MACHINE, "?")),
            "cpu" + _part(get(CPU_FEATURES, "none")),
            "jax" + _part(get(JAX, "?")),
            "jaxlib" + _part(get(JAXLIB, "?")),
        ]
    )


def environment_digest(fingerprint: Mapping[str, str]) -> str:
    """A digest of everything in the fingerprint that the visible parts do not name."""
    rest = {name: value for name, value in fingerprint.items() if name not in _VISIBLE}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:12]


def key(fingerprint: Mapping[str, str], prefix: str = DEFAULT_PREFIX) -> str:
    """The key to restore with (and, followed by the content digest, to save under)."""
    return f"{machine_prefix(fingerprint, prefix)}-{environment_digest(fingerprint)}"


def restore_keys(fingerprint: Mapping[str, str], prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Fallback prefixes, most specific first: the same environment with any contents,
    then the same machine and versions in another environment."""
    return [f"{key(fingerprint, prefix)}-", f"{machine_prefix(fingerprint, prefix)}-"]
