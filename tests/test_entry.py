"""Unit tests of the entry format and its signatures: what verifies, and why the rest
is refused (corrupt, another key's, untrusted, another machine's). No files but for
``read_metadata``; no JAX."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from pytest_jaxcache import entry
from pytest_jaxcache.cachedir import CacheDir, HeadCheck
from pytest_jaxcache.entry import (
    CORRUPT,
    DIGEST_SIZE,
    FOREIGN,
    FORMAT,
    HEAD_SIZE,
    MAGIC,
    SIGNATURE_SIZE,
    SIGNED,
    UNTRUSTED,
    WRONG_KEY,
    Entry,
    Metadata,
    Refused,
    decode,
    encode,
    key_digest,
    read_metadata,
)
from pytest_jaxcache.trust import (
    OLD_SIGNING_KEYS_VARIABLE,
    SIGNING_KEY_VARIABLE,
    Signer,
    TrustError,
    key_id,
    signer_from,
)

KEY = f"jit_f-{'a' * 64}"
OTHER_KEY = f"jit_g-{'b' * 64}"
MACHINE = "0123456789abcdef"
OTHER_MACHINE = "fedcba9876543210"
SESSION = "5e55105e55105e55"
PAYLOAD = b"compiled program bytes \x00\x01\x02" * 20
SECRET = b"a-secret-of-at-least-16"
OLD_SECRET = b"an-older-secret-16+"
METADATA = Metadata(
    compile_secs=1.25,
    written_at=1234.5,
    machine=MACHINE,
    session=SESSION,
    parts={"computation": "c0ffee", "compile options": "0ff1ce"},
)
UNSIGNED = Signer()
SIGNER = Signer((SECRET,))
GOOD = encode(KEY, PAYLOAD, METADATA)
GOOD_SIGNED = encode(KEY, PAYLOAD, METADATA, SIGNER)


def load(
    data: bytes,
    key: str = KEY,
    *,
    signer: Signer = UNSIGNED,
    machine: str = MACHINE,
    load_unverified: bool = False,
) -> Entry:
    return decode(key, data, signer=signer, machine=machine, load_unverified=load_unverified)


def refusal(
    data: bytes,
    key: str = KEY,
    *,
    signer: Signer = UNSIGNED,
    machine: str = MACHINE,
    load_unverified: bool = False,
) -> Refused:
    with pytest.raises(Refused) as info:
        load(data, key, signer=signer, machine=machine, load_unverified=load_unverified)
    return info.value


def category_or_loaded(
    data: bytes, *, signer: Signer = UNSIGNED, load_unverified: bool = False
) -> str:
    """The refusal's category, or "loaded" (for sweeps over many damaged copies)."""
    try:
        load(data, signer=signer, load_unverified=load_unverified)
    except Refused as refused:
        return refused.category
    return "loaded"


def flip_bit(data: bytes, index: int, bit: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ (1 << bit)]) + data[index + 1 :]


def meta_length(data: bytes) -> int:
    return int(struct.unpack_from(">4sBBxxIQ", data)[3])


# -- round trips ---------------------------------------------------------------------------------


def test_round_trip_unsigned_keeps_every_metadata_field() -> None:
    found = load(GOOD)
    assert GOOD.startswith(MAGIC) and GOOD[4] == FORMAT and GOOD[5] == 0
    assert found.payload == PAYLOAD and found.signed is False
    assert found.compile_secs == 1.25
    assert found.metadata == Metadata(
        compile_secs=1.25,
        written_at=1234.5,
        machine=MACHINE,
        session=SESSION,
        key_digest=key_digest(KEY),
        signer=None,
        parts={"computation": "c0ffee", "compile options": "0ff1ce"},
    )
    assert len(GOOD) == HEAD_SIZE + meta_length(GOOD) + len(PAYLOAD) + DIGEST_SIZE


def test_round_trip_signed_names_its_secret_and_never_holds_it() -> None:
    found = load(GOOD_SIGNED, signer=SIGNER)
    assert found.payload == PAYLOAD and found.signed is True
    assert found.metadata.signer == key_id(SECRET)
    assert GOOD_SIGNED[5] == SIGNED
    tail = DIGEST_SIZE + SIGNATURE_SIZE
    assert len(GOOD_SIGNED) == HEAD_SIZE + meta_length(GOOD_SIGNED) + len(PAYLOAD) + tail
    assert SECRET not in GOOD_SIGNED  # the secret's public name is stored; the secret never is


def test_the_writer_cannot_choose_the_key_digest_or_the_signer() -> None:
    """encode() stamps the key's digest and the signer's id itself: metadata that claims
    another key, or a signer on an unsigned entry, is overwritten."""
    claims = Metadata(machine=MACHINE, key_digest=key_digest(OTHER_KEY), signer="f" * 16)
    unsigned = load(encode(KEY, PAYLOAD, claims))
    assert unsigned.metadata.key_digest == key_digest(KEY) and unsigned.metadata.signer is None
    signed = load(encode(KEY, PAYLOAD, claims, SIGNER), signer=SIGNER)
    assert signed.metadata.signer == key_id(SECRET)
    # A Signer without secrets writes an unsigned entry.
    assert load(encode(KEY, PAYLOAD, METADATA, UNSIGNED)).signed is False


def test_unknown_compile_time_and_empty_payload() -> None:
    found = load(encode(KEY, b"", Metadata(compile_secs=None, machine=MACHINE)))
    assert found.compile_secs is None and found.payload == b""
    assert found.metadata.parts == {} and found.metadata.session == ""


# -- bound to its key and machine ----------------------------------------------------------------


def test_an_entry_decoded_under_another_key_is_wrong_key() -> None:
    """The digest covers the key: a valid entry copied under another program's name."""
    for data, signer in ((GOOD, UNSIGNED), (GOOD_SIGNED, SIGNER)):
        failed = refusal(data, key=OTHER_KEY, signer=signer)
        assert (failed.category, failed.reason) == (WRONG_KEY, "written for another key")


def test_the_digest_binds_the_key_not_only_the_metadata() -> None:
    """Metadata rewritten to name another key (its digest recomputed for the key it was
    written for) still does not verify under that other key."""
    meta_end = HEAD_SIZE + meta_length(GOOD)
    meta = GOOD[HEAD_SIZE:meta_end].replace(
        key_digest(KEY).encode(), key_digest(OTHER_KEY).encode()
    )
    assert meta != GOOD[HEAD_SIZE:meta_end] and len(meta) == meta_end - HEAD_SIZE
    head, payload = GOOD[:HEAD_SIZE], GOOD[meta_end:-DIGEST_SIZE]
    relabelled = head + meta + payload + entry._digest(entry._covered(KEY, head, meta, payload))
    failed = refusal(relabelled, key=OTHER_KEY)
    assert (failed.category, failed.reason) == (CORRUPT, "its digest does not match (corrupt)")


def test_an_entry_of_another_machine_is_foreign() -> None:
    failed = refusal(GOOD, machine=OTHER_MACHINE)
    assert (failed.category, failed.reason) == (FOREIGN, "written on another machine")
    assert refusal(GOOD_SIGNED, signer=SIGNER, machine=OTHER_MACHINE).category == FOREIGN


# -- damage --------------------------------------------------------------------------------------

BROKEN = {
    "empty": b"",
    "head cut short": GOOD[: HEAD_SIZE - 1],
    "head only": GOOD[:HEAD_SIZE],
    "metadata cut short": GOOD[: HEAD_SIZE + 10],
    "no payload": GOOD[: HEAD_SIZE + meta_length(GOOD)],
    "no digest": GOOD[:-DIGEST_SIZE],
    "one byte short": GOOD[:-1],
    "padded": GOOD + b"\0",
    "padded with a digest": GOOD + GOOD[-DIGEST_SIZE:],
    "garbage": bytes(range(256)) * 2,
    "format 1": b"JXC1" + GOOD[4:],
    "format 1 header": b"JXC1\x01" + bytes(59),
    "version 3": GOOD[:4] + bytes([3]) + GOOD[5:],
    "metadata not JSON": GOOD[:HEAD_SIZE]
    + b"{" * meta_length(GOOD)
    + GOOD[HEAD_SIZE + meta_length(GOOD) :],
    "flipped payload bit": flip_bit(GOOD, HEAD_SIZE + meta_length(GOOD) + 5),
    "flipped digest bit": flip_bit(GOOD, len(GOOD) - 1),
    "flipped magic bit": flip_bit(GOOD, 0),
}


@pytest.mark.parametrize("data", list(BROKEN.values()), ids=list(BROKEN))
def test_broken_entries_are_corrupt(data: bytes) -> None:
    assert refusal(data).category == CORRUPT


@pytest.mark.parametrize(
    "data, signer, load_unverified",
    [
        (GOOD, UNSIGNED, False),
        (GOOD, SIGNER, False),
        (GOOD_SIGNED, SIGNER, False),
        (GOOD_SIGNED, UNSIGNED, True),
        (GOOD_SIGNED, UNSIGNED, False),
    ],
    ids=["unsigned", "unsigned, with a secret", "signed", "signed, unverified", "signed, no key"],
)
def test_truncated_at_any_length_is_corrupt(
    data: bytes, signer: Signer, load_unverified: bool
) -> None:
    """Every proper prefix of an entry (each boundary and everything between) is corrupt:
    never loaded, and never mistaken for another key's or an untrusted one."""
    categories = {
        length: category_or_loaded(data[:length], signer=signer, load_unverified=load_unverified)
        for length in range(len(data))
    }
    assert {length for length, found in categories.items() if found != CORRUPT} == set()


def test_every_flipped_payload_or_digest_bit_is_corrupt() -> None:
    start = HEAD_SIZE + meta_length(GOOD)
    categories = {
        (index, bit): category_or_loaded(flip_bit(GOOD, index, bit))
        for index in range(start, len(GOOD))
        for bit in range(8)
    }
    assert {place for place, found in categories.items() if found != CORRUPT} == set()


def test_no_flipped_bit_anywhere_is_loaded() -> None:
    """A flip in the head or the metadata may read as corrupt or as another key's
    (a flipped key digest): never as a loadable entry, signed or not. (With the secret,
    the signature alone decides, over the same bytes as the digest: the digest's own
    bytes are not read then, so they are left out of the signed sweep.)"""

    def sweep(data: bytes, signer: Signer, skipped: range = range(0)) -> set[str]:
        return {
            category_or_loaded(flip_bit(data, index, bit), signer=signer)
            for index in range(len(data))
            if index not in skipped
            for bit in range(8)
        }

    assert sweep(GOOD, UNSIGNED) == {CORRUPT, WRONG_KEY}
    digest_end = len(GOOD_SIGNED) - SIGNATURE_SIZE
    digest = range(digest_end - DIGEST_SIZE, digest_end)
    assert sweep(GOOD_SIGNED, SIGNER, digest) == {CORRUPT, WRONG_KEY, UNTRUSTED}


def test_a_flipped_payload_bit_of_a_signed_entry_is_corrupt_not_untrusted() -> None:
    """With the secret, a signed entry whose bytes no longer match their digest is
    corruption (a disk's, a copy's), not an attacker's: it is counted apart."""
    start = HEAD_SIZE + meta_length(GOOD_SIGNED)
    for index in (start, start + len(PAYLOAD) // 2, start + len(PAYLOAD) - 1):
        damaged = flip_bit(GOOD_SIGNED, index, 3)
        failed = refusal(damaged, signer=SIGNER)
        assert (failed.category, failed.reason) == (CORRUPT, "its digest does not match (corrupt)")
        assert refusal(damaged, load_unverified=True).category == CORRUPT


def test_a_flipped_signature_bit_is_untrusted() -> None:
    """The digest still matches, the signature does not: someone changed it."""
    failed = refusal(flip_bit(GOOD_SIGNED, len(GOOD_SIGNED) - 1), signer=SIGNER)
    assert failed.category == UNTRUSTED


def test_a_tampered_payload_with_a_recomputed_digest_is_untrusted() -> None:
    """The digest is public arithmetic: whoever changes a signed entry can recompute
    it, never the signature."""
    meta_end = HEAD_SIZE + meta_length(GOOD_SIGNED)
    payload_end = meta_end + len(PAYLOAD)
    evil = b"EVIL" + PAYLOAD[4:]
    head, meta = GOOD_SIGNED[:HEAD_SIZE], GOOD_SIGNED[HEAD_SIZE:meta_end]
    digest = entry._digest(entry._covered(KEY, head, meta, evil))
    forged = head + meta + evil + digest + GOOD_SIGNED[payload_end + DIGEST_SIZE :]
    failed = refusal(forged, signer=SIGNER)
    assert (failed.category, failed.reason) == (
        UNTRUSTED,
        "signed with an unknown key, or tampered with",
    )
    # Without the secret the digest is all there is to check: that is what
    # load_unverified means, and why it is not the default.
    assert refusal(forged).category == UNTRUSTED
    assert load(forged, load_unverified=True).payload == evil


@pytest.mark.parametrize(
    "metadata",
    [
        b"[1, 2]",
        b'"a string"',
        b'{"written_at": "yesterday"}',
        b'{"compile_secs": {"a": 1}}',
        b'{"parts": "not a mapping"}',
        b'{"parts": 7}',
        b"\xff\xfe not utf-8",
        b"[" * 60_000,
        b'{"written_at": 1' + b"0" * 400 + b"}",
    ],
    ids=[
        "a list",
        "a string",
        "time not a number",
        "compile time a mapping",
        "parts a string",
        "parts a number",
        "not utf-8",
        "nested deep",
        "a number too large for a float",
    ],
)
def test_metadata_that_is_not_ours_is_corrupt(metadata: bytes) -> None:
    """Whatever the metadata holds, decoding refuses it as corrupt and never raises
    anything else (it is parsed before the digest can be checked)."""
    head = struct.pack(">4sBBxxIQ", MAGIC, FORMAT, 0, len(metadata), 0)
    data = head + metadata + bytes(DIGEST_SIZE)
    assert refusal(data).category == CORRUPT


# -- signatures ----------------------------------------------------------------------------------


def test_with_a_secret_set_an_unsigned_entry_is_untrusted() -> None:
    failed = refusal(GOOD, signer=SIGNER)
    assert (failed.category, failed.reason) == (UNTRUSTED, "not signed, and a signing key is set")


def test_a_signed_flag_cleared_with_its_signature_cut_is_untrusted() -> None:
    """Stripping a signature (flag and bytes) leaves an unsigned entry: untrusted, and
    corrupt besides (the head is covered by the digest)."""
    stripped = GOOD_SIGNED[:5] + b"\0" + GOOD_SIGNED[6:-SIGNATURE_SIZE]
    assert refusal(stripped, signer=SIGNER).category == UNTRUSTED
    assert refusal(stripped).category == CORRUPT


def test_an_entry_signed_with_another_secret_is_untrusted() -> None:
    data = encode(KEY, PAYLOAD, METADATA, Signer((b"someone-elses-secret!!",)))
    failed = refusal(data, signer=SIGNER)
    assert (failed.category, failed.reason) == (
        UNTRUSTED,
        "signed with an unknown key, or tampered with",
    )


def test_rotation_an_old_secret_from_the_environment_still_verifies() -> None:
    """JAX_CACHE_OLD_SIGNING_KEYS: entries signed with a listed old secret load; new
    entries are signed with the current one, which the old secret alone cannot verify."""
    old_only = signer_from({SIGNING_KEY_VARIABLE: OLD_SECRET.decode()})
    written_before = encode(KEY, PAYLOAD, METADATA, old_only)
    rotated = signer_from(
        {
            SIGNING_KEY_VARIABLE: SECRET.decode(),
            OLD_SIGNING_KEYS_VARIABLE: OLD_SECRET.decode(),
        }
    )
    assert load(written_before, signer=rotated).payload == PAYLOAD
    written_after = encode(KEY, PAYLOAD, METADATA, rotated)
    assert load(written_after, signer=rotated).metadata.signer == key_id(SECRET)
    assert refusal(written_after, signer=old_only).category == UNTRUSTED
    # Once the old secret is no longer listed, what it signed is no longer loaded.
    dropped = signer_from({SIGNING_KEY_VARIABLE: SECRET.decode()})
    assert refusal(written_before, signer=dropped).category == UNTRUSTED


def test_without_a_secret_signed_entries_load_only_when_told() -> None:
    failed = refusal(GOOD_SIGNED)
    assert (failed.category, failed.reason) == (
        UNTRUSTED,
        "signed, and no signing key is set to verify it",
    )
    found = load(GOOD_SIGNED, load_unverified=True)
    assert found.payload == PAYLOAD and found.signed is True


# -- metadata alone ------------------------------------------------------------------------------


class CountingDir(CacheDir):
    """A CacheDir that records how many bytes were read, and refuses whole-file reads."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.bytes_read = 0

    def read(
        self, sub: str, name: str, *, limit: int, check: HeadCheck | None = None
    ) -> tuple[bytes, os.stat_result]:
        raise AssertionError(f"read the whole of {name}")

    def read_head(self, sub: str, name: str, size: int) -> bytes:
        data = super().read_head(sub, name, size)
        self.bytes_read += len(data)
        return data


def test_metadata_is_read_without_the_payload(tmp_path: Path) -> None:
    """read_metadata() reads the head and the metadata only (a large payload stays on
    disk), also when the metadata is longer than its first read, and also when the
    payload is not even there."""
    directory = CountingDir(tmp_path)
    big = Metadata(machine=MACHINE, parts={f"part{i}": "f" * 64 for i in range(80)})
    assert len(big.to_json()) > 4096  # longer than the first read
    directory.write_atomic("", "big", encode(KEY, bytes(10**7), big))
    found = read_metadata(directory, "", "big")
    assert found == Metadata(machine=MACHINE, parts=big.parts, key_digest=key_digest(KEY))
    # The first read, then exactly the head and the metadata.
    big_meta = meta_length((tmp_path / "big").read_bytes()[:HEAD_SIZE])
    assert directory.bytes_read == 4096 + HEAD_SIZE + big_meta

    directory.bytes_read = 0
    directory.write_atomic("", "small", encode(KEY, bytes(10**7), METADATA))
    small = read_metadata(directory, "", "small")
    assert small is not None and (small.written_at, small.session) == (1234.5, SESSION)
    assert directory.bytes_read == 4096

    cut = GOOD[: HEAD_SIZE + meta_length(GOOD)]  # head and metadata, nothing after
    directory.write_atomic("", "cut", cut)
    cut_found = read_metadata(directory, "", "cut")
    assert cut_found is not None and cut_found.session == SESSION


def test_metadata_of_what_is_not_an_entry_is_none(tmp_path: Path) -> None:
    directory = CacheDir(tmp_path)
    (tmp_path / "garbage").write_bytes(b"not an entry")
    (tmp_path / "format 1").write_bytes(b"JXC1" + GOOD[4:])
    (tmp_path / "a directory").mkdir()
    (tmp_path / "a link").symlink_to(tmp_path / "garbage")
    huge = struct.pack(">4sBBxxIQ", MAGIC, FORMAT, 0, 10**6, 0)
    (tmp_path / "huge metadata").write_bytes(huge + b"{}" + bytes(100))
    for name in ("garbage", "format 1", "a directory", "a link", "huge metadata", "missing"):
        assert read_metadata(directory, "", name) is None, name


# -- signing keys from the environment -----------------------------------------------------------


def test_keys_come_from_the_environment() -> None:
    signer = signer_from(
        {
            SIGNING_KEY_VARIABLE: f"  {SECRET.decode()}\n",
            OLD_SIGNING_KEYS_VARIABLE: f"{OLD_SECRET.decode()}\n  another-old-secret-key\n\n",
        }
    )
    assert signer.secrets == (SECRET, OLD_SECRET, b"another-old-secret-key")
    assert signer.signing_key_id == key_id(SECRET)
    assert signer_from({}) == Signer() and not signer_from({}).signs
    assert signer_from({SIGNING_KEY_VARIABLE: "  "}).signs is False


@pytest.mark.parametrize(
    "environ, message",
    [
        ({SIGNING_KEY_VARIABLE: "short-key"}, "env JAX_CACHE_SIGNING_KEY: a signing key must"),
        (
            {SIGNING_KEY_VARIABLE: SECRET.decode(), OLD_SIGNING_KEYS_VARIABLE: "tinysecret"},
            "env JAX_CACHE_OLD_SIGNING_KEYS: a signing key must have 16 to 4096 characters",
        ),
        (
            {OLD_SIGNING_KEYS_VARIABLE: OLD_SECRET.decode()},
            "env JAX_CACHE_OLD_SIGNING_KEYS is set but JAX_CACHE_SIGNING_KEY is not",
        ),
    ],
    ids=["too short", "an old key too short", "old keys without a current one"],
)
def test_an_unusable_key_is_an_error_that_never_shows_the_key(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(TrustError) as info:
        signer_from(environ)
    text = str(info.value)
    assert text.startswith(message), text
    leaked = [
        secret
        for value in environ.values()
        for secret in value.splitlines()
        if secret.strip() and secret.strip() in text
    ]
    assert leaked == []
