"""A bucket written by someone hostile, against real object stores on 127.0.0.1: names
from a manifest that are paths, giant manifests, unsigned manifests under a signing key,
objects too large to be entries, and a server that answers the bucket probe and then
never answers again. Nothing outside the local cache is ever written (every test of a
write-outside case checks the outside file byte for byte), nothing large is downloaded,
and a stalled server costs each process at most one call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from emulators import (
    Emulator,
    new_bucket,
    object_sizes,
    objects,
    put_object,
    put_zeros,
    stalling_proxy,
)
from helpers import Session, entries, programs_suite, run_session, write_files

pytestmark = pytest.mark.slow

SUITE = programs_suite(3)
KEY = "a-signing-key-of-the-trusted-job"
OUTSIDE_TEXT = b"the user's notes: not the cache's\n"


def run(checkout: Path, url: str, emulator: Emulator, *args: str, **env: str) -> Session:
    return run_session(
        checkout,
        "--jax-cache-dir=cache",
        f"--jax-cache-remote={url}",
        "--jax-cache-remote-timeout=5",
        "-p",
        "no:xdist",
        *args,
        env={**emulator.env, **env},
    )


def first_machine(root: Path, url: str, emulator: Emulator, **env: str) -> tuple[str, str]:
    """Machine A fills the bucket: its entries and its manifest. Returns the namespace
    and the manifest's object path."""
    checkout = root / "a"
    write_files(checkout, SUITE)
    result, report = run(checkout, url, emulator, **env)
    result.assert_outcomes(passed=3)
    assert report["remote"]["uploads"] == 3, report["remote"]
    [manifest] = [path for path in objects(emulator, url) if "/manifests/" in path]
    return manifest.split("/", 1)[0], manifest


def outside_file(root: Path) -> Path:
    path = root / "outside" / "notes.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(OUTSIDE_TEXT)
    return path


# Each mode on one protocol (prefetch is the same code for both: fsspec's cat_ranges).
@pytest.mark.parametrize(
    ("emulator", "mode"), [("gcs", "readwrite"), ("s3", "readonly")], indirect=["emulator"]
)
def test_names_from_a_manifest_are_never_paths(
    tmp_path: Path, emulator: Emulator, mode: str
) -> None:
    """A manifest that lists ``../`` paths and an absolute path (with objects under
    those literal names) makes the next machine's prefetch write nothing outside its
    cache: the outside file is byte-identical, the absolute path is not created, the
    foreign names are counted and the real entries still come down; a read-write
    session writes the manifest back with its own names only."""
    url = emulator.url(f"names-{mode}")
    namespace, manifest = first_machine(tmp_path, url, emulator)
    outside = outside_file(tmp_path)
    planted = tmp_path / "planted-by-the-bucket"
    hostile = ["../../../../outside/notes.txt", str(planted), "../" * 12 + "tmp/x"]
    sessions = json.loads(objects(emulator, url)[manifest])["sessions"]
    put_object(emulator, url, manifest, json.dumps({"sessions": [sessions[0] + hostile]}).encode())
    attack = b"JXC2 attacker bytes, shaped like nothing of ours"
    for name in hostile[:1]:
        put_object(emulator, url, f"{namespace}/{name}", attack)

    checkout = tmp_path / "b"
    write_files(checkout, SUITE)
    result, report = run(checkout, url, emulator, f"--jax-cache-remote-mode={mode}")
    result.assert_outcomes(passed=3)
    assert outside.read_bytes() == OUTSIDE_TEXT
    assert not planted.exists()
    remote = report["remote"]
    assert remote["foreign_names"] >= len(hostile), remote
    said = f"notice: remote {url} held what was refused: {remote['foreign_names']} names that"
    assert sum(line.startswith(said) for line in result.outlines) == 1, result.outlines[-30:]
    assert remote["prefetched"] == 3 and report["cachable"]["hits"] == 3, remote
    assert {path.parent.name for path in entries(checkout / "cache")} == {namespace}
    written_back = json.loads(objects(emulator, url)[manifest])["sessions"]
    kept = any(name in names for names in written_back for name in hostile)
    assert kept == (mode == "readonly")  # read-only: the attacker's manifest, untouched


def test_a_giant_manifest_is_ignored_and_never_written_back(tmp_path: Path, s3: Emulator) -> None:
    """A manifest of 300,000 names (24 MB) is over the cap: ignored, said once, and
    replaced by this session's own names; the session runs as without it."""
    url = s3.url("giant")
    _, manifest = first_machine(tmp_path, url, s3)
    names = [f"jit_noise{i}-{i:064x}" for i in range(300_000)]
    put_object(s3, url, manifest, json.dumps({"sessions": [names]}).encode())
    checkout = tmp_path / "b"
    write_files(checkout, SUITE)
    result, report = run(checkout, url, s3)
    result.assert_outcomes(passed=3)
    remote = report["remote"]
    assert remote["manifests_ignored"] == 1 and remote["prefetched"] == 0, remote
    assert any("the manifest" in error and "ignored" in error for error in remote["errors"])
    assert f"notice: remote {url} held what was refused: 1 manifests ignored" in result.outlines
    assert any(
        line.startswith("notice: remote: ") and "ignored" in line for line in result.outlines
    )
    assert report["cachable"]["hits"] == 3  # read-through still serves every program
    sessions = json.loads(objects(s3, url)[manifest])["sessions"]
    assert [len(names) for names in sessions] == [3]


def test_with_a_signing_key_an_unsigned_manifest_is_ignored(tmp_path: Path, s3: Emulator) -> None:
    """With a signing key, only manifests signed with it are read: a manifest a bucket
    writer swapped for an unsigned one prefetches nothing; the trusted job's own
    signed manifest prefetches everything."""
    url = s3.url("signed")
    _, manifest = first_machine(tmp_path, url, s3, JAX_CACHE_SIGNING_KEY=KEY)
    signed = objects(s3, url)[manifest]
    assert set(json.loads(signed)) == {"version", "sessions", "signer", "mac"}

    fresh = tmp_path / "b"
    write_files(fresh, SUITE)
    result, report = run(fresh, url, s3, JAX_CACHE_SIGNING_KEY=KEY)
    result.assert_outcomes(passed=3)
    assert report["remote"]["prefetched"] == 3 and report["remote"]["manifests_ignored"] == 0

    unsigned = {"sessions": json.loads(signed)["sessions"]}
    put_object(s3, url, manifest, json.dumps(unsigned).encode())
    other = tmp_path / "c"
    write_files(other, SUITE)
    result, report = run(other, url, s3, JAX_CACHE_SIGNING_KEY=KEY)
    result.assert_outcomes(passed=3)
    assert report["remote"]["manifests_ignored"] == 1 and report["remote"]["prefetched"] == 0
    assert report["cachable"]["hits"] == 3  # signed entries still verify, one by one


def an_entry_replaced_by_zeros(root: Path, url: str, emulator: Emulator) -> tuple[Path, str]:
    """Machine A fills the bucket; one entry's object becomes 64 MB of zeros. Returns
    machine B's checkout (the suite, no cache) and the replaced object's path."""
    first_machine(root, url, emulator)
    victim = sorted(path for path in object_sizes(emulator, url) if "/manifests/" not in path)[0]
    put_zeros(emulator, url, victim, 64 * 2**20)
    checkout = root / "b"
    write_files(checkout, SUITE)
    return checkout, victim


def test_an_object_too_large_to_be_its_entry_is_never_downloaded_whole(
    tmp_path: Path, s3: Emulator
) -> None:
    """A 64 MB object of zeros in place of an entry: its first bytes say it is no
    entry, so the rest never comes down; the program is compiled and the object
    replaced by the real entry."""
    url = s3.url("large")
    checkout, victim = an_entry_replaced_by_zeros(tmp_path, url, s3)
    result, report = run(checkout, url, s3, "--jax-cache-prefetch=false")
    result.assert_outcomes(passed=3)
    remote = report["remote"]
    assert remote["bytes_down"] < 2**20, remote
    assert (remote["refused"], remote["hits"], report["totals"]["misses"]) == (1, 2, 1)
    assert object_sizes(s3, url)[victim] < 2**20  # the real entry took its place


def test_without_a_listing_an_object_is_judged_by_its_size_before_it_comes(
    tmp_path: Path, s3: Emulator
) -> None:
    """The namespace cannot be listed (the bucket forbids it): nothing is prefetched
    (no size is known), and each lookup asks its object's size first, so a 64 MB object
    in place of an entry is judged by its head and never downloaded whole."""
    url = s3.url("unlisted")
    checkout, _ = an_entry_replaced_by_zeros(tmp_path, url, s3)

    def lists(method: str, path: str) -> bool:
        return method == "GET" and "list-type=" in path

    with stalling_proxy(s3.endpoint, lambda _method, _path: True, forbids=lists) as proxy:
        result, report = run(checkout, url, s3, FSSPEC_S3_ENDPOINT_URL=proxy.endpoint)
    result.assert_outcomes(passed=3)
    assert any("list-type=" in request for request in proxy.answered)
    remote = report["remote"]
    assert remote["off"] is None and remote["prefetched"] == 0, remote
    assert remote["bytes_down"] < 2**20, (remote, proxy.answered)
    assert (remote["refused"], remote["hits"], report["totals"]["misses"]) == (1, 2, 1)
    assert any("nothing prefetched" in error for error in remote["errors"]), remote["errors"]


def test_a_stalled_remote_costs_each_process_one_call_at_most(tmp_path: Path, s3: Emulator) -> None:
    """A server that answers the bucket probe and then never answers: the first call to
    time out turns the remote off for the whole session (the others hear it through the
    cache), every test passes, and the report says why, in the JSON and the terminal."""
    url = s3.url("stalled")
    write_files(tmp_path, SUITE)
    with stalling_proxy(s3.endpoint, lambda method, path: method == "HEAD") as proxy:
        result, report = run_session(
            tmp_path,
            "--jax-cache-dir=cache",
            f"--jax-cache-remote={url}",
            "--jax-cache-remote-timeout=5",
            "-n",
            "2",
            env={**s3.env, "FSSPEC_S3_ENDPOINT_URL": proxy.endpoint},
        )
    result.assert_outcomes(passed=3)
    off = report["remote"]["off"]
    assert off is not None and "no answer within 5.00s" in off, report["remote"]
    assert any(f"remote {url} turned off: {off}" in line for line in result.outlines)
    processes = 3  # the controller and two workers
    assert len(proxy.stalled) <= processes, proxy.stalled
    assert len(list((tmp_path / "cache" / "locks").glob("remote-*.off"))) == 1


def test_a_bucket_anyone_can_write_is_said_once_unless_entries_are_signed(
    tmp_path: Path, s3: Emulator
) -> None:
    """Where the client can read the bucket's access control: a grant of writing to
    everyone is one notice (anyone can put programs the tests run); with a signing key
    it is not said (signatures decide what loads); a private bucket says nothing."""
    public = new_bucket(s3, "anyone-writes", anyone_writes=True)
    private = new_bucket(s3, "only-its-owner")
    warning = "the bucket anyone-writes can be written by everyone"
    said = {}
    for name, url, env in (
        ("public", public, {}),
        ("signed", public, {"JAX_CACHE_SIGNING_KEY": KEY}),
        ("private", private, {}),
    ):
        checkout = tmp_path / name
        write_files(checkout, SUITE)
        result, report = run(checkout, url, s3, **env)
        result.assert_outcomes(passed=3)
        assert report["remote"]["off"] is None, report["remote"]
        notices = [line for line in result.outlines if line.startswith("notice: remote: ")]
        said[name] = sum(warning in line for line in notices)
        assert said[name] == sum(warning in error for error in report["remote"]["errors"])
    assert said == {"public": 1, "signed": 0, "private": 0}
