"""The only module that touches JAX.

It applies the cache configuration through ``jax.config``, installs our
:class:`~pytest_jaxcache.store.Store` behind JAX's private cache seam, and registers
``jax.monitoring`` listeners. Every private name it uses is feature-detected first; when
JAX is not shaped as expected it leaves JAX's own file store in place and says why.

Nothing here initialises a backend, creates an array, logs or warns at install time:
user suites assert all of those.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.abc
import importlib.util
import inspect
import logging
import os
import platform
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from pytest_jaxcache.recorder import Recorder
from pytest_jaxcache.settings import Settings

if TYPE_CHECKING:
    from pytest_jaxcache.keydump import KeyDump
    from pytest_jaxcache.store import Store

OUR_STORE = "pytest-jaxcache store"
JAX_STORE = "JAX's file store"
NO_STORE = "none"

# JAX's own wording (jax._src.compiler) when reading or writing an entry fails.
_CACHE_WARNINGS = (
    "Error reading persistent compilation cache entry",
    "Error writing persistent compilation cache entry",
)

# Config values that change every program, and so every key, when they change.
_KEY_CONFIG = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_persistent_cache_enable_xla_caches",
    "jax_compilation_cache_include_metadata_in_key",
)


class JaxMissing(RuntimeError):
    """The cache was asked for but JAX cannot be imported."""


def version(distribution: str) -> str | None:
    import importlib.metadata  # only when a cache is on: it is slow to import

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def ensure_installed() -> None:
    """Raise :class:`JaxMissing` unless JAX is installed (without importing it)."""
    if "jax" not in sys.modules and importlib.util.find_spec("jax") is None:
        raise JaxMissing("JAX is not installed (pip install jax)")


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a callback the moment ``import jax`` completes, before the importer's next
    line: the cache is configured before any program can compile, yet a process that
    never imports JAX (an xdist controller, a suite without JAX) never pays for it.

    It stays in place until JAX is really executed: ``importlib.util.find_spec("jax")``
    (an availability check) only gets a spec, and finds the hook still armed later."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        self._local = threading.local()  # set while we ask the finders after us

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "jax" or getattr(self._local, "searching", False):
            return None
        self._local.searching = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._local.searching = False
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenConfigure(spec.loader, self)
        return spec

    def executed(self) -> None:
        self.remove()
        self._callback()

    def remove(self) -> None:
        with suppress(ValueError):
            sys.meta_path.remove(self)


class _ThenConfigure(importlib.abc.Loader):
    """JAX's own loader, and then the callback; JAX's module keeps its real loader."""

    def __init__(self, loader: Any, hook: _AfterImport) -> None:
        self._loader = loader
        self._hook = hook

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self._loader  # resources and get_data keep working
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        self._hook.executed()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def when_jax_imported(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` once JAX is imported (now, if it is); return a cancel function."""
    if "jax" in sys.modules:
        callback()
        return lambda: None
    hook = _AfterImport(callback)
    sys.meta_path.insert(0, hook)
    return hook.remove


def keep_jax_cache_off(variable: str) -> None:
    """The user switched the cache off explicitly (an empty ``--jax-cache-dir`` or ini
    value), over ``variable`` in the environment, which JAX would read on import."""
    os.environ[variable] = ""
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.config.update("jax_compilation_cache_dir", None)


def _import_jax() -> ModuleType:
    ensure_installed()
    try:
        return importlib.import_module("jax")
    except Exception as error:  # a broken install: say so once, plainly
        raise JaxMissing(f"JAX failed to import: {type(error).__name__}: {error}") from error


@dataclass
class _Seam:
    """The private JAX names we rely on, found by :func:`_find_seam`."""

    compilation_cache: ModuleType
    compiler: ModuleType
    cache_interface: type


def _find_seam() -> tuple[_Seam | None, str]:
    """Locate JAX's cache seam; on failure return why, for the fallback notice."""
    try:
        from jax._src import compilation_cache, compiler
    except ImportError as error:
        return None, f"cannot import jax._src.compilation_cache/compiler ({error})"
    interface = getattr(compilation_cache, "CacheInterface", None)
    checks = {
        "compilation_cache.get_file_cache": callable(
            getattr(compilation_cache, "get_file_cache", None)
        ),
        "compilation_cache.reset_cache": callable(getattr(compilation_cache, "reset_cache", None)),
        "compilation_cache.CacheInterface": isinstance(interface, type)
        and callable(getattr(interface, "get", None))
        and callable(getattr(interface, "put", None)),
        "compiler.compile_or_get_cached": callable(
            getattr(compiler, "compile_or_get_cached", None)
        ),
    }
    missing = [name for name, ok in checks.items() if not ok]
    if missing:
        return None, "JAX internals not as expected: " + ", ".join(missing)
    assert isinstance(interface, type)
    return _Seam(compilation_cache, compiler, interface), ""


class _CacheWarnings:
    """Stands in for the ``warnings`` module inside ``jax._src.compiler``: JAX's cache
    read/write warnings are counted for the report instead of raised, so that
    ``-W error`` never turns a cache problem into a failed test. Other warnings pass."""

    def __init__(self, real: ModuleType, recorder: Recorder) -> None:
        self._real = real
        self._recorder = recorder

    def warn(
        self, message: Any, category: Any = None, stacklevel: int = 1, *args: Any, **kwargs: Any
    ) -> None:
        text = str(message)
        if text.startswith(_CACHE_WARNINGS):
            self._recorder.note_cache_warning(text)
            if text.startswith(_CACHE_WARNINGS[1]):
                self._recorder.note_unwritten(f"writing failed: {text.split(': ', 1)[-1]}")
            return
        self._real.warn(message, category, stacklevel + 1, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


_Hashing = TypeVar("_Hashing")  # what JAX's hash functions feed: anything with update()


class KeyParts:
    """The parts of the cache keys JAX computes in this thread's compile, each with the
    function JAX hashed it with (JAX's own ``cache_key`` seam, called once per part).
    A part is digested only when an entry is written: a hit costs an append per part."""

    def __init__(self) -> None:
        self._local = threading.local()

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

    def _rehash(self, key: str, make: Callable[[], _Hashing]) -> dict[str, _Hashing]:
        """Feed each of ``key``'s parts again, as JAX hashed it, to a fresh ``make()``;
        a part that cannot be hashed again is left out."""
        fed = {}
        for name, hashfn in self._keys().get(key, []):
            target = make()
            try:
                hashfn(target)
            except Exception:
                continue
            fed[str(name)] = target
        return fed

    def inputs(self, key: str) -> dict[str, bytes]:
        """``{part: the bytes JAX hashed}`` of ``key``'s parts, for ``--jax-cache-explain``."""
        return {name: b"".join(fed.chunks) for name, fed in self._rehash(key, _Collect).items()}

    def module_text(self) -> str | None:
        """The lowered module of this thread's compile, as text (``None``: unknown)."""
        module = getattr(self._local, "module", None)
        if module is None:
            return None
        try:
            return str(module)
        except Exception:
            return None

    def digests(self, key: str) -> dict[str, str]:
        """``{part: 16 hex digits}`` of ``key``'s parts, as JAX hashed them ({}: unknown)."""
        return {
            name: fed.hexdigest()[:16] for name, fed in self._rehash(key, hashlib.sha256).items()
        }


class _Collect:
    """A hash object that keeps what it is fed (JAX's hash functions call ``update``)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def update(self, data: bytes) -> None:
        self.chunks.append(bytes(data))


_CALLBACKS_MESSAGE = "because it uses host callbacks"

# Messages JAX logs when it compiles a program and does not write it, and what they mean
# (jax._src.compiler / compilation_cache; the same text from 0.6 to 0.12).
_UNWRITTEN_MESSAGES: tuple[tuple[str, Callable[[tuple[Any, ...]], str]], ...] = (
    (_CALLBACKS_MESSAGE, lambda args: "it has host callbacks, never written"),
    # Reasons name the threshold, not each program's figure: programs are grouped by them.
    (
        "because it took < ",
        lambda args: f"it compiled faster than --jax-cache-min-compile-time ({args[1]:g}s)",
    ),
    (
        "since its size",
        lambda args: f"its entry is smaller than --jax-cache-min-entry-size ({args[2]} bytes)",
    ),
    ("since process_id != 0", lambda args: "only process 0 of a multi-process job writes"),
    ("since cache is disabled/not initialized", lambda args: "the cache was not initialised"),
    ("unable to generate cache key", lambda args: f"JAX could not compute its key: {args[-1]}"),
)
_CAPTURING = 1  # below DEBUG: a level nobody else sets, so it tells that it is ours


class _CompileLogs(logging.Filter):
    """Hears why JAX compiled a program without writing it (JAX says so at DEBUG), for
    the compile under way, without changing what anyone else sees: a record below the
    level its logger would have without us goes no further than here."""

    def __init__(self, recorder: Recorder, previous: dict[str, int]) -> None:
        super().__init__()
        self._recorder = recorder
        self._previous = previous  # the loggers' own levels before us

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if isinstance(record.msg, str):
                for fragment, explain in _UNWRITTEN_MESSAGES:
                    if fragment in record.msg:
                        args = record.args if isinstance(record.args, tuple) else ()
                        self._recorder.note_unwritten(
                            explain(args), host_callbacks=fragment == _CALLBACKS_MESSAGE
                        )
                        break
        except Exception:  # an odd record: it says nothing to us
            pass
        logger = logging.getLogger(record.name)
        if logger.level != _CAPTURING:  # someone set it since (caplog.set_level): theirs
            return record.levelno >= logger.level
        own = self._previous.get(record.name, logging.NOTSET)
        parent = logger.parent
        threshold = own or (parent.getEffectiveLevel() if parent is not None else logging.WARNING)
        return record.levelno >= threshold


@dataclass(frozen=True)
class InstallFacts:
    """What the installation found: the store serving JAX, and JAX's versions."""

    store: str
    jax: str | None
    jaxlib: str | None


@dataclass
class Installation:
    """What :func:`install` changed in this process, and how to undo it."""

    store_kind: str
    notices: list[str] = field(default_factory=list)
    jax_version: str | None = None
    jaxlib_version: str | None = None
    # Called once, inside the first compile that reaches our store (a backend exists).
    on_first_compile: Callable[[], None] | None = None
    _undo: list[Callable[[], None]] = field(default_factory=list)

    @property
    def ours(self) -> bool:
        return self.store_kind == OUR_STORE

    @property
    def facts(self) -> InstallFacts:
        return InstallFacts(self.store_kind, self.jax_version, self.jaxlib_version)

    def add_undo(self, undo: Callable[[], None]) -> None:
        """``undo`` runs at :meth:`uninstall`, after everything added later."""
        self._undo.append(undo)

    def patch(self, owner: Any, name: str, value: Any) -> None:
        original = getattr(owner, name)
        setattr(owner, name, value)
        self.add_undo(lambda: setattr(owner, name, original))

    def uninstall(self) -> None:
        while self._undo:
            with suppress(Exception):
                self._undo.pop()()


_compile_state = threading.local()


def install(
    settings: Settings,
    recorder: Recorder,
    *,
    store: Store | None,
    location: str | None,
    key_dump: KeyDump | None = None,
) -> Installation:
    """Configure JAX's persistent cache for this process, in named steps. JAX is pointed
    at ``location`` (``None``: no usable cache, lookups off) and served by ``store``
    (``None``: JAX's own file store); ``key_dump`` writes the key inputs of the programs
    it wants (``--jax-cache-explain``)."""
    jax = _import_jax()
    installation = Installation(
        JAX_STORE, jax_version=version("jax"), jaxlib_version=version("jaxlib")
    )
    try:
        seam, why_not = _find_seam()
        if store is not None and seam is None:
            installation.notices.append(f"{why_not}; using {JAX_STORE} (no atomic writes)")
            store = None
        location = _usable(installation, location)
        if location is None:
            installation.store_kind = NO_STORE
        _configure(jax, installation, settings, location, our_store=store is not None)
        if seam is not None:
            if location is not None:  # runs last on uninstall: JAX forgets our store
                installation.add_undo(lambda: _reset_jax_cache(seam))
            key_parts = _capture_key_parts(installation) if store is not None else None
            if store is not None:
                _install_store(installation, seam, store, recorder, key_parts, key_dump)
            _wrap_compile(installation, seam, recorder, store, key_parts)
            _shim_warnings(installation, seam, recorder)
            _hear_compile_logs(installation, recorder)
            if location is not None:
                _reset_jax_cache(seam)  # a cache initialised before us (unlikely) is dropped
        _register_listeners(jax, installation, recorder)
    except BaseException:
        installation.uninstall()  # half a configuration is worse than none
        raise
    return installation


def _usable(installation: Installation, location: str | None) -> str | None:
    """``location``, unless it is a URL that this JAX cannot reach."""
    if location is not None and "://" in location and importlib.util.find_spec("etils") is None:
        # JAX would fail on every lookup and write (and name nothing): say it once.
        installation.notices.append(f"{location}: etils[epath] is not installed: running uncached")
        return None
    return location


def _configure(
    jax: ModuleType,
    installation: Installation,
    settings: Settings,
    location: str | None,
    *,
    our_store: bool,
) -> None:
    """Step 1: JAX's cache configuration. Without a location, lookups are turned off:
    they could only miss."""
    if location is None:
        _update_config(jax, installation, "jax_enable_compilation_cache", False)
        return
    # Our store evicts once per session; JAX's would lock and scan on every write. A
    # remote store is never capped: JAX's eviction needs a local lock file.
    max_size = settings.max_size_bytes
    remote = "://" in location
    jax_cap = -1 if our_store or remote or max_size is None else max_size
    updates: dict[str, Any] = {
        "jax_enable_compilation_cache": True,
        "jax_compilation_cache_dir": location,
        "jax_persistent_cache_min_compile_time_secs": settings.min_compile_time_secs,
        "jax_persistent_cache_min_entry_size_bytes": settings.min_entry_size_bytes,
        "jax_persistent_cache_enable_xla_caches": settings.xla_caches,
        "jax_compilation_cache_max_size": jax_cap,
    }
    for name, value in updates.items():
        _update_config(jax, installation, name, value)


def _update_config(jax: ModuleType, installation: Installation, name: str, value: Any) -> None:
    try:
        old = getattr(jax.config, name)
    except AttributeError:
        installation.notices.append(f"this JAX has no {name}: left as is")
        return
    if old == value:
        return
    jax.config.update(name, value)
    installation.add_undo(lambda: jax.config.update(name, old))


def _capture_key_parts(installation: Installation) -> KeyParts | None:
    """Step 2: hear the parts of each cache key as JAX hashes them (to explain a later
    miss by the part that changed). Feature-detected: without the seam, misses are
    explained by the environment only."""
    try:
        cache_key: ModuleType | None = importlib.import_module("jax._src.cache_key")
    except ImportError:
        cache_key = None
    get = getattr(cache_key, "get", None)
    log = getattr(cache_key, "_log_cache_key_hash", None)
    try:
        shaped = callable(get) and list(inspect.signature(log).parameters) == [  # type: ignore[arg-type]
            "hash_obj",
            "last_serialized",
            "hashfn",
        ]
    except (TypeError, ValueError):
        shaped = False
    if not shaped:
        installation.notices.append(
            "this JAX does not show the parts of its cache keys: misses are explained by "
            "environment, not by the part of the key that changed"
        )
        return None
    assert get is not None and log is not None
    parts = KeyParts()

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

    installation.patch(cache_key, "_log_cache_key_hash", log_cache_key_hash)
    installation.patch(cache_key, "get", get_key)
    return parts


def _install_store(
    installation: Installation,
    seam: _Seam,
    store: Store,
    recorder: Recorder,
    key_parts: KeyParts | None,
    key_dump: KeyDump | None,
) -> None:
    """Step 3: our store behind JAX's cache interface, for our directory only."""
    adapter = _adapter_class(seam.cache_interface)(
        store, recorder, installation, key_parts, key_dump
    )
    original_get_file_cache = seam.compilation_cache.get_file_cache
    root = os.path.realpath(store.root)

    def get_file_cache(path: str) -> Any:
        if os.path.realpath(path) != root:  # a test pointed JAX elsewhere: leave it be
            return original_get_file_cache(path)
        verification = getattr(seam.compilation_cache, "VerificationCache", None)
        from jax._src import config as jax_config

        check = getattr(jax_config, "compilation_cache_check_contents", None)
        if verification is not None and check is not None and check.value:
            return verification(adapter), path
        return adapter, path

    installation.store_kind = OUR_STORE
    installation.patch(seam.compilation_cache, "get_file_cache", get_file_cache)


def _wrap_compile(
    installation: Installation,
    seam: _Seam,
    recorder: Recorder,
    store: Store | None,
    key_parts: KeyParts | None,
) -> None:
    """Step 4: around each compile, tell the recorder whether the program has host
    callbacks (so that a program skipped by a threshold is not blamed on callbacks),
    time it for the entry's header, release the single-flight claims it left, and
    forget its key parts."""
    original = seam.compiler.compile_or_get_cached
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
            if key_parts is not None:
                key_parts.forget()

    installation.patch(seam.compiler, "compile_or_get_cached", compile_or_get_cached)


def _shim_warnings(installation: Installation, seam: _Seam, recorder: Recorder) -> None:
    """Step 5: JAX's cache read/write warnings are counted, never raised into a test."""
    installation.patch(seam.compiler, "warnings", _CacheWarnings(warnings, recorder))


def _hear_compile_logs(installation: Installation, recorder: Recorder) -> None:
    """Step 6: hear, per compile, why JAX did not write a program (it says so at DEBUG
    in jax._src.compiler and jax._src.compilation_cache), without showing those records
    to anyone who would not have seen them. Not jax._src.cache_key: at DEBUG it would
    hash every key's parts twice."""
    names = ("jax._src.compiler", "jax._src.compilation_cache")
    loggers = [logging.getLogger(name) for name in names]
    previous = {logger.name: logger.level for logger in loggers}
    hearing = _CompileLogs(recorder, previous)
    for logger in loggers:
        logger.addFilter(hearing)
        logger.setLevel(_CAPTURING)

    def undo() -> None:
        for logger in loggers:
            logger.removeFilter(hearing)
            if logger.level == _CAPTURING:
                logger.setLevel(previous[logger.name])

    installation.add_undo(undo)


def _adapter_class(interface: type) -> type:
    class StoreCache(interface):  # type: ignore[misc]
        """JAX's CacheInterface over our Store; records hit compile times."""

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

        def _first_use(self) -> None:
            hook, self._installation.on_first_compile = self._installation.on_first_compile, None
            if hook is not None:
                try:
                    hook()
                except Exception as error:
                    self._store.stats.note(f"fingerprint: {type(error).__name__}: {error}")

        def _dump(self, key: str) -> None:
            """``--jax-cache-explain``: the key's inputs, once per key and session."""
            dump, parts = self._key_dump, self._key_parts
            if dump is None or parts is None or key in self._dumped or not dump.wants(key):
                return
            self._dumped.add(key)
            dump.write(key, parts.inputs(key), parts.digests(key), parts.module_text())

        def get(self, key: str) -> bytes | None:
            self._first_use()
            self._dump(key)
            found = self._store.get(key)
            entry = found.entry
            self._recorder.note_lookup(
                key,
                None if entry is None else entry.compile_secs,
                refused=found.refused,
                waited_secs=found.waited_secs,
            )
            return None if entry is None else entry.payload

        def put(self, key: str, value: bytes) -> None:
            started = getattr(_compile_state, "started", None)
            secs = None if started is None else time.perf_counter() - started
            parts = {} if self._key_parts is None else self._key_parts.digests(key)
            self._recorder.note_key_parts(parts)
            if not self._store.put(key, bytes(value), secs, parts) and not self._store.readonly:
                # A read-only cache's miss stays a miss: nothing is written by design.
                self._recorder.note_unwritten("the store could not write it (see its notices)")

    return StoreCache


def _reset_jax_cache(seam: _Seam) -> None:
    """``reset_cache()`` without its INFO log line (suites assert ``caplog`` is empty)."""
    logger = logging.getLogger(seam.compilation_cache.__name__)
    disabled, logger.disabled = logger.disabled, True
    try:
        seam.compilation_cache.reset_cache()
    finally:
        logger.disabled = disabled


def _register_listeners(jax: ModuleType, installation: Installation, recorder: Recorder) -> None:
    """Step 7: the recorder hears JAX's monitoring events."""
    monitoring = jax.monitoring
    monitoring.register_event_listener(recorder.on_event)
    monitoring.register_event_duration_secs_listener(recorder.on_duration)
    unregister_event = getattr(monitoring, "unregister_event_listener", None)
    unregister_duration = getattr(monitoring, "unregister_event_duration_listener", None)
    if unregister_event is not None:
        installation.add_undo(lambda: unregister_event(recorder.on_event))
    if unregister_duration is not None:
        installation.add_undo(lambda: unregister_duration(recorder.on_duration))


@contextmanager
def persistent_cache_disabled() -> Iterator[None]:
    """Really bypass the persistent cache: JAX computes no key, looks nothing up and
    writes nothing. Flipping the config alone does nothing once the cache is
    initialised, so JAX's cache state is reset on the way in and out."""
    jax: Any = _import_jax()

    seam, _ = _find_seam()
    previous = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    if seam is not None:
        _reset_jax_cache(seam)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", previous)
        if seam is not None:
            _reset_jax_cache(seam)


def clear_in_memory_caches() -> None:
    """Drop every traced and compiled program held in memory (public API)."""
    jax: Any = _import_jax()

    jax.clear_caches()


def block_until_ready(value: Any) -> Any:
    """Wait for asynchronous dispatch to finish (public API)."""
    jax: Any = _import_jax()

    return jax.block_until_ready(value)


def fingerprint_outside_a_session(xla_caches: str) -> dict[str, str]:
    """The fingerprint a session would stamp on its entries, computed without one (for
    ``jaxcache key``): JAX is imported, its backends are initialised (nothing compiles)
    and the cache configuration the plugin applies is applied first."""
    jax = _import_jax()
    jax.config.update("jax_persistent_cache_enable_xla_caches", xla_caches)
    jax.devices()
    return fingerprint()


def fingerprint() -> dict[str, str]:
    """What this session's entries depend on besides the program: what goes into every
    cache key (versions, XLA_FLAGS, key-relevant config, compression, backends) and what
    the executables depend on that the key may not hold exactly (the jaxlib build, the
    CPU). Comparing two sessions' fingerprints names why an earlier session's keys
    changed; its machine part (trust.machine_of) names the entries' namespace; the CI
    key (``jaxcache key``) is made from it."""
    from jax import config as jax_config

    result = {
        "jaxlib": version("jaxlib") or "?",
        "jax": version("jax") or "?",
        "jaxlib build": _jaxlib_build(),
        "python": platform.python_version(),
        "os": platform.system(),
        "machine": platform.machine(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "LIBTPU_INIT_ARGS": os.environ.get("LIBTPU_INIT_ARGS", ""),
    }
    for name in _KEY_CONFIG:
        result[name] = str(getattr(jax_config, name, "?"))
    try:
        from jax._src import compilation_cache

        zstd = getattr(compilation_cache, "zstd", None) or getattr(
            compilation_cache, "zstandard", None
        )
        result["compression"] = "zstandard" if zstd is not None else "zlib"
    except ImportError:
        pass
    result.update(_backend_fingerprint())
    return result


def _jaxlib_build() -> str:
    """What tells one jaxlib build from another of the same version: its git revision
    (absent from some wheels) and the version of its extension module."""
    parts = []
    with suppress(Exception):
        from jaxlib import version as jaxlib_version

        parts.append(str(getattr(jaxlib_version, "_git_hash", None) or "")[:12])
    with suppress(Exception):
        from jax._src import lib

        parts.append(str(getattr(lib, "jaxlib_extension_version", "")))
    return " ".join(part for part in parts if part) or "?"


def _backend_fingerprint() -> dict[str, str]:
    """Platform facts, read only from backends the tests already initialised."""
    try:
        from jax._src import xla_bridge

        backends = dict(getattr(xla_bridge, "_backends", {}))
    except ImportError:
        return {}
    result = {}
    for name, backend in sorted(backends.items()):
        result[f"backend {name}"] = f"{backend.platform} {backend.platform_version}".strip()
    if "cpu" in backends:
        result["cpu features"] = _cpu_features()
    return result


def _cpu_features() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    flags = " ".join(sorted(line.split(":", 1)[1].split()))
                    return hashlib.sha256(flags.encode()).hexdigest()[:12]
    except OSError:
        pass
    return "?"
