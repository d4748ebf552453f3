"""What a session's environment is made of, and the arithmetic on it.

A *fingerprint* (read off JAX by :mod:`pytest_jaxcache.jax.fingerprint`) records what goes
into every cache key besides the program (versions, ``XLA_FLAGS``, key-relevant config,
compression, backends) and what executables depend on that the key may not hold exactly
(the jaxlib build, the CPU). Its field names are defined here, once; so are the machine
namespace an entry lives in, the id entries carry, and the words for a change.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

# -- field names ------------------------------------------------------------------------------

JAXLIB = "jaxlib"
JAX = "jax"
JAXLIB_BUILD = "jaxlib build"
PYTHON = "python"
OS = "os"
MACHINE = "machine"
XLA_FLAGS = "XLA_FLAGS"
LIBTPU_INIT_ARGS = "LIBTPU_INIT_ARGS"
COMPRESSION = "compression"
CPU_FEATURES = "cpu features"
BACKEND_PREFIX = "backend "  # "backend cpu": the platform and its version

# Config values that change every program, and so every key, when they change.
KEY_CONFIG = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_persistent_cache_enable_xla_caches",
    "jax_compilation_cache_include_metadata_in_key",
)
# Components whose value is a flag string: a change is named, not shown.
_FLAG_FIELDS = (XLA_FLAGS, LIBTPU_INIT_ARGS)
# Components whose change alters every key (so do the backends' platform versions).
_GLOBAL = (JAXLIB, XLA_FLAGS, LIBTPU_INIT_ARGS, COMPRESSION)

# The parts an executable depends on and JAX's key does not hold (or not exactly):
# entries of another namespace are never loaded.
MACHINE_PARTS = (JAX, JAXLIB, JAXLIB_BUILD, CPU_FEATURES, MACHINE)


def backend(name: str) -> str:
    return f"{BACKEND_PREFIX}{name}"


def machine_of(fingerprint: Mapping[str, str]) -> dict[str, str]:
    """The machine-defining part of a session fingerprint."""
    return {
        name: value
        for name, value in fingerprint.items()
        if name in MACHINE_PARTS or name.startswith(BACKEND_PREFIX)
    }


def _digest(data: Mapping[str, str]) -> str:
    text = json.dumps(dict(data), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint_id(fingerprint: Mapping[str, str]) -> str:
    """The id of a session fingerprint (16 hex digits), stamped on the entries it wrote."""
    return _digest(fingerprint)


def namespace(fingerprint: Mapping[str, str]) -> str:
    """The namespace of entries written under ``fingerprint``: 16 hex digits."""
    return _digest(machine_of(fingerprint))


def machine_difference(old: Mapping[str, str], new: Mapping[str, str]) -> str:
    """Why an entry written on machine ``old`` is not loaded on ``new``, in words."""
    changed = sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))
    if CPU_FEATURES in changed or MACHINE in changed:
        return "written on another CPU"
    versions = [name for name in (JAXLIB, JAX) if name in changed]
    if versions:
        name = versions[0]
        return f"written under {name} {old.get(name, '?')} (this is {new.get(name, '?')})"
    if any(name.startswith(BACKEND_PREFIX) for name in changed):
        return "written for another backend platform version"
    if JAXLIB_BUILD in changed:
        return "written by another build of jaxlib"
    return "written on another machine"


def describe_change(old: Mapping[str, str], new: Mapping[str, str]) -> str:
    """``"jaxlib 0.10.1 -> 0.10.2: every key changed"``; only components both know."""
    changed = [name for name in sorted(old.keys() & new.keys()) if old[name] != new[name]]
    if not changed:
        return "environment changed (a component only one side records)"
    parts = []
    for name in changed:
        before, after = old[name] or "(unset)", new[name] or "(unset)"
        parts.append(f"{name} changed" if name in _FLAG_FIELDS else f"{name} {before} -> {after}")
    every_key = any(name in _GLOBAL or name.startswith(BACKEND_PREFIX) for name in changed)
    return ", ".join(parts) + (": every key changed" if every_key else "")


def unusable_versions(theirs: Mapping[str, str], ours: Mapping[str, str]) -> str:
    """Why entries of machine ``theirs`` can never load under ``ours`` ("": they can):
    another jax or jaxlib version."""
    for name in (JAXLIB, JAX):
        value = theirs.get(name)
        if value is not None and value != ours.get(name):
            return f"entries of {name} {value} dropped: unusable with {ours.get(name)}"
    return ""


@dataclass(frozen=True)
class InstallFacts:
    """What the installation into JAX found: the store serving JAX, and JAX's versions."""

    store: str
    jax: str | None
    jaxlib: str | None
