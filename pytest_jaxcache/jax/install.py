"""The installation into JAX of one process, in named steps.

1. configure JAX's persistent cache (``jax.config``);
2. hear each cache key's parts (:mod:`.keyparts`);
3. put our store behind JAX's cache interface (:mod:`.adapter`);
4. wrap each compile (:mod:`.adapter`);
5. count JAX's cache warnings instead of raising them (:mod:`.signals`);
6. hear why JAX did not write a program (:mod:`.signals`);
7. the lowering tier, when asked for (:mod:`.lowering`);
8. listen to JAX's monitoring events (:mod:`.signals`).

A step whose private JAX name is missing gives one notice and is skipped; the session
still caches (with JAX's own store at worst). Nothing here initialises a backend,
creates an array, logs or warns at install time: user suites assert all of those.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pytest_jaxcache.jax import adapter, keyparts, runtime, signals
from pytest_jaxcache.jax.importing import import_jax, version
from pytest_jaxcache.jax.installation import JAX_STORE, NO_STORE, Installation
from pytest_jaxcache.recorder import Recorder
from pytest_jaxcache.settings import Lowering, Settings
from pytest_jaxcache.stats import LoweringStats

if TYPE_CHECKING:
    from pytest_jaxcache.keydump import KeyDump
    from pytest_jaxcache.store import Store


def install(
    settings: Settings,
    recorder: Recorder,
    *,
    store: Store | None,
    location: str | None,
    key_dump: KeyDump | None = None,
    mismatch_dir: Path | None = None,
) -> Installation:
    """Configure JAX's persistent cache for this process. JAX is pointed at ``location``
    (``None``: no usable cache, lookups off) and served by ``store`` (``None``: JAX's own
    file store); ``key_dump`` writes the key inputs of the programs it wants
    (``--jax-cache-explain``); the lowering tier's verify mode writes the modules that
    differ under ``mismatch_dir``."""
    jax = import_jax()
    installation = Installation(
        JAX_STORE, jax_version=version("jax"), jaxlib_version=version("jaxlib")
    )
    try:
        location = _usable(installation, location)
        if location is None:
            installation.store_kind = NO_STORE
            store = None
        _configure(jax, installation, settings, location, our_store=store is not None)
        if location is not None:  # runs last on uninstall: JAX forgets our store
            installation.add_undo("reset JAX's cache", _reset)
        key_parts = None if store is None else keyparts.capture(installation, store.stats.note)
        if store is not None and not adapter.install_store(
            installation, store, recorder, key_parts, key_dump
        ):
            _configure(jax, installation, settings, location, our_store=False)
            store = key_parts = None
        after = [key_parts.forget] if key_parts is not None else []
        if not adapter.wrap_compile(installation, recorder, store, after) and store is not None:
            store.single_flight = False  # nothing would release a claim
        signals.shim_warnings(installation, recorder)
        signals.hear_compile_logs(installation, recorder)
        if store is not None and settings.lowering is not Lowering.OFF:
            _install_lowering(installation, store, settings.lowering, mismatch_dir)
        if location is not None:
            runtime.reset_persistent_cache()  # a cache initialised before us is dropped
        signals.register_listeners(jax, installation, recorder)
    except BaseException:
        installation.uninstall()  # half a configuration is worse than none
        raise
    return installation


def _install_lowering(
    installation: Installation, store: Store, mode: Lowering, mismatch_dir: Path | None
) -> None:
    """Step 7: the lowering tier, serving modules from our store's own namespace."""
    from pytest_jaxcache.jax import lowering

    stats = LoweringStats()
    where = (mismatch_dir or Path.cwd()) / "lowering"
    if lowering.install(installation, store, mode, stats, where):
        installation.lowering = stats


def _reset() -> None:
    runtime.reset_persistent_cache()


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
    installation.add_undo(f"restore {name}", lambda: jax.config.update(name, old))
