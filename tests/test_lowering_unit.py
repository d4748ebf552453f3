"""Unit tests of the lowering tier (:mod:`pytest_jaxcache.jax.lowering`) on dict-backed
stores: its entry format (no JAX), its key builder (what tells programs apart, what
makes one uncachable), the tier through its API in this process, and a second process
serving what a first one stored (verify mode, the free check, identical results)."""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import importlib
import inspect
import json
import logging
import operator
import struct
import sys
import textwrap
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import run_command
from hypothesis import given
from hypothesis import strategies as st

from pytest_jaxcache.jax import lowering, lowering_entry, seams
from pytest_jaxcache.jax.installation import JAX_STORE, Installation
from pytest_jaxcache.jax.lowering_entry import BadEntry, EntryHeader
from pytest_jaxcache.jax.lowering_internals import Uncachable
from pytest_jaxcache.jax.lowering_key import Keyer
from pytest_jaxcache.jax.lowering_values import KeyBuilder
from pytest_jaxcache.settings import Lowering
from pytest_jaxcache.stats import LoweringStats

KEY = "ab" * 32
BYTECODE = b"ML\xefR bytecode \x00\x01"
HEADER = EntryHeader(
    key=KEY,
    module_name="jit_f",
    platforms=("cpu",),
    tuple_args=False,
    nreps=1,
    lower_secs=0.0125,
    bytecode_sha256=hashlib.sha256(BYTECODE).hexdigest(),
)
GOOD = lowering_entry.encode(HEADER, BYTECODE)

# -- the entry format --------------------------------------------------------------------


def test_an_entry_decodes_to_what_was_encoded() -> None:
    assert lowering_entry.decode(GOOD, KEY) == (HEADER, BYTECODE)
    recorded = HEADER.with_computation("cd" * 32)
    assert lowering_entry.decode(lowering_entry.encode(recorded, BYTECODE), KEY)[0] == recorded


def test_a_poisoned_entry_holds_no_module() -> None:
    header, bytecode = lowering_entry.decode(lowering_entry.poisoned(KEY), KEY)
    assert header.poisoned and bytecode == b""


def _with_header(fields: dict[str, Any], bytecode: bytes = BYTECODE) -> bytes:
    blob = json.dumps(fields).encode()
    magic = lowering_entry.MAGIC + bytes([lowering_entry.FORMAT])
    return magic + len(blob).to_bytes(4, "big") + blob + bytecode


def _fields(**changes: Any) -> dict[str, Any]:
    fields = dataclasses.asdict(HEADER)
    fields["platforms"] = list(HEADER.platforms)
    fields.update(changes)
    return fields


BAD_ENTRIES = {
    "empty": b"",
    "another magic": b"JAXLOWX" + GOOD[7:],
    "another format": GOOD[:7] + bytes([lowering_entry.FORMAT + 1]) + GOOD[8:],
    "header past the end": GOOD[:8] + (10**6).to_bytes(4, "big") + GOOD[12:],
    "oversized header": _with_header(_fields(module_name="x" * lowering_entry.MAX_HEADER)),
    "not JSON": GOOD[:12] + b"[" + GOOD[13:],
    "not an object": _with_header([1, 2]),  # type: ignore[arg-type]
    "a field missing": _with_header({k: v for k, v in _fields().items() if k != "nreps"}),
    "a field more": _with_header(_fields(extra=1)),
    "NaN seconds": GOOD.replace(b'"lower_secs":0.0125', b'"lower_secs":NaN'),
    "negative seconds": _with_header(_fields(lower_secs=-1.0)),
    "seconds as text": _with_header(_fields(lower_secs="1")),
    "key not hex": _with_header(_fields(key="AB" * 32)),
    "name not text": _with_header(_fields(module_name=7)),
    "platforms as text": _with_header(_fields(platforms="cpu")),
    "tuple_args as a number": _with_header(_fields(tuple_args=0)),
    "nreps zero": _with_header(_fields(nreps=0)),
    "nreps a bool": _with_header(_fields(nreps=True)),
    "short digest": _with_header(_fields(bytecode_sha256="ab")),
    "computation a number": _with_header(_fields(computation=1)),
    "poisoned as text": _with_header(_fields(poisoned="no")),
    "another key": lowering_entry.encode(dataclasses.replace(HEADER, key="cd" * 32), BYTECODE),
    "bytecode changed": GOOD[:-1] + b"\x02",
}


@pytest.mark.parametrize("data", BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_anything_else_is_a_bad_entry(data: bytes) -> None:
    with pytest.raises(BadEntry):
        lowering_entry.decode(data, KEY)


def test_only_bytes_are_entries() -> None:
    with pytest.raises(BadEntry):
        lowering_entry.decode("text", KEY)  # type: ignore[arg-type]


@given(st.one_of(st.binary(max_size=300), st.tuples(st.integers(0, len(GOOD) - 1), st.binary())))
def test_decoding_outside_input_raises_bad_entry_or_verifies(
    change: bytes | tuple[int, bytes],
) -> None:
    """Any bytes, or the good entry with a slice replaced: a bad entry, or (when the
    change happens to keep it well formed) an entry under its key with its digest."""
    data = change if isinstance(change, bytes) else GOOD[: change[0]] + change[1]
    try:
        header, bytecode = lowering_entry.decode(data, KEY)
    except BadEntry:
        return
    assert header.key == KEY
    assert hashlib.sha256(bytecode).hexdigest() == header.bytecode_sha256


# -- the key builder ---------------------------------------------------------------------

# JAX untyped here: its own annotations do not pass mypy --strict.
jax: Any = importlib.import_module("jax")
jnp: Any = importlib.import_module("jax.numpy")
X = np.linspace(0.1, 1.0, 8, dtype=np.float32)


@pytest.fixture(scope="module")
def keyer() -> Keyer:
    seam = lowering._find_seam()
    assert not isinstance(seam, str), seam
    return Keyer(seam.keyer.internals)


def token(keyer: Keyer, value: Any) -> str:
    builder = KeyBuilder(keyer)
    builder.enc(value)
    return builder.digest()


def _nan(payload: int) -> float:
    [value] = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000000 | payload))
    return float(value)


class Color(enum.Enum):
    RED = 1


# Values that lowering could tell apart: each must key differently from every other.
DISTINCT: list[Any] = [
    None,
    False,
    True,
    0,
    1,
    0.0,
    -0.0,
    _nan(1),
    _nan(2),
    1j,
    "0",
    "",
    b"0",
    (),
    (0,),
    [0],
    ((0, 1),),
    (0, 1),
    (0, (1,)),
    {0: 1},
    {1: 0},
    OrderedDict([(0, 1)]),
    frozenset({0}),
    {0},
    np.float32(1),
    np.float64(1),
    np.int32(1),
    np.array([1, 2], np.int32),
    np.array([1, 3], np.int32),
    np.array([1, 2], np.int64),
    np.array([[1, 2]], np.int32),
    np.arange(100, dtype=np.float32),
    np.arange(100, dtype=np.float32) + 1,
    np.dtype(np.float32),
    np.dtype(np.float16),
    operator.add,
    operator.sub,
    functools.partial(operator.add, 1),
    functools.partial(operator.add, 2),
    str.join,
    str.split,
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.KEYWORD_ONLY,
    (1).__add__,
    (2).__add__,
]


def test_values_that_differ_key_differently(keyer: Keyer) -> None:
    tokens = [token(keyer, value) for value in DISTINCT]
    repeated = [DISTINCT[i] for i, t in enumerate(tokens) if tokens.index(t) != i]
    assert repeated == []


def test_equal_values_key_the_same(keyer: Keyer) -> None:
    """Sets in any order (never Python's hash order), equal arrays, equal containers."""
    assert token(keyer, {"b", "a", "c"}) == token(keyer, {"c", "a", "b"})
    assert token(keyer, np.arange(5)) == token(keyer, np.arange(5))
    assert token(keyer, {"a": [1, (2.0,)]}) == token(keyer, {"a": [1, (2.0,)]})


def _user_function(x: Any) -> Any:
    return x


class _UserThing:
    def __init__(self) -> None:
        self.value = 1


UNCACHABLE = {
    "a function of the user's": (_user_function, lowering.USER_CODE),
    "a lambda": (lambda x: x, lowering.USER_CODE),
    "a partial of a user function": (functools.partial(_user_function, 1), lowering.USER_CODE),
    "an object of a user class": (_UserThing(), lowering.USER_CODE),
    "a user enum": (Color.RED, lowering.USER_CODE),
    "a bare object()": (object(), lowering.OPAQUE),
    "a C object with hidden state": (np.random.default_rng(0), lowering.OPAQUE),
    "a module of the user's": (sys.modules[__name__], lowering.USER_CODE),
}


@pytest.mark.parametrize("value, reason", UNCACHABLE.values(), ids=UNCACHABLE.keys())
def test_values_the_key_cannot_hold_make_a_program_uncachable(
    keyer: Keyer, value: Any, reason: str
) -> None:
    with pytest.raises(Uncachable) as raised:
        token(keyer, value)
    assert raised.value.reason == reason


def test_reasons_are_short_fixed_phrases() -> None:
    reasons = lowering.NOT_STORED_REASONS
    assert len(set(reasons)) == len(reasons)
    assert all(0 < len(reason) <= 60 and ":" not in reason for reason in reasons)


# -- the tier in this process --------------------------------------------------------------


class DictStore:
    """A ModuleStore in memory that remembers which keys were asked for."""

    def __init__(self) -> None:
        self.entries: dict[str, bytes] = {}
        self.asked: list[str] = []
        self.writes = 0

    def get_lowered(self, key: str) -> bytes | None:
        self.asked.append(key)
        return self.entries.get(key)

    def put_lowered(self, key: str, data: bytes, lower_secs: float) -> bool:
        assert len(key) == 64 and lower_secs >= 0
        self.entries[key] = data
        self.writes += 1
        return True


@contextmanager
def installed(
    store: lowering.ModuleStore, mode: Lowering = Lowering.ON, mismatch_dir: Path | None = None
) -> Iterator[LoweringStats]:
    """The tier installed over ``store``, every program lowered afresh meanwhile."""
    jax.clear_caches()
    installation = Installation(JAX_STORE)
    stats = LoweringStats()
    where = mismatch_dir or Path("/nonexistent")
    assert lowering.install(installation, store, mode, stats, where), installation.notices
    assert installation.notices == []
    try:
        yield stats
    finally:
        installation.uninstall()
        jax.clear_caches()


def variant(kind: str, v: int) -> Any:
    """Program ``kind`` in variant ``v``: both variants lowered from the same lines, so
    that only what ``v`` changes can change the key."""
    from jax import lax

    if kind == "op":
        op = (jnp.sin, jnp.cos)[v]
        return jax.jit(lambda x: op(x) * 2.0)(X)
    if kind == "constant":
        c = np.linspace(0.0, 1.0, 300, dtype=np.float32)
        c[137] += v * 1e-3
        return jax.jit(lambda x: jnp.sum(x[:, None] * c[None, :], axis=1))(X)
    if kind == "closure":
        s = (1.5, 2.5)[v]
        return jax.jit(lambda x: x * s)(X)
    if kind == "static":
        return jax.jit(lambda x, n: x**n, static_argnums=1)(X, 2 + v)
    if kind == "shape":
        return jax.jit(jnp.tanh)(X[: 8 - v])
    if kind == "dtype":
        return jax.jit(jnp.exp)(X.astype((np.float32, np.float16)[v]))
    if kind == "named_scope":
        with jax.named_scope(("alpha", "beta")[v]):
            return jax.jit(lambda x: jnp.sin(x) + 1.0)(X)
    if kind == "precision":
        with jax.default_matmul_precision(("highest", "bfloat16")[v]):
            return jax.jit(lambda a: a @ a.T)(X.reshape(2, 4))
    if kind == "scan":
        op = (jnp.add, jnp.multiply)[v]
        return jax.jit(lambda xs: lax.scan(lambda c, x: (op(c, x), c), 1.0, xs))(X)
    if kind == "donation":
        return jax.jit(lambda x: x + 1.0, donate_argnums=((), (0,))[v])(jnp.asarray(X))
    if kind in ("custom_jvp_rule", "custom_jvp_grad"):
        scale = (1.0, 2.0)[v]
        g = jax.custom_jvp(lambda x: jnp.sin(x))
        g.defjvp(lambda p, t: (g(p[0]), scale * jnp.cos(p[0]) * t[0]))
        if kind == "custom_jvp_rule":  # the rule is never lowered: the same module
            return jax.jit(lambda x: g(x) * 2.0)(X)
        return jax.jit(jax.grad(lambda x: jnp.sum(g(x))))(X)
    raise AssertionError(kind)


CHANGES = [
    "op",
    "constant",
    "closure",
    "static",
    "shape",
    "dtype",
    "named_scope",
    "precision",
    "scan",
    "donation",
    "custom_jvp_grad",
]


def keys_of_variants(kind: str) -> list[str]:
    """The key of each variant's program (lowered last: eager operations before it, such
    as ``jnp.asarray``, are lowered too)."""
    store = DictStore()
    keys = []
    with installed(store) as stats:
        for v in (0, 1):
            variant(kind, v)
            keys.append(store.asked[-1])
    assert stats.not_stored == {}, stats
    return keys


@pytest.mark.parametrize("kind", CHANGES)
def test_what_changes_the_module_changes_the_key(kind: str) -> None:
    first, second = keys_of_variants(kind)
    assert first != second


def test_what_lowering_never_reads_keeps_the_key() -> None:
    """A custom derivative rule that is never lowered: the module is the same, and the
    second variant is served the first's."""
    first, second = keys_of_variants("custom_jvp_rule")
    assert first == second


def leaves(tree: Any) -> list[Any]:
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def test_a_served_module_computes_what_jax_lowers() -> None:
    store = DictStore()
    results = []
    for _ in range(2):
        with installed(store) as stats:
            results.append([leaves(variant(kind, 0)) for kind in CHANGES])
    assert stats.hits >= len(CHANGES) and stats.misses == 0, stats
    assert stats.saved_secs != 0 and stats.serve_secs > 0
    for lowered, served in zip(*results, strict=True):
        for expected, got in zip(lowered, served, strict=True):
            np.testing.assert_array_equal(expected, got)


def _debug_print(x: Any) -> Any:
    jax.debug.print("x0={x}", x=x[0])
    return x * 2.0


def _host(x: Any) -> Any:
    return np.asarray(x) * 2.0


NOT_STORED: dict[str, tuple[Callable[[], Any], str]] = {
    "effects": (lambda: jax.jit(_debug_print)(X), lowering.EFFECTS),
    "host callbacks": (
        lambda: jax.jit(lambda x: jax.pure_callback(_host, jax.ShapeDtypeStruct((8,), X.dtype), x))(
            X
        ),
        lowering.HOST_CALLBACKS,
    ),
}


@pytest.mark.parametrize("program, reason", NOT_STORED.values(), ids=NOT_STORED.keys())
def test_programs_that_cannot_be_served_are_lowered_and_counted(
    program: Callable[[], Any], reason: str
) -> None:
    store = DictStore()
    with installed(store) as stats:
        np.testing.assert_allclose(np.asarray(program()), X * 2.0, rtol=1e-6)
        jax.effects_barrier()
    assert stats.not_stored == {reason: 1} and store.entries == {}, stats


def test_a_lowering_that_warns_is_not_stored_and_its_warning_reaches_the_user() -> None:
    store = DictStore()
    for _ in range(2):
        with installed(store) as stats, pytest.warns(UserWarning, match="donated"):
            jax.jit(lambda x: jnp.sum(x), donate_argnums=(0,))(jnp.asarray(X))
        assert stats.not_stored == {lowering.WARNED: 1}, stats
        assert stats.misses == stats.stored + 1, stats  # lowered again each time


def test_a_user_lowering_rule_makes_its_programs_uncachable() -> None:
    core: Any = importlib.import_module("jax.extend.core")
    mlir: Any = importlib.import_module("jax.interpreters.mlir")
    double = core.Primitive("test_lowering_unit_double")
    double.def_abstract_eval(lambda aval: aval)
    mlir.register_lowering(double, mlir.lower_fun(lambda x: x * 2.0, multiple_results=False))
    store = DictStore()
    with installed(store) as stats:
        np.testing.assert_allclose(np.asarray(jax.jit(double.bind)(X)), X * 2.0)
        variant("op", 0)  # other programs are not affected
    assert stats.not_stored == {lowering.USER_LOWERING_RULE: 1} and stats.stored == 1, stats
    assert any("test_lowering_unit" in note for note in stats.errors), stats.errors


class GarbageStore(DictStore):
    def get_lowered(self, key: str) -> bytes | None:
        super().get_lowered(key)
        return b"JAXLOWR garbage"


def test_a_bad_entry_is_noted_lowered_again_and_replaced() -> None:
    store = GarbageStore()
    with installed(store) as stats:
        np.testing.assert_allclose(np.asarray(variant("op", 0)), np.sin(X) * 2.0, rtol=1e-6)
    assert stats.hits == 0 and stats.misses == stats.stored >= 1, stats
    assert stats.errors and all(note.startswith("lowered module ") for note in stats.errors)
    assert all(lowering_entry.decode(data, key) for key, data in store.entries.items())


class ServesTheWrongModule(DictStore):
    """Serves, under every key, the one entry it holds (re-keyed): a collision."""

    def get_lowered(self, key: str) -> bytes | None:
        super().get_lowered(key)
        if not self.entries:
            return None
        [(stored_key, data)] = self.entries.items()
        header, bytecode = lowering_entry.decode(data, stored_key)
        return lowering_entry.encode(dataclasses.replace(header, key=key), bytecode)


def test_verify_mode_uses_the_fresh_module_and_leaves_both_on_disk(tmp_path: Path) -> None:
    store = ServesTheWrongModule()
    with installed(store):
        variant("op", 0)  # stores sin
    with installed(store, Lowering.VERIFY, tmp_path) as stats:
        cosine = np.asarray(variant("op", 1))
    np.testing.assert_allclose(cosine, np.cos(X) * 2.0, rtol=1e-6)
    assert stats.hits == 1 and stats.mismatched == 1 and stats.verified == 0, stats
    [line] = stats.mismatches
    assert line.startswith("jit") and f" {store.asked[-1][:16]}: diff -u " in line
    stored, fresh = (Path(path) for path in line.split("diff -u ")[1].split())
    assert stored.parent == fresh.parent and stored.parent.name == store.asked[-1][:16]
    assert stored.parent.parent.parent == tmp_path
    assert "cosine" not in stored.read_text() and "cosine" in fresh.read_text()


def test_install_changes_nothing_visible_and_uninstall_restores_jax(
    caplog: pytest.LogCaptureFixture,
) -> None:
    privates = (seams.CACHED_LOWERING, seams.HASH_COMPUTATION)
    before = [seams.find(private) for private in privates]
    excluded = list(seams.find(seams.EXCLUDE_PATHS))
    filters = list(warnings.filters)
    installation = Installation(JAX_STORE)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as heard:
        warnings.simplefilter("always")
        assert lowering.install(installation, DictStore(), Lowering.ON, LoweringStats(), Path())
    assert heard == [] and caplog.records == [] and installation.notices == []
    assert all(seams.find(p) is not b for p, b in zip(privates, before, strict=True))
    assert seams.find(seams.EXCLUDE_PATHS) != excluded
    installation.uninstall()
    assert [seams.find(private) for private in privates] == before
    assert seams.find(seams.EXCLUDE_PATHS) == excluded and warnings.filters == filters


OPTIONAL = {seams.CUSTOM_DERIVATIVE_LOWERING, seams.HASH_COMPUTATION, seams.LAPACK}


@pytest.mark.parametrize("hidden", lowering.SEAMS, ids=lambda private: private.name)
def test_a_missing_private_name_gives_one_notice(
    monkeypatch: pytest.MonkeyPatch, hidden: seams.Private
) -> None:
    """Without a required name: one notice naming it, nothing installed. Without an
    optional one: the tier runs, with one notice. Absent on this JAX anyway: nothing."""
    find = seams.find
    monkeypatch.setattr(seams, "find", lambda p: seams.ABSENT if p is hidden else find(p))
    installation = Installation(JAX_STORE)
    ran = lowering.install(installation, DictStore(), Lowering.ON, LoweringStats(), Path())
    installation.uninstall()
    minor = ".".join(jax.__version__.split(".")[:2])
    on_this_jax = minor in {".".join(v.split(".")[:2]) for v in hidden.checked_on}
    assert ran == (hidden in OPTIONAL or not on_this_jax)
    assert len(installation.notices) == (1 if on_this_jax else 0), installation.notices
    assert all(hidden.qualname in notice for notice in installation.notices)


# -- a second process ----------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import dataclasses, json, sys, warnings
    from pathlib import Path

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from pytest_jaxcache.jax import lowering
    from pytest_jaxcache.jax.installation import JAX_STORE, Installation
    from pytest_jaxcache.settings import Lowering
    from pytest_jaxcache.stats import LoweringStats

    store_file, out_file, cache_dir, *phases = sys.argv[1:]
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    X = np.linspace(0.1, 1.0, 8, dtype=np.float32)


    class FileStore:
        def __init__(self):
            path = Path(store_file)
            text = path.read_text() if path.exists() else "{}"
            self.entries = {k: bytes.fromhex(v) for k, v in json.loads(text).items()}

        def get_lowered(self, key):
            return self.entries.get(key)

        def put_lowered(self, key, data, lower_secs):
            self.entries[key] = bytes(data)
            return True


    def mlp(params, x):
        for w, b in params[:-1]:
            x = jnp.tanh(x @ w + b)
        w, b = params[-1]
        return x @ w + b


    def programs():
        out = {}
        key = jax.random.PRNGKey(0)
        sizes = [(4, 8), (8, 2)]
        params = [(jax.random.normal(key, s) * 0.3, jnp.zeros(s[1])) for s in sizes]
        x = X.reshape(2, 4)
        loss = lambda p: jnp.mean(mlp(p, x) ** 2)
        grads = jax.jit(jax.grad(loss))(params)
        out["mlp"] = jax.tree_util.tree_leaves(jax.jit(
            lambda p, g: jax.tree_util.tree_map(lambda a, b: a - 0.05 * b, p, g))(params, grads))
        out["scan"] = jax.jit(lambda xs: lax.scan(lambda c, v: (c + v, c * v), 1.0, xs))(X)
        out["vmap"] = jax.jit(jax.vmap(lambda v: jnp.dot(v, v)))(X.reshape(4, 2))
        out["cond"] = jax.jit(lambda v: lax.cond(v[0] > 0, jnp.sin, jnp.cos, v))(X)
        const = np.linspace(0.0, 1.0, 300, dtype=np.float32)
        out["const"] = jax.jit(lambda v: jnp.sum(v[:, None] * const[None, :], axis=1))(X)

        @jax.custom_jvp
        def g(v):
            return jnp.sin(v)

        g.defjvp(lambda p, t: (g(p[0]), jnp.cos(p[0]) * t[0]))
        out["custom_jvp"] = jax.jit(jax.grad(lambda v: jnp.sum(g(v))))(X)
        out["random"] = jax.jit(lambda k: jax.random.uniform(k, (3,)))(key)
        out["callback"] = jax.jit(
            lambda v: jax.pure_callback(
                lambda a: np.asarray(a) * 2, jax.ShapeDtypeStruct(v.shape, v.dtype), v)
        )(X)
        with warnings.catch_warnings(record=True) as heard:
            warnings.simplefilter("always")
            out["donated"] = jax.jit(jnp.sum, donate_argnums=0)(jnp.asarray(X))
        out["warnings"] = [len(heard)]
        return {k: [float(a) for v in jax.tree_util.tree_leaves(o) for a in np.ravel(v)]
                for k, o in out.items()}


    def phase(mode, store):
        jax.clear_caches()
        installation = Installation(JAX_STORE)
        stats = LoweringStats()
        if mode != "off":
            assert lowering.install(installation, store, Lowering(mode), stats,
                                    Path(out_file).parent / "mismatches")
        try:
            outputs = programs()
        finally:
            installation.uninstall()
        return {"outputs": outputs, "stats": dataclasses.asdict(stats),
                "notices": installation.notices}


    store = FileStore()
    results = [phase(mode, store) for mode in phases]  # one line: one stack for all
    Path(store_file).write_text(json.dumps({k: v.hex() for k, v in store.entries.items()}))
    Path(out_file).write_text(json.dumps(results))
    """
)


def run_child(tmp_path: Path, *phases: str, hash_seed: str) -> list[dict[str, Any]]:
    script, out = tmp_path / "child.py", tmp_path / "out.json"
    script.write_text(CHILD)
    paths = (script, tmp_path / "store.json", out, tmp_path / "jax-cache")
    argv = [sys.executable, *map(str, paths), *phases]
    result = run_command(argv, tmp_path, env={"PYTHONHASHSEED": hash_seed}, timeout=240)
    assert result.ret == 0, result.stderr.str()[-3000:]
    results: list[dict[str, Any]] = json.loads(out.read_text())
    return results


def test_a_second_process_serves_what_the_first_stored(tmp_path: Path) -> None:
    """Process 1 lowers with the tier off, then on (storing); process 2, with another
    string hash seed, is served every stored module (one entry's recorded digest
    tampered: the free check catches it), then verifies: 0 mismatches, and every
    result identical to process 1's with the tier off."""
    off, on = run_child(tmp_path, "off", "on", hash_seed="1")
    storable = on["stats"]["stored"]
    assert storable == on["stats"]["misses"] - 1 >= 8, on["stats"]  # one warned
    assert on["stats"]["not_stored"] == {lowering.HOST_CALLBACKS: 1, lowering.WARNED: 1}
    assert on["outputs"] == off["outputs"] and off["outputs"]["warnings"] == [1.0]
    store_file = tmp_path / "store.json"
    entries = json.loads(store_file.read_text())
    tampered, data = next(iter(entries.items()))
    header, bytecode = lowering_entry.decode(bytes.fromhex(data), tampered)
    assert header.computation is not None  # recorded when JAX hashed it
    wrong = lowering_entry.encode(header.with_computation("0" * 64), bytecode)
    store_file.write_text(json.dumps({**entries, tampered: wrong.hex()}))

    served, verified = run_child(tmp_path, "on", "verify", hash_seed="2")
    stats = served["stats"]
    assert stats["hits"] == storable and stats["misses"] == 1, stats
    assert stats["checked"] == storable - 1 and stats["check_failed"] == 1, stats
    assert served["outputs"] == off["outputs"]
    stats = verified["stats"]
    assert stats["hits"] == storable - 1 and stats["stored"] == 1, stats  # lowered again
    assert stats["verified"] == storable - 1 and stats["mismatched"] == 0, stats
    assert verified["outputs"] == off["outputs"]
    assert served["notices"] == verified["notices"] == []


def test_every_custom_call_target_is_found_in_nested_regions() -> None:
    """The targets the tier checks before it stores or serves a module: every custom
    call's, those inside nested functions and regions included."""
    ir = seams.find(seams.MLIR_IR)
    make_context = seams.find(seams.MAKE_IR_CONTEXT)
    text = """
    func.func public @main(%a: tensor<2xf32>, %p: tensor<i1>) -> tensor<2xf32> {
      %0 = stablehlo.custom_call @Sharding(%a) : (tensor<2xf32>) -> tensor<2xf32>
      %1 = "stablehlo.if"(%p) ({
        %2 = stablehlo.custom_call @lapack_sgesdd_ffi(%0) : (tensor<2xf32>) -> tensor<2xf32>
        stablehlo.return %2 : tensor<2xf32>
      }, {
        stablehlo.return %0 : tensor<2xf32>
      }) : (tensor<i1>) -> tensor<2xf32>
      %3 = call @inner(%1) : (tensor<2xf32>) -> tensor<2xf32>
      return %3 : tensor<2xf32>
    }
    func.func private @inner(%b: tensor<2xf32>) -> tensor<2xf32> {
      %4 = stablehlo.custom_call @a_plugin_kernel(%b) : (tensor<2xf32>) -> tensor<2xf32>
      return %4 : tensor<2xf32>
    }
    """
    with make_context():
        module = ir.Module.parse(text)
        found = lowering.custom_call_targets(module, ir.StringAttr)
    assert found == {"Sharding", "lapack_sgesdd_ffi", "a_plugin_kernel"}
    assert "Sharding" in lowering.XLA_CUSTOM_CALLS
    assert not {"lapack_sgesdd_ffi", "a_plugin_kernel"} & lowering.XLA_CUSTOM_CALLS
