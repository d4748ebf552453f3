"""``python -m pytest_jaxcache``: show, prune and clear a cache directory from a CI step."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pytest_jaxcache.store import Store


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_jaxcache", *args], capture_output=True, text=True
    )


def filled(root: Path, count: int, size: int = 1000) -> Store:
    """A store holding ``count`` entries, the first one the least recently used."""
    store = Store(root)
    store.create()
    now = time.time()
    for index in range(count):
        key = f"jit_step{index % 3}-{index:064x}"
        store.put(key, bytes(size))
        used = now - 3600 + index
        os.utime(store.entries_dir / key, (used, used))
    return store


def test_show_lists_entries_and_programs(tmp_path: Path) -> None:
    filled(tmp_path / "cache", 6)
    done = cli("show", str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr
    assert "entries:  6 (" in done.stdout
    assert "       2  jit_step0" in done.stdout


def test_prune_evicts_least_recently_used_to_the_size(tmp_path: Path) -> None:
    store = filled(tmp_path / "cache", 6)
    entry = store.usage().bytes // 6
    done = cli("prune", str(store.root), "--max-size", str(3 * entry))
    assert done.returncode == 0, done.stderr
    assert "6 entries" in done.stdout and "-> 3 entries" in done.stdout
    assert "3 evicted" in done.stdout
    kept = store.entry_names()
    assert kept == sorted(f"jit_step{i % 3}-{i:064x}" for i in (3, 4, 5))
    assert not (store.root / "sessions.json").exists()  # a CLI run is not a session


def test_clear_removes_every_entry(tmp_path: Path) -> None:
    store = filled(tmp_path / "cache", 4)
    done = cli("clear", str(store.root))
    assert done.returncode == 0, done.stderr
    assert "removed 4 entries" in done.stdout
    assert store.usage().entries == 0


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    not_a_cache = cli("show", str(tmp_path))
    assert not_a_cache.returncode != 0
    assert "is not a pytest-jaxcache cache directory" in not_a_cache.stderr
    filled(tmp_path / "cache", 1)
    bad_size = cli("prune", str(tmp_path / "cache"), "--max-size", "lots")
    assert bad_size.returncode == 2
    assert "not a size: 'lots'" in bad_size.stderr
    assert "Traceback" not in bad_size.stderr
