"""The key of one lowering: everything JAX's lowering of a program depends on, hashed, or
the reason the program has none (:class:`Uncachable`).

The lowering tier (:mod:`pytest_jaxcache.jax.lowering`) serves a stored module in place
of lowering a program only under a key that covers every input of that lowering:

- the versions (JAX, jaxlib and its build, numpy, ml_dtypes, Python, the machine);
- every configuration option but those of the compilation cache, and the thread's
  tracing context;
- the current Python stack and name stack: JAX appends them to *every* location of the
  module (its user frames only, as JAX filters them, before any limit);
- every argument of the lowering seam (module name, backend, shardings, layouts, ...);
- the jaxpr, walked structurally: equations, parameters, variables with their types,
  constants by the SHA-256 of their bytes, each equation's frames and name stack, and
  nested jaxprs the same way;
- the lowering rules of every primitive (module, name and closure of each rule).

The jaxpr's printed form is not used: it drops constants, abbreviates parameters and
masks callables. Objects JAX compares by identity (jaxprs, functions, primitives) are
written once and referred to by number after, so that which equations share an object
(which decides what JAX's per-module lowering caches reuse) is in the key too.

When in doubt, a program is uncachable, never keyed coarsely: a Python object from user
code in a parameter (its code is not pinned by any version), an object whose state
cannot be read, effects, host callbacks, symbolic shapes. Code from JAX, jaxlib, numpy,
ml_dtypes or the standard library is keyed by its name and definition: its versions in
the key pin it.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import inspect
import operator
import sys
import threading
import types
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from pytest_jaxcache.jax import seams
from pytest_jaxcache.jax.importing import import_jax
from pytest_jaxcache.jax.lowering_internals import (
    RULES_CHANGED,
    UNREPRESENTABLE,
    USER_LOWERING_RULE,
    Encoder,
    KeyInternals,
    Uncachable,
)
from pytest_jaxcache.jax.lowering_values import (
    BUILTIN_ENCODERS,
    SHARDING_ENCODERS,
    UNBOUND_C_METHODS,
    JaxprEntry,
    KeyBuilder,
    RuleRegistry,
    memoized,
    pinned,
    value_types,
)

# Options that only steer JAX's persistent *compilation* cache: lowering never reads
# them (checked in interpreters/mlir.py, pxla.py's lowering path, lax/ and dispatch.py
# of JAX 0.6.1, 0.10.2, 0.12.0.1), so sessions with other cache settings share modules.
_CONFIG_NOT_IN_KEY = frozenset(
    {
        "jax_compilation_cache_dir",
        "jax_enable_compilation_cache",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
        "jax_compilation_cache_max_size",
        "jax_persistent_cache_enable_xla_caches",
        "jax_compilation_cache_expect_pgle",
        "jax_raise_persistent_cache_errors",
        "jax_compilation_cache_check_contents",
        "jax_explain_cache_misses",
    }
)
# Parameters holding custom derivative rules (Python callables of the user's), which
# JAX's lowering rule for these primitives never reads: it lowers ``call_jaxpr`` only
# (``_custom_jvp_vjp_call_lowering(ctx, *args, call_jaxpr, **_)``). Their *equality*
# still decides whether two equations share one cached lowering (JAX's per-module
# cache compares parameters), so it is keyed: which equations hold the same rule.
_RULE_IGNORED_PARAMS: dict[str, frozenset[str]] = {
    "custom_jvp_call": frozenset({"jvp_jaxpr_fun", "jvp_jaxpr_thunk"}),
    "custom_vjp_call": frozenset({"fwd_jaxpr_thunk", "bwd", "out_trees"}),
    "custom_vjp_call_jaxpr": frozenset({"fwd_jaxpr_thunk", "bwd", "out_trees"}),
}
# Bounds of the per-process memos (they hold the objects they describe, so that an id
# is never reused while its entry lives).
_MAX_TRACEBACKS = 200_000
_MAX_JAXPRS = 4096
_FULL_RULE_CHECK_EVERY = 64  # calls between full comparisons of every lowering rule


class Keyer:
    """Builds the keys of one process, with memos of what does not change: tokens of
    immutable objects, tracebacks and nested jaxprs, the configuration while every
    option is the same object, rule fingerprints while the registries are the same."""

    def __init__(self, internals: KeyInternals) -> None:
        self.internals = internals
        self.handlers: dict[type, Encoder] = dict(BUILTIN_ENCODERS)
        # Immutable JAX types keyed by value, memoized.
        self._value_types = value_types(import_jax(), internals.lowering_parameters)
        self._lock = threading.RLock()
        self._config_types = {type(holder) for holder in internals.config_holders.values()}
        self.values: dict[int, tuple[Any, str]] = {}
        self._frames: dict[tuple[int, int], tuple[Any, str | None]] = {}
        self._tracebacks: dict[int, tuple[Any, str]] = {}
        self._traceback_generation = (-1, -1)
        self._jaxprs: OrderedDict[int, JaxprEntry] = OrderedDict()
        self._config_names: tuple[int, list[str]] = (-1, [])
        self._config: tuple[list[Any], str] | None = None
        self._registry: RuleRegistry | None = None
        self._registry_calls = 0
        self._backends: dict[int, tuple[Any, str]] = {}
        self._ignored: dict[int, tuple[Any, frozenset[str]]] = {}

    def key(self, arguments: dict[str, Any]) -> str:
        """The key of one call of the lowering seam (its arguments by name); raises
        :class:`Uncachable`. Anything else going wrong is a reason too: the key builder
        must never break a lowering."""
        with self._lock:
            try:
                return self._build(arguments)
            except Uncachable:
                raise
            except RecursionError:
                raise Uncachable(UNREPRESENTABLE, "nested too deeply") from None
            except Exception as error:  # an unexpected type or shape: not keyed, counted
                detail = f"{type(error).__name__}: {error}"[:300]
                raise Uncachable(UNREPRESENTABLE, detail) from None

    def _build(self, arguments: dict[str, Any]) -> str:
        builder = KeyBuilder(self)
        builder.registry = self.registry()
        if builder.registry.poison is not None:
            raise Uncachable(USER_LOWERING_RULE, builder.registry.poison)
        builder.out.append(self.internals.header)
        builder.out.append(self._config_token(builder))
        current = self.internals.current_source_info()
        builder.out.append("current")
        builder.traceback(current.traceback)
        builder.name_stack(current.name_stack)
        for name in self.internals.params:
            if name == "closed_jaxpr":
                continue  # last: the arguments' objects are numbered first
            builder.out.append(f"a{name!r}")
            try:
                builder.enc(arguments[name])
            except Uncachable as why:
                raise why.within(f"argument {name}") from None
        builder.out.append("jaxpr")
        builder.program(arguments["closed_jaxpr"])
        return builder.digest()

    # -- encoders by type --------------------------------------------------------------

    def encoder_for(self, cls: type) -> Encoder:
        """The encoder of objects of ``cls`` (it depends on the class only)."""
        import numpy

        internals = self.internals
        value_encoder = self._value_types.get(cls)
        if value_encoder is not None:
            return memoized(value_encoder)
        by_class: list[tuple[type | tuple[type, ...], Encoder]] = [
            (internals.jaxpr_type, KeyBuilder.jaxpr),
            (internals.var_type, KeyBuilder.var),
            (internals.literal_type, KeyBuilder.atom),
            (internals.primitive_type, KeyBuilder.primitive),
            (internals.traceback_type, KeyBuilder.traceback),
            (internals.name_stack_type, KeyBuilder.name_stack),
            (numpy.dtype, KeyBuilder.dtype),
            (numpy.ndarray, KeyBuilder.ndarray),
            (numpy.generic, KeyBuilder.numpy_scalar),
            (enum.Enum, KeyBuilder.enum_member),
        ]
        if internals.closed_jaxpr_type is not None:
            by_class.append((internals.closed_jaxpr_type, KeyBuilder.jaxpr))
        for base, encoder in by_class:
            if issubclass(cls, base):
                return encoder
        if issubclass(cls, tuple) and hasattr(cls, "_fields"):
            return KeyBuilder.named_tuple
        if issubclass(cls, (bool, int, float, complex, str, bytes)):
            return KeyBuilder.typed_scalar
        if issubclass(cls, Mapping):
            return KeyBuilder.mapping
        if issubclass(cls, AbstractSet):
            return KeyBuilder.set_of
        if issubclass(cls, Sequence):
            return KeyBuilder.sequence
        if cls in self._config_types:
            return KeyBuilder.config_option
        if issubclass(cls, types.ModuleType):
            return KeyBuilder.module
        if issubclass(
            cls,
            (
                types.FunctionType,
                types.BuiltinFunctionType,
                types.MethodType,
                functools.partial,
                type,
                types.MethodWrapperType,
                *UNBOUND_C_METHODS,
            ),
        ):
            return KeyBuilder.function
        if pinned(cls.__module__):
            if cls.__name__ == "Device" and hasattr(cls, "device_kind"):
                return KeyBuilder.device
            if cls.__name__ == "ArrayImpl" and hasattr(cls, "is_fully_addressable"):
                return KeyBuilder.jax_array
            if cls.__name__ == "Client" and hasattr(cls, "platform_version"):
                return KeyBuilder.backend
            sharding = SHARDING_ENCODERS.get(cls.__name__)
            if sharding is not None:
                return memoized(sharding)
        return KeyBuilder.generic

    # -- per-process memos -------------------------------------------------------------

    def jaxpr_entry(self, jaxpr: Any, registry: RuleRegistry) -> JaxprEntry:
        """``jaxpr``'s own token (or the reason it has none), memoized per jaxpr object
        while the lowering rules and the user-frame filter are the same."""
        generation = (id(registry), self._traceback_generation)
        hit = self._jaxprs.get(id(jaxpr))
        if hit is not None and hit.jaxpr is jaxpr and hit.generation == generation:
            tables = self.rule_tables()
            if not all(registry.unchanged(primitive, tables) for primitive in hit.primitives):
                self.forget_rules()
                raise Uncachable(RULES_CHANGED)
            self._jaxprs.move_to_end(id(jaxpr))
            if hit.refused is not None:
                raise hit.refused
            return hit
        builder = KeyBuilder(self)
        builder.registry = registry
        builder.identities, builder.ignored = [], []
        try:
            builder.jaxpr_body(jaxpr)
            entry = JaxprEntry(
                jaxpr,
                "J" + builder.digest(),
                builder.identities,
                builder.ignored,
                None,
                generation,
                (),
            )
        except Uncachable as why:
            entry = JaxprEntry(jaxpr, "", [], [], why, generation, ())
        primitive_type = self.internals.primitive_type
        entry.primitives = tuple(o for o in entry.identities if isinstance(o, primitive_type))
        self._jaxprs[id(jaxpr)] = entry
        while len(self._jaxprs) > _MAX_JAXPRS:
            self._jaxprs.popitem(last=False)
        if entry.refused is not None:
            raise entry.refused
        return entry

    def traceback_token(self, traceback: Any) -> str:
        """A digest of the user frames of ``traceback`` (immutable: memoized per object
        while the user-frame filter is the same)."""
        internals = self.internals
        generation = (len(internals.exclude_paths), len(internals.include_paths))
        if generation != self._traceback_generation:
            self._tracebacks.clear()
            self._frames.clear()
            self._traceback_generation = generation
        hit = self._tracebacks.get(id(traceback))
        if hit is not None and hit[0] is traceback:
            return hit[1]
        codes, offsets = traceback.raw_frames()
        frames = []
        for code, offset in zip(codes, offsets, strict=True):
            frame = self._frame_token(code, offset)
            if frame is not None:
                frames.append(frame)
        joined = "\0".join(frames).encode("utf-8", "surrogatepass")
        token = f"tb{len(frames)}:" + hashlib.sha256(joined).hexdigest()[:32]
        if len(self._tracebacks) >= _MAX_TRACEBACKS:
            self._tracebacks.clear()
        self._tracebacks[id(traceback)] = (traceback, token)
        return token

    def _frame_token(self, code: Any, offset: int) -> str | None:
        """A user frame as JAX writes it into a location: file, names, line and column
        range (``None``: not a user frame, JAX leaves it out)."""
        if not self.internals.is_user_filename(code.co_filename):
            return None
        memo_key = (id(code), offset)
        hit = self._frames.get(memo_key)
        if hit is not None and hit[0] is code:
            return hit[1]
        where = self.internals.traceback_type.code_addr2location(code, offset)
        token = repr(
            (code.co_filename, code.co_name, getattr(code, "co_qualname", ""), tuple(where))
        )
        if len(self._frames) >= _MAX_TRACEBACKS:
            self._frames.clear()
        self._frames[memo_key] = (code, token)
        return token

    def rule_tables(self) -> dict[str, dict[Any, Any]]:
        tables = {"*": self.internals.rules}
        tables.update(self.internals.platform_rules)
        return tables

    def forget_rules(self) -> None:
        """A rule was replaced: fingerprint every rule again, rebuild jaxpr tokens."""
        self._registry = None
        self._jaxprs.clear()

    def registry(self) -> RuleRegistry:
        """Fingerprints of every registered lowering rule, computed again when the
        registries change. A JAX primitive whose rule is user code makes every program
        uncachable (JAX's own rules lower through JAX primitives, e.g. ``lower_fun``);
        a user primitive with a user rule only the programs that use it."""
        internals = self.internals
        tables = [("*", internals.rules)] + [
            (name, internals.platform_rules[name]) for name in sorted(internals.platform_rules)
        ]
        uncacheable = internals.uncacheable if internals.uncacheable is not None else set()
        quick = (tuple((name, len(table)) for name, table in tables), len(uncacheable))
        registry = self._registry
        self._registry_calls += 1
        # Registering a rule changes a table's length; replacing one does not: the rules
        # of each primitive a program uses are compared by identity too (see
        # KeyBuilder.primitive), and every so often every rule is.
        if (
            registry is not None
            and registry.quick == quick
            and self._registry_calls % _FULL_RULE_CHECK_EVERY
        ):
            return registry
        signature = (
            tuple((name, tuple(map(id, table.values()))) for name, table in tables),
            tuple(sorted(map(id, uncacheable))),
        )
        if registry is not None and registry.signature == signature:
            registry.quick = quick
            return registry
        self._registry = registry = self._fingerprint(tables, uncacheable, signature, quick)
        self._jaxprs.clear()
        return registry

    def _fingerprint(
        self,
        tables: list[tuple[str, dict[Any, Any]]],
        uncacheable: set[Any],
        signature: Any,
        quick: Any,
    ) -> RuleRegistry:
        primitive_type = self.internals.primitive_type
        jax_primitives: set[int] = set()
        for name, module in list(sys.modules.items()):
            if module is None or not name.startswith(("jax.", "jaxlib.")):
                continue
            for value in list(getattr(module, "__dict__", {}).values()):
                if isinstance(value, primitive_type):
                    jax_primitives.add(id(value))
        entries: dict[int, list[tuple[str, Any]]] = {}
        primitives: dict[int, Any] = {}
        for table_name, table in tables:
            for primitive, rule in list(table.items()):
                entries.setdefault(id(primitive), []).append((table_name, rule))
                primitives[id(primitive)] = primitive
        tokens: dict[int, str] = {}
        refused: dict[int, str] = {}
        poison = None
        for number, rules in entries.items():
            builder = KeyBuilder(self, in_rule=True)
            try:
                for table_name, rule in rules:
                    builder.out.append(repr(table_name))
                    builder.enc(rule)
                builder.out.append("U" if primitives[number] in uncacheable else "C")
                tokens[number] = "R" + builder.digest()
            except Uncachable as why:
                name = primitives[number].name
                refused[number] = f"primitive {name}: {why}"
                if number in jax_primitives and poison is None:
                    poison = f"the rule of JAX primitive {name} is not JAX's: {why}"
        return RuleRegistry(signature, quick, tokens, refused, poison, primitives, entries)

    def ignored_params(self, primitive: Any) -> frozenset[str]:
        """Parameters of ``primitive`` that its lowering rule never reads: only for JAX's
        own rule of custom derivatives, and only while that rule's code names none of
        them."""
        names = _RULE_IGNORED_PARAMS.get(primitive.name)
        if not names:
            return frozenset()
        hit = self._ignored.get(id(primitive))
        if hit is not None and hit[0] is primitive:
            return hit[1]
        internals = self.internals
        entry = internals.rules.get(primitive)
        rule = getattr(entry, "rule", entry)  # JAX 0.10 and later: a LoweringRuleEntry
        vetted = (
            seams.present(internals.custom_derivative_rule)
            and rule is internals.custom_derivative_rule
            and not any(primitive in table for table in internals.platform_rules.values())
            and _reads_only_call_jaxpr(rule, names)
        )
        result = names if vetted else frozenset()
        self._ignored[id(primitive)] = (primitive, result)
        return result

    def backend_token(self, backend: Any) -> str:
        hit = self._backends.get(id(backend))
        if hit is not None and hit[0] is backend:
            return hit[1]
        kinds = sorted({(device.platform, device.device_kind) for device in backend.devices()})
        token = repr(
            (
                "backend",
                backend.platform,
                backend.platform_version,
                backend.device_count(),
                backend.process_index(),
                getattr(backend, "runtime_type", None),
                kinds,
            )
        )
        self._backends[id(backend)] = (backend, token)
        return token

    def _config_token(self, builder: KeyBuilder) -> str:
        """Every option's value (but the compilation cache's) and the tracing context,
        built again only when one of them is not the very object it was last time."""
        holders = self.internals.config_holders
        if self._config_names[0] != len(holders):
            names = [name for name in sorted(holders) if name not in _CONFIG_NOT_IN_KEY]
            self._config_names = (len(holders), names)
        names = self._config_names[1]
        values = [holders[name].value for name in names]
        context = tuple(self.internals.trace_context())
        values.extend(context)
        last = self._config
        if (
            last is not None
            and len(last[0]) == len(values)
            and all(map(operator.is_, last[0], values))
        ):
            return last[1]
        config = builder.child()
        for name, value in zip(names, values[: len(names)], strict=True):
            config.out.append(repr(name))
            try:
                config.enc(value)
            except Uncachable as why:
                raise why.within(f"config {name}") from None
        config.out.append("trace context")
        try:
            config.enc(context)
        except Uncachable as why:
            raise why.within("trace context") from None
        token = "cfg" + config.digest()
        self._config = (values, token)
        return token


def _reads_only_call_jaxpr(rule: Any, ignored: frozenset[str]) -> bool:
    """``rule(ctx, *args, call_jaxpr, **_)`` whose code names none of ``ignored``."""
    try:
        parameters = inspect.signature(rule).parameters
    except (TypeError, ValueError):  # not introspectable: not vetted
        return False
    if "call_jaxpr" not in parameters or not any(
        parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()
    ):
        return False
    code = getattr(rule, "__code__", None)
    if code is None:
        return False
    named = set(code.co_names) | set(code.co_varnames)
    named |= {const for const in code.co_consts if isinstance(const, str)}
    return not (named & ignored)
