"""The ``jaxcache`` command (also ``python -m pytest_jaxcache``): show, prune and clear a
cache directory from a CI step. Every test runs both ways of starting it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Protocol

import pytest
from helpers import child_env, claimed, entries, jaxcache_argv, run_command

from pytest_jaxcache import history
from pytest_jaxcache.bookkeeping import Bookkeeping
from pytest_jaxcache.formats import format_size
from pytest_jaxcache.history import History, TestCost
from pytest_jaxcache.keys import file_name
from pytest_jaxcache.maintenance import Maintenance, Usage
from pytest_jaxcache.settings import parse_max_size
from pytest_jaxcache.store import Store

# The console script pip installed for this interpreter, and the module form.
SCRIPT = Path(sysconfig.get_path("scripts")) / "jaxcache"
LAUNCHERS = {
    "jaxcache": [str(SCRIPT)],
    "python-m": [sys.executable, "-m", "pytest_jaxcache"],
}
COMMANDS = ("show", "prune", "clear", "digest")  # the commands that take a cache directory
ALL_COMMANDS = (*COMMANDS, "key", "merge")


class Cli(Protocol):
    def __call__(self, *args: str) -> pytest.RunResult: ...


@pytest.fixture(params=sorted(LAUNCHERS))
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    """``cli(*args)``: the command, started one of the two ways, in ``tmp_path``."""
    launcher = LAUNCHERS[request.param]
    assert Path(launcher[0]).is_file(), f"{launcher[0]} is missing: is the package installed?"

    def run(*args: str) -> pytest.RunResult:
        return run_command([*launcher, *args], tmp_path, timeout=60)

    return run


def key(index: int) -> str:
    return f"jit_step{index % 3}-{index:064x}"


MACHINE = "0123456789abcdef"


def entry_file(root: Path, index: int) -> Path:
    return root / "entries" / MACHINE / file_name(key(index))


def filled(root: Path, count: int, size: int = 1000) -> Store:
    """A store holding ``count`` entries, ``key(0)`` the least recently used, each used
    one second after the one before, the last an hour ago."""
    store = Store(claimed(root))
    store.bind(MACHINE, {}, "5e55105e55105e55")
    now = time.time()
    for index in range(count):
        assert store.put(key(index), bytes(size))
        used = now - 3600 - count + index
        os.utime(entry_file(root, index), (used, used))
    return store


def usage(store: Store) -> Usage:
    return Maintenance(store.directory).usage()


def assert_usage_error(result: pytest.RunResult, *fragments: str) -> None:
    """Exit status 2, the problem named on stderr, no traceback, nothing on stdout."""
    errors = result.stderr.str()
    assert result.ret == 2, result.outlines + result.errlines
    for fragment in fragments:
        assert fragment in errors, errors
    assert "Traceback" not in errors, errors
    assert result.outlines == []


# -- show ---------------------------------------------------------------------------------------


def test_show_lists_entries_and_programs(cli: Cli, tmp_path: Path) -> None:
    filled(tmp_path / "cache", 6)
    result = cli("show", str(tmp_path / "cache"))
    assert result.ret == 0, result.errlines
    assert result.outlines[0] == f"cache:    {tmp_path / 'cache'}"
    assert result.outlines[1].startswith("entries:  6 (")
    assert "programs with most entries:" in result.outlines
    assert {"       2  jit_step0", "       2  jit_step1", "       2  jit_step2"} <= set(
        result.outlines
    )
    assert not any(line.startswith("sessions:") for line in result.outlines)


def test_show_counts_recorded_sessions(cli: Cli, tmp_path: Path) -> None:
    store = filled(tmp_path / "cache", 1)
    bookkeeping = Bookkeeping(store.directory)
    sessions = bookkeeping.record_session(time.time() - 7200, [])
    bookkeeping.record_session(time.time() - 60, sessions)
    result = cli("show", str(store.root))
    assert result.ret == 0, result.errlines
    assert any(
        line.startswith("sessions: 2 recorded, the last started ") for line in result.outlines
    )


# -- prune --------------------------------------------------------------------------------------


def test_prune_evicts_least_recently_used_to_the_size(cli: Cli, tmp_path: Path) -> None:
    store = filled(tmp_path / "cache", 6)
    newest = sum(entry_file(store.root, i).stat().st_size for i in (3, 4, 5))
    total = usage(store).bytes
    result = cli("prune", str(store.root), "--max-size", str(newest))
    assert result.ret == 0, result.errlines
    assert result.outlines == [
        f"6 entries ({format_size(total)}) -> 3 entries ({format_size(newest)}): "
        "3 evicted, 0 pruned"
    ]
    assert [p.name for p in entries(store.root)] == sorted(file_name(key(i)) for i in (3, 4, 5))
    assert not (store.root / "sessions.json").exists()  # a command-line run is no session


def test_prune_after_drops_entries_unused_in_the_last_sessions(cli: Cli, tmp_path: Path) -> None:
    """``--prune-after 2``: entries last used before the second newest recorded session
    are removed, the rest kept."""
    store = filled(tmp_path / "cache", 6)
    used = [entry_file(store.root, i).stat().st_mtime for i in range(6)]
    # Sessions started before every entry, between entries 2 and 3, and after entry 4.
    starts = [used[0] - 100, (used[2] + used[3]) / 2, (used[4] + used[5]) / 2]
    bookkeeping = Bookkeeping(store.directory)
    sessions: list[float] = []
    for start in starts:
        sessions = bookkeeping.record_session(start, sessions)
    entry = usage(store).bytes // 6
    result = cli("prune", str(store.root), "--prune-after", "2")
    assert result.ret == 0, result.errlines
    assert result.outlines == [
        f"6 entries ({format_size(6 * entry)}) -> 3 entries ({format_size(3 * entry)}): "
        "0 evicted, 3 pruned"
    ]
    assert [p.name for p in entries(store.root)] == sorted(file_name(key(i)) for i in (3, 4, 5))


def test_prune_after_zero_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    """The value is read by the plugin's own parser: 0 sessions is refused as a usage
    error that names the option and the value, and nothing is removed."""
    store = filled(tmp_path / "cache", 2)
    result = cli("prune", str(store.root), "--prune-after", "0")
    assert_usage_error(result, "--prune-after", "must be at least 1", "'0'")
    assert usage(store).entries == 2


def test_bad_size_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    store = filled(tmp_path / "cache", 1)
    result = cli("prune", str(store.root), "--max-size", "lots")
    assert_usage_error(result, "--max-size", "not a size: 'lots'")
    assert usage(store).entries == 1


def test_prune_without_max_size_applies_the_default_its_help_names(
    cli: Cli, tmp_path: Path
) -> None:
    """``prune`` without ``--max-size`` applies the cap that its help names as the
    default (none named: no cap), evicting no more than that needs. Two sparse 600 MB
    entries exceed 1 GiB without using the disk."""
    text = " ".join(cli("prune", "--help").stdout.str().split())
    found = re.search(r"--max-size SIZE .*?\(default ([^)]*)\)", text)
    claimed = found.group(1) if found is not None else "none"
    cap = parse_max_size(claimed)
    store = filled(tmp_path / "cache", 0)
    for index in range(2):
        entry_file(store.root, index).parent.mkdir(parents=True, exist_ok=True)
        with open(entry_file(store.root, index), "wb") as handle:
            handle.truncate(600_000_000)
    result = cli("prune", str(store.root))
    assert result.ret == 0, result.errlines
    limit = cap if cap is not None else 1_200_000_000
    after = usage(store).bytes
    assert after <= limit, (
        f"help says default {claimed}; prune left {after} bytes: {result.outlines}"
    )
    assert after + 600_000_000 > limit, f"evicted more than {claimed} needs: {result.outlines}"


# -- clear --------------------------------------------------------------------------------------


def test_clear_removes_every_entry(cli: Cli, tmp_path: Path) -> None:
    store = filled(tmp_path / "cache", 4)
    result = cli("clear", str(store.root))
    assert result.ret == 0, result.errlines
    assert result.outlines == [f"removed 4 entries from {store.root}"]
    assert usage(store).entries == 0
    assert (store.root / "CACHEDIR.TAG").is_file()


# -- errors and help ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_not_a_cache_directory_is_an_error(cli: Cli, tmp_path: Path, command: str) -> None:
    """A directory without the store's layout is refused, and left as it was."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("mine\n")
    result = cli(command, str(tmp_path / "data"))
    assert_usage_error(result, f"jaxcache: error: {tmp_path / 'data'} is not a pytest-jaxcache")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["keep.txt"]


def test_no_command_is_a_usage_error(cli: Cli) -> None:
    assert_usage_error(cli(), "usage: jaxcache", "COMMAND")


def test_help_lists_each_command_with_a_summary(cli: Cli) -> None:
    """``--help`` lists every command, each with a one-line summary."""
    result = cli("--help")
    assert result.ret == 0, result.errlines
    assert result.outlines[0].startswith("usage: jaxcache ")
    summaries = {
        match.group(1): match.group(2)
        for line in result.outlines
        if (match := re.fullmatch(r" {2,}(\w+) {2,}(\S.*)", line))
    }
    assert sorted(summaries) == sorted(ALL_COMMANDS), result.outlines
    # One line each: the list under COMMAND is exactly one line per command.
    start = result.outlines.index("  COMMAND") + 1
    end = result.outlines.index("", start)
    assert len(result.outlines[start:end]) == len(ALL_COMMANDS), result.outlines


def test_prune_help_describes_its_options(cli: Cli) -> None:
    """``prune --help``: its usage, what it does, and each option with its value and a
    description (sizes as the pytest option takes them; sessions for --prune-after)."""
    result = cli("prune", "--help")
    assert result.ret == 0, result.errlines
    text = " ".join(result.stdout.str().split())
    assert text.startswith("usage: jaxcache prune [-h] [--max-size SIZE] [--prune-after N] DIR")
    assert "Evict least recently used entries" in text
    assert re.search(r"DIR the cache directory", text), text
    max_size = re.search(r"--max-size SIZE (.*?) --prune-after N", text)
    assert max_size is not None and "500MB" in max_size.group(1), text
    prune_after = re.search(r"--prune-after N (.*)$", text)
    assert prune_after is not None and "sessions" in prune_after.group(1), text


# -- the command line's own truth (issue 16) ------------------------------------------------------


@pytest.mark.parametrize("command", [["prune", "--max-size", "1500"], ["clear"]])
def test_prune_and_clear_keep_contents_json_in_step(
    cli: Cli, tmp_path: Path, command: list[str]
) -> None:
    """After prune or clear, contents.json says what ``jaxcache digest`` says: the
    digest, the entries and the bytes the cache now holds."""
    store = filled(tmp_path / "cache", 4)
    Bookkeeping(store.directory).keep_contents(*_contents(store))
    result = cli(command[0], str(store.root), *command[1:])
    assert result.ret == 0, result.errlines
    digest = cli("digest", str(store.root))
    recorded = json.loads((store.root / "contents.json").read_text())
    now = usage(store)
    assert recorded == {"digest": now.digest, "entries": now.entries, "bytes": now.bytes}
    assert digest.outlines == [now.digest]
    assert now.entries < 4


def _contents(store: Store) -> tuple[str, int, int]:
    now = usage(store)
    return now.digest, now.entries, now.bytes


def test_show_counts_every_session_and_a_closed_pipe_ends_quietly(cli: Cli, tmp_path: Path) -> None:
    """Three recorded sessions are three; ``jaxcache show`` into a pipe whose reader has
    left ends with status 0 and nothing on stderr, as Unix tools do."""
    store = filled(tmp_path / "cache", 30)
    bookkeeping = Bookkeeping(store.directory)
    sessions: list[float] = []
    for start in (time.time() - 300, time.time() - 200, time.time() - 100):
        sessions = bookkeeping.record_session(start, sessions)
    shown = cli("show", str(store.root))
    assert any(line.startswith("sessions: 3 recorded, ") for line in shown.outlines)
    reader, writer = os.pipe()
    os.close(reader)  # the reader has left before the first line is written
    try:
        piped = subprocess.run(
            jaxcache_argv("show", store.root),
            stdout=writer,
            stderr=subprocess.PIPE,
            env=child_env(),
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(writer)
    assert (piped.returncode, piped.stderr) == (0, "")


# -- merge (the shards of a CI matrix) -----------------------------------------------------------


def test_merge_makes_one_cache_of_the_shards_caches(cli: Cli, tmp_path: Path) -> None:
    """Two shards' caches (some entries in common, each with its tests' history) become
    one: every entry once, both histories (each test's newest record winning, whichever
    source holds it: a shard restored the whole history and ran only its own tests), and
    contents.json in step; the sources are left as they were."""
    first, second = filled(tmp_path / "one", 3), filled(tmp_path / "two", 5)
    recorded = (
        (first, {"t::a": (1.0, 10.0), "t::b": (2.0, 30.0)}),
        (second, {"t::b": (3.0, 20.0), "t::c": (4.0, 20.0)}),
    )
    for store, tests in recorded:
        costs = {nodeid: TestCost(wall_secs=secs, at=at) for nodeid, (secs, at) in tests.items()}
        history.save(store.directory, MACHINE, History(costs))
    before = {path: path.read_bytes() for path in (tmp_path / "two").rglob("*") if path.is_file()}
    result = cli("merge", str(tmp_path / "merged"), str(first.root), str(second.root))
    assert result.ret == 0, result.errlines
    merged = Store(claimed(tmp_path / "merged"))
    assert [p.name for p in entries(merged.root)] == sorted(file_name(key(i)) for i in range(5))
    walls = {n: c.wall_secs for n, c in history.load(merged.directory).tests.items()}
    assert walls == {"t::a": 1.0, "t::b": 2.0, "t::c": 4.0}
    assert json.loads((merged.root / "contents.json").read_text())["entries"] == 5
    assert before == {p: p.read_bytes() for p in (tmp_path / "two").rglob("*") if p.is_file()}
