"""Whose entries we load. Loading a compiled executable runs native code, so whoever can
write the cache can run code in the tests that read it. Three decisions live here:

- **Who may write.** A directory (or an entry) that a user other than the current one
  and root can write is not loaded from, unless the user says the sharing is deliberate
  or entries are signed with a key only trusted writers hold.
- **Signatures.** With a secret in :data:`SIGNING_KEY_VARIABLE`, every entry written
  carries an HMAC-SHA256 over its key, header and payload, and only entries signed with
  that secret (or an older one still listed for reading) are loaded.

Which machine an entry is for (its namespace) is :mod:`pytest_jaxcache.environment`'s.
"""

from __future__ import annotations

import functools
import grp
import hashlib
import hmac
import os
import pwd
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pytest_jaxcache.cachedir import CacheDir

SIGNING_KEY_VARIABLE = "JAX_CACHE_SIGNING_KEY"
OLD_SIGNING_KEYS_VARIABLE = "JAX_CACHE_OLD_SIGNING_KEYS"  # verify only, one per line
MIN_SECRET_CHARACTERS = 16
MAX_SECRET_CHARACTERS = 4096
MAX_OLD_SECRETS = 16
Buffer = bytes | memoryview  # what hashing takes: views avoid copying large payloads


class TrustError(ValueError):
    """A signing secret in the environment is unusable; the message names the variable
    and never the secret."""


# -- signatures ---------------------------------------------------------------------------------


def key_id(secret: bytes) -> str:
    """A short public name for a secret, stored in signed entries: it tells which of the
    secrets to verify with, and reveals nothing usable about the secret."""
    return hashlib.sha256(b"pytest-jaxcache signing key id\0" + secret).hexdigest()[:16]


@dataclass(frozen=True)
class Signer:
    """The secrets of this session: the first signs, all verify."""

    secrets: tuple[bytes, ...] = ()

    @property
    def signs(self) -> bool:
        return bool(self.secrets)

    @property
    def signing_key_id(self) -> str | None:
        return key_id(self.secrets[0]) if self.secrets else None

    def sign(self, chunks: Iterable[Buffer]) -> bytes:
        mac = hmac.new(self.secrets[0], digestmod=hashlib.sha256)
        for chunk in chunks:
            mac.update(chunk)
        return mac.digest()

    def verify(self, signer_id: str, chunks: Iterable[Buffer], signature: Buffer) -> bool:
        """Whether ``signature`` is the HMAC of ``chunks`` under the secret named
        ``signer_id`` (compared in constant time)."""
        for secret in self.secrets:
            if hmac.compare_digest(key_id(secret), signer_id):
                mac = hmac.new(secret, digestmod=hashlib.sha256)
                for chunk in chunks:
                    mac.update(chunk)
                return hmac.compare_digest(mac.digest(), signature)
        return False


def _secret(variable: str, text: str) -> bytes:
    """One secret as text: at least :data:`MIN_SECRET_CHARACTERS` characters of valid
    UTF-8 (surrounding white space ignored). Errors name the variable, never any part
    or measure of the secret."""
    text = text.strip()
    try:
        secret = text.encode("utf-8")
    except UnicodeEncodeError:
        raise TrustError(f"env {variable}: a signing key must be valid UTF-8 text") from None
    if not MIN_SECRET_CHARACTERS <= len(text) <= MAX_SECRET_CHARACTERS:
        raise TrustError(
            f"env {variable}: a signing key must have {MIN_SECRET_CHARACTERS} to "
            f"{MAX_SECRET_CHARACTERS} characters"
        )
    return secret


def signer_from(environ: Mapping[str, str]) -> Signer:
    """The secrets named in the environment (and only there: a secret on a command line
    or in an ini file leaks into shell histories, process lists and repositories).
    Older secrets, which only verify, are given one per line: a line break is the one
    character no key holds, so every other character may be part of a key."""
    current = environ.get(SIGNING_KEY_VARIABLE, "")
    old = environ.get(OLD_SIGNING_KEYS_VARIABLE, "")
    olds = [line for line in old.splitlines() if line.strip()]
    if olds and not current.strip():
        raise TrustError(
            f"env {OLD_SIGNING_KEYS_VARIABLE} is set but {SIGNING_KEY_VARIABLE} is not: "
            "old keys only verify; set the current key too"
        )
    if len(olds) > MAX_OLD_SECRETS:
        raise TrustError(
            f"env {OLD_SIGNING_KEYS_VARIABLE}: at most {MAX_OLD_SECRETS} old keys (one per line)"
        )
    if not current.strip():
        return Signer()
    secrets = [_secret(SIGNING_KEY_VARIABLE, current)]
    secrets += [_secret(OLD_SIGNING_KEYS_VARIABLE, line) for line in olds]
    return Signer(tuple(secrets))


# -- who may write ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


@functools.lru_cache(maxsize=64)
def _group(gid: int) -> tuple[str, frozenset[str] | None]:
    """A group's name and members (``None``: unknown, so assume others)."""
    try:
        group = grp.getgrgid(gid)
    except KeyError:
        return f"gid {gid}", None
    members = set(group.gr_mem)
    members.update(user.pw_name for user in pwd.getpwall() if user.pw_gid == gid)
    return group.gr_name, frozenset(members)


def other_writers(
    info: os.stat_result, *, uid: int | None = None, ancestor: bool = False
) -> str | None:
    """Why a user other than ``uid`` (default: this process's) and root can write the
    file or directory with status ``info``; ``None`` when nobody else can. For an
    ancestor directory, write access matters only without the sticky bit (it lets others
    rename our directory away and put theirs in its place)."""
    me = os.geteuid() if uid is None else uid
    if info.st_uid not in (me, 0):
        return f"owned by {_user(info.st_uid)}"
    if ancestor and info.st_mode & stat.S_ISVTX:
        return None
    if info.st_mode & stat.S_IWOTH:
        return "writable by every user"
    if info.st_mode & stat.S_IWGRP:
        name, members = _group(info.st_gid)
        others = None if members is None else sorted(members - {_user(me), "root"})
        if others is None:
            return f"writable by group {name} (members unknown)"
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            return f"writable by group {name} ({shown})"
    return None


def other_writers_of_tree(directory: CacheDir, subs: Iterable[str]) -> list[str]:
    """Who else can write the cache directory, the given sub-directories that exist, and
    the ancestors that could swap it: one line each, naming the path and the reason."""
    problems = []
    for sub in ("", *subs):
        try:
            info = directory.stat_dir(sub)
        except OSError:
            continue
        reason = other_writers(info)
        if reason is not None:
            problems.append(f"{directory.path(sub)} is {reason}")
    return problems + unsafe_ancestors(directory.root)


def unsafe_ancestors(path: os.PathLike[str] | str) -> list[str]:
    """The ancestors of ``path`` that others could use to swap it for a directory of
    their own, each with the reason."""
    problems = []
    current = os.path.dirname(os.path.realpath(path))
    while True:
        try:
            reason = other_writers(os.stat(current), ancestor=True)
        except OSError:
            reason = None
        if reason is not None:
            problems.append(f"{current} is {reason}")
        parent = os.path.dirname(current)
        if parent == current:
            return problems
        current = parent
