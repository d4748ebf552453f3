"""Resolve the plugin's options: command line > ini file > environment > default.

Every value is validated here, and bad input becomes a :class:`SettingsError` that
names where the value came from, so the user knows which line to fix. Nothing in
this module touches pytest or JAX: :mod:`pytest_jaxcache.plugin` collects the raw
values and turns a :class:`SettingsError` into a ``pytest.UsageError``.
"""

from __future__ import annotations

import enum
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class SettingsError(ValueError):
    """A user-supplied value is invalid; the message names its source."""


class Mode(enum.Enum):
    READWRITE = "readwrite"
    READONLY = "readonly"


@dataclass(frozen=True)
class Source:
    """Where a resolved value came from, for error messages and the report header."""

    kind: str  # "cli", "ini", "env" or "default"
    name: str  # the option, ini key or environment variable

    def __str__(self) -> str:
        if self.kind == "cli":
            return self.name
        if self.kind == "ini":
            return f"ini {self.name}"
        if self.kind == "env":
            return f"env {self.name}"
        return "default"


@dataclass(frozen=True)
class Raw:
    """One setting as the three sources give it (``None``: that source is silent)."""

    cli: str | None
    ini: str | None
    env: str | None


@dataclass(frozen=True)
class Option:
    """The names a setting has in each source."""

    cli: str
    ini: str
    env: str | None = None


DIR = Option("--jax-cache-dir", "jax_cache_dir", "JAX_COMPILATION_CACHE_DIR")
MIN_COMPILE_TIME = Option(
    "--jax-cache-min-compile-time",
    "jax_cache_min_compile_time",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
)
MIN_ENTRY_SIZE = Option(
    "--jax-cache-min-entry-size",
    "jax_cache_min_entry_size",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
)
MAX_SIZE = Option("--jax-cache-max-size", "jax_cache_max_size", "JAX_COMPILATION_CACHE_MAX_SIZE")
PRUNE_AFTER = Option("--jax-cache-prune-after", "jax_cache_prune_after")
MODE = Option("--jax-cache-mode", "jax_cache_mode")
XLA_CACHES = Option(
    "--jax-cache-xla-caches",
    "jax_cache_xla_caches",
    "JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES",
)
LOCK_TIMEOUT = Option("--jax-cache-lock-timeout", "jax_cache_lock_timeout")

ALL_OPTIONS = (
    DIR,
    MIN_COMPILE_TIME,
    MIN_ENTRY_SIZE,
    MAX_SIZE,
    PRUNE_AFTER,
    MODE,
    XLA_CACHES,
    LOCK_TIMEOUT,
)

DEFAULT_MAX_SIZE = "1GiB"
DEFAULT_LOCK_TIMEOUT = 120.0


@dataclass(frozen=True)
class Settings:
    """The resolved configuration of one pytest session."""

    cache_dir: Path | None
    dir_source: Source
    remote_url: str | None  # gs://, s3://...: left to JAX's own store
    min_compile_time_secs: float
    min_entry_size_bytes: int
    max_size_bytes: int | None
    prune_after_sessions: int | None
    mode: Mode
    xla_caches: str
    lock_timeout_secs: float

    @property
    def enabled(self) -> bool:
        return self.cache_dir is not None or self.remote_url is not None

    @property
    def location(self) -> str:
        return self.remote_url or str(self.cache_dir)


def pick(option: Option, raw: Raw) -> tuple[str | None, Source]:
    """Return the highest-priority value that a source gives, and that source."""
    if raw.cli is not None:
        return raw.cli, Source("cli", option.cli)
    if raw.ini is not None:
        return raw.ini, Source("ini", option.ini)
    if raw.env is not None and option.env is not None:
        return raw.env, Source("env", option.env)
    return None, Source("default", "")


def expand_path(value: str, base: Path) -> Path:
    """``~`` and ``$VARS`` expanded, relative paths taken from ``base``."""
    path = Path(os.path.expandvars(os.path.expanduser(value)))
    return path if path.is_absolute() else base / path


_REMOTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "kib": 2**10,
    "ki": 2**10,
    "m": 10**6,
    "mb": 10**6,
    "mib": 2**20,
    "mi": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gib": 2**30,
    "gi": 2**30,
    "t": 10**12,
    "tb": 10**12,
    "tib": 2**40,
    "ti": 2**40,
}
_NO_LIMIT = {"none", "unlimited", "-1"}


def parse_size(value: str) -> int | None:
    """``"2GB"`` -> 2_000_000_000, ``"512MiB"`` -> 536_870_912; ``"none"`` -> no limit."""
    if value.strip().lower() in _NO_LIMIT:
        return None
    match = _SIZE.match(value)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {value!r} (use e.g. 500MB, 2GiB, or none)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(num_bytes: int) -> str:
    """A short human size, binary units: ``1536`` -> ``"1.5 KiB"``."""
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _number(value: str, source: Source, *, integer: bool, minimum: float) -> float:
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise SettingsError(f"{source}: expected {kind}, got {value!r}") from None
    if not math.isfinite(number) or number < minimum:
        raise SettingsError(f"{source}: must be at least {minimum:g}, got {value!r}")
    return number


def resolve(
    raw: Mapping[Option, Raw],
    *,
    rootpath: Path,
    invocation_dir: Path,
) -> Settings:
    """Resolve every option; raise :class:`SettingsError` on the first bad value."""

    def value(option: Option) -> tuple[str | None, Source]:
        return pick(option, raw.get(option, Raw(None, None, None)))

    dir_value, dir_source = value(DIR)
    cache_dir: Path | None = None
    remote_url: str | None = None
    if dir_value is not None and _REMOTE.match(dir_value.strip()):
        remote_url = dir_value.strip()
    elif dir_value is not None and dir_value.strip():
        base = rootpath if dir_source.kind == "ini" else invocation_dir
        cache_dir = expand_path(dir_value.strip(), base)
        if cache_dir.exists() and not cache_dir.is_dir():
            raise SettingsError(f"{dir_source}: {str(cache_dir)!r} exists and is not a directory")

    text, source = value(MIN_COMPILE_TIME)
    min_compile_time = 0.0
    if text is not None:
        min_compile_time = _number(text, source, integer=False, minimum=0)

    text, source = value(MIN_ENTRY_SIZE)
    min_entry_size = -1
    if text is not None:
        min_entry_size = int(_number(text, source, integer=True, minimum=-1))

    text, source = value(MAX_SIZE)
    try:
        max_size = parse_size(text if text is not None else DEFAULT_MAX_SIZE)
    except ValueError as error:
        raise SettingsError(f"{source}: {error}") from None
    if max_size is not None and max_size <= 0:
        raise SettingsError(f"{source}: the size cap must be positive (or 'none'), got {text!r}")

    text, source = value(PRUNE_AFTER)
    prune_after: int | None = None
    if text is not None and text.strip().lower() not in ("", "0", "never", "none"):
        prune_after = int(_number(text, source, integer=True, minimum=1))

    text, source = value(MODE)
    mode = Mode.READWRITE
    if text is not None:
        try:
            mode = Mode(text.strip().lower())
        except ValueError:
            choices = ", ".join(m.value for m in Mode)
            raise SettingsError(f"{source}: expected one of {choices}, got {text!r}") from None

    text, source = value(XLA_CACHES)
    xla_caches = "none" if text is None or not text.strip() else text.strip()

    text, source = value(LOCK_TIMEOUT)
    lock_timeout = DEFAULT_LOCK_TIMEOUT
    if text is not None:
        lock_timeout = _number(text, source, integer=False, minimum=0)

    return Settings(
        cache_dir=cache_dir,
        remote_url=remote_url,
        dir_source=dir_source,
        min_compile_time_secs=min_compile_time,
        min_entry_size_bytes=min_entry_size,
        max_size_bytes=max_size,
        prune_after_sessions=prune_after,
        mode=mode,
        xla_caches=xla_caches,
        lock_timeout_secs=lock_timeout,
    )
