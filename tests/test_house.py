"""The house stays in order: layers that only look down (over the real import graph of
the package), JAX touched only by ``pytest_jaxcache/jax/``, every private JAX name in the
one table and found on this JAX, and a session that still caches, with one notice,
when any one of them is missing."""

from __future__ import annotations

import ast
import importlib.metadata
import re
from pathlib import Path

import pytest
from helpers import PROJECT, RunJax, write_files

from pytest_jaxcache.jax import lowering, seams

PACKAGE = PROJECT / "pytest_jaxcache"

# Lowest first: a module may import modules of its own layer or of a layer below.
LAYERS: list[set[str]] = [
    {"formats", "layout", "environment", "markers", "tally", "reasons", "hookspecs", "settings"},
    {"keys", "stats", "cachedir", "trust", "timeline", "history"},
    {"entry", "bookkeeping", "ownership", "shards"},
    {"maintenance", "store"},
    {"remote", "recorder", "explain", "keydump"},
    {
        "jax.importing",
        "jax.seams",
        "jax.installation",
        "jax.runtime",
        "jax.fingerprint",
        "jax.lowering_entry",
    },
    {
        "jax.keyparts",
        "jax.signals",
        "jax.adapter",
        "jax.lowering",
        "jax.lowering_key",
        "jax.lowering_values",
        "jax.lowering_internals",
    },
    {"jax.install"},
    {"worker_report", "cikey"},
    {"snapshot"},
    {"terminal", "summary"},
    {"session"},
    {"roles", "xdist", "scheduler", "error_checks", "fixture", "cli"},
    {"plugin", "__main__", "__init__", "jax.__init__"},
]


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name below ``pytest_jaxcache``."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).with_suffix("")
        found[".".join(relative.parts)] = path
    return found


def imports(path: Path) -> set[str]:
    """The package's modules that ``path`` imports (at run time or for types)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pytest_jaxcache":
                names.update(alias.name for alias in node.names)
            elif node.module.startswith("pytest_jaxcache."):
                base = node.module.removeprefix("pytest_jaxcache.")
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pytest_jaxcache."):
                    names.add(alias.name.removeprefix("pytest_jaxcache."))
    return names & set(modules()) | {name for name in names if name == "jax"}


def layer(module: str) -> int:
    [index] = [i for i, members in enumerate(LAYERS) if module in members]
    return index


def test_every_module_has_a_layer() -> None:
    placed = {name for members in LAYERS for name in members}
    assert set(modules()) <= placed, set(modules()) - placed


def test_layers_only_look_down() -> None:
    """No module imports one of a layer above its own."""
    upward = [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, path in modules().items()
        for target in imports(path)
        if target in modules() and layer(target) > layer(module)
    ]
    assert upward == []


def test_only_the_jax_package_touches_jax() -> None:
    """``import jax`` and every name of ``jax._src``/``jaxlib`` appear only under
    pytest_jaxcache/jax/."""
    pattern = re.compile(r"^\s*(import jax\b|from jax[ .]|import jaxlib|from jaxlib)", re.M)
    touching = sorted(
        name
        for name, path in modules().items()
        if not name.startswith("jax.") and pattern.search(path.read_text())
    )
    assert touching == []
    private = re.compile(r"jax\._src|jaxlib\.")
    outside = sorted(
        name
        for name, path in modules().items()
        if not name.startswith("jax.") and private.search(path.read_text())
    )
    assert outside == []


def test_every_private_name_is_in_the_table_and_on_this_jax() -> None:
    """The table lists each private name once; each is found on this JAX (the versions
    it was checked on include this one's minor release, or it says when it is absent)."""
    import jax

    names = [private.qualname for private in seams.ALL]
    assert len(names) == len(set(names))
    minor = ".".join(jax.__version__.split(".")[:2])
    for private in seams.ALL:
        checked = {".".join(version.split(".")[:2]) for version in private.checked_on}
        assert (minor in checked) == seams.present(seams.find(private)), private.qualname
    elsewhere = sorted(
        path.name
        for path in (PACKAGE / "jax").glob("*.py")
        if path.name != "seams.py" and any("jax._src" in text for text in _code_strings(path))
    )
    assert elsewhere == []


def _code_strings(path: Path) -> list[str]:
    """The string constants of a module's code (not its docstrings)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


SUITE = {
    "test_two.py": """
import jax
import jax.numpy as jnp
import numpy as np


def test_sin():
    x = np.linspace(0.0, 1.0, 8, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(jnp.sin)(x)), np.sin(x), rtol=1e-6)


def test_cos():
    x = np.linspace(0.0, 1.0, 8, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(jnp.cos)(x)), np.cos(x), rtol=1e-6)
""",
}
# What each private name's absence leaves of the session: JAX's own store instead of
# ours, or ours less informed. Names that stand in for each other are hidden together.
# The lowering tier's names are hidden in process, one by one, by test_lowering_unit
# (the tier is off by default, so a default session never looks them up).
PAIRED = (seams.ZSTD, seams.ZSTANDARD)
HIDDEN = [*([p] for p in seams.ALL if p not in (*PAIRED, *lowering.SEAMS)), list(PAIRED)]
_OURS = "pytest-jaxcache store"


@pytest.mark.slow
@pytest.mark.parametrize("hidden", HIDDEN, ids=lambda names: "+".join(p.name for p in names))
def test_a_missing_private_name_leaves_one_notice_and_a_cache(
    pytester: pytest.Pytester, run_jax: RunJax, hidden: list[seams.Private]
) -> None:
    """JAX without one of the private names the plugin uses (hidden from the plugin's
    one lookup; JAX itself whole): one notice that names it and what the session does
    without it, every test green, and programs cached (by our store or JAX's)."""
    write_files(pytester.path, SUITE)
    env = {
        "JAXCACHE_HIDE_SEAMS": ",".join(private.qualname for private in hidden),
        "PYTHONPATH": str(PROJECT / "tests"),
    }
    result, report = run_jax("--jax-cache-dir=cache", "-p", "hide_seams", "-p", "no:xdist", env=env)
    result.assert_outcomes(passed=2)
    minor = ".".join(importlib.metadata.version("jax").split(".")[:2])
    expected = [
        private
        for private in hidden
        if minor in {".".join(v.split(".")[:2]) for v in private.checked_on}
    ]
    named = [n for n in report["cache"]["notices"] if any(p.qualname in n for p in hidden)]
    assert len(named) == (1 if expected else 0), named  # stand-ins for each other: one
    assert report["totals"]["requests"] == 2  # looked up, so cached: never uncached
    store = report["cache"]["store"]
    assert report["cache"]["after"]["entries"] == 2, (store, report["cache"]["after"])
    store_lost = {seams.GET_FILE_CACHE, seams.RESET_CACHE, seams.CACHE_INTERFACE}
    assert (store == _OURS) == (not store_lost & set(hidden)), store
