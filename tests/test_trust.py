"""A cache is code: only entries we can trust are loaded.

Real sessions in subprocesses, real permissions and a real second user (made with
useradd), real HMAC-signed entries. Each case asserts what was loaded (nothing it should
not), that the run is green, and that the notice names the cause and the fix.
"""

from __future__ import annotations

import os
import pwd
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from helpers import ColdCache, RunJax, assert_all_hits, cold_session, decoded, entries, write_files

from pytest_jaxcache.entry import encode

pytestmark = pytest.mark.slow

KEY = "a-signing-key-of-32-characters!!"
OTHER_KEY = "another-signing-key-of-32-chars!"

SUITE = {
    "test_suite.py": """
import jax
import jax.numpy as jnp
import numpy as np

X = np.linspace(0.0, 1.0, 8, dtype=np.float32)


def sin_twice(v):
    return jnp.sin(v) * 2.0


def cos_plus(v):
    return jnp.cos(v) + 1.0


def test_sin():
    np.testing.assert_allclose(np.asarray(jax.jit(sin_twice)(X)), np.sin(X) * 2.0, rtol=1e-5)


def test_cos():
    np.testing.assert_allclose(np.asarray(jax.jit(cos_plus)(X)), np.cos(X) + 1.0, rtol=1e-5)
""",
}
N_PROGRAMS = 2

# A conftest that moves the session to another CPU at the fingerprint seam: the CPU
# features the plugin reads are patched before the first compile asks for them.
OTHER_CPU = """
from pytest_jaxcache.jax import fingerprint

fingerprint._cpu_features = lambda: "0123456789ab"
"""


@pytest.fixture(scope="module")
def cold_cache(tmp_path_factory: pytest.TempPathFactory) -> ColdCache:
    cold = cold_session(tmp_path_factory, "cold-trust", SUITE, "-p", "no:xdist")
    assert cold.report["store"]["writes"] == N_PROGRAMS
    return cold


@pytest.fixture(scope="module")
def signed_cache(tmp_path_factory: pytest.TempPathFactory) -> ColdCache:
    env = {"JAX_CACHE_SIGNING_KEY": KEY}
    cold = cold_session(tmp_path_factory, "signed-trust", SUITE, "-p", "no:xdist", env=env)
    assert cold.report["store"]["writes"] == N_PROGRAMS
    return cold


@pytest.fixture
def warm_cache(pytester: pytest.Pytester, cold_cache: ColdCache) -> Path:
    return cold_cache.copy_to(pytester.path, SUITE)


def notices(report: dict[str, Any]) -> list[str]:
    return [str(n) for n in report["cache"]["notices"]]


def outcomes(report: dict[str, Any]) -> set[str]:
    return {c["outcome"] for c in report["compiles"]}


def entry_of(cache: Path, program: str) -> Path:
    [path] = [path for path in entries(cache) if path.name.startswith(f"jit_{program}-")]
    return path


# -- an entry is bound to its key -----------------------------------------------------------------


def test_an_entry_copied_under_another_key_is_not_served(run_jax: RunJax, warm_cache: Path) -> None:
    """A valid entry (sin's) copied over another program's file name (cos's): cos is not
    served sin's code (its test, which checks cos's numbers, passes), the copy is removed
    and counted, cos is recompiled and written under its own key, and the miss names why."""
    sin, cos = entry_of(warm_cache, "sin_twice"), entry_of(warm_cache, "cos_plus")
    shutil.copyfile(sin, cos)
    assert decoded(cos) is None  # the copy does not verify under cos's key

    result, report = run_jax("--jax-cache-dir=cache", "-W", "error")
    result.assert_outcomes(passed=2)
    assert report["store"]["wrong_key"] == 1
    assert report["cachable"]["hits"] == 1 and report["store"]["writes"] == 1
    assert decoded(cos) is not None
    [miss] = report["misses"]
    assert miss["reason"] == "written for another key" and miss["examples"] == ["jit(cos_plus)"]


# -- who may write the directory -------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o757])
def test_a_directory_every_user_can_write_is_not_loaded_from(
    run_jax: RunJax, warm_cache: Path, mode: int
) -> None:
    """A cache anyone can write (also with the sticky bit: others can still add entries):
    one notice naming the directory, the reason and the fix; nothing loaded, nothing
    written; the run is green."""
    warm_cache.chmod(mode)
    before = sorted((path.name, path.read_bytes()) for path in entries(warm_cache))
    result, report = run_jax("--jax-cache-dir=cache")
    result.assert_outcomes(passed=2)
    [notice] = [n for n in notices(report) if n.startswith("not loading from")]
    assert f"{warm_cache} is writable by every user" in notice
    assert "chmod go-w" in notice and "--jax-cache-shared" in notice
    assert "JAX_CACHE_SIGNING_KEY" in notice
    assert outcomes(report) == {"uncached"}
    assert sorted((path.name, path.read_bytes()) for path in entries(warm_cache)) == before
    assert any("jaxcache: notice: not loading from" in line for line in result.outlines)


def test_a_shared_directory_is_loaded_from_when_the_user_says_so(
    run_jax: RunJax, warm_cache: Path
) -> None:
    warm_cache.chmod(0o777)
    result, report = run_jax("--jax-cache-dir=cache", "--jax-cache-shared")
    result.assert_outcomes(passed=2)
    assert_all_hits(report)
    assert any(
        "can be written by others" in n and "--jax-cache-shared" in n for n in notices(report)
    )


def test_a_sub_directory_others_can_write_is_enough_to_refuse(
    run_jax: RunJax, warm_cache: Path
) -> None:
    """The machine's namespace directory writable by all (others could plant an entry
    there): refused like the cache directory itself, naming that directory."""
    [namespace] = (warm_cache / "entries").iterdir()
    namespace.chmod(0o777)
    result, report = run_jax("--jax-cache-dir=cache")
    result.assert_outcomes(passed=2)
    assert any(f"{namespace} is writable by every user" in n for n in notices(report))
    assert outcomes(report) == {"uncached"}


def test_a_directory_owned_by_another_user_is_not_loaded_from(
    run_jax: RunJax, warm_cache: Path, other_user: pwd.struct_passwd
) -> None:
    for path in [warm_cache, *warm_cache.rglob("*")]:
        os.chown(path, other_user.pw_uid, other_user.pw_gid, follow_symlinks=False)
    result, report = run_jax("--jax-cache-dir=cache")
    result.assert_outcomes(passed=2)
    assert any(f"{warm_cache} is owned by {other_user.pw_name}" in n for n in notices(report)), (
        notices(report)
    )
    assert outcomes(report) == {"uncached"}


def test_a_directory_writable_by_a_group_with_other_members_is_not_loaded_from(
    run_jax: RunJax, warm_cache: Path, other_user: pwd.struct_passwd
) -> None:
    """Group write access matters only when someone else is in the group: the other
    user's own group, group-writable, is refused naming the group and its member."""
    os.chown(warm_cache, -1, other_user.pw_gid)
    warm_cache.chmod(0o775)
    result, report = run_jax("--jax-cache-dir=cache")
    result.assert_outcomes(passed=2)
    expected = f"writable by group {other_user.pw_name} ({other_user.pw_name})"
    assert any(expected in n for n in notices(report)), notices(report)
    assert outcomes(report) == {"uncached"}


def test_a_group_writable_directory_of_a_private_group_is_fine(
    run_jax: RunJax, warm_cache: Path
) -> None:
    """Group root, group-writable: nobody but root is in it, so nothing changes."""
    os.chown(warm_cache, -1, 0)
    warm_cache.chmod(0o775)
    result, report = run_jax("--jax-cache-dir=cache")
    result.assert_outcomes(passed=2)
    assert_all_hits(report)


def test_an_entry_file_others_can_write_is_not_loaded(run_jax: RunJax, warm_cache: Path) -> None:
    entry = entry_of(warm_cache, "sin_twice")
    entry.chmod(0o666)
    result, report = run_jax("--jax-cache-dir=cache")
    result.assert_outcomes(passed=2)
    assert report["store"]["untrusted"] == 1
    assert report["cachable"]["hits"] == 1 and report["store"]["writes"] == 1
    assert [m["reason"] for m in report["misses"]] == [
        "its entry file is writable by every user: not loaded"
    ]
    assert entry.stat().st_mode & 0o777 == 0o644  # replaced by an entry of ours


# -- signed entries -------------------------------------------------------------------------


@pytest.fixture
def signed(pytester: pytest.Pytester, signed_cache: ColdCache) -> Path:
    return signed_cache.copy_to(pytester.path, SUITE)


def test_signed_entries_load_with_their_key(run_jax: RunJax, signed: Path) -> None:
    result, report = run_jax("--jax-cache-dir=cache", env={"JAX_CACHE_SIGNING_KEY": KEY})
    result.assert_outcomes(passed=2)
    assert_all_hits(report)
    assert report["store"]["untrusted"] == 0


def test_signed_entries_do_not_load_under_another_key_and_are_replaced(
    run_jax: RunJax, signed: Path
) -> None:
    """A job with another secret (an attacker's, or a rotated-out one) loads nothing:
    every entry is counted untrusted, recompiled and replaced by one it signed."""
    result, report = run_jax("--jax-cache-dir=cache", env={"JAX_CACHE_SIGNING_KEY": OTHER_KEY})
    result.assert_outcomes(passed=2)
    assert report["cachable"]["hits"] == 0
    assert report["store"]["untrusted"] == N_PROGRAMS
    assert report["store"]["writes"] == N_PROGRAMS
    reasons = {m["reason"] for m in report["misses"]}
    assert reasons == {"signed with an unknown key, or tampered with"}

    result, report = run_jax("--jax-cache-dir=cache", env={"JAX_CACHE_SIGNING_KEY": OTHER_KEY})
    assert_all_hits(report)


def test_an_old_key_still_verifies_during_rotation(run_jax: RunJax, signed: Path) -> None:
    """The new secret signs, the old one (listed for reading) verifies: no miss."""
    env = {"JAX_CACHE_SIGNING_KEY": OTHER_KEY, "JAX_CACHE_OLD_SIGNING_KEYS": KEY}
    result, report = run_jax("--jax-cache-dir=cache", env=env)
    result.assert_outcomes(passed=2)
    assert_all_hits(report)


def test_without_a_key_signed_entries_load_only_when_told(run_jax: RunJax, signed: Path) -> None:
    """A job without the secret (a pull request from a fork) loads nothing signed by
    default; with --jax-cache-load-unverified it loads them (their digest still checked)."""
    result, report = run_jax("--jax-cache-dir=cache", "--jax-cache-mode=readonly")
    result.assert_outcomes(passed=2)
    assert report["cachable"]["hits"] == 0
    assert report["store"]["untrusted"] == N_PROGRAMS
    assert {m["reason"] for m in report["misses"]} == {
        "signed, and no signing key is set to verify it"
    }

    result, report = run_jax(
        "--jax-cache-dir=cache", "--jax-cache-mode=readonly", "--jax-cache-load-unverified"
    )
    result.assert_outcomes(passed=2)
    assert report["cachable"]["hits"] == N_PROGRAMS


def test_unsigned_entries_do_not_load_once_a_key_is_set(run_jax: RunJax, warm_cache: Path) -> None:
    result, report = run_jax("--jax-cache-dir=cache", env={"JAX_CACHE_SIGNING_KEY": KEY})
    result.assert_outcomes(passed=2)
    assert report["cachable"]["hits"] == 0
    assert report["store"]["untrusted"] == N_PROGRAMS
    assert {m["reason"] for m in report["misses"]} == {"not signed, and a signing key is set"}


def test_a_tampered_signed_entry_is_refused(run_jax: RunJax, signed: Path) -> None:
    """One byte of a signed entry's payload changed (its digest recomputed would not
    help: the signature needs the key): refused, recompiled, replaced."""
    entry = entry_of(signed, "cos_plus")
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))
    result, report = run_jax("--jax-cache-dir=cache", env={"JAX_CACHE_SIGNING_KEY": KEY})
    result.assert_outcomes(passed=2)
    assert report["cachable"]["hits"] == 1
    assert report["store"]["repaired"] + report["store"]["untrusted"] == 1


def test_a_shared_directory_with_a_key_loads_only_signed_entries(
    run_jax: RunJax, signed: Path
) -> None:
    """A directory others can write, with a signing key: loaded from (the signature is
    what is trusted, not the directory), and a planted unsigned entry is not loaded."""
    signed.chmod(0o777)
    cos = entry_of(signed, "cos_plus")
    cos.write_bytes(b"JXC2" + bytes(100))
    result, report = run_jax("--jax-cache-dir=cache", env={"JAX_CACHE_SIGNING_KEY": KEY})
    result.assert_outcomes(passed=2)
    assert report["cachable"]["hits"] == 1
    assert any("entries must be signed" in n for n in notices(report))


@pytest.mark.parametrize(
    "env, message",
    [
        ({"JAX_CACHE_SIGNING_KEY": "short"}, "env JAX_CACHE_SIGNING_KEY: a signing key must"),
        ({"JAX_CACHE_OLD_SIGNING_KEYS": KEY}, "env JAX_CACHE_OLD_SIGNING_KEYS is set but"),
    ],
)
def test_an_unusable_key_is_a_usage_error_that_never_shows_it(
    pytester: pytest.Pytester, run_jax: RunJax, env: dict[str, str], message: str
) -> None:
    write_files(pytester.path, SUITE)
    result, _ = run_jax("--jax-cache-dir=cache", env=env)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
    output = result.stdout.str() + result.stderr.str()
    assert all(secret not in output for secret in env.values())


# -- another machine ------------------------------------------------------------------------


def test_entries_of_another_machine_are_never_loaded(
    pytester: pytest.Pytester, run_jax: RunJax, warm_cache: Path
) -> None:
    """A session whose CPU differs (simulated at the fingerprint seam) loads nothing the
    first machine wrote, explains each miss, and writes its own entries beside them;
    the first machine then still hits everything."""
    (pytester.path / "conftest.py").write_text(OTHER_CPU)
    result, report = run_jax("--jax-cache-dir=cache", "-p", "no:xdist")
    result.assert_outcomes(passed=2)
    assert report["cachable"]["hits"] == 0
    assert report["store"]["foreign"] == N_PROGRAMS
    assert [(m["reason"], m["count"]) for m in report["misses"]] == [
        ("written on another CPU: not loaded", N_PROGRAMS)
    ]
    namespaces = sorted(path.name for path in (warm_cache / "entries").iterdir())
    assert len(namespaces) == 2 and len(entries(warm_cache)) == 2 * N_PROGRAMS

    (pytester.path / "conftest.py").unlink()
    result, report = run_jax("--jax-cache-dir=cache", "-p", "no:xdist")
    result.assert_outcomes(passed=2)
    assert_all_hits(report)


def test_an_entry_written_for_another_machine_is_refused_in_this_ones_namespace(
    run_jax: RunJax, warm_cache: Path
) -> None:
    """An entry whose metadata names another machine, put into this machine's namespace
    directory under the right key (valid digest, the right program even): refused as
    foreign, recompiled, replaced. The namespace it was written for is part of what an
    entry verifies, not just where it lies."""
    sin = entry_of(warm_cache, "sin_twice")
    original = decoded(sin)
    assert original is not None
    metadata = replace(original.metadata, machine="0123456789abcdef")
    sin.write_bytes(encode(sin.name, original.payload, metadata))
    result, report = run_jax("--jax-cache-dir=cache")
    result.assert_outcomes(passed=2)
    assert report["store"]["foreign"] == 1
    assert report["cachable"]["hits"] == 1
    assert [m["reason"] for m in report["misses"]] == ["written on another machine"]
    assert decoded(sin) is not None


# -- key rotation (issue 15) ----------------------------------------------------------------------

ODD_KEY = "an old key, with spaces, and commas"


def test_an_entry_of_an_old_key_is_signed_again_when_read(run_jax: RunJax, signed: Path) -> None:
    """During a rotation each entry that verifies with an old key is signed again with
    the current one as it is read; once every job has the new key, the old one can go
    without turning the cache cold. Old keys are given one per line, so a key may hold
    spaces and commas."""
    rotating = {
        "JAX_CACHE_SIGNING_KEY": OTHER_KEY,
        "JAX_CACHE_OLD_SIGNING_KEYS": f"{ODD_KEY}\n  {KEY}  \n",
    }
    result, report = run_jax("--jax-cache-dir=cache", env=rotating)
    result.assert_outcomes(passed=2)
    assert_all_hits(report)
    assert report["store"]["resigned"] == 2
    result, report = run_jax("--jax-cache-dir=cache", env={"JAX_CACHE_SIGNING_KEY": OTHER_KEY})
    assert_all_hits(report)
    assert report["store"]["resigned"] == 0


def test_a_key_with_spaces_and_commas_rotates_out(run_jax: RunJax, warm_cache: Path) -> None:
    """A current key holding spaces and commas, later listed as an old key, verifies."""
    result, report = run_jax("--jax-cache-dir=cache", env={"JAX_CACHE_SIGNING_KEY": ODD_KEY})
    result.assert_outcomes(passed=2)
    assert report["store"]["writes"] == 2  # unsigned entries are replaced by signed ones
    env = {"JAX_CACHE_SIGNING_KEY": KEY, "JAX_CACHE_OLD_SIGNING_KEYS": ODD_KEY}
    result, report = run_jax("--jax-cache-dir=cache", env=env)
    assert_all_hits(report)
    assert report["store"]["resigned"] == 2
