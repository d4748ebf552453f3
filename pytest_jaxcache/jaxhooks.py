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
from typing import TYPE_CHECKING, Any

from pytest_jaxcache.recorder import Recorder
from pytest_jaxcache.settings import Settings

if TYPE_CHECKING:
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
            return
        self._real.warn(message, category, stacklevel + 1, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


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
    settings: Settings, recorder: Recorder, *, store: Store | None, location: str | None
) -> Installation:
    """Configure JAX's persistent cache for this process, in named steps. JAX is pointed
    at ``location`` (``None``: no usable cache, lookups off) and served by ``store``
    (``None``: JAX's own file store)."""
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
            if store is not None:
                _install_store(installation, seam, store, recorder)
            _wrap_compile(installation, seam, recorder, store)
            _shim_warnings(installation, seam, recorder)
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


def _install_store(
    installation: Installation, seam: _Seam, store: Store, recorder: Recorder
) -> None:
    """Step 2: our store behind JAX's cache interface, for our directory only."""
    adapter = _adapter_class(seam.cache_interface)(store, recorder, installation)
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
    installation: Installation, seam: _Seam, recorder: Recorder, store: Store | None
) -> None:
    """Step 3: around each compile, tell the recorder whether the program has host
    callbacks (so that a program skipped by a threshold is not blamed on callbacks),
    time it for the entry's header, and release the single-flight claims it left."""
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

    installation.patch(seam.compiler, "compile_or_get_cached", compile_or_get_cached)


def _shim_warnings(installation: Installation, seam: _Seam, recorder: Recorder) -> None:
    """Step 4: JAX's cache read/write warnings are counted, never raised into a test."""
    installation.patch(seam.compiler, "warnings", _CacheWarnings(warnings, recorder))


def _adapter_class(interface: type) -> type:
    class StoreCache(interface):  # type: ignore[misc]
        """JAX's CacheInterface over our Store; records hit compile times."""

        def __init__(self, store: Store, recorder: Recorder, installation: Installation) -> None:
            self._store = store
            self._recorder = recorder
            self._installation = installation
            self._path = store.root  # JAX's reset_cache() names it in a log line

        def _first_use(self) -> None:
            hook, self._installation.on_first_compile = self._installation.on_first_compile, None
            if hook is not None:
                try:
                    hook()
                except Exception as error:
                    self._store.stats.note(f"fingerprint: {type(error).__name__}: {error}")

        def get(self, key: str) -> bytes | None:
            self._first_use()
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
            self._store.put(key, bytes(value), secs)

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
    """Step 5: the recorder hears JAX's monitoring events."""
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
