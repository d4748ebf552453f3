"""Unit tests of the entry format and its signatures: what verifies, and why the rest
is refused (corrupt, another key's, untrusted, another machine's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_jaxcache.cachedir import CacheDir
from pytest_jaxcache.entry import (
    CORRUPT,
    FOREIGN,
    HEAD_SIZE,
    MAGIC,
    UNTRUSTED,
    WRONG_KEY,
    Metadata,
    Refused,
    decode,
    encode,
    key_digest,
    read_metadata,
)
from pytest_jaxcache.trust import Signer, TrustError, key_id, signer_from

KEY = f"jit_f-{'a' * 64}"
OTHER_KEY = f"jit_g-{'b' * 64}"
MACHINE = "0123456789abcdef"
PAYLOAD = b"compiled program bytes \x00\x01\x02" * 20
SECRET = b"a-secret-of-at-least-16"
OLD_SECRET = b"an-older-secret-16+"
METADATA = Metadata(
    compile_secs=1.25,
    written_at=1234.5,
    machine=MACHINE,
    session="5e55105e55105e55",
    parts={"computation": "c0ffee"},
)
UNSIGNED = Signer()
SIGNER = Signer((SECRET,))


def refusal(data: bytes, key: str = KEY, **kwargs: object) -> Refused:
    options: dict[str, object] = {"signer": UNSIGNED, "machine": MACHINE, **kwargs}
    with pytest.raises(Refused) as info:
        decode(key, data, **options)  # type: ignore[arg-type]
    return info.value


def test_round_trip_unsigned() -> None:
    data = encode(KEY, PAYLOAD, METADATA)
    assert data.startswith(MAGIC)
    found = decode(KEY, data, signer=UNSIGNED, machine=MACHINE)
    assert found.payload == PAYLOAD and found.signed is False
    assert found.compile_secs == 1.25
    assert found.metadata.written_at == 1234.5
    assert found.metadata.session == "5e55105e55105e55"
    assert found.metadata.parts == {"computation": "c0ffee"}
    assert found.metadata.key_digest == key_digest(KEY)
    assert found.metadata.signer is None


def test_round_trip_signed_names_its_key() -> None:
    data = encode(KEY, PAYLOAD, METADATA, SIGNER)
    found = decode(KEY, data, signer=SIGNER, machine=MACHINE)
    assert found.payload == PAYLOAD and found.signed is True
    assert found.metadata.signer == key_id(SECRET)
    assert SECRET not in data  # the key's name is public; the key never is


def test_unknown_compile_time_is_kept_unknown() -> None:
    data = encode(KEY, b"", Metadata(compile_secs=None, machine=MACHINE))
    found = decode(KEY, data, signer=UNSIGNED, machine=MACHINE)
    assert found.compile_secs is None and found.payload == b""


def test_an_entry_decoded_under_another_key_is_refused() -> None:
    """The digest covers the key: a valid entry copied under another program's name."""
    assert refusal(encode(KEY, PAYLOAD, METADATA), key=OTHER_KEY).category == WRONG_KEY


def test_an_entry_of_another_machine_is_refused() -> None:
    data = encode(KEY, PAYLOAD, METADATA)
    assert refusal(data, machine="fedcba9876543210").category == FOREIGN


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1 :]


GOOD = encode(KEY, PAYLOAD, METADATA)
BROKEN = {
    "empty": b"",
    "head cut short": GOOD[: HEAD_SIZE - 1],
    "head only": GOOD[:HEAD_SIZE],
    "no digest": GOOD[:-32],
    "one byte short": GOOD[:-1],
    "padded": GOOD + b"\0",
    "garbage": bytes(range(256)) * 2,
    "format 1": b"JXC1" + bytes(60),
    "flipped payload byte": _flip(GOOD, len(GOOD) - 40),
    "flipped digest byte": _flip(GOOD, len(GOOD) - 1),
    "flipped metadata byte": _flip(GOOD, HEAD_SIZE + 3),
    "flipped magic": _flip(GOOD, 0),
}


@pytest.mark.parametrize("data", list(BROKEN.values()), ids=list(BROKEN))
def test_broken_entries_are_corrupt(data: bytes) -> None:
    assert refusal(data).category == CORRUPT


def test_a_flipped_payload_byte_of_a_signed_entry_is_corrupt_not_untrusted() -> None:
    """With the key, a signed entry that does not verify is told apart: bytes that no
    longer match their digest are corruption, not an attacker."""
    data = _flip(encode(KEY, PAYLOAD, METADATA, SIGNER), len(PAYLOAD))
    assert refusal(data, signer=SIGNER).category == CORRUPT


def test_with_a_key_set_an_unsigned_entry_is_untrusted() -> None:
    failed = refusal(encode(KEY, PAYLOAD, METADATA), signer=SIGNER)
    assert (failed.category, failed.reason) == (UNTRUSTED, "not signed, and a signing key is set")


def test_an_entry_signed_with_another_key_is_untrusted() -> None:
    data = encode(KEY, PAYLOAD, METADATA, Signer((b"someone-elses-secret!!",)))
    failed = refusal(data, signer=SIGNER)
    assert (failed.category, failed.reason) == (
        UNTRUSTED,
        "signed with an unknown key, or tampered with",
    )


def test_an_old_key_still_verifies() -> None:
    """Rotation: the new key signs, the old one (listed second) verifies."""
    data = encode(KEY, PAYLOAD, METADATA, Signer((OLD_SECRET,)))
    rotated = Signer((SECRET, OLD_SECRET))
    assert decode(KEY, data, signer=rotated, machine=MACHINE).payload == PAYLOAD
    assert rotated.signing_key_id == key_id(SECRET)


def test_without_a_key_signed_entries_load_only_when_told() -> None:
    data = encode(KEY, PAYLOAD, METADATA, SIGNER)
    failed = refusal(data)
    assert (failed.category, failed.reason) == (
        UNTRUSTED,
        "signed, and no signing key is set to verify it",
    )
    found = decode(KEY, data, signer=UNSIGNED, machine=MACHINE, load_unverified=True)
    assert found.payload == PAYLOAD
    assert refusal(_flip(data, len(data) - 40), load_unverified=True).category == CORRUPT


def test_metadata_is_read_without_the_payload(tmp_path: Path) -> None:
    """read_metadata() reads the head and metadata only (a large payload stays on
    disk), also when the metadata is longer than the first read."""
    directory = CacheDir(tmp_path)
    big = Metadata(machine=MACHINE, parts={f"part{i}": "f" * 64 for i in range(80)})
    directory.write_atomic("", "big", encode(KEY, bytes(10**6), big))
    directory.write_atomic("", "small", encode(KEY, PAYLOAD, METADATA))
    (tmp_path / "garbage").write_bytes(b"not an entry")
    assert read_metadata(directory, "", "big") == Metadata(
        machine=MACHINE, parts=big.parts, key_digest=key_digest(KEY)
    )
    small = read_metadata(directory, "", "small")
    assert small is not None and small.written_at == 1234.5
    assert read_metadata(directory, "", "garbage") is None
    assert read_metadata(directory, "", "missing") is None
    assert len(big.to_json()) > 4096  # longer than the first read


# -- signing keys from the environment ---------------------------------------------------------


def test_keys_come_from_the_environment() -> None:
    signer = signer_from(
        {
            "JAX_CACHE_SIGNING_KEY": SECRET.decode(),
            "JAX_CACHE_OLD_SIGNING_KEYS": f"{OLD_SECRET.decode()}, another-old-secret-key",
        }
    )
    assert signer.secrets == (SECRET, OLD_SECRET, b"another-old-secret-key")
    assert signer_from({}) == Signer() and not signer_from({}).signs


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"JAX_CACHE_SIGNING_KEY": "short-key"}, "env JAX_CACHE_SIGNING_KEY: a signing key must"),
        (
            {"JAX_CACHE_SIGNING_KEY": SECRET.decode(), "JAX_CACHE_OLD_SIGNING_KEYS": "tiny"},
            "env JAX_CACHE_OLD_SIGNING_KEYS: a signing key must have at least 16",
        ),
        (
            {"JAX_CACHE_OLD_SIGNING_KEYS": OLD_SECRET.decode()},
            "env JAX_CACHE_OLD_SIGNING_KEYS is set but JAX_CACHE_SIGNING_KEY is not",
        ),
    ],
)
def test_an_unusable_key_is_an_error_that_never_shows_the_key(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(TrustError) as info:
        signer_from(environ)
    assert str(info.value).startswith(message)
    assert all(value not in str(info.value) for value in environ.values())
