"""The remote tier: a bucket (Cloud Storage, S3, any fsspec URL) behind the local store,
all of it in this module: the connection, read-through, prefetch, the upload queue, the
manifest and their counters. The store sees it only as a :class:`~pytest_jaxcache.store.
SecondTier`; the session connects it, starts its prefetch and finishes it.

Layout under the URL, one namespace per machine (environment.namespace)::

    <url>/<machine>/<entry>                     entries, byte for byte as the local store
                                                writes them (verified the same way)
    <url>/<machine>/manifests/<session>.json    what the last sessions with this
                                                fingerprint used: what to prefetch

Everything the bucket says is hostile until checked. A name (from a listing or a
manifest) is used only if it is an entry name of the layout's grammar; an object is
downloaded only if its listed size is within the entry limit, and the download stops
at the limit; a manifest is read only up to its cap, in bytes and in names, and, with a
signing key, only when its signature verifies; a manifest is written back only with
names this session produced or verified.

Every call has a deadline. A call that times out (a server that stalls) turns the
remote off at once; other failures do after a few in a row. A process that turns it
off leaves a marker in the local cache, so that the session's other processes give up
at once instead of each waiting out a deadline of its own. A missing bucket, missing
credentials or a missing library is one notice. A failing remote never fails or
stalls a test.

fsspec and the protocol's library (gcsfs, s3fs) are imported on first use only.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from pytest_jaxcache.cachedir import CacheDir
from pytest_jaxcache.formats import format_secs
from pytest_jaxcache.layout import LOCKS, REMOTE_OFF, is_entry_name
from pytest_jaxcache.stats import RemoteStats
from pytest_jaxcache.trust import Signer, key_id

FAILURES_BEFORE_OFF = 3
MANIFEST_SESSIONS = 3  # a manifest lists what each of the last few sessions used
MAX_MANIFEST_NAMES = 20_000  # per session listed
MAX_MANIFEST_BYTES = 4 * 2**20
MAX_LISTED = 200_000  # names of one namespace's listing
UPLOAD_THREADS = 4
HEAD_FIRST = 256 * 1024  # larger objects: their head is checked before the rest comes
HEAD_BYTES = 4096
# Importing the client library is local work, and slow (seconds under load): it is not
# timed as a call to the remote, only bounded, so that nothing can hang a session.
CONNECT_LIMIT_SECS = 120.0
_EXTRAS = {"gs": "gcs", "gcs": "gcs", "s3": "s3", "s3a": "s3"}
_MANIFEST_DOMAIN = b"pytest-jaxcache manifest 1\0"


# Why an object of ``size`` bytes that starts with ``head`` cannot be an entry ("": it
# can): the store's, so that a large garbage object is refused after its first bytes.
HeadCheck = Callable[[bytes, int], str]


class LocalTier(Protocol):
    """What prefetch needs of the local store."""

    @property
    def machine(self) -> str: ...

    def holds(self, name: str) -> bool: ...

    def check_head(self, head: bytes, size: int) -> str: ...

    def keep(self, name: str, data: bytes) -> bool:
        """Keep ``data`` as entry ``name`` if it verifies; whether it did."""

    def prefetching(self, wait_secs: float) -> AbstractContextManager[bool]:
        """Held by the one process of the machine that prefetches."""


class RemoteOff(Exception):
    """The remote cannot be used for the rest of the session; the message says why."""


class _Stalled(Exception):
    """A call did not finish within its deadline."""


class _CallFailed(Exception):
    """A call ended in a BaseException that is not an Exception (a cancelled task)."""


def _object_size(value: object) -> int | None:
    """An object's size as a bucket states it (outside input): a plain non-negative
    integer, or ``None``."""
    return value if type(value) is int and value >= 0 else None


def parse_listing(found: list[Any]) -> tuple[dict[str, int], int]:
    """A namespace's listing (``fs.ls(..., detail=True)``: outside input) as entry names
    and their sizes, and how many items were anything else (counted, never used; the
    ``manifests`` folder is expected)."""
    names: dict[str, int] = {}
    foreign = 0
    for item in found:
        if not isinstance(item, dict):
            foreign += 1
            continue
        name = str(item.get("name", "")).rsplit("/", 1)[-1]
        size = _object_size(item.get("size"))
        if item.get("type") == "directory" and name == "manifests":
            continue
        if not is_entry_name(name) or size is None:
            foreign += 1
            continue
        names[name] = size
    return names, foreign


# Who "anyone" is in a bucket's access control, and what lets them write.
_S3_ANYONE = {
    "http://acs.amazonaws.com/groups/global/AllUsers": "everyone",
    "http://acs.amazonaws.com/groups/global/AuthenticatedUsers": "every AWS account",
}
_S3_WRITES = ("WRITE", "FULL_CONTROL")
_GCS_ANYONE = {"allUsers": "everyone", "allAuthenticatedUsers": "every Google account"}
_GCS_WRITES = (
    "roles/storage.admin",
    "roles/storage.objectAdmin",
    "roles/storage.objectCreator",
    "roles/storage.objectUser",
    "roles/storage.legacyBucketOwner",
    "roles/storage.legacyBucketWriter",
)


def public_writers(protocol: str, answer: object) -> str | None:
    """Who besides its owners may write a bucket, read off its access control (S3's
    ``GetBucketAcl``, Cloud Storage's IAM policy: outside input); ``None``: nobody we
    can tell of."""
    found: set[str] = set()
    if protocol in ("s3", "s3a") and isinstance(answer, dict):
        for grant in answer.get("Grants") or []:
            grantee = grant.get("Grantee") if isinstance(grant, dict) else None
            uri = grantee.get("URI") if isinstance(grantee, dict) else None
            if uri in _S3_ANYONE and grant.get("Permission") in _S3_WRITES:
                found.add(_S3_ANYONE[uri])
    elif protocol in ("gs", "gcs") and isinstance(answer, dict):
        for binding in answer.get("bindings") or []:
            if not isinstance(binding, dict) or binding.get("role") not in _GCS_WRITES:
                continue
            members = binding.get("members")
            for member in members if isinstance(members, list) else []:
                if member in _GCS_ANYONE:
                    found.add(_GCS_ANYONE[member])
    return " and ".join(sorted(found)) or None


def _short(error: BaseException) -> str:
    if isinstance(error, _Stalled):
        return str(error)
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:300] if text else type(error).__name__


def _is_stall(error: BaseException) -> bool:
    return isinstance(error, (TimeoutError, _Stalled)) or "Timeout" in type(error).__name__


def _manifest_mac(secret_id: str, signer: Signer, sessions: list[list[str]]) -> str:
    body = json.dumps(sessions, separators=(",", ":")).encode()
    return signer.sign((_MANIFEST_DOMAIN, secret_id.encode(), b"\0", body)).hex()


def parse_manifest(data: bytes, signer: Signer) -> tuple[list[list[str]], int, str]:
    """The name lists of a manifest, newest first, each name an entry name, at most
    :data:`MANIFEST_SESSIONS` lists of :data:`MAX_MANIFEST_NAMES`; how many names were
    not entry names; and why the whole manifest was ignored ("" when it was not). With a
    signing key, an unsigned or wrongly signed manifest is ignored."""
    if len(data) > MAX_MANIFEST_BYTES:
        return [], 0, f"larger than {MAX_MANIFEST_BYTES} bytes"
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return [], 0, "not JSON"
    sessions = document.get("sessions") if isinstance(document, dict) else None
    if not isinstance(sessions, list) or not all(isinstance(s, list) for s in sessions):
        return [], 0, "not a manifest"
    lists = [list(names[:MAX_MANIFEST_NAMES]) for names in sessions[:MANIFEST_SESSIONS]]
    if signer.signs:
        secret_id, mac = document.get("signer"), document.get("mac")
        if not (isinstance(secret_id, str) and isinstance(mac, str)):
            return [], 0, "not signed, and a signing key is set"
        signed = [[str(name) for name in names] for names in lists]
        if not any(
            key_id(secret) == secret_id
            and hmac.compare_digest(_manifest_mac(secret_id, Signer((secret,)), signed), mac)
            for secret in signer.secrets
        ):
            return [], 0, "its signature does not verify"
    kept = [[name for name in names if is_entry_name(name)] for names in lists]
    foreign = sum(len(names) for names in lists) - sum(len(names) for names in kept)
    return kept, foreign, ""


def manifest_bytes(sessions: list[list[str]], signer: Signer) -> bytes:
    """A manifest of ``sessions`` (newest first), signed when ``signer`` signs."""
    document: dict[str, Any] = {"version": 1, "sessions": sessions}
    if signer.signs and signer.signing_key_id is not None:
        document["signer"] = signer.signing_key_id
        document["mac"] = _manifest_mac(signer.signing_key_id, signer, sessions)
    return json.dumps(document, separators=(",", ":")).encode()


class Remote:
    """One process's client of the remote tier. Thread-safe: lookups come from
    compiling threads, uploads from its own daemon threads."""

    def __init__(
        self,
        url: str,
        *,
        timeout_secs: float,
        readonly: bool,
        signer: Signer | None = None,
        max_object_bytes: int,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout_secs
        self.readonly = readonly
        self.signer = signer or Signer()
        self.max_object_bytes = max_object_bytes
        self.stats = RemoteStats()
        self.off_reason = ""  # why the remote was turned off ("": it is on)
        self._marker: tuple[CacheDir, str] | None = None
        self._fs: Any = None
        self._root = ""
        self._pid = 0
        self._failures = 0
        self._lock = threading.Lock()
        self._connected = threading.Event()  # the connection is made, or has failed
        self._connect_started = 0.0
        self._connecting = threading.Lock()
        self._uploads: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._listed: dict[str, dict[str, int] | None] = {}
        self._listing_lock = threading.Lock()  # one listing per namespace and process
        self._manifests: dict[tuple[str, str], list[list[str]]] = {}
        self._refused: set[str] = set()  # the remote holds a bad entry under these names
        self._prefetched: set[str] = set()
        self._finished: RemoteStats | None = None

    @property
    def on(self) -> bool:
        return not self.off_reason and not self._told_off()

    @property
    def prefetched(self) -> frozenset[str]:
        """The entries this process downloaded ahead and kept."""
        return frozenset(self._prefetched)

    # -- off, for everyone -----------------------------------------------------------

    def tell_others_through(self, directory: CacheDir, session: str) -> None:
        """Where a process that turns the remote off tells the session's other processes
        (a marker in the local cache, named for the URL and ``session``), and hears them."""
        self._marker = (directory, session)

    def _marker_name(self) -> str:
        assert self._marker is not None
        digest = hashlib.sha256(f"{self.url}\0{self._marker[1]}".encode()).hexdigest()[:16]
        name = f"remote-{digest}.off"
        assert REMOTE_OFF.fullmatch(name)
        return name

    def _told_off(self) -> bool:
        """Another process of this session turned the remote off: so does this one."""
        if self.off_reason or self._marker is None:
            return bool(self.off_reason)
        directory = self._marker[0]
        try:
            data, _ = directory.read(LOCKS, self._marker_name(), limit=1024)
        except OSError:
            return False
        reason = data.decode("utf-8", "replace").strip() or "another process turned it off"
        with self._lock:
            if not self.off_reason:
                self.off_reason = reason
        return True

    def _off(self, reason: str) -> RemoteOff:
        with self._lock:
            first = not self.off_reason
            if first:
                self.off_reason = reason
        if first and self._marker is not None:
            with contextlib.suppress(OSError):  # a read-only cache: each process learns alone
                self._marker[0].write_atomic(LOCKS, self._marker_name(), reason.encode()[:1000])
        self._connected.set()
        return RemoteOff(self.off_reason)

    # -- calls with a deadline ------------------------------------------------------------

    def _timed(
        self, call: Callable[..., Any], *args: Any, deadlines: int = 1, **kwargs: Any
    ) -> Any:
        """``call(*args, **kwargs)`` on a daemon thread, waited for at most ``deadlines``
        deadlines: a client library's own retries cannot make a call outlast them."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = call(*args, **kwargs)
            except BaseException as error:  # handed to the caller below
                box["error"] = error
            finally:
                done.set()

        started = time.perf_counter()
        threading.Thread(target=run, name="jaxcache-remote-call", daemon=True).start()
        finished = done.wait(deadlines * self.timeout)
        with self._lock:
            self.stats.io_secs += time.perf_counter() - started
        if not finished:
            raise _Stalled(f"no answer within {format_secs(deadlines * self.timeout)}")
        error = box.get("error")
        if isinstance(error, Exception):
            raise error
        if error is not None:  # asyncio.CancelledError from an async client, and its kin:
            # a BaseException, which every caller's ``except Exception`` would let through
            # into pytest (an internal error); it is a failed call like any other.
            raise _CallFailed(f"{type(error).__name__}: {error}") from error
        return box["value"]

    def _failed(self, what: str, error: BaseException) -> None:
        """Count a failure; a stall, or a few failures in a row, turn the remote off."""
        with self._lock:
            self._failures += 1
            self.stats.note(f"{what}: {_short(error)}")
            failures = self._failures
        if _is_stall(error):
            self._off(f"{what}: {_short(error)}: remote off for the rest of the session")
        elif failures >= FAILURES_BEFORE_OFF:
            self._off(
                f"{failures} remote operations failed in a row (last: {what}: "
                f"{_short(error)}): remote off for the rest of the session"
            )

    def _succeeded(self) -> None:
        with self._lock:
            self._failures = 0

    # -- the connection ---------------------------------------------------------------

    def connect_in_background(self) -> None:
        """Start connecting now (importing the client library, probing the bucket), on
        a daemon thread, so that the first lookup finds the connection made: a session
        spends its first seconds importing JAX and collecting tests anyway."""
        if self._told_off():
            self._connected.set()
            return
        self._connect_started = time.monotonic()

        def connect() -> None:
            with contextlib.suppress(RemoteOff):  # said once, in the report
                self._connect()

        threading.Thread(target=connect, name="jaxcache-connect", daemon=True).start()

    def _warn_if_anyone_writes(self, fs: Any, protocol: str, bucket: str) -> None:
        """A note when the bucket's access control lets anyone write it (where the
        client may ask: without the permission, or on an emulator, nothing is said).
        With a signing key, signatures decide what loads, not who may write. Part of
        connecting: a stall here is the remote's first, and turns it off."""
        if self.signer.signs:
            return
        try:
            if protocol in ("s3", "s3a"):
                answer = self._timed(fs.call_s3, "get_bucket_acl", Bucket=bucket)
            elif protocol in ("gs", "gcs"):
                answer = self._timed(fs.call, "GET", "b/{}/iam", bucket, json_out=True)
            else:
                return
        except Exception as error:  # not allowed to ask, or not served: we cannot tell
            if _is_stall(error):  # ours or the client's own read timeout, whichever came first
                raise self._off(f"cannot reach {self.url}: {_short(error)}") from None
            return
        anyone = public_writers(protocol, answer)
        if anyone is not None:
            self.stats.note(
                f"the bucket {bucket} can be written by {anyone}: they can put programs "
                "your tests will run; make it private, or set JAX_CACHE_SIGNING_KEY in the "
                "jobs you trust"
            )

    def _filesystem(self) -> tuple[Any, str]:
        """The fsspec filesystem and the root path; waits for the connection (the probe
        of the bucket has its deadline; importing the library does not); raises
        :class:`RemoteOff`."""
        if not self.on:
            raise RemoteOff(self.off_reason)
        if self._fs is not None and self._pid == os.getpid():
            return self._fs, self._root
        if self._fs is not None:  # a connection is never carried across a fork
            self._fs, self._pid = None, 0
            self._connected.clear()
            self._connect_started = 0.0
        if not self._connect_started:
            self.connect_in_background()
        deadline = self._connect_started + CONNECT_LIMIT_SECS + self.timeout
        while not self._connected.wait(timeout=min(0.25, max(0.0, deadline - time.monotonic()))):
            if self._told_off():
                break
            if time.monotonic() >= deadline:
                raise self._off(
                    f"cannot reach {self.url}: not connected within "
                    f"{format_secs(CONNECT_LIMIT_SECS + self.timeout)}: remote off for the rest of "
                    "the session"
                )
        if self._fs is None or not self.on:
            raise RemoteOff(self.off_reason)
        return self._fs, self._root

    def _connect(self) -> None:
        with self._connecting:
            try:
                self._fs, self._root = self._open()
                self._pid = os.getpid()
            finally:
                self._connected.set()

    def _open(self) -> tuple[Any, str]:
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
                    "retries": {"total_max_attempts": 1},
                }
            options.update(conf.get(protocol, {}))  # the user's FSSPEC_* settings win
            fs, root = fsspec.url_to_fs(self.url, **options)
            if protocol in ("s3", "s3a"):
                # One attempt, in botocore and in s3fs (whose ``retries`` is a class
                # attribute, not an argument): our deadline decides. A retry would go on,
                # on the abandoned call's thread, after a stall turned the remote off.
                # (gcsfs fixes its retries when it is imported: they stay.)
                fs.retries = 1
        except ImportError as error:
            extra = _EXTRAS.get(protocol)
            hint = f' (pip install "pytest-jaxcache[{extra}]")' if extra else ""
            raise self._off(f"{_short(error)}{hint}") from None
        except Exception as error:  # any client error: the remote is unusable, say why
            raise self._off(f"cannot open {self.url}: {_short(error)}") from None
        bucket = root.split("/", 1)[0]
        try:  # info(), not exists(): exists() says False for missing credentials too
            self._timed(fs.info, bucket)
        except FileNotFoundError:
            raise self._off(f"the bucket {bucket!r} of {self.url} does not exist") from None
        except Exception as error:  # any client error: the remote is unusable, say why
            raise self._off(f"cannot reach {self.url}: {_short(error)}") from None
        self._warn_if_anyone_writes(fs, protocol, bucket)
        return fs, root.rstrip("/")

    def _path(self, machine: str, name: str) -> str:
        return f"{self._root}/{machine}/{name}"

    # -- reads -------------------------------------------------------------------------

    def _listing(self, fs: Any, machine: str) -> dict[str, int] | None:
        """``{entry name: size}`` of ``machine``'s namespace, listed once per process,
        so that a cold run asks only for entries the remote has (``None``: the listing
        failed or was too long; every lookup then asks). Names that are not entry names
        are left out and counted."""
        with self._listing_lock:
            if machine not in self._listed:
                self._listed[machine] = self._list(fs, machine)
            return self._listed[machine]

    def _list(self, fs: Any, machine: str) -> dict[str, int] | None:
        try:
            found = self._timed(fs.ls, f"{self._root}/{machine}", detail=True)
        except FileNotFoundError:
            return {}
        except Exception as error:  # any client error: counted, and the remote may go off
            self._failed("list the entries", error)
            return None
        self._succeeded()
        if not isinstance(found, list) or len(found) > MAX_LISTED:
            size = len(found) if isinstance(found, list) else type(found).__name__
            self.stats.note(f"the namespace lists {size} objects: not used as an index")
            return None
        names, foreign = parse_listing(found)
        with self._lock:
            self.stats.foreign_names += foreign
        return names

    def fetch(self, machine: str, name: str, check: HeadCheck) -> bytes | None:
        """The remote's bytes for entry ``name`` of ``machine`` (unverified), at most the
        entry limit, or ``None`` when it has none, too large a one, one whose head
        ``check`` refuses, or cannot be asked. Never raises."""
        if not is_entry_name(name):
            return None
        try:
            fs, _ = self._filesystem()
            listed = self._listing(fs, machine)
            if listed is not None and name not in listed:
                raise FileNotFoundError(name)
            size = listed[name] if listed is not None else self._size(fs, machine, name)
            if not self._plausible(fs, machine, name, size, check):
                return None
            data: bytes = self._timed(
                fs.cat_file, self._path(machine, name), start=0, end=self.max_object_bytes + 1
            )
        except RemoteOff:
            return None
        except FileNotFoundError:
            self._succeeded()
            with self._lock:
                self.stats.misses += 1
            return None
        except Exception as error:  # any client error: counted, never raised into a compile
            self._failed(f"download {name}", error)
            return None
        self._succeeded()
        with self._lock:
            self.stats.bytes_down += len(data)
            if len(data) > self.max_object_bytes:
                self.stats.oversized += 1
                return None
        return data

    def _size(self, fs: Any, machine: str, name: str) -> int:
        """The size of entry ``name``'s object, asked for alone (without a listing, so
        that nothing is downloaded before its size is known). ``FileNotFoundError``
        when there is none; an answer without a size reads as too large."""
        info = self._timed(fs.info, self._path(machine, name))
        size = _object_size(info.get("size")) if isinstance(info, dict) else None
        return sys.maxsize if size is None else size

    def _plausible(self, fs: Any, machine: str, name: str, size: int, check: HeadCheck) -> bool:
        """Whether an object of its listed ``size`` may be an entry: within the entry
        limit and, when it is large, with a head that accounts for that size (asked for
        first, so that a large garbage object is never downloaded whole)."""
        if size > self.max_object_bytes:
            with self._lock:
                self.stats.oversized += 1
            return False
        if size <= HEAD_FIRST:
            return True
        head: bytes = self._timed(fs.cat_file, self._path(machine, name), start=0, end=HEAD_BYTES)
        with self._lock:
            self.stats.bytes_down += len(head)
        if check(head, size):
            with self._lock:
                self.stats.refused += 1
            self._refused.add(name)
            return False
        return True

    def fetched(self, name: str, *, accepted: bool) -> None:
        with self._lock:
            if accepted:
                self.stats.hits += 1
            else:
                self.stats.refused += 1
                self._refused.add(name)

    # -- prefetch ------------------------------------------------------------------------

    def prefetch(self, local: LocalTier, session: str, names: Iterable[str] | None = None) -> None:
        """Download, in one bulk transfer, the entries of ``names`` (by default what the
        last sessions of this fingerprint used) that ``local`` lacks, and keep those
        that verify; one process of the machine does it while the others wait. Never
        raises."""
        if not self.on:
            return
        machine = local.machine
        wanted = set(names) if names is not None else set(self._union(machine, session))
        wanted = {name for name in wanted if is_entry_name(name)}
        if not wanted:
            return
        with local.prefetching(4 * self.timeout) as ours:
            if not ours or not self.on:
                return
            missing = sorted(name for name in wanted if not local.holds(name))
            for name, data in self._fetch_many(machine, missing, local.check_head).items():
                if local.keep(name, data):
                    with self._lock:
                        self.stats.prefetched += 1
                    self._prefetched.add(name)
                else:
                    with self._lock:
                        self.stats.refused += 1
                    self._refused.add(name)

    def _union(self, machine: str, session: str) -> list[str]:
        return sorted({name for names in self.used_before(machine, session) for name in names})

    def _fetch_many(self, machine: str, names: list[str], check: HeadCheck) -> dict[str, bytes]:
        """Many entries at once, each at most the entry limit (large ones only when their
        head is plausible); what could not be had is left out."""
        if not names:
            return {}
        try:
            fs, _ = self._filesystem()
            listed = self._listing(fs, machine)
            if listed is None:  # no sizes known: each entry is read through, size first
                self.stats.note("no listing of the namespace: nothing prefetched")
                return {}
            names = [
                name
                for name in names
                if name in listed and self._plausible(fs, machine, name, listed[name], check)
            ]
            paths = [self._path(machine, name) for name in names]
            ends = [self.max_object_bytes + 1] * len(paths)
            # One deadline for the whole batch: a few calls' worth.
            found = self._timed(fs.cat_ranges, paths, [0] * len(paths), ends, deadlines=4)
        except RemoteOff:
            return {}
        except Exception as error:  # any client error: counted, the local tier goes on
            self._failed("prefetch", error)
            return {}
        self._succeeded()
        result = {}
        for name, data in zip(names, found, strict=False):
            if isinstance(data, bytes) and len(data) <= self.max_object_bytes:
                result[name] = data
        with self._lock:
            self.stats.bytes_down += sum(len(d) for d in found if isinstance(d, bytes))
            self.stats.oversized += sum(
                isinstance(d, bytes) and len(d) > self.max_object_bytes for d in found
            )
        return result

    # -- writes (behind) ------------------------------------------------------------------

    def upload_later(self, machine: str, name: str, data: bytes, *, replace: bool) -> None:
        """Upload an entry in the background; never delays the caller. ``replace``: write
        over what the remote holds (else an existing object is kept, unless the remote's
        copy was refused)."""
        if self.readonly or not self.on:
            return
        replace = replace or name in self._refused
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
                if self.on:
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
        except Exception as error:  # any client error: counted, and the remote may go off
            with self._lock:
                self.stats.upload_failures += 1
            self._failed(f"upload {relative}", error)
            return
        self._succeeded()
        with self._lock:
            self.stats.uploads += 1
            self.stats.bytes_up += len(data)

    def _flush(self, wait_secs: float) -> None:
        """Wait (at most ``wait_secs``) for the uploads still queued; count the rest as
        not uploaded. Uploads run on daemon threads: a stalled one never holds up exit."""
        deadline = time.monotonic() + wait_secs
        with self._idle:
            while self._pending and time.monotonic() < deadline and self.on:
                self._idle.wait(timeout=max(0.0, min(0.25, deadline - time.monotonic())))
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
            data = self._timed(
                fs.cat_file,
                self._manifest_path(machine, session),
                start=0,
                end=MAX_MANIFEST_BYTES + 1,
            )
        except (RemoteOff, FileNotFoundError):
            return []
        except Exception as error:  # any client error: counted, and the remote may go off
            self._failed("read the manifest", error)
            return []
        self._succeeded()
        sessions, foreign, ignored = parse_manifest(data, self.signer)
        with self._lock:
            self.stats.foreign_names += foreign
            if ignored:
                self.stats.manifests_ignored += 1
                self.stats.note(f"the manifest of {machine} was ignored: {ignored}")
        return sessions

    def finish(
        self, machine: str, session: str, used: Iterable[str], verified: Iterable[str]
    ) -> RemoteStats:
        """At the session's end (once; later calls return the same figures): wait for
        the uploads (at most three deadlines) and put this session's ``used`` entries at
        the head of the manifest, keeping of the earlier sessions' lists only names this
        session produced or verified (``verified``). An empty ``machine`` only flushes."""
        if self._finished is not None:
            return self._finished
        if self._connect_started:  # what connecting found is part of the figures
            self._connected.wait(CONNECT_LIMIT_SECS + self.timeout)
        self._flush(3 * self.timeout)
        if machine and not self.readonly and self.on:
            self._write_manifest(machine, session, set(used), set(verified) | set(used))
        self._finished = self.stats
        return self.stats

    def _write_manifest(self, machine: str, session: str, used: set[str], good: set[str]) -> None:
        used = {name for name in used if is_entry_name(name)}
        if not used:
            return
        earlier = [[n for n in names if n in good] for names in self.used_before(machine, session)]
        sessions = [sorted(used)[:MAX_MANIFEST_NAMES], *earlier][:MANIFEST_SESSIONS]
        data = manifest_bytes(sessions, self.signer)
        try:
            fs, _ = self._filesystem()
            self._timed(fs.pipe_file, self._manifest_path(machine, session), data)
        except RemoteOff:
            return
        except Exception as error:  # any client error: counted, never raised
            self._failed("write the manifest", error)
            return
        self._succeeded()
