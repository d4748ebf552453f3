"""Unit tests of miss explanations, over real store entries written by earlier
'sessions' (stores stamped with different fingerprints)."""

from __future__ import annotations

import time
from pathlib import Path

from helpers import claimed, entries

from pytest_jaxcache.bookkeeping import Bookkeeping
from pytest_jaxcache.entry import Metadata, encode, read_metadata
from pytest_jaxcache.environment import describe_change
from pytest_jaxcache.explain import explain
from pytest_jaxcache.keys import file_name
from pytest_jaxcache.reasons import (
    KEY_PARTS,
    NEW_PROGRAM,
    PART_MEANINGS,
    PROGRAM,
    PROGRAM_CHANGED,
    REFUSED,
    UNKNOWN_ENVIRONMENT,
    Miss,
    describe_parts,
)
from pytest_jaxcache.reasons import NEW as NEW_CAUSE
from pytest_jaxcache.store import Store

H1, H2, H3, H4 = "1" * 64, "2" * 64, "3" * 64, "4" * 64

OLD_ID, NEW_ID, GONE_ID, NO_ID = "0000000000000001", "0000000000000002", "00000000000000ff", ""
MACHINE = "0123456789abcdef"
OTHER_MACHINE = "fedcba9876543210"
OLD = {
    "jax": "0.10.1",
    "jaxlib": "0.10.1",
    "XLA_FLAGS": "",
    "jax_enable_x64": "False",
    "compression": "zstandard",
}
NEW = {**OLD, "jax": "0.10.2", "jaxlib": "0.10.2"}


# -- describe_change -------------------------------------------------------------------------


def test_jaxlib_upgrade_changes_every_key() -> None:
    """A jaxlib upgrade is named with both versions and flagged as global."""
    assert (
        describe_change({"jaxlib": "0.10.1"}, {"jaxlib": "0.10.2"})
        == "jaxlib 0.10.1 -> 0.10.2: every key changed"
    )


def test_xla_flags_change_hides_values() -> None:
    """XLA_FLAGS changes are named without dumping the (long) flag strings."""
    text = describe_change(
        {"XLA_FLAGS": "", "jaxlib": "0.10.2"},
        {"XLA_FLAGS": "--xla_cpu_enable_fast_math=true", "jaxlib": "0.10.2"},
    )
    assert text == "XLA_FLAGS changed: every key changed"
    assert (
        describe_change({"LIBTPU_INIT_ARGS": "a"}, {"LIBTPU_INIT_ARGS": "b"})
        == "LIBTPU_INIT_ARGS changed: every key changed"
    )


def test_config_change_is_not_global() -> None:
    """A key-relevant config option changes some keys, not 'every key'."""
    text = describe_change(
        {"jax_enable_x64": "False", "jaxlib": "0.10.2"},
        {"jax_enable_x64": "True", "jaxlib": "0.10.2"},
    )
    assert text == "jax_enable_x64 False -> True"
    assert "every key" not in text


def test_several_changes_sorted_with_unset_values() -> None:
    """Several changes are listed by name; empty values read '(unset)'; one global
    change makes the whole description global; unchanged components are not named."""
    text = describe_change(
        {"jax_default_matmul_precision": "", "compression": "zlib", "jax": "0.10.2"},
        {"jax_default_matmul_precision": "highest", "compression": "zstandard", "jax": "0.10.2"},
    )
    assert text == (
        "compression zlib -> zstandard, jax_default_matmul_precision (unset) -> highest"
        ": every key changed"
    )
    assert "jax " not in text


def test_only_one_side_records_the_difference() -> None:
    """Fingerprints that differ only in components one side lacks say so."""
    assert describe_change({"jaxlib": "1", "a": "x"}, {"jaxlib": "1", "b": "y"}) == (
        "environment changed (a component only one side records)"
    )


# -- explain over real entries ---------------------------------------------------------------


def session_store(root: Path, fingerprint_id: str, fingerprint: dict[str, str] | None) -> Store:
    """A store as a session opens it: adopted, bound to the machine and the session's
    fingerprint id, its fingerprint saved."""
    store = Store(claimed(root))
    store.bind(MACHINE, {}, fingerprint_id)
    if fingerprint is not None:  # else: a session whose fingerprint record is missing
        Bookkeeping(store.directory).save_fingerprint(fingerprint_id, fingerprint)
    return store


def write(store: Store, key: str) -> None:
    """Compile-and-write as JAX does through the store: a miss, then a put."""
    assert store.get(key).entry is None
    assert store.put(key, b"program " + key.encode(), 0.5)


def later_than_every_entry(store: Store) -> float:
    """A session start strictly after every entry now in the store was written (told
    by what the entries say, not by the clock)."""
    newest = 0.0
    for path in entries(store.root):
        metadata = read_metadata(store.directory, f"entries/{MACHINE}", path.name)
        assert metadata is not None
        newest = max(newest, metadata.written_at)
    return newest + 0.001


def test_explain_each_reason(tmp_path: Path) -> None:
    """A new session's misses get: the environment change for programs an older
    environment wrote, 'program changed' for programs written under the same (or no)
    fingerprint, 'new program' for names never written before the session, and
    'fingerprint gone' when the older environment's record is missing."""
    old = session_store(tmp_path, OLD_ID, OLD)
    write(old, f"jit_upgraded-{H1}")
    same = session_store(tmp_path, NEW_ID, NEW)
    write(same, f"jit_edited-{H1}")
    anonymous = session_store(tmp_path, NO_ID, None)
    write(anonymous, f"jit_unstamped-{H1}")
    gone = session_store(tmp_path, GONE_ID, None)
    write(gone, f"jit_orphan-{H1}")
    started = later_than_every_entry(old)

    current = session_store(tmp_path, NEW_ID, NEW)
    other_worker = session_store(tmp_path, NEW_ID, NEW)
    # During this session, not an earlier one: at its start, however little time passed
    # since the last write (a clock that had not moved 1 ms once made it "earlier").
    other_worker.clock = lambda: started
    write(other_worker, f"jit_fresh-{H1}")
    keys = [
        f"jit_{name}-{H2}"
        for name in ("upgraded", "edited", "unstamped", "orphan", "fresh", "brand_new")
    ]
    for key in keys:
        write(current, key)
    misses = explain(current, keys, before=started, current=NEW)

    assert [miss.key for miss in misses] == sorted(keys)
    reasons = {miss.key.split("-")[0]: miss.reason for miss in misses}
    assert reasons == {
        "jit_upgraded": describe_change(OLD, NEW),
        "jit_edited": PROGRAM_CHANGED,
        "jit_unstamped": PROGRAM_CHANGED,
        "jit_orphan": UNKNOWN_ENVIRONMENT,
        "jit_fresh": NEW_PROGRAM,
        "jit_brand_new": NEW_PROGRAM,
    }
    assert reasons["jit_upgraded"] == (
        "jax 0.10.1 -> 0.10.2, jaxlib 0.10.1 -> 0.10.2: every key changed"
    )


def _write_at(
    store: Store,
    key: str,
    session: str,
    written_at: float,
    parts: dict[str, str] | None = None,
    machine: str = MACHINE,
) -> None:
    metadata = Metadata(written_at=written_at, machine=machine, session=session, parts=parts or {})
    store.directory.write_atomic(f"entries/{machine}", file_name(key), encode(key, b"x", metadata))


PARTS = {
    "computation": "c0",
    "compile_options": "o0",
    "accelerator_config": "a0",
    "jax_lib version": "j0",
}


def test_a_miss_is_explained_by_the_parts_that_differ_from_the_nearest_entry(
    tmp_path: Path,
) -> None:
    """Of this machine's earlier entries of the program, the one with most parts equal
    (then the newest) is compared: its differing parts name the reason, most telling
    first; another machine's entry is never the nearest."""
    store = session_store(tmp_path, NEW_ID, NEW)
    far = {**PARTS, "computation": "c1", "compile_options": "o1"}
    near = {**PARTS, "compile_options": "o2"}
    _write_at(store, f"jit_a-{H1}", NEW_ID, 300.0, far)  # newer, two parts differ
    _write_at(store, f"jit_a-{H2}", NEW_ID, 100.0, near)  # older, one part differs
    _write_at(store, f"jit_a-{H4}", NEW_ID, 400.0, PARTS, machine=OTHER_MACHINE)
    _write_at(store, f"jit_b-{H1}", NEW_ID, 100.0, far)
    _write_at(store, f"jit_c-{H1}", NEW_ID, 100.0, {**PARTS, "accelerator_config": "a1"})
    _write_at(store, f"jit_d-{H1}", NEW_ID, 100.0)  # written without parts
    current = {f"jit_{p}-{H3}": PARTS for p in "abcd"}
    misses = explain(store, current, before=500.0, current=NEW, parts=current)
    assert misses == [
        Miss(f"jit_a-{H3}", PART_MEANINGS["compile_options"], KEY_PARTS, ("compile_options",)),
        Miss(
            f"jit_b-{H3}",
            f"{PART_MEANINGS['compile_options']}; {PART_MEANINGS['computation']}",
            KEY_PARTS,
            ("compile_options", "computation"),
        ),
        Miss(
            f"jit_c-{H3}", PART_MEANINGS["accelerator_config"], KEY_PARTS, ("accelerator_config",)
        ),
        Miss(f"jit_d-{H3}", PROGRAM_CHANGED, PROGRAM),
    ]
    assert misses[2].reason.startswith("the device assignment differs")


def test_a_miss_without_its_own_parts_falls_back_to_the_environment(tmp_path: Path) -> None:
    """A JAX without the key-parts seam records none: the earlier explanation applies."""
    store = session_store(tmp_path, NEW_ID, NEW)
    _write_at(store, f"jit_a-{H1}", NEW_ID, 100.0, PARTS)
    assert explain(store, [f"jit_a-{H3}"], before=500.0, current=NEW) == [
        Miss(f"jit_a-{H3}", PROGRAM_CHANGED, PROGRAM)
    ]


def test_describe_parts_names_unknown_parts_last() -> None:
    assert describe_parts(["a new part", "computation"]) == (
        f"{PART_MEANINGS['computation']}; the key part 'a new part' differs"
    )


def test_newest_earlier_entry_decides(tmp_path: Path) -> None:
    """An earlier entry from the current environment means the program changed, even if
    another environment wrote one since; otherwise the most recent entry explains it."""
    store = session_store(tmp_path, NEW_ID, NEW)
    Bookkeeping(store.directory).save_fingerprint(OLD_ID, OLD)
    _write_at(store, f"jit_a-{H1}", OLD_ID, 100.0)
    _write_at(store, f"jit_a-{H2}", NEW_ID, 200.0)
    _write_at(store, f"jit_b-{H1}", NEW_ID, 100.0)
    _write_at(store, f"jit_b-{H2}", OLD_ID, 200.0)
    _write_at(store, f"jit_c-{H1}", OLD_ID, 900.0)  # after the session began
    misses = explain(
        store, [f"jit_a-{H3}", f"jit_b-{H3}", f"jit_c-{H3}"], before=500.0, current=NEW
    )
    assert misses == [
        Miss(f"jit_a-{H3}", PROGRAM_CHANGED, PROGRAM),
        Miss(f"jit_b-{H3}", PROGRAM_CHANGED, PROGRAM),
        Miss(f"jit_c-{H3}", NEW_PROGRAM, NEW_CAUSE),
    ]


def test_explain_nothing(tmp_path: Path) -> None:
    """No keys, no explanations; an empty store explains everything as new; a refused
    entry is explained by why it was refused."""
    store = session_store(tmp_path, NEW_ID, NEW)
    assert explain(store, set(), before=time.time(), current=NEW) == []
    assert explain(store, {f"jit_x-{H1}"}, before=time.time(), current=NEW) == [
        Miss(f"jit_x-{H1}", NEW_PROGRAM)
    ]
    refused = {f"jit_y-{H1}": "written on another CPU: not loaded"}
    assert explain(
        store, {f"jit_x-{H1}", f"jit_y-{H1}"}, before=time.time(), current=NEW, refused=refused
    ) == [
        Miss(f"jit_x-{H1}", NEW_PROGRAM, NEW_CAUSE),
        Miss(f"jit_y-{H1}", refused[f"jit_y-{H1}"], REFUSED),
    ]
