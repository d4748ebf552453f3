"""The tokens of the values a lowering depends on: :class:`KeyBuilder` writes any value
the lowering seam receives (jaxprs, equations, parameters, constants, avals, shardings,
functions, configuration options) as tokens that differ whenever the lowering could.

What each kind of value contributes, and why, is in :mod:`.lowering_key`'s docstring;
the per-process memos the builder reads (:class:`~.lowering_key.Keyer`) live there too.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import sys
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_jaxcache.jax.importing import import_jax
from pytest_jaxcache.jax.lowering_internals import (
    EFFECTS,
    HIGH_LEVEL_JAXPR,
    HOST_CALLBACKS,
    OPAQUE,
    SHAPE_POLYMORPHISM,
    UNKEYABLE_CONSTANT,
    UNREPRESENTABLE,
    USER_CODE,
    USER_LOWERING_RULE,
    Encoder,
    Uncachable,
)

if TYPE_CHECKING:
    from pytest_jaxcache.jax.lowering_key import Keyer


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
# Bound of the memo of immutable values (it holds the objects it describes, so that
# an id is never reused while its entry lives).
_MAX_VALUES = 100_000


def value_types(jax: Any, lowering_parameters: type) -> dict[type, Encoder]:
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


@functools.lru_cache(maxsize=4096)
def pinned(module: object) -> bool:
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


UNBOUND_C_METHODS = (
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
        self.registry: RuleRegistry | None = None
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
        if not pinned(cls.__module__):
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
        if not pinned(module.__name__):
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
        if not pinned(module):
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
        elif not isinstance(fn, UNBOUND_C_METHODS):  # those: class and name say it all
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
SHARDING_ENCODERS: dict[str, Encoder] = {
    "NamedSharding": _enc_named_sharding,
    "SingleDeviceSharding": _enc_single_device_sharding,
    "GSPMDSharding": _enc_gspmd_sharding,
}


def memoized(encode: Encoder) -> Encoder:
    def encode_value(builder: KeyBuilder, obj: Any) -> None:
        builder.value(obj, encode)

    return encode_value


@dataclass
class JaxprEntry:
    """A nested jaxpr's own token, or why it has none."""

    jaxpr: Any  # held: its id stays unique while the entry lives
    token: str
    identities: list[Any]  # the identity-compared objects inside, in first-seen order
    ignored: list[tuple[str, str, Any]]  # its rule-ignored parameters, in order
    refused: Uncachable | None
    generation: tuple[int, tuple[int, int]]
    primitives: tuple[Any, ...]


@dataclass
class RuleRegistry:
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
