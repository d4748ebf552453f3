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


def fingerprint() -> dict[str, str]:
    """This process's fingerprint (call it once a backend exists: the first compile)."""
    jax = import_jax()
    result = {
        env.JAXLIB: version("jaxlib") or "?",
        env.JAX: version("jax") or "?",
        env.JAXLIB_BUILD: _jaxlib_build(),
        env.PYTHON: platform.python_version(),
        env.OS: platform.system(),
        env.MACHINE: platform.machine(),
        env.XLA_FLAGS: os.environ.get("XLA_FLAGS", ""),
        env.LIBTPU_INIT_ARGS: os.environ.get("LIBTPU_INIT_ARGS", ""),
    }
    for name in env.KEY_CONFIG:
        result[name] = str(getattr(jax.config, name, "?"))
    result[env.COMPRESSION] = _compression()
    result.update(_backends())
    return result


def fingerprint_outside_a_session(xla_caches: str) -> dict[str, str]:
    """The fingerprint a session would stamp on its entries, computed without one (for
    ``jaxcache key``): JAX is imported, its backends are initialised (nothing compiles)
    and the cache configuration the plugin applies is applied first."""
    jax = import_jax()
    jax.config.update("jax_persistent_cache_enable_xla_caches", xla_caches)
    jax.devices()
    return fingerprint()


def _compression() -> str:
    """ "zstandard" when JAX compresses entries with zstd, else "zlib"."""
    for private in (seams.ZSTD, seams.ZSTANDARD):
        found = seams.find(private)
        if seams.present(found) and found is not None:
            return "zstandard"
    return "zlib"


def _jaxlib_build() -> str:
    """What tells one jaxlib build from another of the same version: its git revision
    (absent from some wheels) and the version of its extension module."""
    parts = []
    git_hash = seams.find(seams.GIT_HASH)
    if seams.present(git_hash) and git_hash:
        parts.append(str(git_hash)[:12])
    extension = seams.find(seams.EXTENSION_VERSION)
    if seams.present(extension):
        parts.append(str(extension))
    return " ".join(parts) or "?"


def _backends() -> dict[str, str]:
    """Platform facts, read only from backends the tests already initialised."""
    backends = seams.find(seams.BACKENDS)
    if not seams.present(backends) or not isinstance(backends, dict):
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
