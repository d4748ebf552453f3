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
# The lowering tier's other names (pytest_jaxcache.jax.lowering, .lowering_internals): without
# one of the required ones the tier is off, like without CACHED_LOWERING.
_TIER_OFF = "the lowering tier is off (every program is lowered)"
PXLA_LOGGER = Private(
    "jax._src.interpreters.pxla",
    "logger",
    "logs each lowering: while it would, the lowering tier stands aside",
    _TIER_OFF,
)
DISPATCH_LOGGER = Private(
    "jax._src.dispatch",
    "logger",
    "logs each lowering's time: while it would, the lowering tier stands aside",
    _TIER_OFF,
)
MAKE_IR_CONTEXT = Private(
    "jax._src.interpreters.mlir",
    "make_ir_context",
    "the MLIR context a served module is parsed into",
    _TIER_OFF,
)
MODULE_TO_BYTECODE = Private(
    "jax._src.interpreters.mlir",
    "module_to_bytecode",
    "writes a lowered module as MLIR bytecode for the lowering tier",
    _TIER_OFF,
)
SHAPE_POLY_STATE = Private(
    "jax._src.interpreters.mlir",
    "ShapePolyLoweringState",
    "rebuilds the shape polymorphism state of a served module (none)",
    _TIER_OFF,
)
LOWERING_RULES = Private(
    "jax._src.interpreters.mlir",
    "_lowerings",
    "the lowering rules of every primitive: part of each lowering key",
    _TIER_OFF,
)
PLATFORM_LOWERING_RULES = Private(
    "jax._src.interpreters.mlir",
    "_platform_specific_lowerings",
    "the platform-specific lowering rules: part of each lowering key",
    _TIER_OFF,
)
# JAX 0.6 has no uncacheable lowering rules (register_lowering has no cacheable=).
UNCACHEABLE_PRIMITIVES = Private(
    "jax._src.interpreters.mlir",
    "_uncacheable_primitives",
    "which lowering rules JAX never caches per module: part of each lowering key",
    _TIER_OFF,
    ("0.10.2", "0.12.0.1"),
)
LOWERING_PARAMETERS = Private(
    "jax._src.interpreters.mlir",
    "LoweringParameters",
    "the lowering options each lowering gets: read field by field into its key",
    _TIER_OFF,
)
MLIR_IR = Private(
    "jax._src.lib.mlir",
    "ir",
    "MLIR's Python bindings as JAX loads them: parses a served module",
    _TIER_OFF,
)
WEAKREF_LRU_CACHE = Private(
    "jax._src.util",
    "weakref_lru_cache",
    "the in-memory cache JAX keeps in front of each lowering: kept in front of the tier",
    _TIER_OFF,
)
CONFIG = Private(
    "jax._src.config",
    "config",
    "every configuration option (its _value_holders): part of each lowering key",
    _TIER_OFF,
)
TRACE_CONTEXT = Private(
    "jax._src.config",
    "trace_context",
    "the thread's tracing context (meshes, x64, precision): part of each lowering key",
    _TIER_OFF,
)
CURRENT_SOURCE_INFO = Private(
    "jax._src.source_info_util",
    "current",
    "the Python stack JAX writes into every location of a module: part of its key",
    _TIER_OFF,
)
IS_USER_FILENAME = Private(
    "jax._src.source_info_util",
    "is_user_filename",
    "which frames JAX writes into locations: only those go into a lowering key",
    _TIER_OFF,
)
EXCLUDE_PATHS = Private(
    "jax._src.source_info_util",
    "_exclude_paths",
    "the files JAX leaves out of locations: the lowering tier's own are added",
    _TIER_OFF,
)
EXCLUDE_PATH_REGEX = Private(
    "jax._src.source_info_util",
    "_exclude_path_regex",
    "JAX's cached pattern of _exclude_paths: cleared when the tier's files are removed",
    _TIER_OFF,
)
INCLUDE_PATHS = Private(
    "jax._src.source_info_util",
    "_include_paths",
    "the files JAX writes into locations whatever their place: tells a filter change",
    _TIER_OFF,
)
REGISTER_EXCLUSION = Private(
    "jax._src.source_info_util",
    "register_exclusion",
    "leaves the lowering tier's own frames out of every location",
    _TIER_OFF,
)
XLA_CLIENT = Private(
    "jax._src.lib",
    "xla_client",
    "its Traceback: the frames of each traceback, as JAX writes them into locations",
    _TIER_OFF,
)
DROP_VAR = Private(
    "jax._src.core",
    "DropVar",
    "an unused equation output: told apart from a variable in a lowering key",
    _TIER_OFF,
)
CUSTOM_DERIVATIVE_LOWERING = Private(
    "jax._src.custom_derivatives",
    "_custom_jvp_vjp_call_lowering",
    "the lowering rule of custom_jvp/custom_vjp calls, which never reads their "
    "derivative rules: those stay out of the lowering key",
    "programs with custom derivatives (custom_jvp, custom_vjp) are never served",
)
HASH_COMPUTATION = Private(
    "jax._src.cache_key",
    "_hash_computation",
    "hashes a module into its cache key: a served module is checked against its record",
    "served modules are not checked against the digest recorded when they were written",
)
LAPACK = Private(
    "jaxlib.lapack",
    "_lapack",
    "initialises jaxlib's LAPACK kernels (their functions come from SciPy), as JAX's "
    "lowering rules do before they emit a call to one: a served module that calls LAPACK "
    "needs it first, or the call crashes the process",
    "modules that call LAPACK are lowered as usual, never stored or served",
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
    PXLA_LOGGER,
    DISPATCH_LOGGER,
    MAKE_IR_CONTEXT,
    MODULE_TO_BYTECODE,
    SHAPE_POLY_STATE,
    LOWERING_RULES,
    PLATFORM_LOWERING_RULES,
    UNCACHEABLE_PRIMITIVES,
    LOWERING_PARAMETERS,
    MLIR_IR,
    WEAKREF_LRU_CACHE,
    CONFIG,
    TRACE_CONTEXT,
    CURRENT_SOURCE_INFO,
    IS_USER_FILENAME,
    EXCLUDE_PATHS,
    EXCLUDE_PATH_REGEX,
    INCLUDE_PATHS,
    REGISTER_EXCLUSION,
    XLA_CLIENT,
    DROP_VAR,
    CUSTOM_DERIVATIVE_LOWERING,
    HASH_COMPUTATION,
    LAPACK,
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
