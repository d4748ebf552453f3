"""What the tests share: the one way to start a child pytest session (or any child
process), the one environment policy for children, and small file helpers.

Every session that uses the plugin runs in a fresh interpreter: JAX's cache
configuration is process-global.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol

import pytest
from filelock import FileLock
from invariants import check as check_invariants

from pytest_jaxcache.cachedir import CacheDir
from pytest_jaxcache.entry import Entry, Refused, decode
from pytest_jaxcache.ownership import adopt, claim
from pytest_jaxcache.trust import Signer

PROJECT = Path(__file__).resolve().parent.parent

# Plugins that a development machine may have and these sessions do not use: off, so that
# each child session starts in about half the time (no-ops where they are not installed).
UNRELATED_PLUGINS = (
    "-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
    "-p", "no:benchmark", "-p", "no:jaxtyping",
)  # fmt: skip

# Prefixes of variables that steer a child's cache, JAX, xdist or CI behaviour: a
# developer's shell, an outer xdist worker or a CI runner must not leak them in.
_STEERING = ("JAX_", "XLA_", "PYTEST_", "GITHUB_", "AWS_", "STORAGE_EMULATOR", "FSSPEC_", "GCSFS_")


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every child process: this one's without anything that steers
    JAX, the cache, xdist or CI, on the CPU, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(_STEERING)}
    env["JAX_PLATFORMS"] = "cpu"
    env.update(extra or {})
    return env


def pytest_argv(*args: str, python: str | os.PathLike[str] = sys.executable) -> list[str]:
    """The command line of a child pytest session."""
    return [str(python), "-m", "pytest", *UNRELATED_PLUGINS, *args]


def jaxcache_argv(*args: str | os.PathLike[str]) -> list[str]:
    """The command line of the ``jaxcache`` command, through this interpreter (the
    script's directory need not be on ``PATH``)."""
    return [sys.executable, "-m", "pytest_jaxcache", *(str(arg) for arg in args)]


def run_command(
    argv: Sequence[str | os.PathLike[str]],
    cwd: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    stdin: str | None = None,
) -> pytest.RunResult:
    """Run any child process with :func:`child_env` (plus ``env``; ``stdin`` as its
    input) and return its outcome as pytest's ``RunResult``."""
    started = time.monotonic()
    done = subprocess.run(
        [str(part) for part in argv],
        cwd=cwd,
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )
    return pytest.RunResult(
        done.returncode,
        done.stdout.splitlines(),
        done.stderr.splitlines(),
        time.monotonic() - started,
    )


class Session(NamedTuple):
    """A finished child pytest session and its JSON report (``{}`` when none); unpacks
    as ``result, report``."""

    result: pytest.RunResult
    report: dict[str, Any]

    def to_builtins(self) -> dict[str, Any]:
        """The session as JSON-able data (what :func:`once_per_run` hands every worker)."""
        result = self.result
        return {
            "ret": int(result.ret),
            "outlines": result.outlines,
            "errlines": result.errlines,
            "duration": result.duration,
            "report": self.report,
        }

    @classmethod
    def from_builtins(cls, data: dict[str, Any]) -> Session:
        result = pytest.RunResult(data["ret"], data["outlines"], data["errlines"], data["duration"])
        return cls(result, data["report"])


class RunJax(Protocol):
    """The ``run_jax`` fixture: a child pytest session in ``pytester.path``."""

    def __call__(
        self, *args: str, timeout: float = ..., env: dict[str, str] | None = ...
    ) -> Session: ...


_reports = itertools.count()
# A file that gets one line per child session whose snapshot the invariant checker
# checked (unset: nothing is written).
CHECKED_LOG = "JAXCACHE_TESTS_CHECKED_LOG"


def run_session(
    cwd: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    python: str | os.PathLike[str] = sys.executable,
    prefix: Sequence[str] = (),
    report: bool = True,
) -> Session:
    """Run ``pytest *args`` in ``cwd``; with ``report``, ask for a JSON report (read back
    into :attr:`Session.report`), and check the invariants of every snapshot against
    the JSON and what the session printed."""
    path = cwd / f"jaxcache-report-{os.getpid()}-{next(_reports)}.json"
    extra = (f"--jax-cache-report={path}",) if report else ()
    argv = [*prefix, *pytest_argv(*extra, *args, python=python)]
    result = run_command(argv, cwd, env=env, timeout=timeout)
    # An internal error is never what a test expects: fail with its whole traceback (a
    # test's own assertion would show a truncated line of it, or none).
    internal = [line for line in result.outlines if line.startswith("INTERNALERROR>")]
    assert not internal, "the child session ended in an internal error:\n" + "\n".join(internal)
    data = json.loads(path.read_text()) if path.exists() else {}
    if data:
        check_invariants(data, result.outlines)
        if CHECKED_LOG in os.environ:  # how many sessions the checker saw, for a figure
            with open(os.environ[CHECKED_LOG], "a") as log:
                log.write(f"{path.name}\n")
    return Session(result, data)


def start_session(
    cwd: Path,
    *args: str,
    output: IO[str],
    env: Mapping[str, str] | None = None,
    new_group: bool = False,
) -> subprocess.Popen[str]:
    """Start ``pytest *args`` in ``cwd`` without waiting (concurrent sessions, kills);
    its output goes to ``output``. ``new_group``: in a process group of its own, so that
    the whole session (workers included) can be killed at once."""
    return subprocess.Popen(
        pytest_argv(*args),
        cwd=cwd,
        env=child_env(env),
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=new_group,
    )


def _jax_version() -> tuple[int, int]:
    major, minor = importlib.metadata.version("jax").split(".")[:2]
    return int(major), int(minor)


# Up to JAX 0.10 programs with host callbacks are looked up but never written; from 0.11
# they are cached. The one place where expectations legitimately depend on the JAX
# version: every test that branches on it says so.
CALLBACKS_CACHED = _jax_version() >= (0, 11)


def claimed(root: Path) -> CacheDir:
    """``root`` as a session makes it a cache directory: adopted (created if new) and
    tagged."""
    directory = adopt(root, readonly=False)
    claim(directory)
    return directory


def entries(cache_dir: Path) -> list[Path]:
    """The entry files of a pytest-jaxcache store, in every machine namespace."""
    return sorted(path for path in (cache_dir / "entries").glob("*/*") if path.is_file())


def decoded(path: Path) -> Entry | None:
    """The entry in file ``path`` if it verifies (unsigned) for the key its name holds
    on the machine its directory names; ``None`` if it does not."""
    try:
        return decode(path.name, path.read_bytes(), signer=Signer(), machine=path.parent.name)
    except Refused:
        return None


def programs_suite(count: int, *, first: str = "") -> dict[str, str]:
    """A test module of ``count`` tests, each compiling a program of its own and checking
    its numbers against numpy (a wrong program served fails its test). ``first`` runs
    at the start of each test (``k`` is the test's number)."""
    body = textwrap.indent(textwrap.dedent(first), "    ") if first else ""
    return {
        "test_programs.py": f"""
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def make(k):
    def program(v):
        return jnp.tanh(v * (k + 1)) + jnp.sin(v) * k

    program.__name__ = f"program_{{k}}"
    return program


@pytest.mark.parametrize("k", range({count}))
def test_program(k):
{body}    x = np.linspace(-1.0, 1.0, 16 + k, dtype=np.float32)
    expected = np.tanh(x * (k + 1)) + np.sin(x) * k
    np.testing.assert_allclose(np.asarray(jax.jit(make(k))(x)), expected, rtol=1e-5, atol=1e-6)
"""
    }


def write_files(base: Path, files: Mapping[str, str]) -> None:
    """Write dedented ``files`` (paths relative to ``base``)."""
    for name, text in files.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())


@dataclass(frozen=True)
class ColdCache:
    """A cache filled by one cold session, and that session's JSON report."""

    cache: Path
    report: dict[str, Any]

    def copy_to(self, base: Path, files: Mapping[str, str]) -> Path:
        """Write ``files`` and a copy of the cache (at ``base/cache``) into ``base``."""
        write_files(base, files)
        shutil.copytree(self.cache, base / "cache", symlinks=True)
        return base / "cache"


def once_per_run(
    factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Any]
) -> tuple[Path, Any]:
    """``build(root)`` in a new directory ``root``, once per test run, and what it
    returned (JSON-able). Under xdist the first worker that asks builds it while the
    others wait for it, and every worker gets the same directory and value: child
    sessions that several workers would otherwise each run for their share of a
    module's tests run once. Tests only read (or copy) what it built. ``name`` is the
    identity: one build per name."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:  # one process: a module fixture is once
        root = factory.mktemp(name)
        return root, build(root)
    shared = factory.getbasetemp().parent  # this run's directory, above every worker's
    record = shared / f"once-{name}.json"
    with FileLock(shared / f"once-{name}.lock"):
        if record.exists():
            done = json.loads(record.read_text())
            return Path(done["root"]), done["value"]
        root = factory.mktemp(name)
        value = build(root)
        record.write_text(json.dumps({"root": str(root), "value": value}))
        return root, value


def cold_session(
    factory: pytest.TempPathFactory,
    name: str,
    files: Mapping[str, str],
    *args: str,
    env: Mapping[str, str] | None = None,
) -> ColdCache:
    """Write ``files`` into a new directory and run one session there with a cache at
    ``cache`` (the session must pass); once per test run (:func:`once_per_run`): tests
    copy the cache (:meth:`ColdCache.copy_to`), never use it in place."""

    def build(root: Path) -> dict[str, Any]:
        write_files(root, files)
        result, report = run_session(root, *args, "--jax-cache-dir=cache", env=env)
        assert result.ret == 0, "\n".join(result.outlines + result.errlines)
        return report

    root, report = once_per_run(factory, name, build)
    return ColdCache(root / "cache", report)


def assert_all_hits(report: dict[str, Any]) -> None:
    """Every cachable lookup of the session hit; nothing was written."""
    cachable = report["cachable"]
    assert cachable["requests"] > 0, cachable
    assert cachable["hits"] == cachable["requests"], cachable
    assert cachable["misses"] == 0, cachable
    assert cachable["hit_rate"] == 1.0, cachable
    assert report["store"]["writes"] == 0, report["store"]
