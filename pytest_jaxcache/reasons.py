"""Why a program was compiled instead of served: the codes, and their words, once.

Every surface (the terminal section, the JSON report, the job summary, the fixture's
failure message) says why in these words; the JSON also carries the codes, for
dashboards. Three families:

- the *outcome* of one compile (hit, miss, uncachable, not written, cache off);
- why a compiled program was *not written* (JAX's own reason, heard from its log, or the
  store's);
- why a lookup *missed* (:class:`Miss`: the cause, and the parts of the key that differ
  from the nearest earlier entry of the same program), computed by
  :mod:`pytest_jaxcache.explain`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# -- outcomes -------------------------------------------------------------------------------

HIT = "hit"
MISS = "miss"  # cachable: compiled, then written (or the write was attempted)
UNCACHABLE = "uncachable"  # looked up, compiled, never written: host callbacks
UNWRITTEN = "unwritten"  # looked up, compiled, not written for another reason
UNCACHED = "uncached"  # compiled with the persistent cache off
OUTCOMES = (HIT, MISS, UNCACHABLE, UNWRITTEN, UNCACHED)

# Where a hit's entry came from.
EARLIER = "earlier session"
THIS_SESSION = "this session"  # written since the session started: another worker or test
REMOTE = "remote"
HIT_SOURCES = (EARLIER, THIS_SESSION, REMOTE)

# -- not written ----------------------------------------------------------------------------

HOST_CALLBACKS = "host callbacks"
MIN_COMPILE_TIME = "min compile time"
MIN_ENTRY_SIZE = "min entry size"
NOT_PROCESS_0 = "not process 0"
CACHE_NOT_INITIALISED = "cache not initialised"
NO_KEY = "no key"
JAX_WRITE_FAILED = "jax write failed"
STORE_WRITE_FAILED = "store write failed"
UNKNOWN = "unknown"


def not_written(code: str, detail: str = "") -> str:
    """Why a program compiled with the cache on was not written, in words."""
    words = {
        HOST_CALLBACKS: "it has host callbacks (jax.debug.print, callbacks, checks): JAX up "
        "to 0.10 never writes such programs",
        MIN_COMPILE_TIME: f"it compiled faster than --jax-cache-min-compile-time ({detail}s)",
        MIN_ENTRY_SIZE: f"its entry is smaller than --jax-cache-min-entry-size ({detail} bytes)",
        NOT_PROCESS_0: "only process 0 of a multi-process job writes",
        CACHE_NOT_INITIALISED: "JAX's cache was not initialised",
        NO_KEY: f"JAX could not compute its key: {detail}",
        JAX_WRITE_FAILED: f"JAX failed to write it: {detail}",
        STORE_WRITE_FAILED: "the store could not write it (see its notices)",
    }
    return words.get(code, "JAX compiled it without writing it and gave no reason we heard")


# What would keep a program of this kind in the cache, where something would.
REMEDIES = {
    HOST_CALLBACKS: "JAX 0.11 and later write programs with host callbacks to the cache",
    MIN_COMPILE_TIME: "--jax-cache-min-compile-time=0 writes every program",
    MIN_ENTRY_SIZE: "--jax-cache-min-entry-size=-1 writes every program",
}

CACHE_OFF = "compiled with the persistent cache off (jax_no_cache, or no cache)"

# -- misses ---------------------------------------------------------------------------------

# Causes (JSON ``misses[].cause``).
NEW = "new"  # no earlier entry of the program
REFUSED = "refused"  # its entry was found and not loaded
KEY_PARTS = "key parts"  # parts of the key differ from the nearest earlier entry's
CONSTANTS = "constants"  # only constants embedded in the module differ
PROGRAM = "program"  # an earlier entry under this environment, no parts to compare
ENVIRONMENT = "environment"  # earlier entries under another environment only
UNEXPLAINED = "unexplained"  # our store did not see the key
CAUSES = (NEW, REFUSED, KEY_PARTS, CONSTANTS, PROGRAM, ENVIRONMENT, UNEXPLAINED)
# Causes that no change of code or environment explains: the program's key differs from
# one run to the next by itself.
UNSTABLE = (CONSTANTS,)

NEW_PROGRAM = "new program: no earlier session compiled it"
PROGRAM_CHANGED = "program changed: same name, other code, shapes, dtypes or options"
UNKNOWN_ENVIRONMENT = "written under another environment (its fingerprint is gone)"
NOT_EXPLAINED = "not explained: our store did not see its key (JAX's own store served it)"
CONSTANTS_DIFFER = (
    "constants captured by the program differ from the last run's: pass them as arguments "
    "or seed them"
)
# What a difference in each part of JAX's key means (parts named as JAX's cache_key module
# names them; the same from JAX 0.6 to 0.12), environment-wide parts first.
PART_MEANINGS = {
    "jax_lib version": "jaxlib's version differs",
    "backend version": "the backend's platform version differs",
    "XLA flags": "XLA flags differ (XLA_FLAGS, LIBTPU_INIT_ARGS or --xla arguments)",
    "compression": "the compression differs (zstandard installed or removed)",
    "custom_hook": "a custom cache-key hook gives another value",
    "accelerator_config": "the device assignment differs: the device count or topology changed",
    "compile_options": "compile options differ: a compiler option or an XLA flag changed",
    "computation": "the lowered module differs: the program's code, shapes, dtypes or a "
    "config traced into it (such as jax_default_matmul_precision) changed",
}


def part_meaning(part: str) -> str:
    """What a difference in ``part`` of two keys means (a part this JAX adds: its name)."""
    return PART_MEANINGS.get(part, f"the key part {part!r} differs")


def describe_parts(differing: Iterable[str]) -> str:
    """What the differing parts of two keys mean, most telling first."""
    order = list(PART_MEANINGS)
    ranked = sorted(differing, key=lambda part: (order.index(part) if part in order else 99, part))
    return "; ".join(part_meaning(part) for part in ranked)


@dataclass(frozen=True)
class Miss:
    """Why one key missed."""

    key: str
    reason: str
    cause: str = NEW
    parts: tuple[str, ...] = ()  # the key parts that differ (cause KEY_PARTS and after)


def why_compiled(outcome: str, unwritten: str, detail: str, miss: Miss | None) -> str:
    """Why a program was compiled rather than served ("" for a hit), in words."""
    if outcome == HIT:
        return ""
    if outcome == MISS:
        return miss.reason if miss is not None else NOT_EXPLAINED
    if outcome == UNCACHED:
        return CACHE_OFF
    return not_written(unwritten, detail)
