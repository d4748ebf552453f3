"""Unit tests of ``--jax-cache-explain``'s writer: which programs it wants, what it
writes for a key, how it finds the program's own past (its entry of the same input
types, written before this session), what it says of a hit, and that a failure is kept,
never raised (it runs inside a compile). No JAX: key parts are given as bytes, and
times as the entries record them (no clock is waited for)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from helpers import claimed

from pytest_jaxcache.entry import Metadata, encode, key_digest
from pytest_jaxcache.keydump import KeyDump, part_file
from pytest_jaxcache.keys import file_name
from pytest_jaxcache.store import Store

MACHINE = "0123456789abcdef"
FACTS = {"jax": "0.10.2", "jaxlib": "0.10.2"}
OLD_KEY = f"jit_loss-{'a' * 64}"
NEW_KEY = f"jit_loss-{'b' * 64}"
OTHER_SHAPE = f"jit_loss-{'c' * 64}"
INPUTS = {"computation": b"\x00\x01module bytes", "XLA flags": b"--xla_foo=1", "custom_hook": b""}
SHAPE_4 = {"inputs": "4xf32", "structure": "s4"}
SHAPE_64 = {"inputs": "64xf32", "structure": "s64"}
STARTED = 1_000_000.0  # when "this session" started


def digests(inputs: dict[str, bytes]) -> dict[str, str]:
    return {part: hashlib.sha256(data).hexdigest()[:16] for part, data in inputs.items()}


def store_at(root: Path) -> Store:
    store = Store(claimed(root))
    store.bind(MACHINE, FACTS, "5e55105e55105e55")
    store.session_started = STARTED
    return store


def write_entry(
    store: Store, key: str, written_at: float, parts: dict[str, str], facts: dict[str, str]
) -> None:
    metadata = Metadata(
        written_at=written_at, machine=MACHINE, session="5e55105e55105e55", parts=parts, facts=facts
    )
    store.directory.write_atomic(f"entries/{MACHINE}", file_name(key), encode(key, b"x", metadata))


def test_wants_programs_by_name_or_glob_in_either_form(tmp_path: Path) -> None:
    """Names as the report shows them (``jit(loss)``) or as keys hold them
    (``jit_loss``), and globs of either."""
    store = store_at(tmp_path / "cache")
    dump = KeyDump(tmp_path / "explain", ("jit_loss*", "jit(step)"), store)
    assert dump.wants(OLD_KEY)
    assert dump.wants(f"jit_step-{'c' * 64}")
    assert not dump.wants(f"jit_steps-{'c' * 64}")
    assert not dump.wants(f"pmap_loss-{'c' * 64}")


def test_part_names_become_file_names() -> None:
    assert part_file("XLA flags") == "XLA_flags"
    assert part_file("jax_lib version") == "jax_lib_version"
    assert part_file("../etc/passwd") == ".._etc_passwd"


def test_a_miss_is_compared_with_its_own_past_not_with_this_session(tmp_path: Path) -> None:
    """The program at 4 elements, changed since the last session, is compared with its
    own 4-element entry of the last session: not with the 64-element entry written in
    this session (another shape), nor with the 64-element entry of the last session;
    the diff command compares the two directories, since both were kept."""
    store = store_at(tmp_path / "cache")
    root = tmp_path / "explain"
    old_parts = digests(INPUTS)
    write_entry(store, OLD_KEY, STARTED - 100, old_parts, SHAPE_4)
    write_entry(store, f"jit_loss-{'d' * 64}", STARTED - 50, old_parts, SHAPE_64)
    write_entry(store, OTHER_SHAPE, STARTED + 5, old_parts, SHAPE_64)  # this session
    dump = KeyDump(root, ("jit_loss",), store)
    dump.write(OLD_KEY, INPUTS, old_parts, SHAPE_4, "module @jit_loss {}", True)
    changed = {**INPUTS, "computation": b"\x00\x01other module bytes"}
    dump.write(NEW_KEY, changed, digests(changed), SHAPE_4, None, False)

    old, new = root / "jit_loss" / key_digest(OLD_KEY), root / "jit_loss" / key_digest(NEW_KEY)
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
    record = json.loads((new / "parts.json").read_text())
    assert (record["key"], record["parts"], record["facts"], record["hit"]) == (
        NEW_KEY,
        digests(changed),
        SHAPE_4,
        False,
    )
    assert (old / "nearest.txt").read_text() == (
        f"jit_loss {old.name}: a hit: its entry was served; nothing to compare.\n"
    )
    nearest = (new / "nearest.txt").read_text().splitlines()
    assert nearest[0] == f"jit_loss {new.name} (this run: a miss)"
    assert nearest[1].startswith(f"nearest entry: {old.name}, written ")
    assert "parts that differ: computation" in nearest
    assert f"compare: diff -r jit_loss/{old.name} jit_loss/{new.name}" in nearest


def test_only_this_session_to_compare_with_says_so(tmp_path: Path) -> None:
    store = store_at(tmp_path / "cache")
    write_entry(store, OTHER_SHAPE, STARTED + 5, digests(INPUTS), SHAPE_64)
    dump = KeyDump(tmp_path / "explain", ("jit_loss",), store)
    dump.write(NEW_KEY, INPUTS, digests(INPUTS), SHAPE_4, None, False)
    text = (tmp_path / "explain" / "jit_loss" / key_digest(NEW_KEY) / "nearest.txt").read_text()
    assert f"nearest entry: {key_digest(OTHER_SHAPE)}" in text
    assert "(none was written before this session: this one is of this session)" in text


def test_nearest_entry_without_its_inputs_names_the_missing_directory(tmp_path: Path) -> None:
    store = store_at(tmp_path / "cache")
    write_entry(store, OLD_KEY, STARTED - 100, digests(INPUTS), SHAPE_4)
    root = tmp_path / "explain"
    dump = KeyDump(root, ("jit_loss",), store)
    flags = {**INPUTS, "XLA flags": b"--xla_foo=2"}
    dump.write(NEW_KEY, flags, digests(flags), SHAPE_4, None, False)
    text = (root / "jit_loss" / key_digest(NEW_KEY) / "nearest.txt").read_text()
    assert "parts that differ: XLA flags" in text
    missing = root / "jit_loss" / key_digest(OLD_KEY)
    assert f"its inputs were not kept ({missing} is missing)" in text
    assert not missing.exists()


def test_a_failure_is_kept_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "explain"
    blocker.write_text("a file where the directory should be")
    dump = KeyDump(blocker, ("jit_loss",), store_at(tmp_path / "cache"))
    dump.write(OLD_KEY, INPUTS, digests(INPUTS), {}, None, False)
    (error,) = dump.errors
    assert error.startswith(f"--jax-cache-explain: cannot write {blocker / 'jit_loss'}")
