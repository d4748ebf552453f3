"""Unit tests of option resolution: precedence, paths, sizes and error messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_jaxcache import settings
from pytest_jaxcache.settings import (
    DEFAULT_LOCK_TIMEOUT,
    DIR,
    LOCK_TIMEOUT,
    MAX_SIZE,
    MIN_COMPILE_TIME,
    MIN_ENTRY_SIZE,
    MODE,
    PRUNE_AFTER,
    XLA_CACHES,
    Mode,
    Option,
    Raw,
    Settings,
    SettingsError,
    Source,
    format_size,
    parse_size,
    pick,
)


def resolve(
    tmp_path: Path,
    values: dict[Option, tuple[str | None, str | None, str | None]] | None = None,
) -> Settings:
    """Resolve ``{option: (cli, ini, env)}`` with rootdir ``tmp_path/root`` and
    invocation dir ``tmp_path/here``."""
    raw = {option: Raw(*triple) for option, triple in (values or {}).items()}
    return settings.resolve(raw, rootpath=tmp_path / "root", invocation_dir=tmp_path / "here")


def test_defaults(tmp_path: Path) -> None:
    """With no source speaking: cache off, every program written, 1 GiB cap, read-write."""
    resolved = resolve(tmp_path)
    assert resolved.cache_dir is None
    assert resolved.enabled is False
    assert resolved.dir_source == Source("default", "")
    assert resolved.min_compile_time_secs == 0.0
    assert resolved.min_entry_size_bytes == -1
    assert resolved.max_size_bytes == 2**30
    assert resolved.prune_after_sessions is None
    assert resolved.mode is Mode.READWRITE
    assert resolved.xla_caches == "none"
    assert resolved.lock_timeout_secs == DEFAULT_LOCK_TIMEOUT


# option, attribute, (cli, ini, env) values and what each resolves to
PRECEDENCE: list[tuple[Option, str, tuple[str, str, str], tuple[Any, Any, Any]]] = [
    (MIN_COMPILE_TIME, "min_compile_time_secs", ("0.5", "1.5", "2.5"), (0.5, 1.5, 2.5)),
    (MIN_ENTRY_SIZE, "min_entry_size_bytes", ("10", "20", "30"), (10, 20, 30)),
    (MAX_SIZE, "max_size_bytes", ("1MB", "2KiB", "3000"), (10**6, 2048, 3000)),
    (PRUNE_AFTER, "prune_after_sessions", ("3", "4", "5"), (3, 4, None)),
    (MODE, "mode", ("readonly", "readwrite", "readonly"), (Mode.READONLY, Mode.READWRITE, None)),
    (
        XLA_CACHES,
        "xla_caches",
        ("all", "kernel_cache", "autotune"),
        ("all", "kernel_cache", "autotune"),
    ),
    (LOCK_TIMEOUT, "lock_timeout_secs", ("1", "2", "3"), (1.0, 2.0, None)),
]


@pytest.mark.parametrize(
    "option, attribute, given, expected", PRECEDENCE, ids=[row[0].ini for row in PRECEDENCE]
)
def test_precedence_cli_ini_env_default(
    tmp_path: Path,
    option: Option,
    attribute: str,
    given: tuple[str, str, str],
    expected: tuple[Any, Any, Any],
) -> None:
    """The command line beats ini, ini beats the environment (for options that have an
    environment variable), and the default applies when no source speaks."""
    cli, ini, env = given
    default = getattr(resolve(tmp_path), attribute)
    assert getattr(resolve(tmp_path, {option: (cli, ini, env)}), attribute) == expected[0]
    assert getattr(resolve(tmp_path, {option: (None, ini, env)}), attribute) == expected[1]
    from_env = getattr(resolve(tmp_path, {option: (None, None, env)}), attribute)
    if option.env is None:
        assert from_env == default  # no environment variable for this option
    else:
        assert from_env == expected[2]


def test_pick_reports_source() -> None:
    """pick() returns the winning value together with the name it was given under."""
    raw = Raw("a", "b", "c")
    assert pick(MAX_SIZE, raw) == ("a", Source("cli", "--jax-cache-max-size"))
    assert pick(MAX_SIZE, Raw(None, "b", "c")) == ("b", Source("ini", "jax_cache_max_size"))
    assert pick(MAX_SIZE, Raw(None, None, "c")) == (
        "c",
        Source("env", "JAX_COMPILATION_CACHE_MAX_SIZE"),
    )
    assert pick(MODE, Raw(None, None, "readonly")) == (None, Source("default", ""))
    assert str(Source("ini", "jax_cache_dir")) == "ini jax_cache_dir"
    assert str(Source("env", "X")) == "env X"
    assert str(Source("cli", "--jax-cache-dir")) == "--jax-cache-dir"
    assert str(Source("default", "")) == "default"


# -- cache directory -------------------------------------------------------------------------


def test_dir_precedence_and_bases(tmp_path: Path) -> None:
    """A relative ini dir is taken from the rootdir; CLI and env from the invocation dir."""
    cli = resolve(tmp_path, {DIR: ("c", "i", "e")})
    assert cli.cache_dir == tmp_path / "here" / "c"
    assert cli.dir_source == Source("cli", "--jax-cache-dir")
    assert cli.enabled

    ini = resolve(tmp_path, {DIR: (None, "i", "e")})
    assert ini.cache_dir == tmp_path / "root" / "i"
    assert str(ini.dir_source) == "ini jax_cache_dir"

    env = resolve(tmp_path, {DIR: (None, None, "e")})
    assert env.cache_dir == tmp_path / "here" / "e"
    assert str(env.dir_source) == "env JAX_COMPILATION_CACHE_DIR"


@pytest.mark.parametrize("empty", ["", "   "])
def test_empty_dir_disables(tmp_path: Path, empty: str) -> None:
    """An empty value turns the cache off, even over a lower source that sets one."""
    assert resolve(tmp_path, {DIR: (empty, "i", "e")}).cache_dir is None
    assert resolve(tmp_path, {DIR: (None, empty, "e")}).enabled is False
    assert resolve(tmp_path, {DIR: (None, None, empty)}).enabled is False


def test_dir_expands_user_and_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``~`` and ``$VARS`` are expanded; an absolute path ignores the base."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JAXCACHE_TEST_BASE", str(tmp_path / "var"))
    assert resolve(tmp_path, {DIR: ("~/cache", None, None)}).cache_dir == (
        tmp_path / "home" / "cache"
    )
    assert resolve(tmp_path, {DIR: (None, "$JAXCACHE_TEST_BASE/c", None)}).cache_dir == (
        tmp_path / "var" / "c"
    )
    assert resolve(tmp_path, {DIR: (None, " ${JAXCACHE_TEST_BASE}/d ", None)}).cache_dir == (
        tmp_path / "var" / "d"
    )
    absolute = tmp_path / "abs"
    assert resolve(tmp_path, {DIR: (None, str(absolute), None)}).cache_dir == absolute


@pytest.mark.parametrize(
    "position, source",
    [(0, "--jax-cache-dir"), (1, "ini jax_cache_dir"), (2, "env JAX_COMPILATION_CACHE_DIR")],
)
def test_dir_that_is_a_file_names_the_source(tmp_path: Path, position: int, source: str) -> None:
    """A cache dir that exists as a file is an error naming where it was set."""
    path = tmp_path / "a-file"
    path.write_text("")
    triple: list[str | None] = [None, None, None]
    triple[position] = str(path)
    with pytest.raises(SettingsError) as info:
        resolve(tmp_path, {DIR: (triple[0], triple[1], triple[2])})
    message = str(info.value)
    assert message.startswith(f"{source}: ")
    assert str(path) in message
    assert "not a directory" in message


def test_existing_directory_is_fine(tmp_path: Path) -> None:
    """An existing directory is accepted as is."""
    (tmp_path / "here" / "cache").mkdir(parents=True)
    assert resolve(tmp_path, {DIR: ("cache", None, None)}).cache_dir == tmp_path / "here" / "cache"


# -- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("500MB", 500 * 10**6),
        ("2GiB", 2 * 2**30),
        ("1.5G", 1_500_000_000),
        ("123", 123),
        ("123b", 123),
        (" 4 kib ", 4 * 1024),
        ("1.5KiB", 1536),
        ("3t", 3 * 10**12),
        ("2Mi", 2 * 2**20),
        ("none", None),
        ("None", None),
        ("unlimited", None),
        ("-1", None),
        (" -1 ", None),
    ],
)
def test_parse_size(text: str, expected: int | None) -> None:
    """Decimal and binary units, bare bytes, and the no-limit spellings."""
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1.2.3", "5XB", "-5", "5ib", "1e9", "MB", "nan"])
def test_parse_size_rejects(text: str) -> None:
    """Anything else is a ValueError that quotes the input."""
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize(
    "num_bytes, expected",
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (2**20, "1.0 MiB"),
        (5 * 2**30, "5.0 GiB"),
        (2**40, "1024.0 GiB"),
    ],
)
def test_format_size(num_bytes: int, expected: str) -> None:
    """Binary units, one decimal above bytes, GiB as the largest unit."""
    assert format_size(num_bytes) == expected


def test_format_parse_agree() -> None:
    """A size parsed from binary units formats back to the same amount."""
    for text in ("3GiB", "512MiB", "7KiB"):
        number, unit = format_size(parse_size(text) or 0).split()
        assert f"{float(number):g}{unit}" == text


# -- bad values name their source ------------------------------------------------------------


BAD = [
    (MIN_COMPILE_TIME, "abc", "expected a number"),
    (MIN_COMPILE_TIME, "-0.5", "must be at least 0"),
    (MIN_COMPILE_TIME, "nan", "must be at least 0"),
    (MIN_COMPILE_TIME, "inf", "must be at least 0"),
    (MIN_ENTRY_SIZE, "1.5", "expected an integer"),
    (MIN_ENTRY_SIZE, "-2", "must be at least -1"),
    (MAX_SIZE, "lots", "not a size"),
    (MAX_SIZE, "0", "must be positive"),
    (MAX_SIZE, "0.1", "must be positive"),
    (PRUNE_AFTER, "-3", "must be at least 1"),
    (PRUNE_AFTER, "soon", "expected an integer"),
    (MODE, "rw", "expected one of readwrite, readonly"),
    (LOCK_TIMEOUT, "-1", "must be at least 0"),
    (LOCK_TIMEOUT, "forever", "expected a number"),
]


@pytest.mark.parametrize("position", [0, 1, 2], ids=["cli", "ini", "env"])
@pytest.mark.parametrize(
    "option, text, problem", BAD, ids=[f"{row[0].ini}={row[1]}" for row in BAD]
)
def test_bad_value_names_source(
    tmp_path: Path, option: Option, text: str, problem: str, position: int
) -> None:
    """A bad value raises SettingsError naming the CLI option, ini key or env variable
    it came from, the problem, and the value."""
    triple: list[str | None] = [None, None, None]
    triple[position] = text
    if position == 2 and option.env is None:
        resolve(tmp_path, {option: (triple[0], triple[1], triple[2])})  # env is not read
        return
    with pytest.raises(SettingsError) as info:
        resolve(tmp_path, {option: (triple[0], triple[1], triple[2])})
    source = [option.cli, f"ini {option.ini}", f"env {option.env}"][position]
    message = str(info.value)
    assert message.startswith(f"{source}: "), message
    assert problem in message
    assert repr(text) in message


def test_lower_source_is_not_validated_when_overridden(tmp_path: Path) -> None:
    """Only the winning value is checked: a bad env value under a good CLI value is fine."""
    resolved = resolve(tmp_path, {MIN_COMPILE_TIME: ("1", None, "bogus")})
    assert resolved.min_compile_time_secs == 1.0


@pytest.mark.parametrize("text", ["", "0", "never", "none", "NONE"])
def test_prune_after_off(tmp_path: Path, text: str) -> None:
    """Spellings of 'never prune'."""
    assert resolve(tmp_path, {PRUNE_AFTER: (text, None, None)}).prune_after_sessions is None


def test_value_normalisation(tmp_path: Path) -> None:
    """Mode is case-insensitive and trimmed; xla caches trimmed, empty means none;
    -1 is a valid minimum entry size; 0 is a valid lock timeout; no cap via none."""
    resolved = resolve(
        tmp_path,
        {
            MODE: (" ReadOnly ", None, None),
            XLA_CACHES: ("  all  ", None, None),
            MIN_ENTRY_SIZE: ("-1", None, None),
            LOCK_TIMEOUT: ("0", None, None),
            MAX_SIZE: (None, "none", "5MB"),
        },
    )
    assert resolved.mode is Mode.READONLY
    assert resolved.xla_caches == "all"
    assert resolved.min_entry_size_bytes == -1
    assert resolved.lock_timeout_secs == 0.0
    assert resolved.max_size_bytes is None
    assert resolve(tmp_path, {XLA_CACHES: (" ", None, None)}).xla_caches == "none"


def test_remote_url_is_kept_as_a_url(tmp_path: Path) -> None:
    """``gs://bucket/dir`` is not a relative path to expand into the invocation dir."""
    raw = {settings.DIR: settings.Raw("gs://bucket/jaxcache", None, None)}
    resolved = settings.resolve(raw, rootpath=tmp_path, invocation_dir=tmp_path)
    assert resolved.enabled
    assert resolved.cache_dir is None
    assert resolved.remote_url == "gs://bucket/jaxcache"
    assert resolved.location == "gs://bucket/jaxcache"
