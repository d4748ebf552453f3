"""The format of one cache entry: a header that lets us check the payload and explain a
later miss, then the payload JAX handed us (already compressed by JAX).

A truncated, padded or corrupted entry decodes to ``None``: it is never handed to JAX.
"""

from __future__ import annotations

import hashlib
import struct
import time
from dataclasses import dataclass

MAGIC = b"JXC1"
# magic, compile seconds, written at (unix time), fingerprint id, payload length, digest
_HEADER = struct.Struct(">4sdd8sQ16s")
HEADER_SIZE = _HEADER.size
NO_FINGERPRINT = bytes(8)


@dataclass(frozen=True)
class Header:
    """What an entry says about itself: enough to explain a later miss."""

    compile_secs: float | None  # how long its program took to compile; None: unknown
    written_at: float
    fingerprint: bytes  # id of the session fingerprint that wrote it
    length: int
    digest: bytes


@dataclass(frozen=True)
class Entry:
    header: Header
    payload: bytes

    @property
    def compile_secs(self) -> float | None:
        return self.header.compile_secs


def encode(
    payload: bytes,
    compile_secs: float | None,
    fingerprint: bytes = NO_FINGERPRINT,
    written_at: float | None = None,
) -> bytes:
    digest = hashlib.blake2b(payload, digest_size=16).digest()
    secs = -1.0 if compile_secs is None else float(compile_secs)
    when = time.time() if written_at is None else written_at
    fingerprint = fingerprint[:8].ljust(8, b"\0")
    return _HEADER.pack(MAGIC, secs, when, fingerprint, len(payload), digest) + payload


def decode_header(data: bytes) -> Header | None:
    if len(data) < _HEADER.size:
        return None
    magic, secs, when, fingerprint, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        return None
    return Header(None if secs < 0 else secs, when, fingerprint, length, digest)


def decode(data: bytes) -> Entry | None:
    """The entry in ``data``, or ``None`` if it is truncated, padded or corrupt."""
    header = decode_header(data)
    if header is None:
        return None
    payload = data[_HEADER.size :]
    if header.length != len(payload):
        return None
    if hashlib.blake2b(payload, digest_size=16).digest() != header.digest:
        return None
    return Entry(header, payload)
