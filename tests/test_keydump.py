"""Unit tests of ``--jax-cache-explain``'s writer: which programs it wants, what it
writes for a key, how it names the nearest earlier entry, and that a failure is kept,
never raised (it runs inside a compile). No JAX: key parts are given as bytes."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from pytest_jaxcache.entry import key_digest
from pytest_jaxcache.keydump import KeyDump, part_file
from pytest_jaxcache.ownership import adopt
from pytest_jaxcache.store import Store

MACHINE = "0123456789abcdef"
FACTS = {"jax": "0.10.2", "jaxlib": "0.10.2"}
OLD_KEY = f"jit_loss-{'a' * 64}"
NEW_KEY = f"jit_loss-{'b' * 64}"
INPUTS = {"computation": b"\x00\x01module bytes", "XLA flags": b"--xla_foo=1", "custom_hook": b""}


def digests(inputs: dict[str, bytes]) -> dict[str, str]:
    return {part: hashlib.sha256(data).hexdigest()[:16] for part, data in inputs.items()}


def store_at(root: Path) -> Store:
    store = Store(adopt(root, readonly=False))
    store.bind(MACHINE, FACTS, "5e55105e55105e55")
    return store


def test_wants_programs_by_name_or_glob(tmp_path: Path) -> None:
    dump = KeyDump(tmp_path / "explain", ("jit_loss*", "jit_step"), store_at(tmp_path / "cache"))
    assert dump.wants(OLD_KEY)
    assert dump.wants(f"jit_step-{'c' * 64}")
    assert not dump.wants(f"jit_steps-{'c' * 64}")
    assert not dump.wants(f"pmap_loss-{'c' * 64}")


def test_part_names_become_file_names() -> None:
    assert part_file("XLA flags") == "XLA_flags"
    assert part_file("jax_lib version") == "jax_lib_version"
    assert part_file("../etc/passwd") == ".._etc_passwd"


def test_writes_each_part_and_compares_with_the_nearest_entry(tmp_path: Path) -> None:
    """The first key has nothing to compare with; the second, written after an entry of
    the same program, names the part that differs and the diff command, since the
    earlier key's inputs are there too. Text parts get a ``.txt`` beside the ``.bin``."""
    store = store_at(tmp_path / "cache")
    root = tmp_path / "explain"
    dump = KeyDump(root, ("jit_loss",), store)
    dump.write(OLD_KEY, INPUTS, digests(INPUTS), "module @jit_loss {}")
    assert store.put(OLD_KEY, b"payload", 1.0, digests(INPUTS))
    time.sleep(0.01)  # the new key is written after the old entry
    changed = {**INPUTS, "computation": b"\x00\x01other module bytes"}
    dump.write(NEW_KEY, changed, digests(changed), None)

    old, new = root / "jit_loss" / key_digest(OLD_KEY), root / "jit_loss" / key_digest(NEW_KEY)
    assert dump.written == [old, new]
    assert dump.errors == []
    assert sorted(path.name for path in old.iterdir()) == [
        "XLA_flags.bin",
        "XLA_flags.txt",
        "computation.bin",
        "computation.mlir",
        "custom_hook.bin",
        "custom_hook.txt",
        "nearest.txt",
        "parts.json",
    ]
    assert (old / "XLA_flags.txt").read_text() == "--xla_foo=1\n"
    assert (new / "computation.bin").read_bytes() == changed["computation"]
    assert not (new / "computation.mlir").exists()
    facts = json.loads((new / "parts.json").read_text())
    assert (facts["key"], facts["parts"], facts["machine"]) == (NEW_KEY, digests(changed), MACHINE)
    assert "nothing to compare with" in (old / "nearest.txt").read_text()
    nearest = (new / "nearest.txt").read_text().splitlines()
    assert "parts that differ: computation" in nearest
    assert f"compare: diff -r jit_loss/{old.name} jit_loss/{new.name}" in nearest


def test_nearest_entry_without_its_inputs_says_how_to_get_them(tmp_path: Path) -> None:
    store = store_at(tmp_path / "cache")
    assert store.put(OLD_KEY, b"payload", 1.0, digests(INPUTS))
    time.sleep(0.01)
    dump = KeyDump(tmp_path / "explain", ("jit_loss",), store)
    flags = {**INPUTS, "XLA flags": b"--xla_foo=2"}
    dump.write(NEW_KEY, flags, digests(flags), None)
    text = (tmp_path / "explain" / "jit_loss" / key_digest(NEW_KEY) / "nearest.txt").read_text()
    assert "parts that differ: XLA flags" in text
    assert "run the earlier version with --jax-cache-explain too" in text


def test_a_failure_is_kept_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "explain"
    blocker.write_text("a file where the directory should be")
    dump = KeyDump(blocker, ("jit_loss",), store_at(tmp_path / "cache"))
    dump.write(OLD_KEY, INPUTS, digests(INPUTS), None)
    assert dump.written == []
    (error,) = dump.errors
    assert error.startswith(f"--jax-cache-explain: cannot write {blocker / 'jit_loss'}")
    assert blocker.read_text() == "a file where the directory should be"
