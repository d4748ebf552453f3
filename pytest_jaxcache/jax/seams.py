"""Every private JAX name the plugin uses, in one table: where it lives, what it serves,
the JAX versions it was checked on, and what a session does without it.

Each is looked up through :func:`find` only, and checked for the shape we rely on by the
step that uses it. A JAX without one gives one notice (:func:`missing`) and a session
that still caches, only less informed: private names move between JAX releases, and a
cache problem must never fail a test.

JAX's log messages (why a program was not written, in ``jax._src.compiler`` and
``jax._src.compilation_cache``) and warning texts are private too: their fragments are
listed in :mod:`pytest_jaxcache.jax.signals`, with the same versions checked.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

CHECKED_ON = ("0.6.1", "0.10.2", "0.12.0.1")


@dataclass(frozen=True)
class Private:
    """One private name of JAX's."""

    module: str
    name: str
    serves: str  # what the plugin uses it for
    without: str  # what a session does without it
    checked_on: tuple[str, ...] = CHECKED_ON

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


_STORE_FALLBACK = "JAX's own file store serves the cache (no verification, no single flight)"

GET_FILE_CACHE = Private(
    "jax._src.compilation_cache",
    "get_file_cache",
    "builds the cache JAX reads and writes: ours is put in its place",
    _STORE_FALLBACK,
)
RESET_CACHE = Private(
    "jax._src.compilation_cache",
    "reset_cache",
    "makes JAX forget its cache (to install ours; jax_no_cache tests)",
    _STORE_FALLBACK,
)
CACHE_INTERFACE = Private(
    "jax._src.compilation_cache",
    "CacheInterface",
    "the interface (get, put) our store implements for JAX",
    _STORE_FALLBACK,
)
# JAX 0.6 has neither (nor the flag): missing together, they are no loss.
VERIFICATION_CACHE = Private(
    "jax._src.compilation_cache",
    "VerificationCache",
    "jax_compilation_cache_check_contents: JAX checks what a cache returns",
    "jax_compilation_cache_check_contents is not honoured with our store",
    ("0.10.2", "0.12.0.1"),
)
CHECK_CONTENTS = Private(
    "jax._src.config",
    "compilation_cache_check_contents",
    "whether jax_compilation_cache_check_contents is on",
    "jax_compilation_cache_check_contents is not honoured with our store",
    ("0.10.2", "0.12.0.1"),
)
COMPILE_OR_GET_CACHED = Private(
    "jax._src.compiler",
    "compile_or_get_cached",
    "wraps each compile: its time, whether it has host callbacks, the end of single flight",
    "entries do not record compile times, programs with host callbacks are told apart by "
    "JAX's log only, and single flight is off",
)
COMPILER_WARNINGS = Private(
    "jax._src.compiler",
    "warnings",
    "JAX's cache read and write warnings, counted instead of raised",
    "JAX's cache warnings are raised as JAX raises them (under -W error they fail tests)",
)
CACHE_KEY_GET = Private(
    "jax._src.cache_key",
    "get",
    "computes each cache key: the parts it hashes are heard",
    "misses are explained by the environment, not by the part of the key that changed",
)
LOG_CACHE_KEY_HASH = Private(
    "jax._src.cache_key",
    "_log_cache_key_hash",
    "called with each part of a key as it is hashed",
    "misses are explained by the environment, not by the part of the key that changed",
)
BACKENDS = Private(
    "jax._src.xla_bridge",
    "_backends",
    "the backends already initialised, for their platform versions",
    "machine namespaces do not hold the backends' platform versions",
)
EXTENSION_VERSION = Private(
    "jax._src.lib",
    "jaxlib_extension_version",
    "tells one jaxlib build from another",
    "jaxlib builds are told apart by their git revision only",
)
GIT_HASH = Private(
    "jaxlib.version",
    "_git_hash",
    "tells one jaxlib build from another",
    "jaxlib builds are told apart by their extension version only",
)
# Either tells the compression (JAX 0.6 has only ``zstandard``): one is enough.
ZSTD = Private(
    "jax._src.compilation_cache",
    "zstd",
    "whether JAX compresses entries with zstd (Python 3.14's compression.zstd)",
    "the fingerprint does not tell the compression",
    ("0.10.2", "0.12.0.1"),
)
ZSTANDARD = Private(
    "jax._src.compilation_cache",
    "zstandard",
    "whether JAX compresses entries with zstandard (part of every key)",
    "the fingerprint does not tell the compression",
)
CACHED_LOWERING = Private(
    "jax._src.interpreters.pxla",
    "_cached_lowering_to_hlo",
    "lowers a jaxpr to a module: the lowering tier serves modules here",
    "the lowering tier is off (every program is lowered)",
)

ALL = (
    GET_FILE_CACHE,
    RESET_CACHE,
    CACHE_INTERFACE,
    VERIFICATION_CACHE,
    CHECK_CONTENTS,
    COMPILE_OR_GET_CACHED,
    COMPILER_WARNINGS,
    CACHE_KEY_GET,
    LOG_CACHE_KEY_HASH,
    BACKENDS,
    EXTENSION_VERSION,
    GIT_HASH,
    ZSTD,
    ZSTANDARD,
    CACHED_LOWERING,
)

ABSENT = object()


def find(private: Private) -> Any:
    """The object behind ``private``, or :data:`ABSENT` when this JAX has none."""
    try:
        module = importlib.import_module(private.module)
    except ImportError:
        return ABSENT
    return getattr(module, private.name, ABSENT)


def present(value: Any) -> bool:
    """Whether :func:`find` found something."""
    return value is not ABSENT


def missing(private: Private, shape: str = "") -> str:
    """The one notice for a private name this JAX lacks (or has in another ``shape``)."""
    how = f" in the shape we rely on ({shape})" if shape else ""
    return (
        f"this JAX has no {private.qualname}{how} (checked on JAX "
        f"{', '.join(private.checked_on)}): {private.without}"
    )
