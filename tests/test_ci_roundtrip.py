"""An actions/cache round trip, as close to it as this machine allows.

actions/cache (actions/toolkit's cache package) archives the cached paths with
``tar --posix -cf cache.tzst --exclude cache.tzst -P -C $GITHUB_WORKSPACE --files-from
manifest.txt --use-compress-program zstdmt`` (paths relative to the workspace) and
restores with ``tar -xf cache.tzst -P -C $GITHUB_WORKSPACE --use-compress-program
unzstd``. Here a first "runner" fills the cache and archives it that way; a second one,
with another checkout path, another working directory and another HOME, restores it
(with the archive's mtimes) and hits everything under an unchanged key; a third, on
another CPU (simulated at the fingerprint seam), loads nothing the first one wrote.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import assert_all_hits, jaxcache_argv, run_command, run_session, write_files

pytestmark = pytest.mark.slow

SUITE = {
    "tests/test_model.py": """
import jax
import jax.numpy as jnp
import numpy as np
import pytest


def layer(w, x):
    return jnp.tanh(x @ w)


@pytest.mark.parametrize("width", [4, 8, 16])
def test_layer(width):
    w = np.eye(width, dtype=np.float32)
    x = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    np.testing.assert_allclose(np.asarray(jax.jit(layer)(w, x)), np.tanh(x), rtol=1e-5)


def test_grad():
    g = jax.grad(lambda v: jnp.sum(jnp.sin(v) ** 2))(jnp.ones(5))
    np.testing.assert_allclose(np.asarray(g), np.sin(2.0) * np.ones(5), rtol=1e-5)
""",
    "pyproject.toml": """
[tool.pytest.ini_options]
jax_cache_dir = ".jaxcache"
""",
}
N_TESTS = 4
OTHER_CPU = """
from pytest_jaxcache.jax import fingerprint

fingerprint._cpu_features = lambda: "0123456789ab"
"""


def tools() -> tuple[str, str]:
    tar, zstd = shutil.which("tar"), shutil.which("zstd")
    if tar is None or zstd is None:
        pytest.skip("the round trip needs tar and zstd, as actions/cache does")
    return tar, zstd


def runner(root: Path, name: str, checkout: str) -> tuple[Path, dict[str, str]]:
    """A runner's workspace (a checkout of SUITE at ``checkout``) and its environment."""
    home = root / name / "home"
    home.mkdir(parents=True)
    workspace = root / name / "work" / checkout
    write_files(workspace, SUITE)
    return workspace, {"HOME": str(home), "GITHUB_WORKSPACE": str(workspace)}


def key(workspace: Path, env: dict[str, str]) -> str:
    result = run_command(jaxcache_argv("key"), workspace, env=env)
    assert result.ret == 0, result.errlines
    [value] = result.outlines
    return value


def test_a_cache_restored_on_another_runner_hits_everything_under_the_same_key(
    tmp_path: Path,
) -> None:
    tar, zstd = tools()
    first, first_env = runner(tmp_path, "runner-a", "project")
    result, cold = run_session(first, "-n", "2", env=first_env)
    result.assert_outcomes(passed=N_TESTS)
    assert cold["cache"]["store"] == "pytest-jaxcache store"
    first_key = key(first, first_env)
    digest = cold["cache"]["digest"]

    archive = tmp_path / "cache.tzst"
    (first / "manifest.txt").write_text(".jaxcache\n")
    packed = run_command(
        [tar, "--posix", "-cf", archive, "--exclude", archive, "-P", "-C", first,
         "--files-from", first / "manifest.txt", "--use-compress-program", f"{zstd} -T0"],
        first,
    )  # fmt: skip
    assert packed.ret == 0, packed.errlines

    second, second_env = runner(tmp_path, "runner-b", "renamed-checkout")
    unpacked = run_command(
        [tar, "-xf", archive, "-P", "-C", second, "--use-compress-program", f"{zstd} -d"],
        second,
    )
    assert unpacked.ret == 0, unpacked.errlines
    assert key(second / "tests", second_env) == first_key  # another cwd, another HOME

    result, warm = run_session(
        second / "tests", "-n", "2", "--rootdir", str(second), env=second_env
    )
    result.assert_outcomes(passed=N_TESTS)
    assert_all_hits(warm)
    assert warm["cache"]["dir"] == str(second / ".jaxcache")
    assert warm["cache"]["changed"] is False and warm["cache"]["digest"] == digest
    contents = json.loads((second / ".jaxcache" / "contents.json").read_text())
    assert contents["digest"] == digest  # the save step would skip: nothing new

    (second / "conftest.py").write_text(OTHER_CPU)
    result, foreign = run_session(second, "-p", "no:xdist", env=second_env)
    result.assert_outcomes(passed=N_TESTS)
    # Nothing the first runner wrote was loaded: a hit here is a program this very
    # session wrote (a second test compiling it again).
    compiles = foreign["compiles"]
    written = {c["key"] for c in compiles if c["outcome"] == "miss"}
    assert {c["key"] for c in compiles if c["outcome"] == "hit"} <= written
    assert foreign["store"]["foreign"] == foreign["cachable"]["misses"] > 0
    assert {m["reason"] for m in foreign["misses"]} == {"written on another CPU: not loaded"}
