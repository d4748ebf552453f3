"""The lowering tier: lowered modules served from the store instead of lowering again.

On a warm run every program is served from JAX's persistent compilation cache, yet each
process still lowers every program (jaxpr -> MLIR module) just to compute that cache's
key. JAX lowers in one private function, ``_cached_lowering_to_hlo`` (a module global
that its only caller looks up at each call); the tier takes its place, behind the same
kind of in-memory cache JAX keeps in front of it:

- it keys the call (:mod:`.lowering_key`); a program without an exact key is lowered
  as JAX would, and counted by reason;
- on a hit it parses the stored bytecode (:mod:`.lowering_entry`) into a JAX MLIR
  context and rebuilds the other results: a stored program has no keepalive objects,
  host callbacks, effects or symbolic dimensions, so they are all empty;
- on a miss JAX lowers, and the module is stored when it is self-contained and JAX did
  not warn while lowering (a served module would not warn again);
- ``verify`` lowers anyway on a hit, uses the fresh module, and compares the two as
  text with debug info (every location): a mismatch leaves both on disk;
- the free check: when JAX hashes a module into its compilation-cache key, the digest
  of what it hashed is recorded with a written entry and compared for a served one; an
  entry that fails is never served again.

Nothing here raises into the user's lowering: a failure of the tier is counted and the
program lowered as JAX would. JAX's own errors and warnings reach the user unchanged.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib
import inspect
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pytest_jaxcache.jax import (
    lowering_entry,
    lowering_internals,
    lowering_key,
    lowering_values,
    seams,
)
from pytest_jaxcache.jax.installation import Installation
from pytest_jaxcache.jax.lowering_entry import BadEntry, EntryHeader
from pytest_jaxcache.jax.lowering_internals import (
    EFFECTS,
    HIGH_LEVEL_JAXPR,
    HOST_CALLBACKS,
    KEY_REASONS,
    OPAQUE,
    RULES_CHANGED,
    SHAPE_POLYMORPHISM,
    UNKEYABLE_CONSTANT,
    UNREPRESENTABLE,
    USER_CODE,
    USER_LOWERING_RULE,
    Uncachable,
)
from pytest_jaxcache.jax.lowering_key import Keyer
from pytest_jaxcache.settings import Lowering
from pytest_jaxcache.stats import LoweringStats
from pytest_jaxcache.tally import MAX_MESSAGES, count_by

__all__ = [
    "COMPILE_LOGGING",
    "DUMPING_IR",
    "EFFECTS",
    "HIGH_LEVEL_JAXPR",
    "HOST_CALLBACKS",
    "JIT_OF_PMAP",
    "KEEPALIVE",
    "MULTI_PLATFORM",
    "NOT_SERIALIZED",
    "NOT_STORED_REASONS",
    "OPAQUE",
    "RULES_CHANGED",
    "SEAMS",
    "SHAPE_POLYMORPHISM",
    "STORE_REFUSED",
    "TIER_FAILED",
    "UNEXPECTED_CALL",
    "UNEXPECTED_RESULTS",
    "UNKEYABLE_CONSTANT",
    "UNREPRESENTABLE",
    "USER_CODE",
    "USER_LOWERING_RULE",
    "WARNED",
    "ModuleStore",
    "install",
]

# Why a lowered program was not stored, besides having no key (lowering_key's reasons,
# also exported here): fixed phrases, the report groups programs by them.
COMPILE_LOGGING = "compile logging is on"
DUMPING_IR = "JAX dumps its IR (jax_dump_ir_to)"
WARNED = "JAX warned while lowering"
KEEPALIVE = "keepalive objects"
JIT_OF_PMAP = "jit of pmap"
MULTI_PLATFORM = "lowered for several platforms"
UNEXPECTED_CALL = "JAX called the lowering with unexpected arguments"
UNEXPECTED_RESULTS = "JAX's lowering returned unexpected results"
NOT_SERIALIZED = "the module could not be serialized"
STORE_REFUSED = "the store did not write it"
CUSTOM_CALL = "a custom call the tier cannot prepare"
TIER_FAILED = "the lowering tier failed"  # a bug: the detail is noted
NOT_STORED_REASONS = (
    *KEY_REASONS,
    COMPILE_LOGGING,
    DUMPING_IR,
    WARNED,
    KEEPALIVE,
    JIT_OF_PMAP,
    MULTI_PLATFORM,
    UNEXPECTED_CALL,
    UNEXPECTED_RESULTS,
    NOT_SERIALIZED,
    STORE_REFUSED,
    CUSTOM_CALL,
    TIER_FAILED,
)
# Reasons whose detail (which parameter, which object, what failed) is worth a note.
_NOTED = frozenset(
    {
        USER_CODE,
        OPAQUE,
        UNKEYABLE_CONSTANT,
        USER_LOWERING_RULE,
        UNREPRESENTABLE,
        UNEXPECTED_CALL,
        UNEXPECTED_RESULTS,
        NOT_SERIALIZED,
        CUSTOM_CALL,
        TIER_FAILED,
    }
)

# Every private name the tier uses (any missing required one: the tier is off).
SEAMS = (
    seams.CACHED_LOWERING,
    seams.PXLA_LOGGER,
    seams.DISPATCH_LOGGER,
    seams.MAKE_IR_CONTEXT,
    seams.MODULE_TO_BYTECODE,
    seams.SHAPE_POLY_STATE,
    seams.LOWERING_RULES,
    seams.PLATFORM_LOWERING_RULES,
    seams.UNCACHEABLE_PRIMITIVES,
    seams.LOWERING_PARAMETERS,
    seams.MLIR_IR,
    seams.WEAKREF_LRU_CACHE,
    seams.CONFIG,
    seams.TRACE_CONTEXT,
    seams.CURRENT_SOURCE_INFO,
    seams.IS_USER_FILENAME,
    seams.EXCLUDE_PATHS,
    seams.EXCLUDE_PATH_REGEX,
    seams.INCLUDE_PATHS,
    seams.REGISTER_EXCLUSION,
    seams.XLA_CLIENT,
    seams.DROP_VAR,
    seams.CUSTOM_DERIVATIVE_LOWERING,
    seams.HASH_COMPUTATION,
    seams.LAPACK,
)

# A served module skips JAX's lowering rules, and with them whatever a rule prepares in
# the process besides the module: jaxlib's LAPACK kernels are initialised by the rules
# that emit a call to one (without it the call dereferences a null function and the
# process dies). A module's custom calls are therefore checked where it is stored and
# where it is served: XLA's own need nothing, LAPACK's are initialised first, and any
# other (a kernel of a plugin or of user code, set up who knows where) keeps the program
# out of the tier.
XLA_CUSTOM_CALLS = frozenset(
    {
        "Sharding",
        "SPMDFullToShardShape",
        "SPMDShardToFullShape",
        "annotate_device_placement",
        "MoveToHost",
        "MoveToDevice",
        "LayoutConstraint",
    }
)
LAPACK_PREFIX = "lapack_"

_COMMON_TAIL = (
    "all_default_mem_kind",
    "inout_aliases",
    "propagated_out_mem_kinds",
    "platforms",
    "lowering_parameters",
    "abstract_mesh",
)
# The lowering seam's parameter names, by JAX release family.
SIGNATURES: dict[str, tuple[str, ...]] = {
    "0.6": (
        "closed_jaxpr",
        "api_name",
        "fun_name",
        "backend",
        "semantic_in_shardings",
        "semantic_out_shardings",
        "in_layouts",
        "out_layouts",
        "num_devices",
        "device_assignment",
        "donated_invars",
        "name_stack",
        *_COMMON_TAIL,
    ),
    "0.10": (
        "closed_jaxpr",
        "module_name",
        "backend",
        "num_const_args",
        "in_avals",
        "semantic_in_shardings",
        "semantic_out_shardings",
        "in_layouts",
        "out_layouts",
        "num_devices",
        "device_assignment",
        "donated_invars",
        *_COMMON_TAIL,
    ),
    "0.12": (
        "closed_jaxpr",
        "module_name",
        "backend",
        "num_const_args",
        "in_avals",
        "out_avals",
        "semantic_in_shardings",
        "semantic_out_shardings",
        "in_layouts",
        "out_layouts",
        "num_devices",
        "device_assignment",
        "donated_invars",
        *_COMMON_TAIL,
    ),
}
# Its results: JAX 0.6 also returns nreps.
_RESULTS = (
    "module",
    "keepalive",
    "host_callbacks",
    "unordered_effects",
    "ordered_effects",
    "tuple_args",
    "shape_poly_state",
)
_RESULTS_0_6 = (*_RESULTS[:5], "nreps", *_RESULTS[5:])
# Served modules per MLIR context and thread. Making a context costs ~5.6 ms (it loads
# every dialect): more than parsing, or lowering, a small program. JAX 0.12 shares one
# per thread for 10 of its own lowerings.
CONTEXT_REUSE = 100
_MAX_PENDING_CHECKS = 512  # modules waiting to be hashed by JAX (held alive meanwhile)
_UNSAFE_IN_NAMES = re.compile(r"[^A-Za-z0-9_.-]")

# Python's warning filters and catch_warnings are process-wide: two threads recording
# at once would restore each other's state. Lowerings that record are serialised
# (re-entrant: a lowering may nest another in its own thread).
_WARNINGS_LOCK = threading.RLock()


class ModuleStore(Protocol):
    """Where lowered modules are kept (the plugin's store, in a namespace of its own)."""

    def get_lowered(self, key: str) -> bytes | None: ...

    def put_lowered(self, key: str, data: bytes, lower_secs: float) -> bool: ...


def install(
    installation: Installation,
    store: ModuleStore,
    mode: Lowering,
    stats: LoweringStats,
    mismatch_dir: Path,
) -> bool:
    """Install step: serve lowered modules from ``store`` (``mode`` ON or VERIFY),
    counting into ``stats``; verify mode writes the modules that differ under
    ``mismatch_dir``. Whether the tier runs (when this JAX lacks what it needs: one
    notice, and nothing changed). Initialises no backend, creates no array, logs and
    warns nothing."""
    found = _find_seam()
    if isinstance(found, str):
        installation.notices.append(found)
        return False
    if not seams.present(found.keyer.internals.custom_derivative_rule):
        installation.notices.append(seams.missing(seams.CUSTOM_DERIVATIVE_LOWERING))
    if found.hash_computation is None:
        installation.notices.append(seams.missing(seams.HASH_COMPUTATION, "a function"))
    if found.lapack_initialize is None:
        installation.notices.append(seams.missing(seams.LAPACK, "initialize"))
    verify = mode is Lowering.VERIFY
    tier = _Tier(found, store, verify, stats, mismatch_dir, installation.first_use)
    _exclude_own_frames(installation, found)
    pxla = importlib.import_module(seams.CACHED_LOWERING.module)
    installation.patch(pxla, seams.CACHED_LOWERING.name, found.weakref_lru_cache(tier))
    if found.hash_computation is not None:
        cache_key = importlib.import_module(seams.HASH_COMPUTATION.module)
        installation.patch(
            cache_key, seams.HASH_COMPUTATION.name, tier.checking(found.hash_computation)
        )
    return True


@dataclass
class _Seam:
    """What the tier uses of JAX, found and checked before anything is changed."""

    family: str
    params: tuple[str, ...]
    original: Callable[..., Any]
    make_ir_context: Callable[[], Any]
    module_to_bytecode: Callable[[Any], bytes]
    shape_poly_state: type
    parse_module: Callable[..., Any]
    weakref_lru_cache: Callable[[Any], Any]
    loggers: tuple[logging.Logger, ...]
    register_exclusion: Callable[[str], None]
    exclude_paths: list[str]
    exclude_path_regex: Any
    hash_computation: Callable[..., Any] | None
    keyer: Keyer
    string_attr: Any  # MLIR's StringAttr: reads a custom call's target
    lapack_initialize: Callable[[], Any] | None

    @property
    def results(self) -> tuple[str, ...]:
        return _RESULTS_0_6 if self.family == "0.6" else _RESULTS


def _parameters(cached: Any) -> tuple[str, ...]:
    """The parameter names of the function under JAX's in-memory cache (a C++ object
    without a signature or ``__wrapped__``): found among the cache's referents."""
    for referent in gc.get_referents(cached):
        if inspect.isfunction(referent) and referent.__name__ == seams.CACHED_LOWERING.name:
            try:
                return tuple(inspect.signature(referent).parameters)
            except (TypeError, ValueError):  # not introspectable: an unknown shape
                return ()
    return ()


def _find_seam() -> _Seam | str:
    """Every name the tier needs, checked; or the one notice naming what is missing."""
    original = seams.find(seams.CACHED_LOWERING)
    params = _parameters(original) if callable(original) else ()
    family = next((name for name, known in SIGNATURES.items() if known == params), None)
    if family is None:
        return seams.missing(seams.CACHED_LOWERING, "a cached function of a known signature")
    functions = {
        private: seams.find(private)
        for private in (
            seams.MAKE_IR_CONTEXT,
            seams.MODULE_TO_BYTECODE,
            seams.WEAKREF_LRU_CACHE,
            seams.REGISTER_EXCLUSION,
        )
    }
    for private, found in functions.items():
        if not callable(found):
            return seams.missing(private, "a function")
    shape_poly_state = seams.find(seams.SHAPE_POLY_STATE)
    if not isinstance(shape_poly_state, type):
        return seams.missing(seams.SHAPE_POLY_STATE, "a class")
    ir = seams.find(seams.MLIR_IR)
    parse_module = getattr(getattr(ir, "Module", None), "parse", None)
    string_attr = getattr(ir, "StringAttr", None)
    if not callable(parse_module) or not callable(string_attr):
        return seams.missing(seams.MLIR_IR, "Module.parse, StringAttr")
    loggers = (seams.find(seams.PXLA_LOGGER), seams.find(seams.DISPATCH_LOGGER))
    for private, logger in zip((seams.PXLA_LOGGER, seams.DISPATCH_LOGGER), loggers, strict=True):
        if not isinstance(logger, logging.Logger):
            return seams.missing(private, "a Logger")
    exclude_paths = seams.find(seams.EXCLUDE_PATHS)
    if not isinstance(exclude_paths, list):
        return seams.missing(seams.EXCLUDE_PATHS, "a list")
    for private in (seams.EXCLUDE_PATH_REGEX, seams.IS_USER_FILENAME):
        if not callable(getattr(seams.find(private), "cache_clear", None)):
            return seams.missing(private, "a cached function")
    internals = lowering_internals.find_internals(params, has_uncacheable_rules=family != "0.6")
    if isinstance(internals, str):
        return internals
    hash_computation = seams.find(seams.HASH_COMPUTATION)
    lapack_initialize = getattr(seams.find(seams.LAPACK), "initialize", None)
    return _Seam(
        family=family,
        params=params,
        original=original,
        make_ir_context=functions[seams.MAKE_IR_CONTEXT],
        module_to_bytecode=functions[seams.MODULE_TO_BYTECODE],
        shape_poly_state=shape_poly_state,
        parse_module=parse_module,
        weakref_lru_cache=functions[seams.WEAKREF_LRU_CACHE],
        loggers=(loggers[0], loggers[1]),
        register_exclusion=functions[seams.REGISTER_EXCLUSION],
        exclude_paths=exclude_paths,
        exclude_path_regex=seams.find(seams.EXCLUDE_PATH_REGEX),
        hash_computation=hash_computation if callable(hash_computation) else None,
        keyer=Keyer(internals),
        string_attr=string_attr,
        lapack_initialize=lapack_initialize if callable(lapack_initialize) else None,
    )


def _exclude_own_frames(installation: Installation, seam: _Seam) -> None:
    """JAX writes the Python stack into every location of a module: the tier's frames
    (it calls JAX's lowering) are left out, as JAX leaves out its own."""
    own = [
        os.path.abspath(path)
        for path in (__file__, lowering_key.__file__, lowering_values.__file__)
        if os.path.abspath(path) not in seam.exclude_paths
    ]
    for path in own:
        seam.register_exclusion(path)
    is_user_filename = seams.find(seams.IS_USER_FILENAME)

    def include_again() -> None:
        for path in own:
            if path in seam.exclude_paths:
                seam.exclude_paths.remove(path)
        seam.exclude_path_regex.cache_clear()
        is_user_filename.cache_clear()

    installation.add_undo("let JAX locate the lowering tier's frames again", include_again)


@dataclass
class _Lowered:
    """What JAX's lowering returned, how long it took, and whether it warned."""

    results: Any  # a tuple, unless JAX changed
    secs: float
    warned: bool


class _Tier:
    """Stands in for JAX's lowering seam (behind an in-memory cache like JAX's)."""

    def __init__(
        self,
        seam: _Seam,
        store: ModuleStore,
        verify: bool,
        stats: LoweringStats,
        mismatch_dir: Path,
        first_use: Callable[[], None],
    ) -> None:
        self._seam = seam
        self._store = store
        self._verify = verify
        self._stats = stats
        self._mismatch_dir = mismatch_dir
        self._lock = threading.Lock()  # the statistics and the tables below
        self._local = threading.local()  # each thread's MLIR context for served modules
        # id(module) -> (module, key, header, bytecode): written, not hashed by JAX yet
        self._written: OrderedDict[int, tuple[Any, str, EntryHeader, bytes]] = OrderedDict()
        # id(module) -> (module, key, recorded digest): served, not hashed by JAX yet
        self._served: OrderedDict[int, tuple[Any, str, str | None]] = OrderedDict()
        self._poisoned: set[str] = set()  # keys whose entries failed the free check
        # Binds the store to this machine's namespace: a program is lowered before it is
        # compiled, so the tier reaches the store before the first compile does.
        self._first_use = first_use

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            arguments, key, found = self._prepare(args, kwargs)
        except Exception as error:  # the tier's own failure: counted, JAX lowers
            self._not_stored(TIER_FAILED, f"{type(error).__name__}: {error}")
            return self._lower(args, kwargs).results
        if found is not None and not self._verify:
            return found
        lowered = self._lower(args, kwargs)
        try:
            if key is not None and found is not None:
                self._compare(key, arguments, found, lowered)
            elif key is not None:
                self._store_lowered(key, arguments, lowered)
        except Exception as error:  # the tier's own failure: counted, JAX's results used
            self._not_stored(TIER_FAILED, f"{type(error).__name__}: {error}")
        return lowered.results

    def _prepare(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], str | None, tuple[Any, ...] | None]:
        """The call's arguments by name, its key (``None``: not keyed, counted why) and
        the served results (``None``: JAX lowers)."""
        params = self._seam.params
        arguments = dict(zip(params, args, strict=False))  # the rest by name
        arguments.update(kwargs)
        if len(args) > len(params) or set(arguments) != set(params):
            self._not_stored(UNEXPECTED_CALL, f"{len(args)} arguments, {sorted(kwargs)}")
            return arguments, None, None
        aside = self._stand_aside()
        if aside is not None:
            self._not_stored(aside)
            return arguments, None, None
        started = time.perf_counter()
        try:
            key = self._seam.keyer.key(arguments)
        except Uncachable as why:
            self._add_serve_secs(time.perf_counter() - started)
            self._not_stored(why.reason, f"{_module_name(arguments)}: {why.detail}")
            return arguments, None, None
        found = self._lookup(key, arguments)
        serve_secs = time.perf_counter() - started
        with self._lock:
            self._stats.serve_secs += serve_secs
            if found is None:
                self._stats.misses += 1
                return arguments, key, None
            header, served = found
            self._stats.hits += 1
            if not self._verify:  # verify lowers anyway: nothing saved
                self._stats.saved_secs += header.lower_secs - serve_secs
                _remember(self._served, served[0], (served[0], key, header.computation))
        return arguments, key, served

    # -- lowering as JAX would -----------------------------------------------------------

    def _stand_aside(self) -> str | None:
        """Why this lowering must be JAX's own: it has side effects (log records, IR
        dumps) that a served module would not reproduce."""
        holders = self._seam.keyer.internals.config_holders
        log_compiles = holders.get("jax_log_compiles")
        level = logging.WARNING if getattr(log_compiles, "value", False) else logging.DEBUG
        if any(logger.isEnabledFor(level) for logger in self._seam.loggers):
            return COMPILE_LOGGING
        dump = holders.get("jax_dump_ir_to")
        if dump is not None and dump.value:
            return DUMPING_IR
        return None

    def _lower(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Lowered:
        started = time.perf_counter()
        with _warnings_heard() as heard:
            results = self._seam.original(*args, **kwargs)
        secs = time.perf_counter() - started
        with self._lock:
            self._stats.lower_secs += secs
        return _Lowered(results, secs, bool(heard))

    # -- serving -------------------------------------------------------------------------

    def _lookup(self, key: str, arguments: dict[str, Any]) -> tuple[EntryHeader, Any] | None:
        """The stored entry under ``key``, parsed, with JAX's other results rebuilt;
        ``None`` when there is none or it cannot be used (noted, lowered again)."""
        if key in self._poisoned:
            return None
        try:
            self._first_use()
            data = self._store.get_lowered(key)
        except Exception as error:  # the store promises not to raise: noted, a miss
            self._note(f"read {key[:16]}: {type(error).__name__}: {error}")
            return None
        if data is None:
            return None
        try:
            header, bytecode = lowering_entry.decode(data, key)
        except BadEntry as error:
            self._note(f"lowered module {key[:16]}: {error}")
            return None
        platforms = tuple(arguments["platforms"])
        if header.poisoned or header.platforms != platforms:
            return None
        try:
            module = self._seam.parse_module(bytecode, context=self._context())
            shape_poly_state = self._seam.shape_poly_state((), platforms)
        except Exception as error:  # MLIR refused the bytecode: noted, lowered again
            self._note(f"parse lowered module {key[:16]}: {type(error).__name__}: {error}")
            return None
        try:
            unprepared = self._prepare_custom_calls(module, bytecode)
        except Exception as error:  # LAPACK's initialiser failed: noted, lowered again
            self._note(f"prepare lowered module {key[:16]}: {type(error).__name__}: {error}")
            return None
        if unprepared is not None:  # stored by another version of the tier: lowered again
            self._note(f"lowered module {key[:16]} calls {unprepared}: not served")
            return None
        results = {
            "module": module,
            "keepalive": [],
            "host_callbacks": [],
            "unordered_effects": [],
            "ordered_effects": [],
            "nreps": header.nreps,
            "tuple_args": header.tuple_args,
            "shape_poly_state": shape_poly_state,
        }
        return header, tuple(results[name] for name in self._seam.results)

    def _context(self) -> Any:
        """An MLIR context made as JAX makes its own, shared by up to
        :data:`CONTEXT_REUSE` served modules of this thread."""
        held: tuple[Any, int] | None = getattr(self._local, "context", None)
        if held is not None and held[1] < CONTEXT_REUSE:
            self._local.context = (held[0], held[1] + 1)
            return held[0]
        context = self._seam.make_ir_context()
        self._local.context = (context, 1)
        return context

    # -- storing -------------------------------------------------------------------------

    def _store_lowered(self, key: str, arguments: dict[str, Any], lowered: _Lowered) -> None:
        why = self._unstorable(lowered)
        if why is not None:
            self._not_stored(*why)
            return
        results = dict(zip(self._seam.results, lowered.results, strict=True))
        module = results["module"]
        try:
            bytecode = bytes(self._seam.module_to_bytecode(module))
        except Exception as error:  # JAX's serializer failed: counted, not stored
            self._not_stored(NOT_SERIALIZED, f"{type(error).__name__}: {error}")
            return
        unprepared = self._prepare_custom_calls(module, bytecode)
        if unprepared is not None:
            self._not_stored(CUSTOM_CALL, f"{_module_name(arguments)}: {unprepared}")
            return
        header = EntryHeader(
            key=key,
            module_name=_module_name(arguments)[: lowering_entry.MAX_NAME],
            platforms=tuple(arguments["platforms"]),
            tuple_args=results["tuple_args"],
            nreps=results.get("nreps", 1),
            lower_secs=round(lowered.secs, 6),
            bytecode_sha256=hashlib.sha256(bytecode).hexdigest(),
        )
        if not self._put(key, lowering_entry.encode(header, bytecode), header.lower_secs):
            self._not_stored(STORE_REFUSED)
            return
        with self._lock:
            self._stats.stored += 1
            if self._seam.hash_computation is not None:
                _remember(self._written, module, (module, key, header, bytecode))

    def _unstorable(self, lowered: _Lowered) -> tuple[str, str] | None:
        """Why a lowering's results cannot be served later (reason, detail)."""
        if lowered.warned:
            return WARNED, ""
        names = self._seam.results
        if not isinstance(lowered.results, tuple) or len(lowered.results) != len(names):
            return UNEXPECTED_RESULTS, f"{type(lowered.results).__name__} of results"
        results = dict(zip(names, lowered.results, strict=True))
        if results["keepalive"]:
            return KEEPALIVE, ""
        if results["host_callbacks"]:
            return HOST_CALLBACKS, ""
        if results["unordered_effects"] or results["ordered_effects"]:
            return EFFECTS, ""
        if results.get("nreps", 1) != 1:
            return JIT_OF_PMAP, ""
        if not isinstance(results["tuple_args"], bool) or type(results.get("nreps", 1)) is not int:
            return UNEXPECTED_RESULTS, "tuple_args or nreps"
        state = results["shape_poly_state"]
        if tuple(getattr(state, "dim_vars", ("?",))) or getattr(state, "uses_dim_vars", True):
            return SHAPE_POLYMORPHISM, ""
        if getattr(state, "has_platform_index_argument", True):
            return MULTI_PLATFORM, ""
        return None

    def _prepare_custom_calls(self, module: Any, bytecode: bytes) -> str | None:
        """Prepare what ``module``'s custom calls need in this process, as JAX's lowering
        rules would have (LAPACK initialised); the first custom call target it cannot
        prepare (``None``: every one is ready)."""
        if b"custom_call" not in bytecode:  # the op's name is in any module that has one
            return None
        initialize = self._seam.lapack_initialize
        lapack = False
        for target in sorted(custom_call_targets(module, self._seam.string_attr)):
            if target in XLA_CUSTOM_CALLS:
                continue
            if target.startswith(LAPACK_PREFIX) and initialize is not None:
                lapack = True
                continue
            return target
        if lapack and initialize is not None:
            initialize()  # idempotent: JAX's rules call it before every LAPACK call
        return None

    def _put(self, key: str, data: bytes, lower_secs: float) -> bool:
        try:
            return self._store.put_lowered(key, data, lower_secs)
        except Exception as error:  # the store promises not to raise: noted, not written
            self._note(f"write {key[:16]}: {type(error).__name__}: {error}")
            return False

    # -- verify --------------------------------------------------------------------------

    def _compare(
        self, key: str, arguments: dict[str, Any], served: tuple[Any, ...], fresh: _Lowered
    ) -> None:
        """Verify mode: whether the served results are those of a fresh lowering (the
        module as text with debug info, so every location counts; identical but for its
        locations, it counts as identical, apart: JAX's cache key leaves them out, and
        JAX has been seen to write one frame of execnet's bootstrap with and without its
        column range in two xdist workers)."""
        try:
            stored_text = _describe(self._seam.results, served, warned=False)
            fresh_text = _describe(self._seam.results, fresh.results, warned=fresh.warned)
            relocated = stored_text != fresh_text and _describe(
                self._seam.results, served, warned=False, locations=False
            ) == _describe(self._seam.results, fresh.results, warned=fresh.warned, locations=False)
        except Exception as error:  # a module that cannot be printed: noted, not compared
            self._note(f"verify {key[:16]}: {type(error).__name__}: {error}")
            return
        if stored_text == fresh_text or relocated:
            with self._lock:
                self._stats.verified += 1
                self._stats.relocated += relocated
            return
        name = _module_name(arguments)
        with self._lock:
            self._stats.mismatched += 1
            if len(self._stats.mismatches) >= MAX_MESSAGES:
                return
        where = self._mismatch_dir / _safe_name(name) / key[:16]
        stored, fresh_file = where / "stored.mlir", where / "fresh.mlir"
        try:
            where.mkdir(parents=True, exist_ok=True)
            stored.write_text(stored_text, encoding="utf-8")
            fresh_file.write_text(fresh_text, encoding="utf-8")
        except OSError as error:
            self._note(f"verify {key[:16]}: cannot write {where}: {error}")
        with self._lock:
            self._stats.mismatches.append(f"{name} {key[:16]}: diff -u {stored} {fresh_file}")

    # -- the free check ------------------------------------------------------------------

    def checking(self, hash_computation: Callable[..., Any]) -> Callable[..., Any]:
        """JAX's ``_hash_computation``, also telling the tier the digest of what it
        hashed for a module the tier wrote or served."""

        def _hash_computation(hash_obj: Any, module: Any, *args: Any, **kwargs: Any) -> Any:
            if id(module) not in self._written and id(module) not in self._served:
                return hash_computation(hash_obj, module, *args, **kwargs)
            tee = _Tee(hash_obj)
            result = hash_computation(tee, module, *args, **kwargs)
            self._hashed(module, tee.ours.hexdigest())
            return result

        return _hash_computation

    def _hashed(self, module: Any, digest: str) -> None:
        """JAX hashed ``module`` into a compilation-cache key: record the digest with
        the entry written for it, or compare with the one recorded for a served one."""
        with self._lock:
            written = self._written.pop(id(module), None)
            served = self._served.pop(id(module), None)
        if written is not None and written[0] is module:
            _, key, header, bytecode = written
            data = lowering_entry.encode(header.with_computation(digest), bytecode)
            self._put(key, data, header.lower_secs)
        if served is None or served[0] is not module or served[2] is None:
            return  # not served, or written before JAX hashed it: nothing to compare
        key, recorded = served[1], served[2]
        with self._lock:
            if recorded == digest:
                self._stats.checked += 1
                return
            self._stats.check_failed += 1
            self._poisoned.add(key)
        self._note(f"lowered module {key[:16]} failed the key check: not served again")
        self._put(key, lowering_entry.poisoned(key), 0.0)

    # -- counting ------------------------------------------------------------------------

    def _not_stored(self, reason: str, detail: str = "") -> None:
        with self._lock:
            count_by(self._stats.not_stored, reason)
            if detail and reason in _NOTED:
                self._stats.note(f"not stored ({reason}): {detail}"[:300])

    def _note(self, message: str) -> None:
        with self._lock:
            self._stats.note(message[:300])

    def _add_serve_secs(self, secs: float) -> None:
        with self._lock:
            self._stats.serve_secs += secs


def custom_call_targets(module: Any, string_attr: Any) -> set[str]:
    """The targets of every custom call in ``module`` (its regions walked)."""
    found: set[str] = set()
    pending = [module.operation]
    while pending:
        operation = pending.pop()
        for region in operation.regions:
            for block in region.blocks:
                for inner in block.operations:
                    op = inner.operation
                    if op.name.endswith(".custom_call"):
                        found.add(str(string_attr(op.attributes["call_target_name"]).value))
                    pending.append(op)
    return found


def _remember(table: OrderedDict[int, Any], module: Any, value: Any) -> None:
    """Hold ``value`` (which holds ``module``, so its id stays unique) until JAX hashes
    the module; the oldest are let go past :data:`_MAX_PENDING_CHECKS`."""
    table[id(module)] = value
    while len(table) > _MAX_PENDING_CHECKS:
        table.popitem(last=False)


class _Tee:
    """A hash object feeding JAX's and ours (JAX's hash functions call ``update``)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.ours = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self.inner.update(data)
        self.ours.update(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@contextlib.contextmanager
def _warnings_heard() -> Iterator[list[warnings.WarningMessage]]:
    """Record every warning of the block (whether a lowering warned), then emit each
    again as it was first emitted, under the filters in force outside: the user sees
    what they would have seen without the tier. A global ``warnings.warn`` wrapper would
    miss warnings issued from C and stay in place for the whole session."""
    heard: list[warnings.WarningMessage] = []
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield heard
            finally:
                heard.extend(caught)
    finally:
        for message in heard:
            _warn_again(message)


def _warn_again(message: warnings.WarningMessage) -> None:
    """Emit a recorded warning as ``warnings.warn`` did: same message, category, place,
    module and once-per-place registry."""
    module = _module_of(message.filename)
    namespace = None if module is None else vars(module)
    warnings.warn_explicit(
        message.message,
        message.category,
        message.filename,
        message.lineno,
        module=None if module is None else module.__name__,
        registry=None if namespace is None else namespace.setdefault("__warningregistry__", {}),
        module_globals=namespace,
        source=message.source,
    )


def _module_of(filename: str) -> Any:
    """The imported module of ``filename``, if any (a warning names its file only)."""
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == filename:
            return module
    return None


def _describe(
    names: tuple[str, ...], results: tuple[Any, ...], *, warned: bool, locations: bool = True
) -> str:
    """A lowering's results as text: the module (with debug info: every location), after
    one comment line per other result."""
    lines = []
    module = None
    for name, value in zip(names, results, strict=True):
        if name == "module":
            module = value
        elif name == "shape_poly_state":
            lines.append(f"// {name}: {sorted(vars(value).items())!r}")
        elif isinstance(value, (list, tuple)):
            lines.append(f"// {name}: {len(value)} {[type(item).__name__ for item in value]}")
        else:
            lines.append(f"// {name}: {value!r}")
    if warned:
        lines.append("// JAX warned while lowering")
    text = module.operation.get_asm(enable_debug_info=locations) if module is not None else ""
    return "\n".join([*lines, str(text)])


def _module_name(arguments: dict[str, Any]) -> str:
    """The program's name as JAX 0.10 and later give it (``jit(f)``)."""
    if "module_name" in arguments:
        return str(arguments["module_name"])
    return f"{arguments.get('api_name')}({arguments.get('fun_name')})"  # JAX 0.6


def _safe_name(name: str) -> str:
    """``name`` as one path component of our character set."""
    safe = _UNSAFE_IN_NAMES.sub("_", name)[:100]
    return safe if safe and not safe.startswith(".") else f"_{safe}"
