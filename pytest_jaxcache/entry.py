"""The format of one cache entry: who wrote it, for which key, on which machine, and the
payload JAX handed us (already compressed by JAX). Layout::

    head      "JXC2", format version, flags, metadata length, payload length
    metadata  JSON: compile time, write time, machine namespace, session fingerprint id,
              key digest, signer, key parts (for explaining later misses)
    payload
    digest    BLAKE2b-256 over the key, head, metadata and payload
    signature HMAC-SHA256 over the same (only when the SIGNED flag is set)

The digest binds an entry to its key: a valid entry copied under another program's file
name does not verify. An entry that does not check out is never handed to JAX.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from pytest_jaxcache.cachedir import CacheDir
from pytest_jaxcache.trust import Buffer, Signer

MAGIC = b"JXC2"
FORMAT = 2
SIGNED = 0x01
_HEAD = struct.Struct(">4sBBxxIQ")  # magic, format, flags, metadata length, payload length
HEAD_SIZE = _HEAD.size
DIGEST_SIZE = SIGNATURE_SIZE = 32
MAX_METADATA = 64 * 1024
# No entry is larger than this (the cache's size cap may lower it): a larger file named
# like an entry is refused by its size, before anything of it is read.
MAX_ENTRY_BYTES = 2 * 2**30
_FIRST_READ = 4096  # the head and the metadata of almost every entry
# Bounds of what metadata may say: a value outside them makes the entry unreadable
# (never an exception in JAX's read path, or a date no clock can show).
_MAX_TIME = 253402300799.0  # seconds since 1970: the last second of the year 9999
_MAX_SECS = 1e7  # a compile time of almost four months
_MAX_TEXT = 256
_MAX_PARTS = 128
_DOMAIN = b"pytest-jaxcache entry 2\0"


@dataclass(frozen=True)
class Metadata:
    """What an entry says about itself."""

    compile_secs: float | None = None  # how long its program took to compile
    written_at: float = 0.0
    machine: str = ""  # the namespace of the machine that wrote it (trust.namespace)
    session: str = ""  # id of the writing session's fingerprint (bookkeeping)
    key_digest: str = ""  # which key it was written for
    signer: str | None = None  # id of the signing secret (trust.key_id)
    parts: Mapping[str, str] = field(default_factory=dict)  # key part -> digest
    # What else explains a later miss: the program's input types, the digests of its
    # module with constants left out, of its jaxpr (see explain.py).
    facts: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        data = {
            "compile_secs": self.compile_secs,
            "written_at": self.written_at,
            "machine": self.machine,
            "session": self.session,
            "key_digest": self.key_digest,
            "signer": self.signer,
            "parts": dict(self.parts),
            "facts": dict(self.facts),
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Metadata | None:
        """The metadata in ``data``, or ``None`` when it is not JSON of our shape, or
        any value is out of bounds (a time no clock can show, a huge text)."""
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError):
            return None
        if not isinstance(raw, dict):
            return None
        try:
            secs = raw.get("compile_secs")
            signer = raw.get("signer")
            return cls(
                compile_secs=None if secs is None else _number(secs, _MAX_SECS),
                written_at=_number(raw.get("written_at", 0.0), _MAX_TIME),
                machine=_text(raw.get("machine", "")),
                session=_text(raw.get("session", "")),
                key_digest=_text(raw.get("key_digest", "")),
                signer=None if signer is None else _text(signer),
                parts=_texts(raw.get("parts") or {}),
                facts=_texts(raw.get("facts") or {}),
            )
        except (TypeError, ValueError, OverflowError):
            return None


def _number(value: object, bound: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("not a number")
    number = float(value)
    if not (math.isfinite(number) and 0 <= number <= bound):
        raise ValueError("out of bounds")
    return number


def _text(value: object) -> str:
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise ValueError("not a short text")
    return value


def _texts(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > _MAX_PARTS:
        raise ValueError("not a small mapping")
    return {_text(name): _text(text) for name, text in value.items()}


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Entry:
    metadata: Metadata
    payload: bytes
    signed: bool

    @property
    def compile_secs(self) -> float | None:
        return self.metadata.compile_secs


def _covered(key: str, head: Buffer, meta: Buffer, payload: Buffer) -> tuple[Buffer, ...]:
    return (_DOMAIN, key.encode(), b"\0", head, meta, payload)


def _digest(chunks: Iterable[Buffer]) -> bytes:
    digest = hashlib.blake2b(digest_size=DIGEST_SIZE)
    for chunk in chunks:
        digest.update(chunk)
    return digest.digest()


def encode(key: str, payload: bytes, metadata: Metadata, signer: Signer | None = None) -> bytes:
    """The bytes of an entry for ``key``; signed when ``signer`` has a secret."""
    signing = signer is not None and signer.signs
    signer_id = signer.signing_key_id if signer is not None and signing else None
    metadata = replace(metadata, signer=signer_id, key_digest=key_digest(key))
    meta = metadata.to_json()
    head = _HEAD.pack(MAGIC, FORMAT, SIGNED if signing else 0, len(meta), len(payload))
    chunks = _covered(key, head, meta, payload)
    tail = _digest(chunks)
    if signing:
        assert signer is not None
        tail += signer.sign(chunks)
    return b"".join((head, meta, payload, tail))


class Refused(Exception):
    """Why an entry is not loaded: a reason a user can act on, and a category."""

    def __init__(self, category: str, reason: str) -> None:
        super().__init__(reason)
        self.category = category
        self.reason = reason


CORRUPT = "corrupt"  # truncated, padded, garbage, or not of this format
WRONG_KEY = "wrong key"  # a valid entry of another key under this key's name
UNTRUSTED = "untrusted"  # unsigned, wrongly signed, or signed and not verifiable
FOREIGN = "foreign"  # written on another machine


def read_prefix(data: bytes) -> tuple[int, int, int, Metadata] | None:
    """Flags, metadata length, payload length and metadata from the start of an entry
    (``None`` when it is not a readable format-2 entry)."""
    if len(data) < HEAD_SIZE:
        return None
    magic, version, flags, meta_len, payload_len = _HEAD.unpack_from(data)
    if magic != MAGIC or version != FORMAT or meta_len > MAX_METADATA:
        return None
    if len(data) < HEAD_SIZE + meta_len:
        return None
    metadata = Metadata.from_json(data[HEAD_SIZE : HEAD_SIZE + meta_len])
    return None if metadata is None else (flags, meta_len, payload_len, metadata)


def check_head(head: bytes, size: int) -> str:
    """Why a file of ``size`` bytes that starts with ``head`` cannot be a whole entry
    ("" when it can): told from its first bytes, before the rest is read."""
    if len(head) < HEAD_SIZE:
        return "not a readable entry (truncated, garbage or an old format)"
    magic, version, flags, meta_len, payload_len = _HEAD.unpack_from(head)
    if magic != MAGIC or version != FORMAT or meta_len > MAX_METADATA:
        return "not a readable entry (truncated, garbage or an old format)"
    tail = DIGEST_SIZE + (SIGNATURE_SIZE if flags & SIGNED else 0)
    if HEAD_SIZE + meta_len + payload_len + tail != size:
        return "truncated or padded"
    return ""


def decode(
    key: str,
    data: bytes,
    *,
    signer: Signer,
    machine: str,
    load_unverified: bool = False,
) -> Entry:
    """The entry in ``data`` if it may be loaded for ``key`` on ``machine``; else raise
    :class:`Refused` saying why. The digest is always checked (integrity), and with a
    secret the signature too (authenticity)."""
    prefix = read_prefix(data)
    if prefix is None:
        raise Refused(CORRUPT, "not a readable entry (truncated, garbage or an old format)")
    flags, meta_len, payload_len, metadata = prefix
    signed = bool(flags & SIGNED)
    meta_end = HEAD_SIZE + meta_len
    payload_end = meta_end + payload_len
    if len(data) != payload_end + DIGEST_SIZE + (SIGNATURE_SIZE if signed else 0):
        raise Refused(CORRUPT, "truncated or padded")
    if metadata.key_digest != key_digest(key):
        raise Refused(WRONG_KEY, "written for another key")
    view = memoryview(data)  # slices of a view copy nothing: payloads can be large
    chunks = _covered(key, view[:HEAD_SIZE], view[HEAD_SIZE:meta_end], view[meta_end:payload_end])
    digest = data[payload_end : payload_end + DIGEST_SIZE]
    if signer.signs and (not signed or metadata.signer is None):
        raise Refused(UNTRUSTED, "not signed, and a signing key is set")
    if not signer.signs and signed and not load_unverified:
        raise Refused(UNTRUSTED, "signed, and no signing key is set to verify it")
    if _digest(chunks) != digest:  # the content, always; the signature verifies itself
        raise Refused(CORRUPT, "its digest does not match (corrupt)")
    if signer.signs:
        assert metadata.signer is not None
        if not signer.verify(metadata.signer, chunks, data[payload_end + DIGEST_SIZE :]):
            raise Refused(UNTRUSTED, "signed with an unknown key, or tampered with")
    if metadata.machine != machine:
        raise Refused(FOREIGN, "written on another machine")
    return Entry(metadata, data[meta_end:payload_end], signed)


def read_metadata(directory: CacheDir, sub: str, name: str) -> Metadata | None:
    """What entry ``sub/name`` says about itself, without reading its payload (``None``
    when it cannot be read or is not a format-2 entry)."""
    try:
        data = directory.read_head(sub, name, _FIRST_READ)
        if len(data) >= HEAD_SIZE:
            meta_len = _HEAD.unpack_from(data)[3]
            if HEAD_SIZE + meta_len > len(data) and meta_len <= MAX_METADATA:
                data = directory.read_head(sub, name, HEAD_SIZE + meta_len)
    except OSError:
        return None
    prefix = read_prefix(data)
    return None if prefix is None else prefix[3]
