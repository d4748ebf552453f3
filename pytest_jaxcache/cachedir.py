"""File operations inside the cache directory, and nowhere else.

Every file is reached relative to a descriptor of its directory (``dir_fd``), by a *name*
(one path component of our character set: no separator, never ``.`` or ``..``), never
by a path; no symbolic link is ever followed: a sub-directory or file that is a link is
refused, not entered or opened. Only regular files are opened (a FIFO or device named
like an entry is reported, never opened blocking), every read is bounded, and writes go
to a temporary file in ``tmp/`` that is renamed into place, so a reader sees a whole
file or none. Files and directories are created with explicit modes (0o644, 0o755),
whatever the umask. A lock file is created here, and checked to be a regular file of
ours with one link, before :mod:`filelock` opens it: a planted link (a hard link to a
file outside, from a restored archive) is refused, never truncated.

The root itself is the one path taken as given: the user named it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_jaxcache.layout import TMP, is_safe_name, temporary_name

if TYPE_CHECKING:
    import filelock

try:  # the no-follow guarantee rests on these: without them there is no safe store
    _NOFOLLOW = os.O_NOFOLLOW
    _DIRECTORY = os.O_DIRECTORY
    _NONBLOCK = os.O_NONBLOCK
    _CLOEXEC = os.O_CLOEXEC
except AttributeError as missing:  # pragma: no cover - every POSIX system has them
    raise ImportError(
        f"pytest-jaxcache needs a POSIX system with O_NOFOLLOW and O_DIRECTORY ({missing})"
    ) from None

DIR_MODE = 0o755
FILE_MODE = 0o644
_SPARSE_FROM = 1 << 20
_MAX_READ = 0x7FFFF000  # Linux's most bytes for one read() (MAX_RW_COUNT)


class OddFile(OSError):
    """Something other than what was expected where a file or directory of ours should
    be: a link, a FIFO, a directory, a file with several links or another owner, a file
    too large to read, a name outside our grammar."""


def _sparse(status: os.stat_result) -> bool:
    """A file of more than 1 MiB with less than an eighth of it on disk: holes, not
    data. Our entries are written whole (and are mostly compressed bytes), so a file
    like this is not one, whatever its first bytes claim; reading it would cost memory
    for nothing."""
    return status.st_size > _SPARSE_FROM and status.st_blocks * 512 * 8 < status.st_size


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


def _check_name(name: str) -> None:
    if not is_safe_name(name):
        raise OddFile(errno.EINVAL, "not a name of ours (a path, or an odd character)", name[:80])


def _check_sub(sub: str) -> None:
    if sub:
        for part in sub.split("/"):
            _check_name(part)


def _close_all(fds: dict[str, int]) -> None:
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


# Sees a file's first bytes and status before the rest is read, and raises to refuse
# it: a file that cannot be what it claims is never read whole.
HeadCheck = Callable[[bytes, os.stat_result], None]
HEAD_BYTES = 4096


class CacheDir:
    """One cache directory. Sub-directories are named by relative paths of safe names,
    such as ``"entries"`` or ``"entries/1a2b"``; each component is opened without
    following links, and its descriptor is kept for the life of the object."""

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
        when it is missing (and not ``create``), :class:`OddFile` when it is a link, not
        a directory, or not a name of ours."""
        _check_sub(sub)
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
            made = False
            if create:
                try:
                    os.mkdir(name, DIR_MODE, dir_fd=parent)
                    made = True
                except FileExistsError:
                    pass
            try:
                fd = os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=parent)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    info = os.stat(name, dir_fd=parent, follow_symlinks=False)
                    raise OddFile(
                        errno.ENOTDIR, f"{kind_of(info.st_mode)}, not a directory", sub
                    ) from None
                raise
            if made:  # the umask does not decide who may write our directories
                os.fchmod(fd, DIR_MODE)
        self._fds[sub] = fd
        return fd

    def stat_dir(self, sub: str = "") -> os.stat_result:
        return os.fstat(self.fd(sub))

    # -- files ----------------------------------------------------------------------------

    def lstat(self, sub: str, name: str) -> os.stat_result:
        _check_name(name)
        return os.stat(name, dir_fd=self.fd(sub), follow_symlinks=False)

    def exists(self, sub: str, name: str) -> bool:
        try:
            self.lstat(sub, name)
        except OSError:
            return False
        return True

    def _open_regular(self, sub: str, name: str) -> tuple[int, os.stat_result]:
        """A descriptor of regular file ``sub/name``, opened without following a link
        or blocking on a FIFO, and its status."""
        _check_name(name)
        directory = self.fd(sub)
        info = os.stat(name, dir_fd=directory, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode):
            raise OddFile(errno.EINVAL, f"{kind_of(info.st_mode)}, not a regular file", name)
        fd = os.open(name, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC, dir_fd=directory)
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or opened.st_ino != info.st_ino:
            os.close(fd)
            raise OddFile(errno.EINVAL, "replaced while being opened", name)
        return fd, opened

    def read(
        self, sub: str, name: str, *, limit: int, check: HeadCheck | None = None
    ) -> tuple[bytes, os.stat_result]:
        """The bytes of regular file ``sub/name`` and its status. A file larger than
        ``limit`` bytes is an :class:`OddFile` (told by its size, before reading);
        ``check`` sees the first bytes and the status first and may refuse the file (by
        raising) before the rest is read. ``FileNotFoundError`` when it is
        missing."""
        fd, opened = self._open_regular(sub, name)
        try:
            if opened.st_size > limit:
                raise OddFile(errno.EFBIG, f"{opened.st_size} bytes, more than {limit}", name)
            if check is not None:
                check(os.read(fd, HEAD_BYTES), opened)
                if _sparse(opened):
                    raise OddFile(
                        errno.EFBIG,
                        f"{opened.st_size} bytes, {opened.st_blocks * 512} of them on disk: "
                        "a sparse file, which this cache never writes",
                        name,
                    )
                os.lseek(fd, 0, os.SEEK_SET)
            # One read of one byte more than the file (a file that grew is noticed): one
            # buffer of the file's size, never two (a join would copy). A regular file
            # gives all that was asked at once, up to the kernel's most for one call.
            wanted = opened.st_size + 1
            data = os.read(fd, wanted)
            if _MAX_READ <= len(data) < wanted:
                data += os.read(fd, wanted - len(data))
            if len(data) > limit:
                raise OddFile(errno.EFBIG, f"grew past {limit} bytes while read", name)
            return data, opened
        finally:
            os.close(fd)

    def read_head(self, sub: str, name: str, size: int) -> bytes:
        """The first ``size`` bytes of regular file ``sub/name``."""
        fd, _ = self._open_regular(sub, name)
        try:
            return os.read(fd, size)
        finally:
            os.close(fd)

    def write_atomic(self, sub: str, name: str, data: bytes) -> None:
        """Write ``data`` to ``sub/name`` through a temporary file in ``tmp/``."""
        _check_name(name)
        target = self.fd(sub, create=True)
        tmp_dir = self.fd(TMP, create=True)
        tmp = temporary_name(name, os.getpid(), uuid.uuid4().hex[:8])
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
        fd = os.open(tmp, flags, FILE_MODE, dir_fd=tmp_dir)
        try:
            try:
                os.fchmod(fd, FILE_MODE)
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
        _check_name(name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
        try:
            fd = os.open(name, flags, FILE_MODE, dir_fd=self.fd(sub, create=True))
        except FileExistsError:
            return
        try:
            os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)

    def owned_file(self, sub: str, name: str) -> Path:
        """The path of ``sub/name``, made sure to be a regular file of ours with one
        link (created empty if missing): what :mod:`filelock` may open. A link, another
        user's file or a file with several names (a hard link to a file elsewhere)
        is an :class:`OddFile`, never opened for writing."""
        _check_name(name)
        directory = self.fd(sub, create=True)
        flags = os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC
        created = True
        try:
            fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, FILE_MODE, dir_fd=directory)
        except FileExistsError:
            created = False
            try:
                fd = os.open(name, flags, dir_fd=directory)
            except OSError as error:
                if error.errno == errno.ELOOP:
                    raise OddFile(errno.ELOOP, "a symbolic link, not a lock file", name) from None
                raise
        try:
            if created:
                os.fchmod(fd, FILE_MODE)
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OddFile(errno.EINVAL, f"{kind_of(info.st_mode)}, not a lock file", name)
            if info.st_uid != os.geteuid():
                raise OddFile(errno.EPERM, "not owned by this user", name)
            if info.st_nlink != 1:
                raise OddFile(errno.EMLINK, f"has {info.st_nlink} links (a hard link)", name)
        finally:
            os.close(fd)
        return self.path(sub, name)

    def file_lock(self, sub: str, name: str, *, timeout: float) -> filelock.FileLock:
        """A :class:`filelock.FileLock` on lock file ``sub/name``, which is checked to
        be ours first (see :meth:`owned_file`)."""
        import filelock  # only when a lock is needed: a warm run never needs one

        return filelock.FileLock(str(self.owned_file(sub, name)), timeout=timeout)

    def unlink(self, sub: str, name: str, *, inode: int | None = None) -> bool:
        """Remove ``sub/name`` (a file, never a directory); with ``inode``, only if it is
        still that file. Returns whether it was removed."""
        _check_name(name)
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
        _check_name(name)
        os.utime(name, dir_fd=self.fd(sub), follow_symlinks=False)

    def scan(self, sub: str = "") -> Iterator[tuple[str, os.stat_result]]:
        """``(name, status)`` of everything in ``sub`` (links not followed), whatever its
        name: callers check names against the layout's grammar. Nothing when ``sub`` is
        missing; :class:`OddFile` when it is not a real directory."""
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
