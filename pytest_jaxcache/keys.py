"""JAX cache keys: which program a key names, and the file name an entry gets.

JAX's keys look like ``jit_train_step-<64 hex>``: the program's name, a dash, and a
SHA-256 of everything the key covers.
"""

from __future__ import annotations

import hashlib
import re

from pytest_jaxcache.layout import MAX_PROGRAM

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_HASHED = re.compile(r"-[0-9a-f]{64}$")


def program_name(key: str) -> str:
    """``"jit_f-0123...ef"`` -> ``"jit_f"``: the program a key (or entry file) names."""
    return key.rsplit("-", 1)[0]


def file_name(key: str) -> str:
    """A safe file name for ``key``, matching :data:`layout.ENTRY_NAME`. A key of JAX's
    form keeps its hash whole (truncating the name cannot make two keys collide); any
    other key gets the SHA-256 of the whole key as its hash."""
    if _HASHED.search(key):
        program, digest = key[:-65], key[-64:]
    else:
        program, digest = key, hashlib.sha256(key.encode()).hexdigest()
    program = _UNSAFE.sub("_", program)[-MAX_PROGRAM:] or "_"
    if not program[0].isalnum() and program[0] != "_":
        program = "_" + program[1:]
    return f"{program}-{digest}"
