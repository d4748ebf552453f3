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

import dataclasses
import enum
import functools
import hashlib
import importlib
import inspect
import operator
import platform
import struct
import sys
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from pytest_jaxcache.jax import seams
from pytest_jaxcache.jax.importing import import_jax, version

FORMAT = 1  # bump whenever what goes into a key, or how, changes

# Why a program has no key: fixed phrases (reports group programs by them); what
# exactly (which parameter, which object) is a detail, noted apart.
HOST_CALLBACKS = "host callbacks"
EFFECTS = "effects"
USER_CODE = "a Python object from user code in a parameter"
OPAQUE = "an object whose state cannot be read"
SHAPE_POLYMORPHISM = "shape polymorphism"
HIGH_LEVEL_JAXPR = "a high-level jaxpr"
UNKEYABLE_CONSTANT = "a constant that is sharded or of an extended dtype"
USER_LOWERING_RULE = "a lowering rule from user code"
RULES_CHANGED = "lowering rules changed while keying"
UNREPRESENTABLE = "the key builder cannot represent a value"
KEY_REASONS = (
    HOST_CALLBACKS,
    EFFECTS,
    USER_CODE,
    OPAQUE,
    SHAPE_POLYMORPHISM,
    HIGH_LEVEL_JAXPR,
    UNKEYABLE_CONSTANT,
    USER_LOWERING_RULE,
    RULES_CHANGED,
    UNREPRESENTABLE,
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
_CALLBACK_PRIMITIVES = frozenset(
    {"pure_callback", "io_callback", "debug_callback", "debug_print", "callback"}
)
# Top-level packages whose code the versions in the key pin.
_PINNED_TOP = frozenset({"jax", "jaxlib", "numpy", "ml_dtypes", "builtins"}) | frozenset(
    getattr(sys, "stdlib_module_names", ())
)
# Attributes that are caches derived from the rest of an object, filled lazily or (for
# _hash) different in every process: left out, else one object keys differently
# depending on what ran before (ShapedArray._stripped_weak_type in JAX 0.12); so are
# cached properties (see _derived_names).
_DERIVED_ATTRS = frozenset({"_hash", "_cached_device_list", "_stripped_weak_type", "__weakref__"})
_MISSING_ATTR = object()
# Bounds of the per-process memos (they hold the objects they describe, so that an id
# is never reused while its entry lives).
_MAX_VALUES = 100_000
_MAX_TRACEBACKS = 200_000
_MAX_JAXPRS = 4096
_FULL_RULE_CHECK_EVERY = 64  # calls between full comparisons of every lowering rule


class Uncachable(Exception):
    """The program cannot be keyed exactly: ``reason`` is one of :data:`KEY_REASONS`,
    ``detail`` says where (for the report's notes)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def within(self, where: str) -> Uncachable:
        """The same reason, its detail prefixed with ``where``."""
        return Uncachable(self.reason, f"{where}: {self.detail}" if self.detail else where)


Encoder = Callable[["KeyBuilder", Any], None]


@dataclass
class KeyInternals:
    """What the key builder reads of JAX, found once per installation."""

    params: tuple[str, ...]  # the lowering seam's parameter names
    jaxpr_type: type
    closed_jaxpr_type: type | None  # None: JAX 0.12 has none (a Jaxpr holds its consts)
    var_type: type
    drop_var_type: type
    literal_type: Any  # a class, compared with type(atom) is
    primitive_type: type
    config_holders: dict[str, Any]
    trace_context: Callable[[], Any]
    current_source_info: Callable[[], Any]
    is_user_filename: Callable[[str], bool]
    exclude_paths: list[str]
    include_paths: list[str]
    traceback_type: Any
    name_stack_type: type
    rules: dict[Any, Any]
    platform_rules: dict[str, dict[Any, Any]]
    uncacheable: set[Any] | None  # None: this JAX has no uncacheable rules (0.6)
    custom_derivative_rule: Any  # seams.ABSENT: custom derivatives are keyed in full
    value_types: dict[type, Encoder]  # immutable JAX types keyed by value, memoized
    header: str  # the versions


def find_internals(params: tuple[str, ...], has_uncacheable_rules: bool) -> KeyInternals | str:
    """The JAX internals the key needs, or the one notice saying which is missing."""
    jax = import_jax()
    core: Any = importlib.import_module("jax.extend.core")
    names = ("Jaxpr", "ClosedJaxpr", "Var", "Literal", "Primitive")
    public = {name: vars(core).get(name) for name in names}
    for name, found in public.items():
        if not isinstance(found, type):
            return f"this JAX has no jax.extend.core.{name}: the lowering tier is off"
    config = seams.find(seams.CONFIG)
    holders = getattr(config, "_value_holders", None)
    if not isinstance(holders, dict):
        return seams.missing(seams.CONFIG, "a Config with _value_holders")
    callables = {
        seams.TRACE_CONTEXT: seams.find(seams.TRACE_CONTEXT),
        seams.CURRENT_SOURCE_INFO: seams.find(seams.CURRENT_SOURCE_INFO),
        seams.IS_USER_FILENAME: seams.find(seams.IS_USER_FILENAME),
    }
    for private, found in callables.items():
        if not callable(found):
            return seams.missing(private, "a function")
    lists = {private: seams.find(private) for private in (seams.EXCLUDE_PATHS, seams.INCLUDE_PATHS)}
    for private, found in lists.items():
        if not isinstance(found, list):
            return seams.missing(private, "a list")
    traceback_type = getattr(seams.find(seams.XLA_CLIENT), "Traceback", None)
    if not all(
        callable(getattr(traceback_type, name, None))
        for name in ("raw_frames", "code_addr2location")
    ):
        return seams.missing(seams.XLA_CLIENT, "Traceback.raw_frames, .code_addr2location")
    source_info = callables[seams.CURRENT_SOURCE_INFO]()
    if not hasattr(source_info, "traceback") or not hasattr(source_info, "name_stack"):
        return seams.missing(seams.CURRENT_SOURCE_INFO, "a SourceInfo of a stack and a name stack")
    name_stack_type = type(source_info.name_stack)
    drop_var = seams.find(seams.DROP_VAR)
    if not isinstance(drop_var, type):
        return seams.missing(seams.DROP_VAR, "a class")
    rules = seams.find(seams.LOWERING_RULES)
    platform_rules = seams.find(seams.PLATFORM_LOWERING_RULES)
    for private, found in (
        (seams.LOWERING_RULES, rules),
        (seams.PLATFORM_LOWERING_RULES, platform_rules),
    ):
        if not isinstance(found, dict):
            return seams.missing(private, "a dict")
    uncacheable = None
    if has_uncacheable_rules:
        uncacheable = seams.find(seams.UNCACHEABLE_PRIMITIVES)
        if not isinstance(uncacheable, set):
            return seams.missing(seams.UNCACHEABLE_PRIMITIVES, "a set")
    lowering_parameters = seams.find(seams.LOWERING_PARAMETERS)
    if not (
        isinstance(lowering_parameters, type) and dataclasses.is_dataclass(lowering_parameters)
    ):
        return seams.missing(seams.LOWERING_PARAMETERS, "a dataclass")
    closed = public["ClosedJaxpr"]
    return KeyInternals(
        params=params,
        jaxpr_type=public["Jaxpr"],
        closed_jaxpr_type=None if closed is public["Jaxpr"] else closed,
        var_type=public["Var"],
        drop_var_type=drop_var,
        literal_type=public["Literal"],
        primitive_type=public["Primitive"],
        config_holders=holders,
        trace_context=callables[seams.TRACE_CONTEXT],
        current_source_info=callables[seams.CURRENT_SOURCE_INFO],
        is_user_filename=callables[seams.IS_USER_FILENAME],
        exclude_paths=lists[seams.EXCLUDE_PATHS],
        include_paths=lists[seams.INCLUDE_PATHS],
        traceback_type=traceback_type,
        name_stack_type=name_stack_type,
        rules=rules,
        platform_rules=platform_rules,
        uncacheable=uncacheable,
        custom_derivative_rule=seams.find(seams.CUSTOM_DERIVATIVE_LOWERING),
        value_types=_value_types(jax, lowering_parameters),
        header=_versions(jax, params),
    )


def _value_types(jax: Any, lowering_parameters: type) -> dict[type, Encoder]:
    """Immutable JAX classes (interned in JAX 0.10 and later, compared by value in 0.6)
    whose every field is read, memoized per object: meshes, partition specs, avals,
    lowering parameters, pytree structures. Read with ``vars()``: a module's
    ``__getattr__`` warns for deprecated names."""
    found: dict[type, Encoder] = {lowering_parameters: KeyBuilder.state}
    sharding = vars(jax.sharding)
    for name in ("Mesh", "AbstractMesh", "PartitionSpec"):
        cls = sharding.get(name)
        if isinstance(cls, type):
            found[cls] = KeyBuilder.state
    shaped_array = vars(jax.core).get("ShapedArray")
    if isinstance(shaped_array, type):
        found[shaped_array] = KeyBuilder.aval_state
    found[type(jax.tree_util.tree_structure(0))] = KeyBuilder.pytreedef
    return found


def _versions(jax: Any, params: tuple[str, ...]) -> str:
    """What pins the code of JAX, jaxlib, numpy and the standard library."""
    import numpy

    git_hash = seams.find(seams.GIT_HASH)
    extension = seams.find(seams.EXTENSION_VERSION)
    ml_dtypes = sys.modules.get("ml_dtypes")
    return repr(
        (
            "pytest-jaxcache lowering",
            FORMAT,
            params,
            jax.__version__,
            version("jaxlib"),
            git_hash if seams.present(git_hash) else None,
            extension if seams.present(extension) else None,
            numpy.__version__,
            getattr(ml_dtypes, "__version__", None),
            sys.version,
            platform.machine(),
        )
    )


@functools.lru_cache(maxsize=4096)
def _pinned(module: object) -> bool:
    """Whether code of ``module`` (a module name) is pinned by the versions in the key."""
    return isinstance(module, str) and module.split(".", 1)[0] in _PINNED_TOP


@functools.lru_cache(maxsize=4096)
def _derived_names(cls: Any) -> frozenset[str]:
    """Attributes of ``cls``'s objects that cache what the rest of them says: known
    caches, and every ``functools.cached_property`` (stored in ``__dict__`` once read,
    so present or not depending on what ran before)."""
    cached = {
        name
        for klass in cls.__mro__
        for name, attribute in vars(klass).items()
        if isinstance(attribute, functools.cached_property)
    }
    return _DERIVED_ATTRS | frozenset(cached)


@functools.lru_cache(maxsize=4096)
def _slot_names(cls: Any) -> tuple[str, ...]:
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        if isinstance(slots, str):
            slots = (slots,)
        names.extend(slot for slot in slots if slot not in ("__weakref__", "__dict__"))
    return tuple(names)


_UNBOUND_C_METHODS = (
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
)
_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement (or type())


@functools.lru_cache(maxsize=4096)
def _is_native_class(cls: Any) -> bool:
    """A class whose instances keep state outside their slots and ``__dict__``: one
    implemented in C, Cython or C++ (nanobind, pybind11), or derived from one. A bare
    ``object()`` is one too: it has nothing but its identity."""
    return any(
        not klass.__flags__ & _HEAP_TYPE or type(klass).__name__.startswith(("nb_type", "pybind11"))
        for klass in cls.__mro__
        if klass is not object or cls is object
    )


@functools.lru_cache(maxsize=4096)
def _code_token(code: types.CodeType) -> str:
    """Where a pinned function is defined and what it does: two lambdas of one enclosing
    function share a qualified name."""
    digest = hashlib.sha256(code.co_code).hexdigest()[:16]
    return f"co{code.co_firstlineno}:{digest}"


class KeyBuilder:
    """The tokens of one key (or of one memoized part of keys). Each token is a fixed
    tag followed by ``repr()``s, never holding a NUL; tokens are joined with NULs and
    hashed, so different inputs give different strings."""

    def __init__(self, keyer: Keyer, *, in_rule: bool = False) -> None:
        self.keyer = keyer
        self.internals = keyer.internals
        self.handlers = keyer.handlers
        self.in_rule = in_rule  # fingerprinting a lowering rule: primitives by name only
        self.registry: _Registry | None = None
        self.out: list[str] = []
        self.memo: dict[int, int] = {}  # id -> number of objects compared by identity
        self.keep: list[Any] = []  # what memo's ids refer to, alive while building
        self.vars: dict[int, int] = {}
        self.classes: dict[tuple[str, str], dict[Any, int]] = {}
        self.name_stacks: dict[int, str] = {}
        # Set while building a jaxpr's own token (see :meth:`jaxpr`).
        self.identities: list[Any] | None = None
        self.ignored: list[tuple[str, str, Any]] | None = None

    def child(self) -> KeyBuilder:
        builder = KeyBuilder(self.keyer, in_rule=self.in_rule)
        builder.registry = self.registry
        return builder

    def digest(self) -> str:
        joined = "\0".join(self.out).encode("utf-8", "surrogatepass")
        return hashlib.sha256(joined).hexdigest()

    def seen(self, obj: Any) -> bool:
        """Refer to ``obj`` by number when it was written before (True); else number it."""
        number = self.memo.get(id(obj))
        if number is not None:
            self.out.append(f"@{number}")
            return True
        self.memo[id(obj)] = len(self.memo)
        self.keep.append(obj)
        if self.identities is not None:
            self.identities.append(obj)
        return False

    def tokens_of(self, obj: Any) -> str:
        """``obj``'s tokens as one string."""
        saved, self.out = self.out, []
        try:
            self.enc(obj)
            return "\1".join(self.out)
        finally:
            self.out = saved

    def set_items(self, items: Any) -> list[str]:
        """The tokens of a set's items, sorted: never in hash order. Each item by a
        builder of its own (numbering objects in hash order would differ between
        processes), so an item compared by identity cannot be written."""
        tokens = []
        for item in items:
            builder = self.child()
            builder.enc(item)
            if builder.memo:
                raise Uncachable(UNREPRESENTABLE, f"a set of {type(item).__qualname__}")
            tokens.append("\1".join(builder.out))
        return sorted(tokens)

    # -- any value ---------------------------------------------------------------------

    def enc(self, obj: Any) -> None:
        handler = self.handlers.get(type(obj))
        if handler is None:
            handler = self.handlers[type(obj)] = self.keyer.encoder_for(type(obj))
        handler(self, obj)

    def need_pinned(self, cls: type) -> None:
        if not _pinned(cls.__module__):
            raise Uncachable(USER_CODE, f"an object of {cls.__module__}.{cls.__qualname__}")

    def dtype(self, dtype: Any) -> None:
        self.out.append(f"dt{dtype.name!r}{dtype.str!r}{dtype.descr!r}")

    def numpy_scalar(self, scalar: Any) -> None:
        self.dtype(scalar.dtype)
        self.out.append(f"ns{scalar.tobytes().hex()}")

    def enum_member(self, member: Any) -> None:
        cls = type(member)
        self.need_pinned(cls)
        self.out.append(f"en{cls.__module__!r}{cls.__qualname__!r}{member.name!r}")

    def named_tuple(self, value: Any) -> None:
        cls = type(value)
        self.need_pinned(cls)
        self.out.append(f"nt{cls.__module__!r}{cls.__qualname__!r}{len(value)}")
        for item in value:
            self.enc(item)

    def typed_scalar(self, value: Any) -> None:
        """An instance of a subclass of a builtin scalar type: its class, value, state."""
        cls = type(value)
        self.need_pinned(cls)
        base = next(b for b in (bool, int, float, complex, str, bytes) if isinstance(value, b))
        self.out.append(f"sc{cls.__module__!r}{cls.__qualname__!r}")
        self.handlers[base](self, base(value))
        self.object_state(value)

    def sequence(self, value: Any) -> None:
        cls = type(value)
        self.need_pinned(cls)
        self.out.append(f"sq{cls.__module__!r}{cls.__qualname__!r}{len(value)}")
        for item in value:
            self.enc(item)
        self.object_state(value)

    def mapping(self, value: Any) -> None:
        cls = type(value)
        self.need_pinned(cls)
        self.out.append(f"mp{cls.__module__!r}{cls.__qualname__!r}{len(value)}")
        for key, item in value.items():  # insertion order: finer than needed, not coarser
            self.enc(key)
            self.enc(item)
        self.enc(getattr(value, "default_factory", None))
        self.object_state(value)

    def set_of(self, value: Any) -> None:
        cls = type(value)
        self.need_pinned(cls)
        items = self.set_items(value)
        self.out.append(f"st{cls.__module__!r}{cls.__qualname__!r}{len(items)}")
        self.out.extend(items)
        self.object_state(value)

    def config_option(self, option: Any) -> None:
        """A configuration option: its value is in every key already (the config part)."""
        self.out.append(f"cfg{option.name!r}")

    def module(self, module: Any) -> None:
        if not _pinned(module.__name__):
            raise Uncachable(USER_CODE, f"module {module.__name__}")
        self.out.append(f"mod{module.__name__!r}")

    def generic(self, obj: Any) -> None:
        """An object of a class from pinned code: its class and its state (by number
        after the first time when it is compared by identity)."""
        cls: Any = type(obj)
        by_identity = cls.__eq__ is object.__eq__
        if by_identity and id(obj) in self.memo:
            self.seen(obj)
            return
        self.need_pinned(cls)
        if _is_native_class(cls):
            raise Uncachable(OPAQUE, f"{cls.__module__}.{cls.__qualname__}")
        if by_identity:
            self.seen(obj)
        self.out.append(f"ob{cls.__module__!r}{cls.__qualname__!r}")
        if not self.object_state(obj) and hasattr(cls, "__len__"):
            # A container that keeps its items elsewhere than in attributes.
            raise Uncachable(OPAQUE, f"{cls.__module__}.{cls.__qualname__}")

    def state(self, obj: Any) -> None:
        """An immutable object of a pinned Python class, keyed by value: class and state."""
        cls = type(obj)
        self.need_pinned(cls)
        self.out.append(f"ov{cls.__module__!r}{cls.__qualname__!r}")
        self.object_state(obj)

    def object_state(self, obj: Any) -> bool:
        """Every slot and ``__dict__`` entry of ``obj`` (but lazily derived caches);
        whether it has any."""
        cls: Any = type(obj)
        derived = _derived_names(cls)
        found = False
        for name in _slot_names(cls):
            if name in derived:
                continue
            found = True
            value = getattr(obj, name, _MISSING_ATTR)
            if value is _MISSING_ATTR:
                self.out.append(f"s{name!r}-")
            else:
                self.out.append(f"s{name!r}")
                self.enc(value)
        attributes: dict[str, Any] = getattr(obj, "__dict__", None) or {}
        for name in sorted(attributes):
            if name not in derived:
                found = True
                self.out.append(f"d{name!r}")
                self.enc(attributes[name])
        return found

    def ndarray(self, array: Any) -> None:
        import numpy

        cls = type(array)
        self.need_pinned(cls)
        self.out.append(f"ar{cls.__module__!r}{cls.__qualname__!r}{array.shape!r}")
        self.dtype(array.dtype)
        if array.dtype.hasobject:
            for item in array.ravel():
                self.enc(item)
        else:
            data = numpy.ascontiguousarray(array).tobytes()
            self.out.append(hashlib.sha256(data).hexdigest() if len(data) > 64 else data.hex())
        if cls is not numpy.ndarray:
            self.object_state(array)

    def function(self, fn: Any) -> None:
        """A callable: pinned code by module, name, definition, defaults and closure;
        anything from user code makes the program uncachable."""
        if self.seen(fn):
            return
        if isinstance(fn, functools.partial):
            self.out.append("partial")
            self.enc(fn.func)
            self.enc(fn.args)
            self.enc(fn.keywords)
            return
        if isinstance(fn, types.MethodType):
            self.out.append("method")
            self.enc(fn.__self__)
            self.enc(fn.__func__)
            return
        # C methods name their module through their class
        module = getattr(fn, "__module__", None) or getattr(
            getattr(fn, "__objclass__", None), "__module__", None
        )
        qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "?")
        if isinstance(fn, type):
            self.need_pinned(fn)
            self.out.append(f"cls{fn.__module__!r}{fn.__qualname__!r}")
            return
        if not _pinned(module):
            # includes JAX's wrappers (custom_jvp, jit) of user functions
            raise Uncachable(USER_CODE, f"Python callable {module}.{qualname}")
        self.out.append(f"fn{module!r}{qualname!r}")
        if isinstance(fn, types.FunctionType):
            self.out.append(_code_token(fn.__code__))
            self.enc(fn.__defaults__)
            self.enc(fn.__kwdefaults__)
            cells = fn.__closure__ or ()
            self.out.append(f"cl{len(cells)}")
            for cell in cells:
                try:
                    value = cell.cell_contents
                except ValueError:  # an empty cell (a name not bound yet)
                    self.out.append("empty")
                    continue
                self.enc(value)
            wrapped = fn.__dict__.get("__wrapped__")
            if wrapped is not None:
                self.out.append("wraps")
                self.enc(wrapped)
        elif isinstance(fn, (types.BuiltinFunctionType, types.MethodWrapperType)):
            bound = getattr(fn, "__self__", None)
            if bound is not None and not isinstance(bound, types.ModuleType):
                self.out.append("bound")
                self.enc(bound)
        elif not isinstance(fn, _UNBOUND_C_METHODS):  # those: class and name say it all
            raise Uncachable(OPAQUE, f"callable {type(fn).__qualname__} {module}.{qualname}")

    # -- JAX values --------------------------------------------------------------------

    def device(self, device: Any) -> None:
        self.out.append(
            f"dev{device.platform!r}{device.id!r}{device.process_index!r}{device.device_kind!r}"
        )

    def jax_array(self, array: Any) -> None:
        """A constant held as a ``jax.Array``: its placement and its bytes."""
        import numpy

        jax = import_jax()
        if not array.is_fully_addressable:
            raise Uncachable(UNKEYABLE_CONSTANT, "a jax.Array not fully addressable")
        if jax.dtypes.issubdtype(array.dtype, jax.dtypes.extended):
            raise Uncachable(UNKEYABLE_CONSTANT, f"a jax.Array of dtype {array.dtype}")
        self.out.append(
            f"ja{bool(getattr(array, 'weak_type', False))!r}"
            f"{bool(getattr(array, 'committed', False))!r}"
        )
        self.enc(array.sharding)
        self.ndarray(numpy.asarray(array))

    def backend(self, backend: Any) -> None:
        self.out.append(self.keyer.backend_token(backend))

    def aval_state(self, aval: Any) -> None:
        cls = type(aval)
        self.need_pinned(cls)
        self.out.append(f"av{cls.__qualname__!r}")
        for dim in getattr(aval, "shape", ()):
            if type(dim) is not int:
                raise Uncachable(SHAPE_POLYMORPHISM, f"dimension {dim}")
        self.object_state(aval)

    def value(self, obj: Any, encode: Encoder) -> None:
        """An immutable object compared by value (or interned): its tokens are built
        once per process, by a builder of their own."""
        memo = self.keyer.values
        hit = memo.get(id(obj))
        if hit is not None and hit[0] is obj:
            self.out.append(hit[1])
            return
        builder = self.child()
        encode(builder, obj)
        token = "<" + "\1".join(builder.out) + ">"
        if len(memo) >= _MAX_VALUES:
            memo.clear()
        memo[id(obj)] = (obj, token)
        self.out.append(token)

    def var(self, var: Any) -> None:
        """A variable: numbered where it is first written, with its type."""
        number = self.vars.get(id(var))
        if number is not None:
            self.out.append(f"v{number}")
            return
        number = self.vars[id(var)] = len(self.vars)
        self.keep.append(var)
        dropped = "_" if type(var) is self.internals.drop_var_type else ""
        self.out.append(f"V{number}{dropped}")
        self.enc(var.aval)
        for extra in ("initial_qdd", "final_qdd", "suffix"):
            value = getattr(var, extra, None)
            if value is not None:
                self.out.append(extra)
                self.enc(value)

    def atom(self, atom: Any) -> None:
        if type(atom) is not self.internals.literal_type:
            self.var(atom)
            return
        self.out.append("L")
        self.enc(atom.val)
        self.enc(atom.aval)

    def jaxpr(self, jaxpr: Any) -> None:
        """A nested jaxpr: its own token, built once per process (jaxprs are immutable,
        and JAX reuses the jaxprs of inner jitted functions across programs), then which
        of the identity-compared objects inside it this program has seen before, and the
        equality classes of its rule-ignored parameters: the same information as
        writing it in place."""
        if self.seen(jaxpr):
            return
        if self.in_rule or self.registry is None:
            self.jaxpr_body(jaxpr)
            return
        entry = self.keyer.jaxpr_entry(jaxpr, self.registry)
        self.out.append(entry.token)
        for obj in entry.identities:
            number = self.memo.get(id(obj))
            if number is None:
                self.memo[id(obj)] = len(self.memo)
                self.keep.append(obj)
                if self.identities is not None:
                    self.identities.append(obj)
                self.out.append("+")
            else:
                self.out.append(f"@{number}")
        for primitive, param, value in entry.ignored:
            self.equality_class(primitive, param, value)

    def program(self, jaxpr: Any) -> None:
        """The program's own jaxpr, written in place (it is new in every program, and
        memoizing it would hold its constants)."""
        if self.seen(jaxpr):
            return
        if self.is_closed(jaxpr):
            self.out.append("CJ")
            self.program(jaxpr.jaxpr)
            self.consts(jaxpr.consts)
            return
        self.jaxpr_body(jaxpr)

    def is_closed(self, jaxpr: Any) -> bool:
        closed = self.internals.closed_jaxpr_type
        return closed is not None and type(jaxpr) is closed

    def jaxpr_body(self, jaxpr: Any) -> None:
        if self.is_closed(jaxpr):
            self.out.append("CJ")
            self.jaxpr(jaxpr.jaxpr)
            self.consts(jaxpr.consts)
            return
        self.out.append("J")
        consts = getattr(jaxpr, "_consts", None)  # JAX 0.12: a Jaxpr holds its constants
        if consts is not None:
            self.consts(consts)
        self.out.append("cv")
        for var in jaxpr.constvars:
            self.var(var)
        self.out.append("iv")
        for var in jaxpr.invars:
            self.var(var)
        if jaxpr.effects:
            raise Uncachable(EFFECTS, str(sorted(map(str, jaxpr.effects))))
        for eqn in jaxpr.eqns:
            self.eqn(eqn)
        self.out.append("ov")
        for atom in jaxpr.outvars:
            self.atom(atom)
        self.debug_info(getattr(jaxpr, "debug_info", None))
        if getattr(jaxpr, "is_high", False):
            raise Uncachable(HIGH_LEVEL_JAXPR)

    def consts(self, consts: Any) -> None:
        self.out.append(f"K{len(consts)}")
        for const in consts:
            self.enc(const)

    def debug_info(self, info: Any) -> None:
        """What lowering writes of it: argument names (``loc("x")``) and result paths."""
        if info is None:
            self.out.append("di-")
            return
        self.out.append("di")
        for name in ("traced_for", "func_src_info", "arg_names"):
            self.enc(getattr(info, name, None))
        paths = getattr(info, "result_paths", None)
        if callable(paths):  # a thunk: lowering forces it anyway
            paths = paths()
        self.enc(paths)

    def eqn(self, eqn: Any) -> None:
        primitive = eqn.primitive
        name = primitive.name
        if name in _CALLBACK_PRIMITIVES:
            raise Uncachable(HOST_CALLBACKS, name)
        self.out.append("E")
        self.primitive(primitive)
        self.out.append("I")
        for atom in eqn.invars:
            self.atom(atom)
        self.out.append("O")
        for var in eqn.outvars:
            self.var(var)
        if eqn.effects:
            raise Uncachable(EFFECTS, f"in {name}")
        ignored = self.keyer.ignored_params(primitive)
        for param, value in eqn.params.items():
            self.out.append(f"p{param!r}")
            if param in ignored:
                self.equality_class(name, param, value)
                continue
            try:
                self.enc(value)
            except Uncachable as why:
                raise why.within(f"{name}.{param}") from None
        self.out.append("S")
        self.traceback(eqn.source_info.traceback)
        self.name_stack(eqn.source_info.name_stack)
        self.out.append("C")
        self.enc(eqn.ctx)

    def equality_class(self, primitive: str, param: str, value: Any) -> None:
        """Which equations of the program hold equal values of a rule-ignored parameter."""
        if self.ignored is not None:  # a jaxpr's own token: the program numbers classes
            try:
                hash(value)
            except TypeError:
                raise Uncachable(UNREPRESENTABLE, f"{primitive}.{param} unhashable") from None
            self.ignored.append((primitive, param, value))
            self.out.append("eq?")
            return
        classes = self.classes.setdefault((primitive, param), {})
        try:
            number = classes.setdefault(value, len(classes))
        except TypeError:
            raise Uncachable(UNREPRESENTABLE, f"{primitive}.{param} unhashable") from None
        self.keep.append(value)
        self.out.append(f"eq{number}")

    def primitive(self, primitive: Any) -> None:
        if self.seen(primitive):
            return
        cls = type(primitive)
        self.out.append(
            f"P{cls.__module__!r}{cls.__qualname__!r}{primitive.name!r}"
            f"{bool(primitive.multiple_results)!r}"
        )
        if self.in_rule:
            return
        registry = self.registry or self.keyer.registry()
        if not registry.unchanged(primitive, self.keyer.rule_tables()):
            self.keyer.forget_rules()
            registry = self.registry = self.keyer.registry()
        refused = registry.refused.get(id(primitive))
        if refused is not None:
            raise Uncachable(USER_LOWERING_RULE, refused)
        self.out.append(registry.tokens.get(id(primitive), "R-"))

    def name_stack(self, name_stack: Any) -> None:
        token = self.name_stacks.get(id(name_stack))
        if token is None:
            token = "ns" + self.tokens_of(tuple(name_stack.stack))
            self.name_stacks[id(name_stack)] = token
            self.keep.append(name_stack)
        self.out.append(token)

    def traceback(self, traceback: Any) -> None:
        if traceback is None:
            self.out.append("tb-")
        else:
            self.out.append(self.keyer.traceback_token(traceback))

    def pytreedef(self, treedef: Any) -> None:
        """A pytree structure (C++): node by node, each node's type and auxiliary data."""
        data = treedef.node_data()
        if data is None:
            self.out.append(f"ptL{treedef.num_leaves}")
            return
        node_type, aux = data
        children = treedef.children()
        self.out.append(f"ptN{len(children)}")
        self.enc(node_type)
        self.enc(aux)
        for child in children:
            self.pytreedef(child)


def _enc_none(builder: KeyBuilder, value: None) -> None:
    builder.out.append("N")


def _enc_bool(builder: KeyBuilder, value: bool) -> None:
    builder.out.append("T" if value else "F")


def _enc_int(builder: KeyBuilder, value: int) -> None:
    builder.out.append(f"i{value}")


def _enc_float(builder: KeyBuilder, value: float) -> None:
    builder.out.append("f" + struct.pack("<d", value).hex())  # -0.0 and NaN payloads too


def _enc_complex(builder: KeyBuilder, value: complex) -> None:
    builder.out.append("c" + struct.pack("<dd", value.real, value.imag).hex())


def _enc_str(builder: KeyBuilder, value: str) -> None:
    builder.out.append(repr(value))


def _enc_bytes(builder: KeyBuilder, value: bytes) -> None:
    builder.out.append("b" + value.hex())


def _enc_tuple(builder: KeyBuilder, value: tuple[Any, ...]) -> None:
    builder.out.append(f"({len(value)}")
    for item in value:
        builder.enc(item)


def _enc_list(builder: KeyBuilder, value: list[Any]) -> None:
    builder.out.append(f"[{len(value)}")
    for item in value:
        builder.enc(item)


def _enc_dict(builder: KeyBuilder, value: dict[Any, Any]) -> None:
    builder.out.append(f"{{{len(value)}")
    for key, item in value.items():  # insertion order: finer than needed, never coarser
        builder.enc(key)
        builder.enc(item)


def _enc_set(builder: KeyBuilder, value: frozenset[Any] | set[Any]) -> None:
    items = builder.set_items(value)
    builder.out.append(f"{{s{type(value).__name__}{len(items)}")
    builder.out.extend(items)


BUILTIN_ENCODERS: dict[type, Encoder] = {
    type(None): _enc_none,
    bool: _enc_bool,
    int: _enc_int,
    float: _enc_float,
    complex: _enc_complex,
    str: _enc_str,
    bytes: _enc_bytes,
    tuple: _enc_tuple,
    list: _enc_list,
    dict: _enc_dict,
    frozenset: _enc_set,
    set: _enc_set,
}


def _enc_named_sharding(builder: KeyBuilder, sharding: Any) -> None:
    builder.out.append("NS")
    builder.enc(sharding.mesh)
    builder.enc(sharding.spec)
    builder.enc(sharding.memory_kind)
    builder.enc(getattr(sharding, "_logical_device_ids", None))


def _enc_single_device_sharding(builder: KeyBuilder, sharding: Any) -> None:
    builder.out.append("SDS")
    builder.enc(tuple(sorted(sharding.device_set, key=lambda device: device.id)))
    builder.enc(sharding.memory_kind)


def _enc_gspmd_sharding(builder: KeyBuilder, sharding: Any) -> None:
    builder.out.append("GS")
    builder.enc(tuple(sharding._device_assignment))
    builder.enc(str(sharding._hlo_sharding))
    builder.enc(sharding.memory_kind)


# C++ sharding classes (their state is not readable generically), by class name.
_SHARDING_ENCODERS: dict[str, Encoder] = {
    "NamedSharding": _enc_named_sharding,
    "SingleDeviceSharding": _enc_single_device_sharding,
    "GSPMDSharding": _enc_gspmd_sharding,
}


def _memoized(encode: Encoder) -> Encoder:
    def encode_value(builder: KeyBuilder, obj: Any) -> None:
        builder.value(obj, encode)

    return encode_value


@dataclass
class _JaxprEntry:
    """A nested jaxpr's own token, or why it has none."""

    jaxpr: Any  # held: its id stays unique while the entry lives
    token: str
    identities: list[Any]  # the identity-compared objects inside, in first-seen order
    ignored: list[tuple[str, str, Any]]  # its rule-ignored parameters, in order
    refused: Uncachable | None
    generation: tuple[int, tuple[int, int]]
    primitives: tuple[Any, ...]


@dataclass
class _Registry:
    """Fingerprints of every registered lowering rule."""

    signature: Any
    quick: Any
    tokens: dict[int, str]  # id(primitive) -> fingerprint of its rules
    refused: dict[int, str]  # id(primitive) -> why its rules cannot be keyed
    poison: str | None  # set: a JAX primitive has a user rule, no program can be keyed
    primitives: dict[int, Any]  # keeps the primitives (and so their ids) alive
    entries: dict[int, list[tuple[str, Any]]]  # id(primitive) -> (table, rule) pairs

    def unchanged(self, primitive: Any, tables: dict[str, dict[Any, Any]]) -> bool:
        """``primitive``'s rules are still the very objects fingerprinted."""
        return all(
            tables.get(table, {}).get(primitive) is rule
            for table, rule in self.entries.get(id(primitive), ())
        )


class Keyer:
    """Builds the keys of one process, with memos of what does not change: tokens of
    immutable objects, tracebacks and nested jaxprs, the configuration while every
    option is the same object, rule fingerprints while the registries are the same."""

    def __init__(self, internals: KeyInternals) -> None:
        self.internals = internals
        self.handlers: dict[type, Encoder] = dict(BUILTIN_ENCODERS)
        self._lock = threading.RLock()
        self._config_types = {type(holder) for holder in internals.config_holders.values()}
        self.values: dict[int, tuple[Any, str]] = {}
        self._frames: dict[tuple[int, int], tuple[Any, str | None]] = {}
        self._tracebacks: dict[int, tuple[Any, str]] = {}
        self._traceback_generation = (-1, -1)
        self._jaxprs: OrderedDict[int, _JaxprEntry] = OrderedDict()
        self._config_names: tuple[int, list[str]] = (-1, [])
        self._config: tuple[list[Any], str] | None = None
        self._registry: _Registry | None = None
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
        value_encoder = internals.value_types.get(cls)
        if value_encoder is not None:
            return _memoized(value_encoder)
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
                *_UNBOUND_C_METHODS,
            ),
        ):
            return KeyBuilder.function
        if _pinned(cls.__module__):
            if cls.__name__ == "Device" and hasattr(cls, "device_kind"):
                return KeyBuilder.device
            if cls.__name__ == "ArrayImpl" and hasattr(cls, "is_fully_addressable"):
                return KeyBuilder.jax_array
            if cls.__name__ == "Client" and hasattr(cls, "platform_version"):
                return KeyBuilder.backend
            sharding = _SHARDING_ENCODERS.get(cls.__name__)
            if sharding is not None:
                return _memoized(sharding)
        return KeyBuilder.generic

    # -- per-process memos -------------------------------------------------------------

    def jaxpr_entry(self, jaxpr: Any, registry: _Registry) -> _JaxprEntry:
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
            entry = _JaxprEntry(
                jaxpr,
                "J" + builder.digest(),
                builder.identities,
                builder.ignored,
                None,
                generation,
                (),
            )
        except Uncachable as why:
            entry = _JaxprEntry(jaxpr, "", [], [], why, generation, ())
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

    def registry(self) -> _Registry:
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
    ) -> _Registry:
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
        return _Registry(signature, quick, tokens, refused, poison, primitives, entries)

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
