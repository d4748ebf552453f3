"""What the lowering key reads of JAX, found once per installation, and why a program
has no key.

:func:`find_internals` looks up every JAX class, table and function the key builder
(:mod:`.lowering_values`) and the keyer (:mod:`.lowering_key`) read, through the one
table of private names (:mod:`.seams`), and returns the one notice saying which is
missing when one is. :class:`Uncachable` and its fixed reasons are what a program
without a key carries into the report.
"""

from __future__ import annotations

import dataclasses
import importlib
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_jaxcache.jax import seams
from pytest_jaxcache.jax.importing import import_jax, version

if TYPE_CHECKING:
    from pytest_jaxcache.jax.lowering_values import KeyBuilder


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
    lowering_parameters: type  # a dataclass, keyed by value (lowering_values.value_types)
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
        lowering_parameters=lowering_parameters,
        header=_versions(jax, params),
    )


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
