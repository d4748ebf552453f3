"""The parts of each cache key, as JAX hashes them, and a few facts about the program
(its input types, its module without constants): what explains a later miss.

JAX computes a key in ``jax._src.cache_key.get``, hashing one part at a time and
calling ``_log_cache_key_hash`` after each. Both are wrapped: each part's hash function
is kept (a hit costs an append per part), and is fed again, only when an entry is
written, to a fresh digest (for the entry's record) or to a collector (for
``--jax-cache-explain``).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pytest_jaxcache.jax import seams
from pytest_jaxcache.jax.installation import Installation

_Hashing = TypeVar("_Hashing")  # what JAX's hash functions feed: anything with update()
UNHASHABLE = "unhashable"  # a part's digest when it could not be hashed again
_MAIN = re.compile(r"func\.func public @main\((.*)")
_TENSOR = re.compile(r"tensor<[^<>]*>")
_MAX_INPUTS_TEXT = 200


class KeyParts:
    """The parts of the cache keys JAX computes in this thread's compile, each with the
    function JAX hashed it with, and the module the key was computed for."""

    def __init__(self, note: Callable[[str], None]) -> None:
        self._local = threading.local()
        self._note = note  # what could not be hashed or printed again, for the report

    def _keys(self) -> dict[str, list[tuple[str, Any]]]:
        keys: dict[str, list[tuple[str, Any]]] | None = getattr(self._local, "keys", None)
        if keys is None:
            keys = self._local.keys = {}
        return keys

    def collect(self, name: str, hashfn: Any) -> None:
        parts: list[tuple[str, Any]] | None = getattr(self._local, "collecting", None)
        if parts is not None:
            parts.append((name, hashfn))

    def computing(self, parts: list[tuple[str, Any]] | None) -> None:
        self._local.collecting = parts

    def computed(self, key: str, parts: list[tuple[str, Any]], module: Any) -> None:
        self._keys()[key] = parts
        self._local.module = module

    def forget(self) -> None:
        """The compile is over: its hash functions (and what they hold) go."""
        self._local.keys = None
        self._local.module = None

    def _rehash(self, key: str, make: Callable[[], _Hashing]) -> dict[str, _Hashing | None]:
        """Feed each of ``key``'s parts again, as JAX hashed it, to a fresh ``make()``;
        ``None`` for a part that cannot be hashed again (noted for the report)."""
        fed: dict[str, _Hashing | None] = {}
        for name, hashfn in self._keys().get(key, []):
            target = make()
            try:
                hashfn(target)
            except Exception as error:  # JAX's own hash function: anything may go wrong
                self._note(f"key part {name!r}: {type(error).__name__}: {error}")
                fed[str(name)] = None
                continue
            fed[str(name)] = target
        return fed

    def inputs(self, key: str) -> dict[str, bytes]:
        """``{part: the bytes JAX hashed}`` of ``key``'s parts, for ``--jax-cache-explain``."""
        return {
            name: b"".join(fed.chunks)
            for name, fed in self._rehash(key, _Collect).items()
            if fed is not None
        }

    def digests(self, key: str) -> dict[str, str]:
        """``{part: 16 hex digits}`` of ``key``'s parts, as JAX hashed them ({}: unknown);
        a part that cannot be hashed again is :data:`UNHASHABLE` (so that it never
        reads as a part that changed)."""
        return {
            name: UNHASHABLE if fed is None else fed.hexdigest()[:16]
            for name, fed in self._rehash(key, hashlib.sha256).items()
        }

    def module_text(self, *, constants: bool = True) -> str | None:
        """The lowered module of this thread's compile, as text (``constants=False``:
        without locations, and every constant array, as opposed to a scalar or a value
        repeated, printed as elided: what a program closed over, not what its code
        says); ``None`` when it is unknown or cannot be printed."""
        module = getattr(self._local, "module", None)
        if module is None:
            return None
        try:
            if constants:
                return str(module)
            text = module.operation.get_asm(large_elements_limit=0, enable_debug_info=False)
        except (AttributeError, TypeError, RuntimeError, ValueError) as error:
            self._note(f"print the module: {type(error).__name__}: {error}")
            return None
        return str(text)

    def facts(self) -> dict[str, str]:
        """What explains a later miss of this thread's program besides its key's parts:
        its input and output types, and a digest of its module without the arrays it
        closed over."""
        text = self.module_text(constants=False)
        if text is None:
            return {}
        facts = {"structure": hashlib.sha256(text.encode()).hexdigest()[:16]}
        main = _MAIN.search(text)
        if main is not None:
            types = ",".join(t[len("tensor<") : -1] for t in _TENSOR.findall(main.group(1)))
            if len(types) > _MAX_INPUTS_TEXT:
                types = hashlib.sha256(types.encode()).hexdigest()[:16]
            facts["inputs"] = types
        return facts


class _Collect:
    """A hash object that keeps what it is fed (JAX's hash functions call ``update``)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def update(self, data: bytes) -> None:
        self.chunks.append(bytes(data))


def capture(installation: Installation, note: Callable[[str], None]) -> KeyParts | None:
    """Install step: hear the parts of each cache key as JAX hashes them (to explain a
    later miss by the part that changed). Without the seam, misses are explained by the
    environment only (one notice)."""
    get = seams.find(seams.CACHE_KEY_GET)
    log = seams.find(seams.LOG_CACHE_KEY_HASH)
    if not (seams.present(get) and callable(get)):
        installation.notices.append(seams.missing(seams.CACHE_KEY_GET))
        return None
    try:
        shaped = list(inspect.signature(log).parameters) == [
            "hash_obj",
            "last_serialized",
            "hashfn",
        ]
    except (TypeError, ValueError):
        shaped = False
    if not shaped:
        installation.notices.append(
            seams.missing(seams.LOG_CACHE_KEY_HASH, "hash_obj, last_serialized, hashfn")
        )
        return None
    parts = KeyParts(note)

    def log_cache_key_hash(hash_obj: Any, last_serialized: str, hashfn: Any) -> Any:
        parts.collect(last_serialized, hashfn)
        return log(hash_obj, last_serialized, hashfn)

    def get_key(*args: Any, **kwargs: Any) -> Any:
        collected: list[tuple[str, Any]] = []
        parts.computing(collected)
        try:
            key = get(*args, **kwargs)
        finally:
            parts.computing(None)
        parts.computed(str(key), collected, args[0] if args else kwargs.get("module"))
        return key

    cache_key = importlib.import_module(seams.CACHE_KEY_GET.module)
    installation.patch(cache_key, seams.LOG_CACHE_KEY_HASH.name, log_cache_key_hash)
    installation.patch(cache_key, seams.CACHE_KEY_GET.name, get_key)
    return parts
