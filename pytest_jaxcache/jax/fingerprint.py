"""What this process's entries depend on besides the program, read off JAX.

The fingerprint records what goes into every cache key (versions, ``XLA_FLAGS``,
key-relevant config, compression, backends) and what executables depend on that the
key may not hold exactly (the jaxlib build, the CPU). Comparing two sessions'
fingerprints names why an earlier session's keys changed; its machine part
(:func:`pytest_jaxcache.environment.machine_of`) names the entries' namespace; the CI key
(``jaxcache key``) is made from it. Field names: :mod:`pytest_jaxcache.environment`.
"""

from __future__ import annotations

import hashlib
import os
import platform

from pytest_jaxcache import environment as env
from pytest_jaxcache.jax import seams
from pytest_jaxcache.jax.importing import import_jax, version


def fingerprint(notices: list[str] | None = None) -> dict[str, str]:
    """This process's fingerprint (call it once a backend exists: the first compile);
    what it could not read off this JAX is added to ``notices``."""
    notices = [] if notices is None else notices
    jax = import_jax()
    result = {
        env.JAXLIB: version("jaxlib") or "?",
        env.JAX: version("jax") or "?",
        env.JAXLIB_BUILD: _jaxlib_build(notices),
        env.PYTHON: platform.python_version(),
        env.OS: platform.system(),
        env.MACHINE: platform.machine(),
        env.XLA_FLAGS: os.environ.get("XLA_FLAGS", ""),
        env.LIBTPU_INIT_ARGS: os.environ.get("LIBTPU_INIT_ARGS", ""),
    }
    for name in env.KEY_CONFIG:
        result[name] = str(getattr(jax.config, name, "?"))
    result[env.COMPRESSION] = _compression(notices)
    result.update(_backends(notices))
    return result


def fingerprint_outside_a_session(xla_caches: str) -> dict[str, str]:
    """The fingerprint a session would stamp on its entries, computed without one (for
    ``jaxcache key``): JAX is imported, its backends are initialised (nothing compiles)
    and the cache configuration the plugin applies is applied first."""
    jax = import_jax()
    jax.config.update("jax_persistent_cache_enable_xla_caches", xla_caches)
    jax.devices()
    return fingerprint()


def _compression(notices: list[str]) -> str:
    """Whether JAX compresses entries with zstandard (``zstandard``) or zlib."""
    found = [seams.find(private) for private in (seams.ZSTD, seams.ZSTANDARD)]
    if not any(seams.present(module) for module in found):
        notices.append(seams.missing(seams.ZSTANDARD))
        return "?"
    return "zstandard" if any(seams.present(m) and m is not None for m in found) else "zlib"


def _jaxlib_build(notices: list[str]) -> str:
    """What tells one jaxlib build from another of the same version: its git revision
    (empty in some wheels) and the version of its extension module."""
    parts = []
    for private in (seams.GIT_HASH, seams.EXTENSION_VERSION):
        found = seams.find(private)
        if not seams.present(found):
            notices.append(seams.missing(private))
        elif found:
            parts.append(str(found)[:12])
    return " ".join(parts) or "?"


def _backends(notices: list[str]) -> dict[str, str]:
    """Platform facts, read only from backends the tests already initialised."""
    backends = seams.find(seams.BACKENDS)
    if not isinstance(backends, dict):
        notices.append(seams.missing(seams.BACKENDS, "a dict of backends"))
        return {}
    result = {}
    for name, backend in sorted(dict(backends).items()):
        platform_name = str(getattr(backend, "platform", "?"))
        platform_version = str(getattr(backend, "platform_version", "?"))
        result[env.backend(name)] = f"{platform_name} {platform_version}".strip()
    if "cpu" in backends:
        result[env.CPU_FEATURES] = _cpu_features()
    return result


def _cpu_features() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    flags = " ".join(sorted(line.split(":", 1)[1].split()))
                    return hashlib.sha256(flags.encode()).hexdigest()[:12]
    except OSError:
        pass
    return "?"
