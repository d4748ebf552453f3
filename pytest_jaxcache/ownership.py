"""Which directory is ours. The plugin adopts a directory only when it is new, empty,
already tagged by pytest-jaxcache, or holds nothing but files of a cache (ours from an
earlier layout, or JAX's own); anything else is refused with the reason, because a
cache deletes files in the directory it owns.

The tag is ``CACHEDIR.TAG`` (which also keeps backup tools away) with a line naming
pytest-jaxcache; the directory also gets a ``.gitignore`` of its own, never one in a
directory it did not create.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

from pytest_jaxcache.cachedir import CacheDir, kind_of

TAG = "CACHEDIR.TAG"
TAG_TEXT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# pytest-jaxcache cache directory (layout 2): remove it with `jaxcache clear` or rm -r.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)
_TAG_LINE = "# pytest-jaxcache cache directory"
GITIGNORE = ".gitignore"

# Names an earlier pytest-jaxcache (layout 1) or this one keeps at the top level.
OUR_NAMES = frozenset(
    {
        TAG,
        GITIGNORE,
        "entries",
        "tmp",
        "locks",
        "maintenance.lock",
        "sessions.json",
        "fingerprints",
        "machines",
        "contents.json",
    }
)
# What JAX's own file store and XLA's caches keep there.
JAX_NAMES = frozenset(
    {".lockfile", "xla_gpu_per_fusion_autotune_cache_dir", "xla_gpu_kernel_cache_file"}
)
JAX_FILE = re.compile(r".+-[0-9a-f]{64}-(cache|atime)")


# The sub-directories the store uses: each must be a real directory where it exists.
SUBDIRECTORIES = ("entries", "tmp", "locks", "machines", "fingerprints")


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


def _is_cache_name(name: str) -> bool:
    return name in OUR_NAMES or name in JAX_NAMES or bool(JAX_FILE.fullmatch(name))


def is_tagged(directory: CacheDir) -> bool:
    try:
        data, _ = directory.read("", TAG, limit=4096)
    except OSError:
        return False
    return _TAG_LINE.encode() in data


def adopt(root: Path, *, readonly: bool) -> CacheDir:
    """Open ``root`` as our cache directory, creating and tagging it as needed (not in
    read-only mode). Raises :class:`NotOurs` when it is someone else's, and ``OSError``
    when it cannot be created or entered."""
    if root.is_symlink() and not root.exists():
        raise NotOurs(f"{root} is a dangling symbolic link (to {os.readlink(root)})")
    if not root.exists():
        if readonly:
            raise FileNotFoundError(errno.ENOENT, "does not exist", str(root))
        root.mkdir(parents=True, exist_ok=True)
    directory = CacheDir(root)
    directory.fd()  # enter it now: a directory we cannot enter fails here
    if is_tagged(directory):
        return directory
    names = directory.listdir()
    foreign = sorted(name for name in names if not _is_cache_name(name))
    if foreign:
        directory.close()
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise NotOurs(
            f"{root} is not a pytest-jaxcache cache directory and not empty (it holds {shown}); "
            "a cache deletes files in its directory, so use a new or empty one"
        )
    if not readonly:  # rename() replaces a link itself, never its target
        directory.write_atomic("", TAG, TAG_TEXT.encode())
        if not directory.exists("", GITIGNORE):
            directory.write_atomic("", GITIGNORE, b"# created by pytest-jaxcache\n*\n")
    return directory
