"""The remote tier against real object-store servers started on 127.0.0.1: Cloud Storage
(fake-gcs-server, through gcsfs) and S3 (moto's server, through s3fs), configured only
through the environment. Two machines are two checkouts with local caches of their own
sharing one bucket prefix."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from emulators import Emulator, objects, put_object, silent_server, start_gcs
from helpers import (
    Session,
    programs_suite,
    run_session,
    start_session,
    write_files,
)

from pytest_jaxcache.entry import decode
from pytest_jaxcache.remote import Remote
from pytest_jaxcache.trust import Signer

pytestmark = pytest.mark.slow

# The remote dies mid-session when the fourth test starts, if asked to.
SUITE = programs_suite(
    6,
    first="""
    if k == 3 and os.environ.get("KILL_REMOTE_PID"):
        os.kill(int(os.environ["KILL_REMOTE_PID"]), signal.SIGKILL)
    """,
)
N_PROGRAMS = 6
FAST = "--jax-cache-remote-timeout=2"
_prefixes = itertools.count()


@pytest.fixture
def url(emulator: Emulator) -> str:
    """A fresh prefix of the emulator's bucket, for one test."""
    return emulator.url(f"t{os.getpid()}-{next(_prefixes)}")


def machine(root: Path, name: str) -> Path:
    """A checkout of SUITE for one simulated machine, with its own local cache."""
    checkout = root / name
    write_files(checkout, SUITE)
    return checkout


def run(
    checkout: Path, url: str, emulator: Emulator, *args: str, env: dict[str, str] | None = None
) -> Session:
    return run_session(
        checkout,
        "--jax-cache-dir=cache",
        f"--jax-cache-remote={url}",
        *args,
        env={**emulator.env, **(env or {})},
        timeout=300,
    )


def entries_of(stored: dict[str, bytes]) -> dict[str, bytes]:
    return {path: data for path, data in stored.items() if "/manifests/" not in path}


def compiled_by_name(report: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in report["compiles"]:
        if record["outcome"] == "miss":
            counts[record["name"]] = counts.get(record["name"], 0) + 1
    return counts


# -- one cache for a fleet -----------------------------------------------------------------


# Bulk prefetch on S3, read-through on GCS (test_hostile_remote prefetches from GCS).
@pytest.mark.parametrize(
    ("emulator", "prefetch"), [("s3", "yes"), ("gcs", "no")], indirect=["emulator"]
)
def test_a_second_machine_gets_every_program_from_the_remote(
    tmp_path: Path, emulator: Emulator, url: str, prefetch: str
) -> None:
    """Machine A compiles and uploads (in the background, flushed at the end); machine
    B's first run, on an empty local cache, gets every program from the remote: in one
    bulk prefetch of what A's session used, or by reading through lookup by lookup."""
    first = machine(tmp_path, "machine-a")
    result, cold = run(first, url, emulator, "-p", "no:xdist")
    result.assert_outcomes(passed=N_PROGRAMS)
    uploaded = cold["remote"]
    assert uploaded["uploads"] == N_PROGRAMS and uploaded["not_uploaded"] == 0
    assert uploaded["bytes_up"] > 0 and uploaded["off"] is None
    stored = objects(emulator, url)
    namespace = uploaded["namespace"]
    assert sorted(entries_of(stored)) == sorted(
        f"{namespace}/{path.name}" for path in (first / "cache" / "entries" / namespace).iterdir()
    )
    assert len([path for path in stored if "/manifests/" in path]) == 1

    second = machine(tmp_path, "machine-b")
    result, warm = run(second, url, emulator, "-p", "no:xdist", f"--jax-cache-prefetch={prefetch}")
    result.assert_outcomes(passed=N_PROGRAMS)
    assert warm["cachable"]["hits"] == warm["cachable"]["lookups"] == N_PROGRAMS
    remote = warm["remote"]
    assert remote["namespace"] == namespace and remote["refused"] == 0
    if_prefetched = {"yes": (N_PROGRAMS, N_PROGRAMS, 0), "no": (0, 0, N_PROGRAMS)}[prefetch]
    assert (remote["prefetched"], remote["prefetched_used"], remote["hits"]) == if_prefetched
    assert remote["bytes_down"] > 0 and remote["uploads"] == 0
    # Every hit came from the remote, downloaded ahead or read through, and says so.
    assert warm["hit_sources"] == {"earlier session": 0, "this session": 0, "remote": N_PROGRAMS}
    assert {c["source"] for c in warm["compiles"]} == {"remote"}
    assert f"hits: {N_PROGRAMS} from the remote" in result.outlines
    assert len(list((second / "cache" / "entries" / namespace).iterdir())) == N_PROGRAMS
    assert any(line.startswith(f"remote: {url} (namespace {namespace}") for line in result.outlines)
    # What came down was written locally: the contents changed (a CI job saves them).
    cache = warm["cache"]
    assert (cache["before"]["entries"], cache["after"]["entries"]) == (0, N_PROGRAMS)
    assert cache["changed"] is True
    assert cache["digest"] == cold["cache"]["digest"]


def test_a_url_as_the_cache_directory_gets_a_local_tier_of_its_own(
    tmp_path: Path, emulator: Emulator, url: str
) -> None:
    """``--jax-cache-dir=gs://...`` alone (the form JAX's documentation uses): the bucket
    is the remote tier, and the local tier lives under $XDG_CACHE_HOME/pytest-jaxcache."""
    for name in ("machine-a", "machine-b"):
        checkout = machine(tmp_path, name)
        xdg = tmp_path / name / "xdg"
        result, report = run_session(
            checkout,
            f"--jax-cache-dir={url}",
            "-p",
            "no:xdist",
            env={**emulator.env, "XDG_CACHE_HOME": str(xdg)},
        )
        result.assert_outcomes(passed=N_PROGRAMS)
        [local] = (xdg / "pytest-jaxcache").iterdir()
        assert report["cache"]["dir"] == f"{local} + {url}"
        assert report["remote"]["url"] == url and report["remote"]["off"] is None
    assert report["cachable"]["hits"] == N_PROGRAMS  # machine B: everything from the bucket
    assert not (tmp_path / "machine-b" / "cache").exists()


def test_two_machines_at_once_compile_each_program_once_each(
    tmp_path: Path, emulator: Emulator, url: str
) -> None:
    """``-n 2`` on two machines at the same time: green on both, and on each machine no
    program is compiled by both of its workers (single flight holds per machine; the
    fleet may compile a program once per machine when they race)."""
    checkouts = [machine(tmp_path, f"machine-{n}") for n in "ab"]
    logs = [tmp_path / f"machine-{n}.log" for n in "ab"]
    reports = [tmp_path / f"machine-{n}.json" for n in "ab"]
    processes: list[subprocess.Popen[str]] = []
    for checkout, log, report in zip(checkouts, logs, reports, strict=True):
        with open(log, "w") as output:
            processes.append(
                start_session(
                    checkout,
                    "-n",
                    "2",
                    "--jax-cache-dir=cache",
                    f"--jax-cache-remote={url}",
                    f"--jax-cache-report={report}",
                    output=output,
                    env=emulator.env,
                )
            )
    for process, log in zip(processes, logs, strict=True):
        assert process.wait(timeout=300) == 0, log.read_text()

    for report in reports:
        data = json.loads(report.read_text())
        assert all(count == 1 for count in compiled_by_name(data).values()), data["compiles"]
        assert data["cachable"]["lookups"] == N_PROGRAMS
        assert data["remote"]["off"] is None and data["remote"]["upload_failures"] == 0


# -- a failing remote never fails or stalls a test -----------------------------------------


def test_a_server_killed_mid_session_never_fails_a_test(tmp_path: Path) -> None:
    """The remote's server dies while the session runs: every test passes, the session
    ends in bounded time (a few 2 s deadlines), the remote is turned off after a few
    failures, and the report says so."""
    server = start_gcs()
    try:
        checkout = machine(tmp_path, "machine")
        result, report = run(
            checkout,
            server.url("killed"),
            server,
            "-p",
            "no:xdist",
            FAST,
            env={"KILL_REMOTE_PID": str(server.process.pid)},
        )
    finally:
        server.process.kill()
        server.process.wait(timeout=30)
    result.assert_outcomes(passed=N_PROGRAMS)
    assert server.process.returncode == -signal.SIGKILL
    remote = report["remote"]
    assert remote["off"] is not None and "remote off for the rest of the session" in remote["off"]
    assert report["store"]["writes"] == N_PROGRAMS  # the local tier went on
    assert any(
        line.startswith(f"notice: remote {server.url('killed')} turned off: ")
        for line in result.outlines
    )


@pytest.mark.parametrize("protocol", ["gcs", "s3"])
def test_a_server_that_never_answers_never_stalls_a_test(tmp_path: Path, protocol: str) -> None:
    """A remote that accepts connections and never answers: every operation gives up at
    its deadline, the remote is off, the tests are green, the local tier works."""
    with silent_server() as endpoint:
        env = (
            {"STORAGE_EMULATOR_HOST": endpoint, "FSSPEC_GCS_TOKEN": "anon",
             "FSSPEC_GCS_PROJECT": "test", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
            if protocol == "gcs"
            else {"FSSPEC_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "x",
                  "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}
        )  # fmt: skip
        scheme = "gs" if protocol == "gcs" else "s3"
        checkout = machine(tmp_path, "machine")
        result, report = run_session(
            checkout,
            "--jax-cache-dir=cache",
            f"--jax-cache-remote={scheme}://bucket/prefix",
            "-p",
            "no:xdist",
            FAST,
            env=env,
            timeout=120,
        )
    result.assert_outcomes(passed=N_PROGRAMS)
    assert "cannot reach" in report["remote"]["off"]
    assert report["store"]["writes"] == N_PROGRAMS


def test_a_missing_bucket_is_one_notice(tmp_path: Path, emulator: Emulator) -> None:
    checkout = machine(tmp_path, "machine")
    target = f"{emulator.url('prefix').split('://')[0]}://no-such-bucket/prefix"
    result, report = run(checkout, target, emulator, "-p", "no:xdist", FAST)
    result.assert_outcomes(passed=N_PROGRAMS)
    assert report["remote"]["off"] == f"the bucket 'no-such-bucket' of {target} does not exist"
    assert [line for line in result.outlines if line.startswith("notice: remote")] == [
        f"notice: remote {target} turned off: {report['remote']['off']}"
    ]
    assert report["store"]["writes"] == N_PROGRAMS


@pytest.mark.parametrize("emulator", ["s3"], indirect=True)
def test_missing_credentials_are_one_notice(tmp_path: Path, emulator: Emulator) -> None:
    """S3 without credentials (no keys, no credentials file): one notice, green, local works."""
    checkout = machine(tmp_path, "machine")
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    env["AWS_SHARED_CREDENTIALS_FILE"] = env["AWS_CONFIG_FILE"] = str(tmp_path / "none")
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # no metadata server to wait out here
    result, report = run(
        checkout, emulator.url("prefix"), emulator, "-p", "no:xdist", FAST, env=env
    )
    result.assert_outcomes(passed=N_PROGRAMS)
    assert "NoCredentialsError" in report["remote"]["off"]
    assert len([line for line in result.outlines if line.startswith("notice: remote")]) == 1
    assert report["store"]["writes"] == N_PROGRAMS


def test_a_missing_library_is_one_notice_that_names_the_extra(tmp_path: Path) -> None:
    """gcsfs not importable (an import hook refuses it, as a machine without the extra
    would): one notice naming `pip install "pytest-jaxcache[gcs]"`; green; local works."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['gcsfs'] = None\n")
    checkout = machine(tmp_path, "machine")
    result, report = run_session(
        checkout,
        "--jax-cache-dir=cache",
        "--jax-cache-remote=gs://bucket/prefix",
        "-p",
        "no:xdist",
        env={"PYTHONPATH": str(blocker)},
    )
    result.assert_outcomes(passed=N_PROGRAMS)
    assert 'pip install "pytest-jaxcache[gcs]"' in report["remote"]["off"]
    assert report["store"]["writes"] == N_PROGRAMS


# -- what may and may not come from the remote ---------------------------------------------


def test_a_readonly_remote_is_read_and_never_written(
    tmp_path: Path, emulator: Emulator, url: str
) -> None:
    """``--jax-cache-remote-mode=readonly`` (pull requests): hits are read from it;
    nothing is uploaded, no manifest is written: the bucket is byte for byte unchanged."""
    first = machine(tmp_path, "machine-a")
    result, _ = run(first, url, emulator, "-p", "no:xdist")
    result.assert_outcomes(passed=N_PROGRAMS)
    before = objects(emulator, url)

    second = machine(tmp_path, "machine-b")
    (second / "test_new.py").write_text(
        "import jax, jax.numpy as jnp\n\ndef test_new():\n    jax.jit(jnp.arcsinh)(jnp.ones(3))\n"
    )
    result, report = run(second, url, emulator, "--jax-cache-remote-mode=readonly")
    result.assert_outcomes(passed=N_PROGRAMS + 1)
    assert report["remote"]["mode"] == "readonly"
    assert report["remote"]["uploads"] == 0 and report["store"]["writes"] >= 1
    assert report["cachable"]["hits"] >= N_PROGRAMS
    assert objects(emulator, url) == before


def test_an_entry_tampered_with_in_the_bucket_is_refused_and_replaced(
    tmp_path: Path, emulator: Emulator, url: str
) -> None:
    """One object changed in the bucket (its payload, not its name): a machine reading it
    refuses it (never loaded), compiles the program, and replaces the bad object."""
    first = machine(tmp_path, "machine-a")
    result, _ = run(first, url, emulator, "-p", "no:xdist")
    result.assert_outcomes(passed=N_PROGRAMS)
    stored = entries_of(objects(emulator, url))
    victim = sorted(stored)[0]
    tampered = bytearray(stored[victim])
    tampered[len(tampered) // 2] ^= 0xFF
    put_object(emulator, url, victim, bytes(tampered))

    second = machine(tmp_path, "machine-b")
    result, report = run(second, url, emulator, "-p", "no:xdist", "--jax-cache-prefetch=no")
    result.assert_outcomes(passed=N_PROGRAMS)
    remote = report["remote"]
    assert remote["refused"] == 1 and remote["hits"] == N_PROGRAMS - 1
    assert report["store"]["writes"] == 1 and remote["uploads"] == 1
    assert [m["reason"] for m in report["misses"]] == [
        "the remote's entry: its digest does not match (corrupt)"
    ]
    replaced = entries_of(objects(emulator, url))[victim]
    namespace, name = victim.split("/")
    assert replaced != bytes(tampered)
    assert decode(name, replaced, signer=Signer(), machine=namespace).payload


@pytest.mark.parametrize("raised", [asyncio.CancelledError(), GeneratorExit(), OSError("reset")])
def test_whatever_a_client_call_raises_is_a_failed_call(raised: BaseException) -> None:
    """A call of the client library runs on a thread of its own; what it raises comes
    back as an ``Exception`` (a cancelled task of an async client is a BaseException,
    which the callers' ``except Exception`` would let escape into pytest): counted as
    a failed operation, never raised out of a lookup."""
    remote = Remote("s3://bucket", timeout_secs=5.0, readonly=False, max_object_bytes=2**20)

    def call() -> None:
        raise raised

    with pytest.raises(Exception) as caught:  # a BaseException would not be caught here
        remote._timed(call)
    wrapped = not isinstance(raised, Exception)
    assert (caught.value.__cause__ if wrapped else caught.value) is raised
