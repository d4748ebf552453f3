"""The bytes of one lowered module as the lowering tier stores it (the store wraps them
in its own signed, digested entry):

    b"JAXLOWR" + one byte FORMAT + JSON length (4 bytes, big endian) + JSON + bytecode

The JSON header holds the key the entry was written under (an entry is served under
its own key only), the digest of the bytecode, the results of the lowering that are not
the module, the time the lowering took, and, once JAX has hashed the module into its
compilation-cache key, the digest of what it hashed (the free check). A *poisoned*
entry (one that failed the check) holds no module: it is lowered again and replaced.

Whatever comes back from a store is outside input: :func:`decode` checks every byte
of it and raises :class:`BadEntry` for anything but an entry of this format.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, replace
from typing import Any

MAGIC = b"JAXLOWR"
FORMAT = 1  # bump whenever the layout or the header's fields change
_HEAD = len(MAGIC) + 1 + 4
MAX_HEADER = 64 * 1024  # bytes of JSON: a header is a few hundred
MAX_NAME = 1000  # characters of a module name
MAX_PLATFORMS = 16
_HEX64 = re.compile(r"[0-9a-f]{64}")


class BadEntry(ValueError):
    """Bytes that are not an entry of this format for the key asked for."""


@dataclass(frozen=True)
class EntryHeader:
    """What an entry records besides the module's bytecode."""

    key: str  # the lowering key it was written under
    module_name: str
    platforms: tuple[str, ...]
    tuple_args: bool
    nreps: int  # JAX 0.6 returns it (always 1 for what is stored); 1 elsewhere
    lower_secs: float  # how long JAX took to lower it
    bytecode_sha256: str
    computation: str | None = None  # SHA-256 of what JAX hashed into its cache key
    poisoned: bool = False  # failed the free check: never served, lowered again

    def with_computation(self, digest: str) -> EntryHeader:
        return replace(self, computation=digest)


def encode(header: EntryHeader, bytecode: bytes) -> bytes:
    fields = asdict(header)
    fields["platforms"] = list(header.platforms)
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + bytes([FORMAT]) + len(blob).to_bytes(4, "big") + blob + bytecode


def poisoned(key: str) -> bytes:
    """The entry that replaces one whose module failed the free check."""
    header = EntryHeader(key, "", (), False, 1, 0.0, hashlib.sha256(b"").hexdigest(), None, True)
    return encode(header, b"")


def decode(data: bytes, key: str) -> tuple[EntryHeader, bytes]:
    """The header and bytecode of an entry written under ``key``; :class:`BadEntry`
    for anything else (another format, another key, a field of the wrong type, a
    bytecode that does not match its digest)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadEntry(f"an entry is bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEAD or not data.startswith(MAGIC):
        raise BadEntry("not a lowered module")
    if data[len(MAGIC)] != FORMAT:
        raise BadEntry(f"format {data[len(MAGIC)]}, not {FORMAT}")
    size = int.from_bytes(data[len(MAGIC) + 1 : _HEAD], "big")
    if size > MAX_HEADER or _HEAD + size > len(data):
        raise BadEntry(f"a header of {size} bytes")
    try:
        fields = json.loads(data[_HEAD : _HEAD + size].decode("utf-8"), parse_constant=_refuse)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise BadEntry(f"header: {type(error).__name__}") from None
    header = _header(fields)
    if header.key != key:
        raise BadEntry("written under another key")
    bytecode = data[_HEAD + size :]
    if hashlib.sha256(bytecode).hexdigest() != header.bytecode_sha256:
        raise BadEntry("the bytecode does not match its digest")
    return header, bytecode


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} in a header")


def _header(fields: Any) -> EntryHeader:
    """The header of checked ``fields`` (parsed JSON)."""
    expected = set(EntryHeader.__dataclass_fields__)
    if not isinstance(fields, dict) or set(fields) != expected:
        raise BadEntry("a header without the fields of this format")
    key, name, platforms = fields["key"], fields["module_name"], fields["platforms"]
    nreps, secs = fields["nreps"], fields["lower_secs"]
    computation = fields["computation"]
    checks = {
        "key": isinstance(key, str) and _HEX64.fullmatch(key) is not None,
        "module_name": isinstance(name, str) and len(name) <= MAX_NAME,
        "platforms": isinstance(platforms, list)
        and len(platforms) <= MAX_PLATFORMS
        and all(isinstance(p, str) and len(p) <= MAX_NAME for p in platforms),
        "tuple_args": isinstance(fields["tuple_args"], bool),
        "nreps": type(nreps) is int and nreps >= 1,
        "lower_secs": type(secs) in (int, float) and math.isfinite(secs) and secs >= 0,
        "bytecode_sha256": isinstance(fields["bytecode_sha256"], str)
        and _HEX64.fullmatch(fields["bytecode_sha256"]) is not None,
        "computation": computation is None
        or (isinstance(computation, str) and _HEX64.fullmatch(computation) is not None),
        "poisoned": isinstance(fields["poisoned"], bool),
    }
    wrong = [name for name, ok in checks.items() if not ok]
    if wrong:
        raise BadEntry(f"header field {wrong[0]} is not of its type")
    return EntryHeader(
        key=key,
        module_name=name,
        platforms=tuple(platforms),
        tuple_args=fields["tuple_args"],
        nreps=nreps,
        lower_secs=float(secs),
        bytecode_sha256=fields["bytecode_sha256"],
        computation=computation,
        poisoned=fields["poisoned"],
    )
