"""THE option table, and its resolution: command line > ini file > environment > default.

Every option is declared once, in :data:`OPTIONS`: its command-line name, ini key,
environment variable (where it has one), help text, parser and default. The plugin
registers the table with pytest, the ``jaxcache`` command line reuses its parsers, and
:func:`resolve` turns what the three sources say into one :class:`Settings`.

Bad input becomes a :class:`SettingsError` that names where the value came from, so the
user knows which line to fix. Nothing here touches pytest or JAX.
"""

from __future__ import annotations

import enum
import errno
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Generic, NamedTuple, TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    """A user-supplied value is invalid; the message names its source."""


class Mode(enum.Enum):
    READWRITE = "readwrite"
    READONLY = "readonly"


class StoreKind(enum.Enum):
    OURS = "pytest-jaxcache"
    JAX = "jax"


class Lowering(enum.Enum):
    """The lowering tier: off, on (serve lowered modules), verify (lower anyway, compare)."""

    OFF = "off"
    ON = "on"
    VERIFY = "verify"


class Shard(NamedTuple):
    """Shard ``number`` (1-based) of ``total``."""

    number: int
    total: int

    def __str__(self) -> str:
        return f"{self.number}/{self.total}"


MAX_SHARDS = 1000
# Patterns are compiled on first use (re keeps them): only a session that sets the option
# pays for its pattern, and every session imports this module.
_SHARD = r"\s*(\d{1,4})\s*/\s*(\d{1,4})\s*"


def parse_shard(text: str, _base: Path | None = None) -> Shard | None:
    """``"2/4"`` -> shard 2 of 4 (empty: none)."""
    if not text.strip():
        return None
    match = re.fullmatch(_SHARD, text)
    if match is None:
        raise ValueError(f"expected K/N such as 2/4, got {_short(text)}")
    number, total = int(match.group(1)), int(match.group(2))
    if not 1 <= number <= total <= MAX_SHARDS:
        raise ValueError(f"expected 1 <= K <= N <= {MAX_SHARDS}, got {_short(text)}")
    return Shard(number, total)


class Source(NamedTuple):
    """Where a resolved value came from, for error messages and the report header."""

    kind: str  # "cli", "ini", "env" or "default"
    name: str  # the option, ini key or environment variable

    def __str__(self) -> str:
        if self.kind == "cli":
            return self.name
        if self.kind in ("ini", "env"):
            return f"{self.kind} {self.name}"
        return "default"


DEFAULT = Source("default", "")

# A parser turns one source's text into a value, or raises ValueError with a message
# that does not repeat the source (resolve adds it). ``base`` is the directory that
# relative paths are taken from: the rootdir for ini values, else the invocation dir.
Parser = Callable[[str, Path], T]


class Option(Generic[T]):
    """One setting: its names in each source, how to read it, its default. (A plain
    class, not a dataclass: this module is imported by every pytest session, and
    generating a dataclass's methods costs about a millisecond each.)"""

    __slots__ = (
        "attr",
        "cli",
        "default",
        "env",
        "flag",
        "help",
        "ini",
        "jax_spelling",
        "metavar",
        "parse",
    )  # fmt: skip

    def __init__(
        self,
        attr: str,  # the Settings field
        parse: Parser[T],
        default: T,
        help: str = "",
        cli: str | None = None,
        ini: str | None = None,
        env: str | None = None,
        flag: bool = False,  # on the command line it takes no value
        metavar: str | None = None,
        # JAX reads ``env`` itself when it is imported: how to write a value JAX accepts.
        jax_spelling: Callable[[T], str] | None = None,
    ) -> None:
        self.attr, self.parse, self.default, self.help = attr, parse, default, help
        self.cli, self.ini, self.env, self.flag = cli, ini, env, flag
        self.metavar, self.jax_spelling = metavar, jax_spelling

    def __repr__(self) -> str:
        return f"Option({self.attr!r})"


class Raw(NamedTuple):
    """One setting as the three sources give it (``None``: that source is silent)."""

    cli: str | None = None
    ini: str | None = None
    env: str | None = None


# -- parsers ----------------------------------------------------------------------------------

_REMOTE = r"^[A-Za-z][A-Za-z0-9+.-]*://"
_SIZE = r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$"
_UNITS = {
    "": 1,
    "b": 1,
    **{p: 10 ** (3 * n) for n, p in enumerate("kmgt", start=1)},
    **{p + "b": 10 ** (3 * n) for n, p in enumerate("kmgt", start=1)},
    **{p + "i": 2 ** (10 * n) for n, p in enumerate("kmgt", start=1)},
    **{p + "ib": 2 ** (10 * n) for n, p in enumerate("kmgt", start=1)},
}
_NO_LIMIT = {"none", "unlimited", "-1"}
_NEVER = {"never", "none"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# jax_persistent_cache_enable_xla_caches: "all", "none", or a comma-separated list.
XLA_CACHE_NAMES = ("xla_gpu_kernel_cache_file", "xla_gpu_per_fusion_autotune_cache_dir")


MAX_BYTES = 2**50  # a PiB: no cache, entry or threshold is larger
MAX_SECS = 7 * 24 * 3600.0  # a week: no wait or threshold is longer
MAX_TEXT = 4096  # characters of any one value
MAX_DURATIONS = 1_000_000
MAX_SESSIONS = 1000  # sessions a cache remembers (bookkeeping.SESSIONS_KEPT)


def _short(text: str) -> str:
    """A value for an error message: at most 60 characters of it."""
    return repr(text) if len(text) <= 60 else f"{text[:60]!r}... ({len(text)} characters)"


def parse_size(value: str) -> int | None:
    """``"2GB"`` -> 2_000_000_000, ``"512MiB"`` -> 536_870_912; ``"none"`` -> no limit.
    At most :data:`MAX_BYTES`."""
    if value.strip().lower() in _NO_LIMIT:
        return None
    match = re.match(_SIZE, value, re.IGNORECASE) if len(value) <= MAX_TEXT else None
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {_short(value)} (use e.g. 500MB, 2GiB, or none)")
    from decimal import Decimal  # exact for any digits; imported when a size is given

    size = Decimal(match.group(1)) * _UNITS[match.group(2).lower()]
    if size > MAX_BYTES:
        raise ValueError(f"at most 1 PiB, got {_short(value)}")
    return int(size)


def _number(text: str, *, integer: bool, minimum: float, maximum: float) -> float:
    """A number from ``text`` within [``minimum``, ``maximum``]."""
    if len(text) > 64 and text.lstrip("+").isdigit():  # no number we take has more digits
        raise ValueError(f"must be at most {maximum:g}, got {_short(text)}")
    try:
        if len(text) > 64:
            raise ValueError
        number = int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"expected {kind}, got {_short(text)}") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {_short(text)}")
    if number < minimum:
        raise ValueError(f"must be at least {minimum:g}, got {_short(text)}")
    if number > maximum:
        raise ValueError(f"must be at most {maximum:g}, got {_short(text)}")
    return number


def parse_seconds(text: str, _base: Path | None = None) -> float:
    return _number(text.strip(), integer=False, minimum=0, maximum=MAX_SECS)


def parse_min_entry_size(text: str, _base: Path | None = None) -> int:
    return int(_number(text.strip(), integer=True, minimum=-1, maximum=MAX_BYTES))


def parse_max_size(text: str, _base: Path | None = None) -> int | None:
    size = parse_size(text)
    if size is not None and size <= 0:
        raise ValueError(f"the size cap must be positive (or 'none'), got {_short(text)}")
    return size


def parse_prune_after(text: str, _base: Path | None = None) -> int | None:
    """Sessions without use before an entry is pruned; ``never`` (or empty) is off."""
    if text.strip().lower() in _NEVER | {""}:
        return None
    return int(_number(text.strip(), integer=True, minimum=1, maximum=MAX_SESSIONS))


def parse_durations(text: str, _base: Path | None = None) -> int:
    return int(_number(text.strip(), integer=True, minimum=-1, maximum=MAX_DURATIONS))


def parse_bool(text: str, _base: Path | None = None) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {_short(text)}")


def _choice(enum_type: type[enum.Enum]) -> Parser[Any]:
    def parse(text: str, _base: Path) -> Any:
        try:
            return enum_type(text.strip().lower())
        except ValueError:
            choices = ", ".join(str(member.value) for member in enum_type)
            raise ValueError(f"expected one of {choices}, got {_short(text)}") from None

    return parse


def parse_xla_caches(text: str, _base: Path | None = None) -> str:
    value = text.strip() or "none"
    if value in ("all", "none"):
        return value
    names = [name.strip() for name in value.split(",")]
    unknown = [name for name in names if name not in XLA_CACHE_NAMES]
    if unknown:
        choices = ", ".join(("all", "none", *XLA_CACHE_NAMES))
        raise ValueError(f"expected {choices} (or a comma-separated list), got {_short(text)}")
    return ",".join(names)


def expand_path(value: str, base: Path) -> Path:
    """``~`` and ``$VARS`` expanded, relative paths taken from ``base``."""
    path = Path(os.path.expandvars(os.path.expanduser(value)))
    return path if path.is_absolute() else base / path


class Location(NamedTuple):
    """Where the cache lives: a local directory, a URL, or nowhere (off)."""

    path: Path | None = None
    url: str | None = None


def parse_location(text: str, base: Path) -> Location:
    value = text.strip()
    if not value:
        return Location()
    if re.match(_REMOTE, value):
        return Location(url=value)
    path = expand_path(value, base)
    try:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{str(path)!r} exists and is not a directory")
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            raise ValueError(
                f"{str(path)[:60]!r}... ({len(str(path))} characters): {error.strerror}"
            ) from None
        # A directory we may not look into: the store says so when it opens, and runs uncached.
    return Location(path=path)


def parse_url(text: str, _base: Path | None = None) -> str | None:
    value = text.strip()
    if not value:
        return None
    if not re.match(_REMOTE, value):
        raise ValueError(
            f"expected a URL such as gs://bucket/prefix or s3://bucket/prefix, got {_short(text)}"
        )
    return value.rstrip("/")


def parse_positive_seconds(text: str, _base: Path | None = None) -> float:
    seconds = parse_seconds(text)
    if seconds <= 0:
        raise ValueError(f"must be more than 0, got {_short(text)}")
    return seconds


def default_local_dir(url: str) -> Path:
    """The local first tier of a remote given as the cache directory:
    ``$XDG_CACHE_HOME/pytest-jaxcache/<digest of the URL>`` (``~/.cache`` by default)."""
    import hashlib  # only for a URL as the cache directory

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-jaxcache" / hashlib.sha256(url.encode()).hexdigest()[:16]


def parse_path(text: str, base: Path) -> Path | None:
    value = text.strip()
    return expand_path(value, base) if value else None


def parse_globs(text: str, _base: Path | None = None) -> tuple[str, ...]:
    """``"jit_loss*, jit_step"`` -> ("jit_loss*", "jit_step"): program names or globs."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


# -- the table --------------------------------------------------------------------------------

DEFAULT_MAX_SIZE = 2**30
DEFAULT_LOCK_TIMEOUT = 120.0
DEFAULT_DURATIONS = 10
DEFAULT_EXPLAIN_DIR = "jaxcache-explain"

# fmt: off
# One declaration per option: attribute, parser, default; its names on the command line,
# in the ini file and in the environment; help. Ordered as ``--help`` lists them.
DIR: Option[Location] = Option("location", parse_location, Location(),
    cli="--jax-cache-dir", ini="jax_cache_dir", env="JAX_COMPILATION_CACHE_DIR", metavar="PATH",
    help="directory of the shared JAX compilation cache; empty disables")
MIN_COMPILE_TIME: Option[float] = Option("min_compile_time_secs", parse_seconds, 0.0,
    cli="--jax-cache-min-compile-time", ini="jax_cache_min_compile_time",
    env="JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", metavar="SECS",
    help="write programs that compiled in at least this many seconds (default 0: every program)")
MIN_ENTRY_SIZE: Option[int] = Option("min_entry_size_bytes", parse_min_entry_size, -1,
    cli="--jax-cache-min-entry-size", ini="jax_cache_min_entry_size", metavar="BYTES",
    env="JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
    help="write entries of at least this many bytes (default -1: no minimum)")
MAX_SIZE: Option[int | None] = Option("max_size_bytes", parse_max_size, DEFAULT_MAX_SIZE,
    cli="--jax-cache-max-size", ini="jax_cache_max_size", env="JAX_COMPILATION_CACHE_MAX_SIZE",
    metavar="SIZE", jax_spelling=lambda size: str(-1 if size is None else size),
    help="size cap, enforced at session end by evicting least recently used entries: "
    "500MB, 2GiB, none (default 1GiB)")
PRUNE_AFTER: Option[int | None] = Option("prune_after_sessions", parse_prune_after, None,
    metavar="N", cli="--jax-cache-prune-after", ini="jax_cache_prune_after",
    help="remove entries no session used in the last N sessions (default: never)")
MODE: Option[Mode] = Option("mode", _choice(Mode), Mode.READWRITE,
    cli="--jax-cache-mode", ini="jax_cache_mode",
    help="readwrite (default) or readonly: serve hits, never write, evict or touch")
XLA_CACHES: Option[str] = Option("xla_caches", parse_xla_caches, "none", metavar="VALUE",
    cli="--jax-cache-xla-caches", ini="jax_cache_xla_caches",
    env="JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES",
    help="jax_persistent_cache_enable_xla_caches (default none: keys do not depend on the "
    "cache path; 'all' turns the GPU autotune and kernel caches on)")
LOCK_TIMEOUT: Option[float] = Option("lock_timeout_secs", parse_seconds, DEFAULT_LOCK_TIMEOUT,
    cli="--jax-cache-lock-timeout", ini="jax_cache_lock_timeout", metavar="SECS",
    help="longest wait for another process compiling the same program "
    f"(default {DEFAULT_LOCK_TIMEOUT:g})")
STRICT: Option[bool] = Option("strict", parse_bool, False, flag=True,
    cli="--jax-cache-strict", ini="jax_cache_strict",
    help="fail the session when a test not marked jax_errors compiled uncachable programs")
STORE: Option[StoreKind] = Option("store", _choice(StoreKind), StoreKind.OURS,
    cli="--jax-cache-store", ini="jax_cache_store",
    help="pytest-jaxcache: our atomic, locked, bounded store (default); jax: JAX's own "
    "file store (for comparisons)")
DURATIONS: Option[int] = Option("durations", parse_durations, DEFAULT_DURATIONS, metavar="N",
    cli="--jax-cache-durations", ini="jax_cache_durations",
    help=f"show the N slowest-compiling test phases (0: all, -1: none; default "
    f"{DEFAULT_DURATIONS})")
REPORT: Option[Path | None] = Option("report_path", parse_path, None, metavar="PATH",
    cli="--jax-cache-report", ini="jax_cache_report",
    help="write the session's compile report as JSON to PATH")
SUMMARY: Option[Path | None] = Option("summary_path", parse_path, None, metavar="PATH",
    cli="--jax-cache-summary", ini="jax_cache_summary", env="GITHUB_STEP_SUMMARY",
    help="append a Markdown summary of the session to PATH (in GitHub Actions: the job "
    "summary; empty: none)")
REMOTE: Option[str | None] = Option("remote", parse_url, None, metavar="URL",
    cli="--jax-cache-remote", ini="jax_cache_remote", env="JAX_CACHE_REMOTE",
    help="a bucket behind the local cache, shared by a fleet: gs://bucket/prefix, "
    "s3://bucket/prefix, any fsspec URL (a URL as --jax-cache-dir means the same)")
REMOTE_MODE: Option[Mode] = Option("remote_mode", _choice(Mode), Mode.READWRITE,
    cli="--jax-cache-remote-mode", ini="jax_cache_remote_mode", env="JAX_CACHE_REMOTE_MODE",
    help="readwrite (default) or readonly: read the remote, never upload to it")
REMOTE_TIMEOUT: Option[float] = Option("remote_timeout_secs", parse_positive_seconds, 10.0,
    cli="--jax-cache-remote-timeout", ini="jax_cache_remote_timeout", metavar="SECS",
    help="deadline of each remote operation (default 10); a few failures in a row turn "
    "the remote off for the session")
PREFETCH: Option[bool] = Option("prefetch", parse_bool, True, metavar="yes|no",
    cli="--jax-cache-prefetch", ini="jax_cache_prefetch",
    help="download what the last sessions of this machine used, in one bulk transfer, at "
    "the first compile (default yes)")
SHARED: Option[bool] = Option("shared", parse_bool, False, flag=True,
    cli="--jax-cache-shared", ini="jax_cache_shared", env="JAX_CACHE_SHARED",
    help="load from a cache directory that other users can write (shared on purpose): "
    "every one of them can then run code in your tests")
LOAD_UNVERIFIED: Option[bool] = Option("load_unverified", parse_bool, False, flag=True,
    cli="--jax-cache-load-unverified", ini="jax_cache_load_unverified",
    env="JAX_CACHE_LOAD_UNVERIFIED",
    help="without JAX_CACHE_SIGNING_KEY, load signed entries without checking their "
    "signature (a pull request from a fork reading a cache it trusts)")
EXPLAIN: Option[tuple[str, ...]] = Option("explain", parse_globs, (), metavar="NAME",
    cli="--jax-cache-explain", ini="jax_cache_explain",
    help="for programs named NAME (a name or glob as the report shows them, e.g. "
    "'jit_loss*'; comma-separated), write what went into each part of their cache keys "
    "to --jax-cache-explain-dir, to diff with an earlier run's")
EXPLAIN_DIR: Option[Path | None] = Option("explain_dir", parse_path, None, metavar="PATH",
    cli="--jax-cache-explain-dir", ini="jax_cache_explain_dir",
    help=f"where --jax-cache-explain writes (default: {DEFAULT_EXPLAIN_DIR} in the "
    "invocation directory)")
SHARD: Option[Shard | None] = Option("shard", parse_shard, None, metavar="K/N",
    cli="--jax-cache-shard", ini="jax_cache_shard", env="JAX_CACHE_SHARD",
    help="run shard K of N (a CI matrix job): every test in exactly one shard, the shards "
    "balanced by each test's predicted cost (earlier sessions, and which programs the "
    "cache holds now)")
TIMELINE: Option[Path | None] = Option("timeline_path", parse_path, None, metavar="FILE.html",
    cli="--jax-cache-timeline", ini="jax_cache_timeline",
    help="write a timeline of the session (a row per worker, a bar per test: compiling, "
    "loading, running) as one self-contained HTML file")
LOWERING: Option[Lowering] = Option("lowering", _choice(Lowering), Lowering.OFF,
    cli="--jax-cache-lowering", ini="jax_cache_lowering", env="JAX_CACHE_LOWERING",
    help="off (default), on: serve lowered modules from the cache and skip lowering on "
    "warm runs, verify: lower anyway and check the cached module is the same")
# fmt: on

OPTIONS: tuple[Option[Any], ...] = (
    DIR,
    MIN_COMPILE_TIME,
    MIN_ENTRY_SIZE,
    MAX_SIZE,
    PRUNE_AFTER,
    MODE,
    XLA_CACHES,
    LOCK_TIMEOUT,
    STRICT,
    STORE,
    DURATIONS,
    REPORT,
    SUMMARY,
    REMOTE,
    REMOTE_MODE,
    REMOTE_TIMEOUT,
    PREFETCH,
    SHARED,
    LOAD_UNVERIFIED,
    EXPLAIN,
    EXPLAIN_DIR,
    SHARD,
    TIMELINE,
    LOWERING,
)


_NO_SOURCES: Mapping[str, Source] = MappingProxyType({})


class Settings(NamedTuple):
    """The resolved configuration of one pytest session. (A named tuple, not a frozen
    dataclass: generating a dataclass's methods would cost every session a few ms.)"""

    location: Location = DIR.default
    min_compile_time_secs: float = MIN_COMPILE_TIME.default
    min_entry_size_bytes: int = MIN_ENTRY_SIZE.default
    max_size_bytes: int | None = MAX_SIZE.default
    prune_after_sessions: int | None = PRUNE_AFTER.default
    mode: Mode = MODE.default
    xla_caches: str = XLA_CACHES.default
    lock_timeout_secs: float = LOCK_TIMEOUT.default
    strict: bool = STRICT.default
    store: StoreKind = STORE.default
    durations: int = DURATIONS.default
    report_path: Path | None = REPORT.default
    summary_path: Path | None = SUMMARY.default
    remote: str | None = REMOTE.default
    remote_mode: Mode = REMOTE_MODE.default
    remote_timeout_secs: float = REMOTE_TIMEOUT.default
    prefetch: bool = PREFETCH.default
    shared: bool = SHARED.default
    load_unverified: bool = LOAD_UNVERIFIED.default
    explain: tuple[str, ...] = EXPLAIN.default
    explain_dir: Path | None = EXPLAIN_DIR.default
    shard: Shard | None = SHARD.default
    timeline_path: Path | None = TIMELINE.default
    lowering: Lowering = LOWERING.default
    sources: Mapping[str, Source] = _NO_SOURCES

    def source(self, option: Option[Any]) -> Source:
        return self.sources.get(option.attr, DEFAULT)

    @property
    def cache_dir(self) -> Path | None:
        """The local directory: the one given, or the local first tier of a remote given
        as the directory (with our store; JAX's own store takes the URL itself)."""
        if self.location.url is not None and self.store is StoreKind.OURS:
            return default_local_dir(self.location.url)
        return self.location.path

    @property
    def remote_url(self) -> str | None:
        """The remote tier (ours), or, with JAX's own store, the URL JAX is pointed at."""
        return self.remote or self.location.url

    @property
    def enabled(self) -> bool:
        return self.cache_dir is not None or self.remote_url is not None

    @property
    def dir_source(self) -> Source:
        return self.source(DIR)

    @property
    def where(self) -> str:
        """The cache location as the report header shows it."""
        if self.store is StoreKind.JAX and self.location.url is not None:
            return self.location.url
        remote = f" + {self.remote_url}" if self.remote_url else ""
        return f"{self.cache_dir}{remote}"


def pick(option: Option[Any], raw: Raw) -> tuple[str | None, Source]:
    """The highest-priority value that a source gives, and that source."""
    if raw.cli is not None and option.cli is not None:
        return raw.cli, Source("cli", option.cli)
    if raw.ini is not None and option.ini is not None:
        return raw.ini, Source("ini", option.ini)
    if raw.env is not None and option.env is not None:
        return raw.env, Source("env", option.env)
    return None, DEFAULT


def parse_one(option: Option[T], text: str, source: Source, base: Path) -> T:
    """``option``'s value from ``text``; a bad value names ``source``."""
    try:
        if len(text) > MAX_TEXT:
            raise ValueError(f"at most {MAX_TEXT} characters, got {len(text)}")
        if "\x00" in text:
            raise ValueError("a NUL character is not allowed")
        return option.parse(text, base)
    except ValueError as error:
        raise SettingsError(f"{source}: {error}") from None


def jax_environment(environ: Mapping[str, str], base: Path) -> dict[str, str]:
    """Rewrites of the variables JAX reads on import that we accept in a form JAX does
    not (``JAX_COMPILATION_CACHE_MAX_SIZE=500MB``), so that importing JAX cannot fail on
    them. A value neither of us accepts is an error naming the variable, even when a
    higher source overrides it for us: JAX would still read it."""
    rewrites = {}
    for option in OPTIONS:
        if option.env is None or option.jax_spelling is None or option.env not in environ:
            continue
        value = parse_one(option, environ[option.env], Source("env", option.env), base)
        rewrites[option.env] = option.jax_spelling(value)
    return rewrites


def resolve(raw: Mapping[Option[Any], Raw], *, rootpath: Path, invocation_dir: Path) -> Settings:
    """Resolve every option; raise :class:`SettingsError` on the first bad value. Only
    the winning source's value is validated."""
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for option in OPTIONS:
        text, source = pick(option, raw.get(option, Raw()))
        if text is None:
            continue
        base = rootpath if source.kind == "ini" else invocation_dir
        values[option.attr] = parse_one(option, text, source, base)
        sources[option.attr] = source
    resolved = Settings(**values, sources=sources)
    if resolved.remote is not None and resolved.location.url is not None:
        raise SettingsError(
            f"{resolved.dir_source} and {resolved.source(REMOTE)} both name a remote: give "
            "--jax-cache-dir a local directory, or leave --jax-cache-remote out"
        )
    wants_dir = resolved.explain or resolved.lowering is Lowering.VERIFY
    if wants_dir and resolved.explain_dir is None:  # verify writes the modules that differ
        resolved = resolved._replace(explain_dir=invocation_dir / DEFAULT_EXPLAIN_DIR)
    return resolved
