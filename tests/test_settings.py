"""Unit tests of the option table: each option's precedence (command line > ini >
environment > default), its parser, and error messages that name the source.

The tables below hold, for every option in ``settings.OPTIONS``, a valid value per
source and a bad value: a new option without them fails ``test_every_option_is_covered``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_jaxcache import settings
from pytest_jaxcache.formats import format_size
from pytest_jaxcache.settings import (
    DEFAULT_LOCK_TIMEOUT,
    DIR,
    MAX_SIZE,
    MODE,
    OPTIONS,
    Location,
    Lowering,
    Mode,
    Option,
    Raw,
    Settings,
    SettingsError,
    Shard,
    Source,
    StoreKind,
    parse_size,
    pick,
)

ROOT = Path("/project/root")
HERE = Path("/project/here")


def resolve(values: dict[Option[Any], Raw] | None = None) -> Settings:
    """Resolve with rootdir ``ROOT`` and invocation dir ``HERE``."""
    return settings.resolve(values or {}, rootpath=ROOT, invocation_dir=HERE)


# For each option: (text, value) as the command line, the ini file and the environment
# give it. Relative paths: ini from the rootdir, the others from the invocation dir.
SAMPLES: dict[str, dict[str, tuple[str, Any]]] = {
    "location": {
        "cli": ("c", Location(path=HERE / "c")),
        "ini": ("i", Location(path=ROOT / "i")),
        "env": ("e", Location(path=HERE / "e")),
    },
    "min_compile_time_secs": {"cli": ("0.5", 0.5), "ini": ("1.5", 1.5), "env": ("2.5", 2.5)},
    "min_entry_size_bytes": {"cli": ("10", 10), "ini": ("20", 20), "env": ("30", 30)},
    "max_size_bytes": {"cli": ("1MB", 10**6), "ini": ("2KiB", 2048), "env": ("3000", 3000)},
    "prune_after_sessions": {"cli": ("3", 3), "ini": ("4", 4)},
    "mode": {"cli": ("readonly", Mode.READONLY), "ini": (" ReadWrite ", Mode.READWRITE)},
    "xla_caches": {
        "cli": (" all ", "all"),
        "ini": ("xla_gpu_kernel_cache_file", "xla_gpu_kernel_cache_file"),
        "env": (
            "xla_gpu_kernel_cache_file, xla_gpu_per_fusion_autotune_cache_dir",
            "xla_gpu_kernel_cache_file,xla_gpu_per_fusion_autotune_cache_dir",
        ),
    },
    "lock_timeout_secs": {"cli": ("1", 1.0), "ini": ("0", 0.0)},
    "strict": {"cli": ("true", True), "ini": ("no", False)},
    "store": {"cli": ("jax", StoreKind.JAX), "ini": ("pytest-jaxcache", StoreKind.OURS)},
    "durations": {"cli": ("5", 5), "ini": ("-1", -1)},
    "report_path": {"cli": ("r.json", HERE / "r.json"), "ini": ("i.json", ROOT / "i.json")},
    "summary_path": {
        "cli": ("s.md", HERE / "s.md"),
        "ini": ("i.md", ROOT / "i.md"),
        "env": ("/runner/summary", Path("/runner/summary")),
    },
    "remote": {
        "cli": ("gs://bucket/prefix", "gs://bucket/prefix"),
        "ini": ("s3://bucket/ci/ ", "s3://bucket/ci"),
        "env": ("memory://cache", "memory://cache"),
    },
    "remote_mode": {
        "cli": ("readonly", Mode.READONLY),
        "ini": ("readwrite", Mode.READWRITE),
        "env": ("READONLY", Mode.READONLY),
    },
    "remote_timeout_secs": {"cli": ("2", 2.0), "ini": ("0.5", 0.5)},
    "prefetch": {"cli": ("no", False), "ini": ("yes", True)},
    "shared": {"cli": ("true", True), "ini": ("false", False), "env": ("1", True)},
    "load_unverified": {"cli": ("true", True), "ini": ("off", False), "env": ("yes", True)},
    "explain": {
        "cli": ("jit_loss*, jit_step", ("jit_loss*", "jit_step")),
        "ini": ("jit_f", ("jit_f",)),
    },
    "explain_dir": {"cli": ("d", HERE / "d"), "ini": ("i", ROOT / "i")},
    "shard": {
        "cli": ("2/4", Shard(2, 4)),
        "ini": (" 1 / 3 ", Shard(1, 3)),
        "env": ("1000/1000", Shard(1000, 1000)),
    },
    "timeline_path": {"cli": ("t.html", HERE / "t.html"), "ini": ("t.html", ROOT / "t.html")},
    "lowering": {
        "cli": ("on", Lowering.ON),
        "ini": ("verify", Lowering.VERIFY),
        "env": ("OFF", Lowering.OFF),
    },
}

# For each option: a bad value and the problem its message names.
BAD: dict[str, tuple[str, str]] = {
    "location": ("", ""),  # every text is a location: see test_location_* instead
    "min_compile_time_secs": ("abc", "expected a number"),
    "min_entry_size_bytes": ("1.5", "expected an integer"),
    "max_size_bytes": ("lots", "not a size"),
    "prune_after_sessions": ("0", "must be at least 1"),
    "mode": ("rw", "expected one of readwrite, readonly"),
    "xla_caches": ("abc", "expected all, none, xla_gpu_kernel_cache_file"),
    "lock_timeout_secs": ("-1", "must be at least 0"),
    "strict": ("maybe", "expected true or false"),
    "store": ("mine", "expected one of pytest-jaxcache, jax"),
    "durations": ("-2", "must be at least -1"),
    "report_path": ("", ""),  # every text is a path
    "summary_path": ("", ""),  # every text is a path
    "remote": ("bucket/prefix", "expected a URL such as gs://bucket/prefix"),
    "remote_mode": ("sometimes", "expected one of readwrite, readonly"),
    "remote_timeout_secs": ("0", "must be more than 0"),
    "prefetch": ("maybe", "expected true or false"),
    "shared": ("sure", "expected true or false"),
    "load_unverified": ("2", "expected true or false"),
    "explain": ("", ""),  # every text is a list of globs (an empty one explains nothing)
    "explain_dir": ("", ""),  # every text is a path
    "shard": ("3/2", "expected 1 <= K <= N <= 1000"),
    "timeline_path": ("", ""),  # every text is a path
    "lowering": ("always", "expected one of off, on, verify"),
}


def _sources(option: Option[Any]) -> list[str]:
    return [kind for kind in ("cli", "ini", "env") if getattr(option, kind) is not None]


def _raw(**texts: str) -> Raw:
    return Raw(cli=texts.get("cli"), ini=texts.get("ini"), env=texts.get("env"))


def test_every_option_is_covered() -> None:
    """Each option has samples for exactly the sources it has, and a bad value."""
    for option in OPTIONS:
        assert set(SAMPLES[option.attr]) == set(_sources(option)), option.attr
        assert option.attr in BAD, option.attr
    assert {option.attr for option in OPTIONS} == set(SAMPLES) == set(BAD)


def test_defaults() -> None:
    """With no source speaking: cache off, every program written, 1 GiB cap, read-write,
    our store, 10 slowest phases, no report."""
    resolved = resolve()
    assert resolved == Settings()
    assert resolved.cache_dir is None and resolved.remote_url is None
    assert resolved.enabled is False
    assert resolved.dir_source == Source("default", "")
    assert (resolved.min_compile_time_secs, resolved.min_entry_size_bytes) == (0.0, -1)
    assert resolved.max_size_bytes == 2**30
    assert resolved.prune_after_sessions is None
    assert resolved.mode is Mode.READWRITE
    assert resolved.xla_caches == "none"
    assert resolved.lock_timeout_secs == DEFAULT_LOCK_TIMEOUT
    assert (resolved.strict, resolved.store) == (False, StoreKind.OURS)
    assert (resolved.durations, resolved.report_path) == (10, None)


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.attr)
def test_precedence_cli_ini_env_default(option: Option[Any]) -> None:
    """Each source beats the ones below it; the winner's value and name are kept."""
    sources = _sources(option)
    samples = SAMPLES[option.attr]
    for index, kind in enumerate(sources):
        given = {lower: samples[lower][0] for lower in sources[index:]}
        resolved = resolve({option: _raw(**given)})
        assert getattr(resolved, option.attr) == samples[kind][1], (kind, given)
        assert resolved.source(option) == Source(kind, getattr(option, kind))


@pytest.mark.parametrize(
    "option", [o for o in OPTIONS if o.env is None], ids=lambda option: option.attr
)
def test_options_without_an_environment_variable_ignore_it(option: Option[Any]) -> None:
    """An option with no environment variable keeps its default, whatever env says."""
    resolved = resolve({option: Raw(env=BAD[option.attr][0] or "x")})
    assert getattr(resolved, option.attr) == option.default
    assert resolved.source(option) == Source("default", "")


BAD_CASES = [
    (option, kind) for option in OPTIONS if BAD[option.attr][1] for kind in _sources(option)
]


@pytest.mark.parametrize(
    "option, kind", BAD_CASES, ids=[f"{o.attr}-{kind}" for o, kind in BAD_CASES]
)
def test_bad_value_names_its_source(option: Option[Any], kind: str) -> None:
    """A bad value raises SettingsError naming the option, ini key or environment
    variable it came from, the problem, and the value."""
    text, problem = BAD[option.attr]
    with pytest.raises(SettingsError) as info:
        resolve({option: _raw(**{kind: text})})
    message = str(info.value)
    assert message.startswith(f"{Source(kind, getattr(option, kind))}: "), message
    assert problem in message
    assert repr(text) in message


def test_only_the_winning_value_is_validated() -> None:
    """A bad env value under a good command-line value is never read."""
    resolved = resolve({settings.MIN_COMPILE_TIME: Raw(cli="1", env="bogus")})
    assert resolved.min_compile_time_secs == 1.0


def test_pick_reports_source() -> None:
    """pick() returns the winning value with the name it was given under; a source the
    option does not have is silent."""
    assert pick(MAX_SIZE, Raw("a", "b", "c")) == ("a", Source("cli", "--jax-cache-max-size"))
    assert pick(MAX_SIZE, Raw(None, "b", "c")) == ("b", Source("ini", "jax_cache_max_size"))
    assert pick(MAX_SIZE, Raw(None, None, "c")) == (
        "c",
        Source("env", "JAX_COMPILATION_CACHE_MAX_SIZE"),
    )
    assert pick(MODE, Raw(None, None, "readonly")) == (None, Source("default", ""))
    assert [str(Source(k, n)) for k, n in [("ini", "a"), ("env", "B"), ("cli", "--c")]] == [
        "ini a",
        "env B",
        "--c",
    ]
    assert str(Source("default", "")) == "default"


# -- the cache location -----------------------------------------------------------------------


@pytest.mark.parametrize("empty", ["", "   "])
def test_empty_location_disables(empty: str) -> None:
    """An empty value turns the cache off, even over a lower source that sets one."""
    assert resolve({DIR: Raw(empty, "i", "e")}).enabled is False
    assert resolve({DIR: Raw(None, empty, "e")}).enabled is False
    assert resolve({DIR: Raw(None, None, empty)}).enabled is False


def test_location_expands_user_and_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``~`` and ``$VARS`` are expanded; an absolute path ignores the base."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JAXCACHE_TEST_BASE", str(tmp_path / "var"))
    assert resolve({DIR: Raw("~/cache")}).cache_dir == tmp_path / "home" / "cache"
    assert resolve({DIR: Raw(ini="$JAXCACHE_TEST_BASE/c")}).cache_dir == tmp_path / "var" / "c"
    assert resolve({DIR: Raw(ini=" ${JAXCACHE_TEST_BASE}/d ")}).cache_dir == (
        tmp_path / "var" / "d"
    )
    assert resolve({DIR: Raw(ini=str(tmp_path / "abs"))}).cache_dir == tmp_path / "abs"


@pytest.mark.parametrize("kind", ["cli", "ini", "env"])
def test_location_that_is_a_file_names_the_source(tmp_path: Path, kind: str) -> None:
    """A cache dir that exists as a file is an error naming where it was set."""
    path = tmp_path / "a-file"
    path.write_text("")
    with pytest.raises(SettingsError) as info:
        resolve({DIR: _raw(**{kind: str(path)})})
    message = str(info.value)
    assert message.startswith(f"{Source(kind, getattr(DIR, kind))}: ")
    assert str(path) in message and "not a directory" in message


def test_existing_directory_is_a_location(tmp_path: Path) -> None:
    assert resolve({DIR: Raw(str(tmp_path))}).cache_dir == tmp_path


def test_a_url_as_the_directory_is_a_remote_with_a_default_local_tier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gs://bucket/dir`` is not a relative path to expand into the invocation dir: it
    is the remote tier, and the local tier goes to $XDG_CACHE_HOME/pytest-jaxcache/<digest>
    (a digest of the URL); with JAX's own store, JAX gets the URL itself."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    resolved = resolve({DIR: Raw("gs://bucket/jaxcache")})
    assert resolved.enabled
    assert resolved.remote_url == "gs://bucket/jaxcache"
    assert resolved.cache_dir is not None
    assert resolved.cache_dir.parent == tmp_path / "xdg" / "pytest-jaxcache"
    assert resolved.cache_dir == resolve({DIR: Raw(ini="gs://bucket/jaxcache")}).cache_dir
    assert resolved.cache_dir != resolve({DIR: Raw("gs://bucket/other")}).cache_dir
    assert resolved.where == f"{resolved.cache_dir} + gs://bucket/jaxcache"

    jax_store = resolve({DIR: Raw("gs://bucket/jaxcache"), settings.STORE: Raw("jax")})
    assert (jax_store.cache_dir, jax_store.where) == (None, "gs://bucket/jaxcache")


def test_two_remotes_are_a_usage_error() -> None:
    with pytest.raises(SettingsError, match="both name a remote"):
        resolve({DIR: Raw("gs://a/b"), settings.REMOTE: Raw("s3://c/d")})


@pytest.mark.parametrize("text", ["never", "none", "NONE", ""])
def test_prune_after_never(text: str) -> None:
    """Spellings of 'never prune'; 0 is an error (see BAD), not a spelling of never."""
    assert resolve({settings.PRUNE_AFTER: Raw(text)}).prune_after_sessions is None


@pytest.mark.parametrize("text", ["1", "true", "YES", "on", " True "])
def test_flag_true_spellings(text: str) -> None:
    assert resolve({settings.STRICT: Raw(ini=text)}).strict is True


@pytest.mark.parametrize("text", ["0", "false", "No", "off"])
def test_flag_false_spellings(text: str) -> None:
    assert resolve({settings.STRICT: Raw(ini=text)}).strict is False


# -- what JAX reads itself --------------------------------------------------------------------


def test_jax_environment_rewrites_sizes_jax_cannot_read() -> None:
    """``JAX_COMPILATION_CACHE_MAX_SIZE=500MB`` (JAX wants an int) becomes bytes; 'none'
    becomes JAX's -1; variables JAX reads as we do are left alone."""
    base = Path("/")
    assert settings.jax_environment({"JAX_COMPILATION_CACHE_MAX_SIZE": "500MB"}, base) == {
        "JAX_COMPILATION_CACHE_MAX_SIZE": "500000000"
    }
    assert settings.jax_environment({"JAX_COMPILATION_CACHE_MAX_SIZE": "none"}, base) == {
        "JAX_COMPILATION_CACHE_MAX_SIZE": "-1"
    }
    assert settings.jax_environment({"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "2"}, base) == {}


def test_jax_environment_rejects_what_neither_reads() -> None:
    """A size nobody can read is an error naming the variable."""
    with pytest.raises(SettingsError, match=r"^env JAX_COMPILATION_CACHE_MAX_SIZE: not a size"):
        settings.jax_environment({"JAX_COMPILATION_CACHE_MAX_SIZE": "huge"}, Path("/"))


# -- sizes ------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("text", ["0", "0.1"])
def test_size_cap_must_be_positive(text: str) -> None:
    with pytest.raises(SettingsError, match="must be positive"):
        resolve({MAX_SIZE: Raw(text)})


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


def test_explain_writes_beside_the_invocation_unless_told() -> None:
    """``--jax-cache-explain`` alone writes to ``jaxcache-explain`` in the invocation
    directory; ``--jax-cache-explain-dir`` alone does nothing; an empty glob list is none."""
    explained = resolve({settings.EXPLAIN: Raw(cli="jit_f")})
    assert explained.explain == ("jit_f",)
    assert explained.explain_dir == HERE / settings.DEFAULT_EXPLAIN_DIR
    assert resolve({settings.EXPLAIN_DIR: Raw(cli="d")}).explain == ()
    assert resolve({settings.EXPLAIN: Raw(cli=" , ")}).explain_dir is None
