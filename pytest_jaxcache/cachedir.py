"""File operations inside the cache directory, and nowhere else.

Every file is reached relative to a descriptor of its directory (``dir_fd``), and no
symbolic link is ever followed: a sub-directory or file that is a link is refused, not
entered or opened. Only regular files are opened (a FIFO or device named like an entry
is reported, never opened blocking), reads are capped, and writes go to a temporary
file in ``tmp/`` that is renamed into place, so a reader sees a whole file or none.

The root itself is the one path taken as given: the user named it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import threading
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path

TMP = "tmp"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
# Temporary files: "<target>.<pid>.<8 hex>.tmp" (and the same without ".tmp": layout 1).
TEMPORARY = re.compile(r"[A-Za-z0-9_.-]+\.\d+\.[0-9a-f]{8}(\.tmp)?")


class OddFile(OSError):
    """Something other than a regular file (or a directory) where one was expected."""


def kind_of(mode: int) -> str:
    """A word for a file's type, for notices."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a regular file" if stat.S_ISREG(mode) else "an odd file"


def _close_all(fds: dict[str, int]) -> None:
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


class CacheDir:
    """One cache directory. Sub-directories are named by relative paths such as
    ``"entries"`` or ``"entries/1a2b"``; each component is opened without following
    links, and its descriptor is kept for the life of the object."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _close_all, self._fds)

    def close(self) -> None:
        with self._lock:
            _close_all(self._fds)

    # -- directories ----------------------------------------------------------------------

    def fd(self, sub: str = "", *, create: bool = False) -> int:
        """The descriptor of ``sub`` (``""``: the root). Raises ``FileNotFoundError``
        when it is missing (and not ``create``), :class:`OddFile` when it is a link or
        not a directory."""
        with self._lock:
            return self._fd(sub, create)

    def _fd(self, sub: str, create: bool) -> int:
        cached = self._fds.get(sub)
        if cached is not None:
            return cached
        if not sub:
            fd = os.open(self.root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
        else:
            parent_name, _, name = sub.rpartition("/")
            parent = self._fd(parent_name, create)
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=parent)
            try:
                fd = os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=parent)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    info = os.stat(name, dir_fd=parent, follow_symlinks=False)
                    raise OddFile(
                        errno.ENOTDIR, f"{kind_of(info.st_mode)}, not a directory", sub
                    ) from None
                raise
        self._fds[sub] = fd
        return fd

    def has(self, sub: str) -> bool:
        """Whether ``sub`` exists as a real directory."""
        try:
            self.fd(sub)
        except OSError:
            return False
        return True

    def stat_dir(self, sub: str = "") -> os.stat_result:
        return os.fstat(self.fd(sub))

    def listdir(self, sub: str = "") -> list[str]:
        return os.listdir(self.fd(sub))

    # -- files ----------------------------------------------------------------------------

    def lstat(self, sub: str, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self.fd(sub), follow_symlinks=False)

    def exists(self, sub: str, name: str) -> bool:
        try:
            self.lstat(sub, name)
        except OSError:
            return False
        return True

    def read(
        self, sub: str, name: str, *, limit: int | None = None
    ) -> tuple[bytes, os.stat_result]:
        """The bytes of regular file ``sub/name`` (at most ``limit``: more is an
        :class:`OddFile`) and its status. ``FileNotFoundError`` when it is missing."""
        directory = self.fd(sub)
        info = os.stat(name, dir_fd=directory, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode):
            raise OddFile(errno.EINVAL, f"{kind_of(info.st_mode)}, not a regular file", name)
        if limit is not None and info.st_size > limit:
            raise OddFile(errno.EFBIG, f"{info.st_size} bytes, more than {limit}", name)
        fd = os.open(name, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC, dir_fd=directory)
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode) or opened.st_ino != info.st_ino:
                raise OddFile(errno.EINVAL, "replaced while being opened", name)
            size = opened.st_size if limit is None else min(opened.st_size, limit)
            chunks = []
            remaining = size + 1  # one more: a file that grew is noticed as too long
            while remaining > 0:
                chunk = os.read(fd, min(remaining, 1 << 24))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            return b"".join(chunks), opened
        finally:
            os.close(fd)

    def read_head(self, sub: str, name: str, size: int) -> bytes:
        """The first ``size`` bytes of regular file ``sub/name``."""
        directory = self.fd(sub)
        info = os.stat(name, dir_fd=directory, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode):
            raise OddFile(errno.EINVAL, f"{kind_of(info.st_mode)}, not a regular file", name)
        fd = os.open(name, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC, dir_fd=directory)
        try:
            if os.fstat(fd).st_ino != info.st_ino:
                raise OddFile(errno.EINVAL, "replaced while being opened", name)
            return os.read(fd, size)
        finally:
            os.close(fd)

    def write_atomic(self, sub: str, name: str, data: bytes) -> None:
        """Write ``data`` to ``sub/name`` through a temporary file in ``tmp/``."""
        target = self.fd(sub, create=True)
        tmp_dir = self.fd(TMP, create=True)
        tmp = f"{name[:150]}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
        fd = os.open(tmp, flags, 0o644, dir_fd=tmp_dir)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=tmp_dir, dst_dir_fd=target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=tmp_dir)
            raise

    def create_empty(self, sub: str, name: str) -> None:
        """Create ``sub/name`` as an empty file unless something is there already."""
        flags = os.O_WRONLY | os.O_CREAT | _NOFOLLOW | _CLOEXEC
        os.close(os.open(name, flags, 0o644, dir_fd=self.fd(sub, create=True)))

    def unlink(self, sub: str, name: str, *, inode: int | None = None) -> bool:
        """Remove ``sub/name`` (a file, never a directory); with ``inode``, only if it is
        still that file. Returns whether it was removed."""
        directory = self.fd(sub)
        try:
            info = os.stat(name, dir_fd=directory, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode) or (inode is not None and info.st_ino != inode):
                return False
            os.unlink(name, dir_fd=directory)
        except FileNotFoundError:
            return False
        return True

    def touch(self, sub: str, name: str) -> None:
        """Set the modification time of ``sub/name`` (not of a link's target) to now."""
        os.utime(name, dir_fd=self.fd(sub), follow_symlinks=False)

    def scan(self, sub: str = "") -> Iterator[tuple[str, os.stat_result]]:
        """``(name, status)`` of everything in ``sub`` (links not followed). Nothing
        when ``sub`` is missing; :class:`OddFile` when it is not a real directory."""
        try:
            directory = self.fd(sub)
        except FileNotFoundError:
            return
        with os.scandir(directory) as listing:  # works on a duplicate of the descriptor
            for item in listing:
                try:
                    yield item.name, item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue

    def path(self, sub: str, name: str = "") -> Path:
        """The path of ``sub/name``, for libraries that take paths (filelock) and for
        messages."""
        path = self.root / sub if sub else self.root
        return path / name if name else path
