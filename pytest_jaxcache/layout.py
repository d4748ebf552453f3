"""The cache directory's layout, and the one grammar for names in it.

Every name the store, maintenance, bookkeeping and ownership use is defined here, once;
so is the grammar each kind of file name must match. A name that comes from outside (a
remote listing, a manifest, a directory listing, a bookkeeping file) is used as a file
name, a key or a lookup only if it matches the grammar of its kind: no separator, no
``..``, bounded length, our character set. Everything else is skipped and counted::

    <root>/
      CACHEDIR.TAG, .gitignore   the tag that makes the directory ours
      entries/<machine>/<entry>  one entry per program, in its machine's namespace
      entries/<machine>/lowered-module-<key>  one lowered module (--jax-cache-lowering)
      tmp/<temporary>            entries being written; renamed into entries/
      locks/<entry>.lock         single-flight locks; prefetch.lock, remote-<id>.off
      locks/<entry>.nocache      "the last compile of this key wrote nothing"
      machines/<id>.json         what defines each machine namespace
      fingerprints/<id>.json     the environment of each session that wrote entries
      history/<machine>.json     what each test cost in earlier sessions (shards, scheduler)
      sessions.json              when recent sessions ran (pruning, ``jaxcache show``)
      contents.json              the digest of the entries (CI saves a changed cache)
      maintenance.lock           held while one session maintains the directory
"""

from __future__ import annotations

import re

TAG = "CACHEDIR.TAG"
GITIGNORE = ".gitignore"
ENTRIES = "entries"
TMP = "tmp"
LOCKS = "locks"
MACHINES = "machines"
FINGERPRINTS = "fingerprints"
SESSIONS = "sessions.json"
CONTENTS = "contents.json"
MAINTENANCE_LOCK = "maintenance.lock"
PREFETCH_LOCK = "prefetch.lock"
HISTORY = "history"  # per-test history of earlier sessions (shards, the scheduler)

# The store's sub-directories: each must be a real directory where it exists.
SUBDIRECTORIES = (ENTRIES, TMP, LOCKS, MACHINES, FINGERPRINTS, HISTORY)
# Top-level files of ours.
FILES = (TAG, GITIGNORE, SESSIONS, CONTENTS, MAINTENANCE_LOCK)

# -- the grammar -------------------------------------------------------------------------

MAX_PROGRAM = 135  # characters of a program name kept in an entry's file name
# An entry's file name: the program's name (our character set, not starting with a dot
# or a dash), a dash and the 64 hex digits of JAX's key hash: at most 200 characters.
ENTRY_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{MAX_PROGRAM - 1}}}-[0-9a-f]{{64}}")
NAMESPACE = re.compile(r"[0-9a-f]{16}")  # a machine namespace (environment.namespace)
RECORD_ID = re.compile(r"[0-9a-f]{16}")  # machines/<id>.json, fingerprints/<id>.json
RECORD_NAME = re.compile(r"[0-9a-f]{16}\.json")
# A temporary file: "<up to 150 characters of the target>.<pid>.<8 hex>.tmp".
TEMPORARY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,149}\.\d{1,10}\.[0-9a-f]{8}\.tmp")
LOCK_NAME = re.compile(ENTRY_NAME.pattern + r"\.lock")
MARKER_NAME = re.compile(ENTRY_NAME.pattern + r"\.nocache")
REMOTE_OFF = re.compile(r"remote-[0-9a-f]{16}\.off")  # "the remote is off for this session"
# Files of JAX's own file store, and what XLA's caches keep in the directory.
JAX_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}-[0-9a-f]{64}-(cache|atime)")
JAX_NAMES = frozenset(
    {".lockfile", "xla_gpu_per_fusion_autotune_cache_dir", "xla_gpu_kernel_cache_file"}
)
# The lowering tier's entries live beside the executables (verified, signed, uploaded,
# evicted and merged the same way) under a program name JAX never gives a module (its
# module names hold no dash): "lowered-module-<64 hex digits of the lowering key>".
LOWERED = "lowered-module"
LOWERING_KEY = re.compile(r"[0-9a-f]{64}")

# A name that is safe as one path component inside the cache (what cachedir accepts).
SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")


def is_entry_name(name: object) -> bool:
    """Whether ``name`` (from anywhere) is a well-formed entry file name."""
    return isinstance(name, str) and ENTRY_NAME.fullmatch(name) is not None


def is_safe_name(name: str) -> bool:
    """One path component of our character set: no separator, not ``.`` or ``..``."""
    return SAFE_NAME.fullmatch(name) is not None and name not in (".", "..")


def lock_name(entry: str) -> str:
    return f"{entry}.lock"


def marker_name(entry: str) -> str:
    return f"{entry}.nocache"


def temporary_name(target: str, pid: int, token: str) -> str:
    """The temporary file through which ``target`` is written (``token``: 8 hex digits):
    always a name of :data:`TEMPORARY`, so that one a killed process left is known as
    ours and cleaned up, never taken for someone else's file (``.gitignore`` would
    otherwise give a name starting with a dot)."""
    stem = target.lstrip(".")[:150]
    name = f"{stem}.{pid}.{token}.tmp"
    return name if TEMPORARY.fullmatch(name) else f"file.{pid}.{token}.tmp"


def record_name(record_id: str) -> str:
    return f"{record_id}.json"


def namespace_dir(machine: str) -> str:
    """``entries/<machine>``: where a machine's entries live."""
    return f"{ENTRIES}/{machine}"


# What each sub-directory may hold, so that adoption can look all the way down: a name
# of another shape is someone else's file, and the directory is not ours. Names only:
# what each file is (a link, a FIFO where an entry should be) is checked where it is used.
def allowed_in(sub: str, name: str) -> bool:
    """Whether ``name`` may live in layout directory ``sub`` (``entries/<ns>`` too)."""
    if sub == ENTRIES:  # namespaces, and entries of the first layout
        return NAMESPACE.fullmatch(name) is not None or is_entry_name(name)
    if sub.startswith(f"{ENTRIES}/"):
        return is_entry_name(name)
    if sub == TMP:
        return TEMPORARY.fullmatch(name) is not None
    if sub == LOCKS:
        return (
            LOCK_NAME.fullmatch(name) is not None
            or MARKER_NAME.fullmatch(name) is not None
            or REMOTE_OFF.fullmatch(name) is not None
            or name == PREFETCH_LOCK
        )
    if sub in (MACHINES, FINGERPRINTS, HISTORY):
        return RECORD_NAME.fullmatch(name) is not None
    return False


def allowed_at_top(name: str) -> bool:
    """Whether ``name`` may live at the top of a cache directory (ours or JAX's)."""
    return (
        name in SUBDIRECTORIES
        or name in FILES
        or name in JAX_NAMES
        or JAX_FILE.fullmatch(name) is not None
    )
