"""Property-based tests (Hypothesis) of every parser of outside input: entries and their
metadata, manifests, bookkeeping files, names from listings, settings from the command
line, ini files and the environment, signing keys. Each asserts that nothing but the
parser's own refusal comes out (no crash), that nothing is written outside a temporary
cache, and that what is accepted is within bounds.

The normal run tries a small, fixed set of examples (the ``default`` profile, set in
``conftest.py``); ``pytest tests/test_fuzz.py --hypothesis-profile=nightly`` tries many
more, drawn at random."""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import claimed
from hypothesis import given
from hypothesis import strategies as st

from pytest_jaxcache import entry, keys, layout
from pytest_jaxcache import settings as options
from pytest_jaxcache.bookkeeping import Bookkeeping
from pytest_jaxcache.cachedir import CacheDir, OddFile
from pytest_jaxcache.entry import Metadata, Refused
from pytest_jaxcache.remote import (
    MANIFEST_SESSIONS,
    MAX_MANIFEST_NAMES,
    parse_listing,
    parse_manifest,
    public_writers,
)
from pytest_jaxcache.store import Store
from pytest_jaxcache.trust import Signer, TrustError, signer_from

MACHINE = "0123456789abcdef"
KEY = f"jit_f-{'a' * 64}"
SECRET = b"a-signing-secret-of-32-characters"

json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
names = st.text(max_size=300) | st.sampled_from(
    [".", "..", "../x", "/etc/passwd", "a/b", "jit_f-" + "a" * 64, "x" * 256, "", "\x00"]
)


def valid_entry(signer: Signer | None = None) -> bytes:
    metadata = Metadata(compile_secs=1.0, written_at=1000.0, machine=MACHINE)
    return entry.encode(KEY, b"payload " * 40, metadata, signer)


@given(st.binary(max_size=2048))
def test_decoding_any_bytes_gives_an_entry_or_a_refusal(data: bytes) -> None:
    for signer in (Signer(), Signer((SECRET,))):
        try:
            payload = entry.decode(KEY, data, signer=signer, machine=MACHINE).payload
            category = "loaded"
        except Refused as refusal:
            payload, category = b"", refusal.category
        assert category in (
            "loaded",
            entry.CORRUPT,
            entry.WRONG_KEY,
            entry.UNTRUSTED,
            entry.FOREIGN,
        )
        assert len(payload) <= len(data)
    assert isinstance(entry.check_head(data[:4096], len(data)), str)


@given(st.data())
def test_a_changed_byte_of_an_entry_is_refused(data: st.DataObject) -> None:
    """Any one byte flipped, any truncation or padding: never loaded."""
    for signer in (Signer(), Signer((SECRET,))):
        good = valid_entry(signer)
        index = data.draw(st.integers(0, len(good) - 1))
        flip = data.draw(st.integers(1, 255))
        bad = bytearray(good)
        bad[index] ^= flip
        cut = data.draw(st.integers(0, len(good) - 1))
        extra = data.draw(st.binary(min_size=1, max_size=64))
        for changed in (bytes(bad), good[:cut], good + extra):
            with pytest.raises(Refused):
                entry.decode(KEY, changed, signer=signer, machine=MACHINE)


def _bounded(found: Metadata) -> bool:
    """Every number finite and within its bounds (a time any clock can show), every
    text short."""
    numbers = (found.written_at, found.compile_secs or 0.0)
    texts = [found.machine, found.session, found.key_digest, found.signer or ""]
    texts += [*found.parts, *found.parts.values(), *found.facts, *found.facts.values()]
    time.strftime("%Y", time.localtime(found.written_at))
    return all(math.isfinite(n) and 0 <= n <= 253402300799.0 for n in numbers) and all(
        len(text) <= 256 for text in texts
    )


@given(json_values)
def test_metadata_from_any_json_is_bounded_or_refused(value: object) -> None:
    found = Metadata.from_json(json.dumps(value).encode())
    assert found is None or _bounded(found)


@given(st.binary(max_size=4096) | json_values.map(lambda v: json.dumps({"sessions": v}).encode()))
def test_a_manifest_of_anything_gives_entry_names_only(data: bytes) -> None:
    for signer in (Signer(), Signer((SECRET,))):
        sessions, foreign, ignored = parse_manifest(data, signer)
        assert not ignored or sessions == []
        assert len(sessions) <= MANIFEST_SESSIONS and foreign >= 0
        assert all(len(names) <= MAX_MANIFEST_NAMES for names in sessions)
        assert all(layout.is_entry_name(name) for names in sessions for name in names)
        assert isinstance(ignored, str)


listing_items = (
    st.dictionaries(
        st.sampled_from(["name", "size", "type"]),
        names | st.integers() | st.none() | st.booleans() | st.sampled_from(["file", "directory"]),
        max_size=3,
    )
    | json_values
)


@given(st.lists(listing_items, max_size=20))
def test_a_listing_of_anything_gives_entry_names_and_sizes_only(found: list[object]) -> None:
    """A bucket's listing is outside input: what is used is entry names with sizes that
    are plain non-negative integers; every other item is counted, none is dropped
    silently (but the expected manifests folder)."""
    listed, foreign = parse_listing(found)
    assert all(layout.is_entry_name(name) for name in listed)
    assert all(type(size) is int and size >= 0 for size in listed.values())
    base = [
        str(item.get("name", "")).rsplit("/", 1)[-1] if isinstance(item, dict) else ""
        for item in found
    ]
    valid = [
        isinstance(item, dict)
        and layout.is_entry_name(name)
        and type(item.get("size")) is int
        and item["size"] >= 0
        for item, name in zip(found, base, strict=True)
    ]
    folders = sum(
        isinstance(item, dict) and item.get("type") == "directory" and name == "manifests"
        for item, name in zip(found, base, strict=True)
    )
    assert set(listed) == {name for name, ok in zip(base, valid, strict=True) if ok}
    assert foreign == len(found) - folders - sum(valid)


@given(st.sampled_from(["s3", "gs", "memory"]), json_values)
def test_access_control_of_any_shape_names_known_writers_or_none(
    protocol: str, answer: object
) -> None:
    """A bucket's access control is outside input: read without a crash, it names only
    "everyone" or "every ... account", never text taken from the answer."""
    said = public_writers(protocol, answer)
    words = {"everyone", "every AWS account", "every Google account"}
    assert said is None or set(said.split(" and ")) <= words


def test_access_control_that_lets_anyone_write_is_told_apart() -> None:
    anyone = {"Type": "Group", "URI": "http://acs.amazonaws.com/groups/global/AllUsers"}
    s3 = {"Grants": [{"Grantee": anyone, "Permission": "WRITE"}]}
    assert public_writers("s3", s3) == "everyone"
    assert public_writers("s3", {"Grants": [{"Grantee": anyone, "Permission": "READ"}]}) is None
    gcs = {"bindings": [{"role": "roles/storage.objectCreator", "members": ["allUsers"]}]}
    assert public_writers("gs", gcs) == "everyone"
    viewer = {"bindings": [{"role": "roles/storage.objectViewer", "members": ["allUsers"]}]}
    assert public_writers("gs", viewer) is None


@given(names)
def test_a_name_is_an_entry_name_only_if_it_is_one_safe_component(name: str) -> None:
    safe = "/" not in name and name not in (".", "..") and "\x00" not in name
    assert not layout.is_entry_name(name) or (safe and len(name) <= 200)
    assert not layout.is_entry_name(name) or layout.is_safe_name(name)
    assert layout.is_entry_name(keys.file_name(name))


@given(names | st.sampled_from([".gitignore", "CACHEDIR.TAG", "contents.json", ".x"]))
def test_every_temporary_file_is_one_maintenance_knows_as_ours(name: str) -> None:
    """Whatever file is written, the temporary one it goes through is of the layout's
    temporary grammar: one that a killed process leaves behind is cleaned up, never
    taken for someone else's file (which would make the directory not ours)."""
    temporary = layout.temporary_name(name, 4_194_304, "0123abcd")
    assert layout.TEMPORARY.fullmatch(temporary) and layout.allowed_in(layout.TMP, temporary)


def _refused(operation: Callable[[], object]) -> bool:
    try:
        operation()
    except OddFile:
        return True
    return False


@given(name=names, data=st.binary(max_size=512))
def test_names_from_outside_never_reach_outside_the_cache(name: str, data: bytes) -> None:
    """Whatever name a bucket or a manifest gives, keeping it writes nothing outside the
    cache, and every file operation refuses a name that is not one safe component (and
    only such a name)."""
    with tempfile.TemporaryDirectory() as scratch:
        around = Path(scratch)
        root = around / "cache"
        store = Store(claimed(root))
        store.bind(MACHINE, {}, "5e55105e55105e55")
        before = sorted(path.name for path in around.iterdir())
        assert not store.keep(name, data) or layout.is_entry_name(name)
        directory = CacheDir(root)
        refusals = {
            _refused(lambda: directory.write_atomic("tmp", name, data)),
            _refused(lambda: directory.create_empty("locks", name)),
            _refused(lambda: directory.owned_file("machines", name)),
            _refused(lambda: directory.unlink("tmp", name)),
        }
        assert refusals == {not layout.is_safe_name(name)}
        assert sorted(path.name for path in around.iterdir()) == before


@given(
    data=st.binary(max_size=2048) | json_values.map(lambda v: json.dumps(v).encode()),
    which=st.sampled_from(["sessions.json", "contents.json", "fingerprints/0123456789abcdef.json"]),
)
def test_bookkeeping_files_of_any_bytes_read_as_empty_or_sane(data: bytes, which: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "cache"
        books = Bookkeeping(claimed(root))
        (root / which).parent.mkdir(exist_ok=True)
        (root / which).write_bytes(data)
        sessions = books.sessions()
        assert sessions == sorted(sessions)
        assert all(math.isfinite(t) and 0 < t < time.time() + 61 for t in sessions)
        digest = books.contents_digest()
        assert digest is None or isinstance(digest, str)
        found = books.load_fingerprint("0123456789abcdef")
        assert found is None or all(isinstance(v, str) for v in found.values())


@given(text=st.text(max_size=500), option=st.sampled_from(options.OPTIONS))
def test_every_option_takes_any_text_or_names_its_source(
    text: str, option: options.Option[object]
) -> None:
    source = options.Source("env", "SOME_VARIABLE")
    try:
        value = options.parse_one(option, text, source, Path("/work"))
    except options.SettingsError as error:
        value = str(error)
        assert value.startswith("env SOME_VARIABLE: ") and len(value) < 400
    numbers = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []
    assert all(abs(number) <= options.MAX_BYTES for number in numbers)


@given(
    st.integers(min_value=0, max_value=10**500).map(str)
    | st.from_regex(r"\A[0-9.e+-]{1,80}[kmgtKMGT]?i?[bB]?\Z")
)
def test_sizes_and_numbers_of_any_length_are_bounded_or_refused(text: str) -> None:
    for parse in (options.parse_max_size, options.parse_seconds, options.parse_prune_after):
        try:
            value = parse(text)
        except ValueError:
            value = None
        assert value is None or value <= options.MAX_BYTES


@given(current=st.text(max_size=80), old=st.text(max_size=200))
def test_signing_keys_are_text_and_errors_never_show_them(current: str, old: str) -> None:
    environ = {"JAX_CACHE_SIGNING_KEY": current, "JAX_CACHE_OLD_SIGNING_KEYS": old}
    secrets = [current.strip(), *(line.strip() for line in old.splitlines())]
    try:
        found = signer_from(environ).secrets
        said = ""
    except TrustError as error:
        found, said = (), str(error)
    assert not any(len(secret) >= 4 and secret in said for secret in secrets)
    assert all(len(secret.decode()) >= 16 for secret in found)
