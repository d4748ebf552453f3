"""What JAX says while it compiles, heard without changing what anyone else hears:

- its log (at DEBUG): why a program it compiled was not written;
- its warnings about cache reads and writes: counted instead of raised, so that
  ``-W error`` never turns a cache problem into a failed test;
- its monitoring events (public ``jax.monitoring``): what the recorder accounts.

The message fragments below are JAX's private wording (``jax._src.compiler`` and
``jax._src.compilation_cache``), the same from JAX 0.6.1 to 0.12.0.1.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

from pytest_jaxcache import reasons
from pytest_jaxcache.jax import seams
from pytest_jaxcache.jax.installation import Installation
from pytest_jaxcache.recorder import Recorder

# JAX's own wording when reading or writing an entry fails.
_READ_WARNING = "Error reading persistent compilation cache entry"
_WRITE_WARNING = "Error writing persistent compilation cache entry"

# Log messages of a compile that is not written, and the reason each means (code, and a
# detail taken from the record's arguments).
_UNWRITTEN_MESSAGES: tuple[tuple[str, str, Callable[[tuple[Any, ...]], str]], ...] = (
    ("because it uses host callbacks", reasons.HOST_CALLBACKS, lambda args: ""),
    # Reasons name the threshold, not each program's figure: programs are grouped by them.
    ("because it took < ", reasons.MIN_COMPILE_TIME, lambda args: f"{args[1]:g}"),
    ("since its size", reasons.MIN_ENTRY_SIZE, lambda args: f"{args[2]}"),
    ("since process_id != 0", reasons.NOT_PROCESS_0, lambda args: ""),
    ("since cache is disabled/not initialized", reasons.CACHE_NOT_INITIALISED, lambda a: ""),
    ("unable to generate cache key", reasons.NO_KEY, lambda args: str(args[-1])),
)
# Where JAX logs it: the modules of compile_or_get_cached and of its cache.
LOGGERS = (seams.COMPILE_OR_GET_CACHED.module, seams.GET_FILE_CACHE.module)
_CAPTURING = 1  # below DEBUG: a level nobody else sets, so it tells that it is ours


class _CacheWarnings:
    """Stands in for the ``warnings`` module inside ``jax._src.compiler``: JAX's cache
    read/write warnings are counted for the report instead of raised. Other warnings
    pass."""

    def __init__(self, real: ModuleType, recorder: Recorder) -> None:
        self._real = real
        self._recorder = recorder

    def warn(
        self, message: Any, category: Any = None, stacklevel: int = 1, *args: Any, **kwargs: Any
    ) -> None:
        text = str(message)
        if text.startswith((_READ_WARNING, _WRITE_WARNING)):
            self._recorder.note_cache_warning(text)
            if text.startswith(_WRITE_WARNING):
                self._recorder.note_unwritten(reasons.JAX_WRITE_FAILED, text.split(": ", 1)[-1])
            return
        self._real.warn(message, category, stacklevel + 1, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def shim_warnings(installation: Installation, recorder: Recorder) -> None:
    """Install step: JAX's cache read/write warnings are counted, never raised."""
    compiler_warnings = seams.find(seams.COMPILER_WARNINGS)
    if compiler_warnings is not warnings:
        installation.notices.append(seams.missing(seams.COMPILER_WARNINGS))
        return
    compiler = importlib.import_module(seams.COMPILER_WARNINGS.module)
    installation.patch(compiler, "warnings", _CacheWarnings(warnings, recorder))


class _CompileLogs(logging.Filter):
    """Hears why JAX compiled a program without writing it, for the compile under way,
    without changing what anyone else sees: a record below the level its logger would
    have without us goes no further than here."""

    def __init__(self, recorder: Recorder, previous: dict[str, int]) -> None:
        super().__init__()
        self._recorder = recorder
        self._previous = previous  # the loggers' own levels before us

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            self._hear(record)
        logger = logging.getLogger(record.name)
        if logger.level != _CAPTURING:  # someone set it since (caplog.set_level): theirs
            return record.levelno >= logger.level
        own = self._previous.get(record.name, logging.NOTSET)
        parent = logger.parent
        threshold = own or (parent.getEffectiveLevel() if parent is not None else logging.WARNING)
        return record.levelno >= threshold

    def _hear(self, record: logging.LogRecord) -> None:
        for fragment, code, detail in _UNWRITTEN_MESSAGES:
            if fragment in record.msg:
                args = record.args if isinstance(record.args, tuple) else ()
                try:
                    said = detail(args)
                except (IndexError, TypeError, ValueError):  # JAX changed its arguments
                    said = ""
                self._recorder.note_unwritten(code, said)
                return


def hear_compile_logs(installation: Installation, recorder: Recorder) -> None:
    """Install step: hear, per compile, why JAX did not write a program (it says so at
    DEBUG), without showing those records to anyone who would not have seen them. Not
    jax._src.cache_key: at DEBUG it would hash every key's parts twice."""
    loggers = [logging.getLogger(name) for name in LOGGERS]
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

    installation.add_undo("stop hearing JAX's compile log", undo)


def register_listeners(jax: ModuleType, installation: Installation, recorder: Recorder) -> None:
    """Install step: the recorder hears JAX's monitoring events (public API)."""
    monitoring = jax.monitoring
    monitoring.register_event_listener(recorder.on_event)
    monitoring.register_event_duration_secs_listener(recorder.on_duration)
    unregister_event = getattr(monitoring, "unregister_event_listener", None)
    unregister_duration = getattr(monitoring, "unregister_event_duration_listener", None)
    if unregister_event is not None:
        installation.add_undo("unregister a listener", lambda: unregister_event(recorder.on_event))
    if unregister_duration is not None:
        installation.add_undo(
            "unregister a listener", lambda: unregister_duration(recorder.on_duration)
        )
