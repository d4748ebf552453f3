"""Our store behind JAX's cache interface, and the wrap around each compile that feeds it.

JAX builds its cache lazily with ``get_file_cache(path)`` and calls ``get(key)`` and
``put(key, value)`` on it. For our directory (and only ours: a test pointing JAX
elsewhere is left alone) it gets :class:`StoreCache`, which serves JAX from the
:class:`~pytest_jaxcache.store.Store` and tells the recorder what each lookup found.
Around each compile, ``compile_or_get_cached`` is wrapped: whether the program has host
callbacks, when it started (an entry records its compile time), and, once it is over,
the single-flight claims it left and the key parts it computed are let go.

Everything here runs inside the user's compile: it never raises into JAX. What goes
wrong is counted in the store's statistics and shown in the report.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pytest_jaxcache import reasons
from pytest_jaxcache.jax import seams
from pytest_jaxcache.jax.installation import OUR_STORE, Installation
from pytest_jaxcache.jax.keyparts import KeyParts
from pytest_jaxcache.recorder import Recorder

if TYPE_CHECKING:
    from pytest_jaxcache.keydump import KeyDump
    from pytest_jaxcache.store import Store

_compile_state = threading.local()


def _adapter_class(interface: type) -> type:
    class StoreCache(interface):  # type: ignore[misc]
        """JAX's CacheInterface over our Store."""

        def __init__(
            self,
            store: Store,
            recorder: Recorder,
            installation: Installation,
            key_parts: KeyParts | None,
            key_dump: KeyDump | None,
        ) -> None:
            self._store = store
            self._recorder = recorder
            self._installation = installation
            self._key_parts = key_parts
            self._key_dump = key_dump
            self._dumped: set[str] = set()
            self._path = store.root  # JAX's reset_cache() names it in a log line

        def _dump(self, key: str, hit: bool) -> None:
            """``--jax-cache-explain``: the key's inputs, once per key and session."""
            dump, parts = self._key_dump, self._key_parts
            if dump is None or parts is None or key in self._dumped or not dump.wants(key):
                return
            self._dumped.add(key)
            dump.write(
                key, parts.inputs(key), parts.digests(key), parts.facts(), parts.module_text(), hit
            )

        def get(self, key: str) -> bytes | None:
            try:
                self._installation.first_use()
                found = self._store.get(key)
                entry = found.entry
                self._recorder.note_lookup(
                    key,
                    None if entry is None else entry.compile_secs,
                    refused=found.refused,
                    waited_secs=found.waited_secs,
                    source=found.source,
                )
                self._dump(key, entry is not None)
            except Exception as error:  # never into JAX's read path: counted, a miss
                self._store.stats.note(f"lookup {key[:80]}: {type(error).__name__}: {error}")
                return None
            return None if entry is None else entry.payload

        def put(self, key: str, value: bytes) -> None:
            try:
                started = getattr(_compile_state, "started", None)
                secs = None if started is None else time.perf_counter() - started
                parts = facts = {}
                if self._key_parts is not None:
                    parts, facts = self._key_parts.digests(key), self._key_parts.facts()
                self._recorder.note_key_parts(parts, facts)
                written = self._store.put(key, bytes(value), secs, parts, facts)
            except Exception as error:  # never into JAX's write path: counted, not written
                self._store.stats.note(f"write {key[:80]}: {type(error).__name__}: {error}")
                written = False
            if not written and not self._store.readonly:
                # A read-only cache's miss stays a miss: nothing is written by design.
                self._recorder.note_unwritten(reasons.STORE_WRITE_FAILED)

    return StoreCache


def install_store(
    installation: Installation,
    store: Store,
    recorder: Recorder,
    key_parts: KeyParts | None,
    key_dump: KeyDump | None,
) -> bool:
    """Install step: our store behind JAX's cache interface, for our directory only.
    Whether it could (without the seam, JAX's own file store serves the cache)."""
    get_file_cache = seams.find(seams.GET_FILE_CACHE)
    interface = seams.find(seams.CACHE_INTERFACE)
    for private in (seams.GET_FILE_CACHE, seams.RESET_CACHE):
        if not callable(seams.find(private)):
            installation.notices.append(seams.missing(private))
            return False
    if not (
        isinstance(interface, type)
        and callable(getattr(interface, "get", None))
        and callable(getattr(interface, "put", None))
    ):
        installation.notices.append(seams.missing(seams.CACHE_INTERFACE, "a class with get, put"))
        return False
    adapter = _adapter_class(interface)(store, recorder, installation, key_parts, key_dump)
    verification = seams.find(seams.VERIFICATION_CACHE)
    check = seams.find(seams.CHECK_CONTENTS)
    if seams.present(check) and not seams.present(verification):  # a flag we cannot honour
        installation.notices.append(seams.missing(seams.VERIFICATION_CACHE))
    if seams.present(verification) and not seams.present(check):
        installation.notices.append(seams.missing(seams.CHECK_CONTENTS))
    root = os.path.realpath(store.root)

    def ours(path: str) -> Any:
        if os.path.realpath(path) != root:  # a test pointed JAX elsewhere: leave it be
            return get_file_cache(path)
        if seams.present(verification) and seams.present(check) and getattr(check, "value", False):
            return verification(adapter), path
        return adapter, path

    installation.store_kind = OUR_STORE
    compilation_cache = importlib.import_module(seams.GET_FILE_CACHE.module)
    installation.patch(compilation_cache, seams.GET_FILE_CACHE.name, ours)
    return True


def wrap_compile(
    installation: Installation,
    recorder: Recorder,
    store: Store | None,
    after: Sequence[Callable[[], None]] = (),
) -> bool:
    """Install step: around each compile, tell the recorder whether the program has host
    callbacks (so that a program skipped by a threshold is not blamed on callbacks),
    time it for the entry's header, release the single-flight claims it left and call
    ``after`` (what each compile leaves per thread is let go). Whether it could."""
    original = seams.find(seams.COMPILE_OR_GET_CACHED)
    if not callable(original):
        installation.notices.append(seams.missing(seams.COMPILE_OR_GET_CACHED))
        return False
    try:
        names = list(inspect.signature(original).parameters)
    except (TypeError, ValueError):
        names = []
    position = names.index("host_callbacks") if "host_callbacks" in names else None

    def has_callbacks(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool | None:
        if "host_callbacks" in kwargs:
            return bool(kwargs["host_callbacks"])
        if position is not None and position < len(args):
            return bool(args[position])
        return None

    @functools.wraps(original)
    def compile_or_get_cached(*args: Any, **kwargs: Any) -> Any:
        recorder.start_compile(has_callbacks(args, kwargs))
        _compile_state.started = time.perf_counter()
        compiled = False
        try:
            result = original(*args, **kwargs)
            compiled = True
            return result
        finally:
            _compile_state.started = None
            if store is not None:
                store.release_claims(compiled=compiled)
            for forget in after:
                forget()

    compiler = importlib.import_module(seams.COMPILE_OR_GET_CACHED.module)
    installation.patch(compiler, seams.COMPILE_OR_GET_CACHED.name, compile_or_get_cached)
    return True
