"""Find JAX without importing it, and configure it the moment the suite imports it.

The plugin never imports JAX itself at start: a process that never imports JAX (an
xdist controller, a suite that does not use JAX) never pays for it, and yet the cache
is configured before the importing line can compile anything.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from contextlib import suppress
from types import ModuleType
from typing import Any


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


def import_jax() -> ModuleType:
    ensure_installed()
    try:
        return importlib.import_module("jax")
    except Exception as error:  # a broken install: say so once, plainly
        raise JaxMissing(f"JAX failed to import: {type(error).__name__}: {error}") from error


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a callback the moment ``import jax`` completes, before the importer's next
    line.

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


def keep_jax_cache_off(variable: str) -> Callable[[], None]:
    """The user switched the cache off explicitly (an empty ``--jax-cache-dir`` or ini
    value), over ``variable`` in the environment, which JAX would read on import.
    Returns the undo: the variable as it was (a later session in this process, as
    pytester runs them, starts from the user's environment)."""
    previous = os.environ.get(variable)
    os.environ[variable] = ""
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.config.update("jax_compilation_cache_dir", None)

    def undo() -> None:
        if previous is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = previous

    return undo
