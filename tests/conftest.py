"""Shared fixtures. Child sessions start through :mod:`helpers` only; this file gives
them a directory (``pytester.path``) and a short name, and the object-store servers."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from emulators import Emulator, start_gcs, start_s3
from helpers import RunJax, Session, run_command, run_session
from hypothesis import settings


@pytest.fixture(scope="module", params=["gcs", "s3"])
def emulator(request: pytest.FixtureRequest) -> Iterator[Emulator]:
    """An object-store server on 127.0.0.1, once per module and protocol (a test may
    pick one protocol with ``indirect`` parametrization)."""
    server = start_gcs() if request.param == "gcs" else start_s3()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def s3() -> Iterator[Emulator]:
    """An S3 server (moto) on 127.0.0.1, once per module."""
    server = start_s3()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def run_jax(pytester: pytest.Pytester) -> RunJax:
    """``run_jax(*args)``: a child pytest session in ``pytester.path``, with a JSON
    report; unpacks as ``result, report``."""

    def run(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> Session:
        return run_session(pytester.path, *args, timeout=timeout, env=env)

    return run


@pytest.fixture
def unprivileged_prefix(tmp_path: Path) -> list[str]:
    """A command prefix under which file permissions apply to this process's children.

    As a normal user that is no prefix. As root (permissions ignored), drop the
    capabilities that override them (``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``) with
    ``setpriv``: the child stays uid 0, so it can still run this interpreter (which may
    live in root's 0700 home, out of reach of ``nobody``), but a 0555 directory is
    read-only to it. Skips, with the reason, when that is not possible here.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root, which ignores permissions, and setpriv is not installed")
    caps = "-dac_override,-dac_read_search"
    prefix = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    probe_dir.chmod(0o555)
    try:
        probe = run_command(
            [*prefix, sys.executable, "-c", f"open({str(probe_dir / 'x')!r}, 'w')"], tmp_path
        )
    finally:
        probe_dir.chmod(0o755)
    if probe.ret == 0 or "PermissionError" not in probe.stderr.str():
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE with setpriv here: {probe.stderr.str()[-300:]}")
    return prefix


@pytest.fixture(scope="session")
def other_user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pwd.struct_passwd]:
    """An unprivileged user of this machine other than the one running the tests (made
    for the session with useradd, removed afterwards), to own or share cache
    directories. Skips, with the reason, where users cannot be made."""
    name = f"jaxcache-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"[:30]
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("making another user needs root and useradd")
    made = run_command(
        ["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
        tmp_path_factory.getbasetemp(),
    )
    if made.ret not in (0, 9):  # 9: it exists (a run killed before its cleanup)
        pytest.skip(f"useradd failed: {made.stderr.str()[-300:]}")
    try:
        yield pwd.getpwnam(name)
    finally:
        run_command(["userdel", name], tmp_path_factory.getbasetemp())
        if name in {group.gr_name for group in grp.getgrall()}:
            run_command(["groupdel", name], tmp_path_factory.getbasetemp())


# Property-based tests: a small, fixed set of examples in the normal run (every run tries
# the same ones: a failure is reproducible, never a flake); --hypothesis-profile=nightly
# draws many more at random.
settings.register_profile("default", max_examples=40, derandomize=True, deadline=None)
settings.register_profile("nightly", max_examples=3000, deadline=None)
settings.load_profile("default")
