"""Which directory is ours. The plugin adopts a directory only when it is new, empty, or
holds nothing but the files of a cache (ours, of this or an earlier layout, or JAX's
own), looking all the way down: every name under the layout's directories must match
the grammar of its kind (:mod:`pytest_jaxcache.layout`). Anything else is refused with
the reason, because a cache deletes files in the directory it owns.

Adopting writes nothing but the directory itself (when it is new); :func:`claim` tags it
(``CACHEDIR.TAG``, which also keeps backup tools away, and a ``.gitignore`` of its own)
once the session has also checked who may write it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from pytest_jaxcache.cachedir import DIR_MODE, CacheDir, kind_of
from pytest_jaxcache.layout import (
    ENTRIES,
    GITIGNORE,
    NAMESPACE,
    SUBDIRECTORIES,
    TAG,
    allowed_at_top,
    allowed_in,
    namespace_dir,
)

TAG_TEXT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# pytest-jaxcache cache directory (layout 2): remove it with `jaxcache clear` or rm -r.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)
_TAG_LINE = "# pytest-jaxcache cache directory"
GITIGNORE_TEXT = b"# created by pytest-jaxcache\n*\n"
_SHOWN = 5


class NotOurs(Exception):
    """The directory cannot be adopted; the message says why."""


def odd_layout(directory: CacheDir) -> list[str]:
    """The store's sub-directories that exist as something else (a link out of the
    cache, a file): the store cannot use the directory while they do."""
    problems = []
    for name in SUBDIRECTORIES:
        try:
            info = directory.lstat("", name)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(info.st_mode):
            problems.append(
                f"{directory.path('', name)} is {kind_of(info.st_mode)}, not a directory"
            )
    return problems


def is_tagged(directory: CacheDir) -> bool:
    try:
        data, _ = directory.read("", TAG, limit=4096)
    except OSError:
        return False
    return _TAG_LINE.encode() in data


def _names(directory: CacheDir, sub: str) -> list[tuple[str, bool]]:
    """``(name, is a real directory)`` of everything in ``sub`` ([] when it is not a
    real directory: odd_layout reports that)."""
    try:
        return [(name, stat.S_ISDIR(info.st_mode)) for name, info in directory.scan(sub)]
    except OSError:
        return []


def foreign_names(directory: CacheDir) -> list[str]:
    """Every path under the directory whose name does not match the layout's grammar
    (a file of someone else's), looking into each layout directory and machine
    namespace that is a real directory."""
    foreign = []
    for name, is_dir in _names(directory, ""):
        if not allowed_at_top(name):
            foreign.append(name)
        elif is_dir and name in SUBDIRECTORIES:
            for inner, inner_is_dir in _names(directory, name):
                if not allowed_in(name, inner):
                    foreign.append(f"{name}/{inner}")
                elif name == ENTRIES and inner_is_dir and NAMESPACE.fullmatch(inner):
                    sub = namespace_dir(inner)
                    foreign += [
                        f"{sub}/{entry}"
                        for entry, _ in _names(directory, sub)
                        if not allowed_in(sub, entry)
                    ]
    return sorted(foreign)


def _make(root: Path) -> None:
    """Create ``root`` and its missing parents with mode 0o755, whatever the umask."""
    missing = []
    current = root
    while not current.exists() and not current.is_symlink():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue
        os.chmod(path, DIR_MODE)


def adopt(root: Path, *, readonly: bool) -> CacheDir:
    """Open ``root`` as our cache directory, creating it if it is new (not in read-only
    mode). Raises :class:`NotOurs` when it holds anything that is not a cache's, and
    ``OSError`` when it cannot be created or entered. Writes nothing inside it."""
    if root.is_symlink() and not root.exists():
        raise NotOurs(f"{root} is a dangling symbolic link (to {os.readlink(root)})")
    if not root.exists():
        if readonly:
            raise FileNotFoundError(errno.ENOENT, "does not exist", str(root))
        _make(root)
    directory = CacheDir(root)
    directory.fd()  # enter it now: a directory we cannot enter fails here
    foreign = foreign_names(directory)
    if foreign:
        tagged = is_tagged(directory)
        directory.close()
        shown = ", ".join(foreign[:_SHOWN]) + (
            f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN else ""
        )
        if tagged:
            raise NotOurs(
                f"{root} is tagged as a pytest-jaxcache cache but holds files that are not "
                f"a cache's ({shown}); a cache deletes files in its directory: move them "
                "out, or use a new directory"
            )
        raise NotOurs(
            f"{root} is not a pytest-jaxcache cache directory and not empty (it holds "
            f"{shown}); a cache deletes files in its directory, so use a new or empty one"
        )
    return directory


def claim(directory: CacheDir) -> None:
    """Tag an adopted directory as ours, once (``rename`` replaces a link itself, never
    its target). Raises ``OSError`` when it cannot be written."""
    if is_tagged(directory):
        return
    directory.write_atomic("", TAG, TAG_TEXT.encode())
    if not directory.exists("", GITIGNORE):
        directory.write_atomic("", GITIGNORE, GITIGNORE_TEXT)
