"""The remote tier: a bucket (Cloud Storage, S3, any fsspec URL) behind the local store.

Layout under the URL, one namespace per machine (trust.namespace)::

    <url>/<machine>/<file>                      entries, byte for byte as the local store
                                                writes them (verified the same way)
    <url>/<machine>/manifests/<session>.json    what the last sessions with this
                                                fingerprint used: what to prefetch

Reads go through the local store (read-through: a local miss asks here, for a name the
namespace's listing, made once per process, holds; a verified entry is written
locally); writes are uploaded in the background (write-behind) and flushed, with a
bounded wait, at the end of the session. Every call has a deadline; a
few failures in a row turn the remote off for the rest of the session (the local tier
goes on); a missing bucket, missing credentials or a missing library is one notice. A
failing remote never fails or stalls a test.

fsspec and the protocol's library (gcsfs, s3fs) are imported on first use only.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pytest_jaxcache.tally import MAX_MESSAGES, Tally

FAILURES_BEFORE_OFF = 3
MANIFEST_SESSIONS = 3  # a manifest lists what each of the last few sessions used
UPLOAD_THREADS = 4
_EXTRAS = {"gs": "gcs", "gcs": "gcs", "s3": "s3", "s3a": "s3"}


@dataclass
class RemoteStats(Tally):
    """What one process did with the remote; summed over processes."""

    hits: int = 0  # local misses served from the remote
    misses: int = 0  # local misses the remote could not serve either
    refused: int = 0  # remote entries that did not verify: never loaded
    prefetched: int = 0  # entries downloaded ahead by prefetch...
    prefetched_used: int = 0  # ...and then hit (counted over the whole session)
    uploads: int = 0
    upload_failures: int = 0
    not_uploaded: int = 0  # still queued when the session ended
    bytes_down: int = 0
    bytes_up: int = 0
    io_secs: float = 0.0
    errors: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        if len(self.errors) < MAX_MESSAGES and message not in self.errors:
            self.errors.append(message)


class RemoteOff(Exception):
    """The remote cannot be used for the rest of the session; the message says why."""


def _short(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:300] if text else type(error).__name__


class Remote:
    """One process's client of the remote tier. Thread-safe: lookups come from
    compiling threads, uploads from its own daemon threads."""

    def __init__(self, url: str, *, timeout_secs: float, readonly: bool) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout_secs
        self.readonly = readonly
        self.stats = RemoteStats()
        self.off_reason = ""  # why the remote was turned off ("": it is on)
        self._fs: Any = None
        self._root = ""
        self._pid = 0
        self._failures = 0
        self._lock = threading.Lock()
        self._connecting = threading.Lock()  # one connection (and probe) per process
        self._uploads: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._manifests: dict[tuple[str, str], list[list[str]]] = {}
        self._listed: dict[str, frozenset[str] | None] = {}
        self._listing_lock = threading.Lock()  # one listing per namespace and process

    @property
    def on(self) -> bool:
        return not self.off_reason

    # -- the filesystem ------------------------------------------------------------------

    def _filesystem(self) -> tuple[Any, str]:
        """The fsspec filesystem and the root path, made on first use in this process
        (an instance is never carried across a fork); raises :class:`RemoteOff`."""
        import os

        if self.off_reason:
            raise RemoteOff(self.off_reason)
        if self._fs is not None and self._pid == os.getpid():
            return self._fs, self._root
        with self._connecting:  # another thread may have connected, or failed to
            if self.off_reason:
                raise RemoteOff(self.off_reason)
            if self._fs is not None and self._pid == os.getpid():
                return self._fs, self._root
            return self._connect()

    def connect_in_background(self) -> None:
        """Start connecting now (importing the client library, probing the bucket), on
        a daemon thread, so that the first lookup finds the connection made: a session
        spends its first seconds importing JAX and collecting tests anyway."""

        def connect() -> None:
            with contextlib.suppress(RemoteOff):  # said once, in the report
                self._filesystem()

        threading.Thread(target=connect, name="jaxcache-connect", daemon=True).start()

    def _connect(self) -> tuple[Any, str]:
        import os

        protocol = self.url.split("://", 1)[0].lower()
        try:
            import fsspec
            from fsspec.config import conf

            options: dict[str, Any] = {"skip_instance_cache": True}
            if protocol in ("gs", "gcs"):
                options["requests_timeout"] = self.timeout
            elif protocol in ("s3", "s3a"):
                options["config_kwargs"] = {
                    "connect_timeout": min(self.timeout, 5.0),
                    "read_timeout": self.timeout,
                    "retries": {"total_max_attempts": 2},
                }
            options.update(conf.get(protocol, {}))  # the user's FSSPEC_* settings win
            fs, root = fsspec.url_to_fs(self.url, **options)
        except ImportError as error:
            extra = _EXTRAS.get(protocol)
            hint = f' (pip install "pytest-jaxcache[{extra}]")' if extra else ""
            raise self._off(f"{_short(error)}{hint}") from None
        except Exception as error:
            raise self._off(f"cannot open {self.url}: {_short(error)}") from None
        bucket = root.split("/", 1)[0]
        try:  # info(), not exists(): exists() says False for missing credentials too
            self._timed(fs.info, bucket)
        except FileNotFoundError:
            raise self._off(f"the bucket {bucket!r} of {self.url} does not exist") from None
        except Exception as error:
            raise self._off(f"cannot reach {self.url}: {_short(error)}") from None
        self._fs, self._root, self._pid = fs, root.rstrip("/"), os.getpid()
        return self._fs, self._root

    def _off(self, reason: str) -> RemoteOff:
        with self._lock:
            if not self.off_reason:
                self.off_reason = reason
        return RemoteOff(reason)

    def _timed(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args, timeout=self.timeout, **kwargs)
        finally:
            with self._lock:
                self.stats.io_secs += time.perf_counter() - started

    def _failed(self, what: str, error: BaseException) -> None:
        """Count a failure; after a few in a row, turn the remote off."""
        with self._lock:
            self._failures += 1
            self.stats.note(f"{what}: {_short(error)}")
            if self._failures >= FAILURES_BEFORE_OFF and not self.off_reason:
                self.off_reason = (
                    f"{self._failures} remote operations failed in a row (last: {what}: "
                    f"{_short(error)}): remote off for the rest of the session"
                )

    def _succeeded(self) -> None:
        with self._lock:
            self._failures = 0

    def _path(self, machine: str, name: str) -> str:
        return f"{self._root}/{machine}/{name}"

    # -- reads -------------------------------------------------------------------------

    def _listing(self, fs: Any, machine: str) -> frozenset[str] | None:
        """The entry names of ``machine``'s namespace, listed once per process, so that a
        cold run asks the remote only for entries it has (``None``: the listing failed;
        every lookup then asks)."""
        with self._listing_lock:
            if machine not in self._listed:
                try:
                    paths = self._timed(fs.ls, f"{self._root}/{machine}", detail=False)
                    names = frozenset(str(path).rsplit("/", 1)[-1] for path in paths)
                except FileNotFoundError:
                    names = frozenset()
                except Exception as error:
                    self._failed("list the entries", error)
                    names = None
                self._listed[machine] = names
            return self._listed[machine]

    def get(self, machine: str, name: str) -> bytes | None:
        """The remote's bytes for entry ``name`` of ``machine`` (unverified), or ``None``
        when it has none or cannot be asked. Never raises."""
        try:
            fs, _ = self._filesystem()
            listed = self._listing(fs, machine)
            if listed is not None and name not in listed:
                raise FileNotFoundError(name)
            data: bytes = self._timed(fs.cat_file, self._path(machine, name))
        except RemoteOff:
            return None
        except FileNotFoundError:
            self._succeeded()
            with self._lock:
                self.stats.misses += 1
            return None
        except Exception as error:
            self._failed(f"download {name}", error)
            return None
        self._succeeded()
        with self._lock:
            self.stats.bytes_down += len(data)
        return data

    def get_many(self, machine: str, names: Iterable[str]) -> dict[str, bytes]:
        """Download many entries in one bulk transfer (prefetch); what could not be
        had is left out. Never raises."""
        wanted = sorted(set(names))
        if not wanted:
            return {}
        try:
            fs, _ = self._filesystem()
            paths = {self._path(machine, name): name for name in wanted}
            started = time.perf_counter()
            try:
                # One deadline for the whole batch: a few calls' worth.
                found = fs.cat(list(paths), on_error="return", timeout=4 * self.timeout)
            finally:
                with self._lock:
                    self.stats.io_secs += time.perf_counter() - started
        except RemoteOff:
            return {}
        except Exception as error:
            self._failed("prefetch", error)
            return {}
        self._succeeded()
        result = {
            paths[path]: data
            for path, data in found.items()
            if isinstance(data, bytes) and path in paths
        }
        with self._lock:
            self.stats.bytes_down += sum(len(data) for data in result.values())
        return result

    # -- writes (behind) ------------------------------------------------------------------

    def put_later(self, machine: str, name: str, data: bytes, *, replace: bool = False) -> None:
        """Upload an entry in the background; never delays the caller. ``replace``: the
        remote holds a bad entry under this name (else an existing one is kept)."""
        if self.readonly or self.off_reason:
            return
        with self._lock:
            self._pending += 1
            if len(self._threads) < UPLOAD_THREADS:
                thread = threading.Thread(
                    target=self._upload_loop, name="jaxcache-upload", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        self._uploads.put((f"{machine}/{name}", data, replace))

    def _upload_loop(self) -> None:
        while True:
            relative, data, replace = self._uploads.get()
            try:
                if not self.off_reason:
                    self._upload(relative, data, replace)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _upload(self, relative: str, data: bytes, replace: bool) -> None:
        try:
            fs, root = self._filesystem()
            mode = "overwrite" if replace else "create"
            self._timed(fs.pipe_file, f"{root}/{relative}", data, mode=mode)
        except RemoteOff:
            return
        except FileExistsError:  # another machine uploaded it first: same key, same program
            self._succeeded()
            return
        except Exception as error:
            with self._lock:
                self.stats.upload_failures += 1
            self._failed(f"upload {relative}", error)
            return
        self._succeeded()
        with self._lock:
            self.stats.uploads += 1
            self.stats.bytes_up += len(data)

    def flush(self, wait_secs: float) -> None:
        """Wait (at most ``wait_secs``) for the uploads still queued; count the rest as
        not uploaded. Uploads run on daemon threads: a stalled one never holds up exit."""
        deadline = time.monotonic() + wait_secs
        with self._idle:
            while self._pending and time.monotonic() < deadline:
                self._idle.wait(timeout=max(0.0, deadline - time.monotonic()))
            self.stats.not_uploaded = self._pending

    # -- manifests ---------------------------------------------------------------------

    def _manifest_path(self, machine: str, session: str) -> str:
        return self._path(machine, f"manifests/{session}.json")

    def used_before(self, machine: str, session: str) -> list[list[str]]:
        """What each of the last sessions with this fingerprint used, newest first. Read
        once per process: the session's end reuses what its start read."""
        known = self._manifests.get((machine, session))
        if known is None:
            known = self._manifests[machine, session] = self._read_manifest(machine, session)
        return known

    def _read_manifest(self, machine: str, session: str) -> list[list[str]]:
        try:
            fs, _ = self._filesystem()
            data = self._timed(fs.cat_file, self._manifest_path(machine, session))
        except (RemoteOff, FileNotFoundError):
            return []
        except Exception as error:
            self._failed("read the manifest", error)
            return []
        self._succeeded()
        try:
            sessions = json.loads(data)["sessions"]
            return [[str(name) for name in names] for names in sessions][:MANIFEST_SESSIONS]
        except (ValueError, KeyError, TypeError, RecursionError):
            return []

    def record_used(self, machine: str, session: str, names: Iterable[str]) -> None:
        """Put this session's used entries at the head of the manifest."""
        if self.readonly or self.off_reason:
            return
        used = sorted(set(names))
        if not used:
            return
        sessions = [used, *self.used_before(machine, session)][:MANIFEST_SESSIONS]
        data = json.dumps({"sessions": sessions}).encode()
        try:
            fs, _ = self._filesystem()
            self._timed(fs.pipe_file, self._manifest_path(machine, session), data)
        except RemoteOff:
            return
        except Exception as error:
            self._failed("write the manifest", error)
            return
        self._succeeded()
