"""``--jax-cache-explain``: what went into each part of a program's cache key, written
where the user can diff it (as ccache's debug mode writes its input text).

One directory per key, named by the key's digest: the digest every entry records, so
that the nearest earlier entry's directory is found by name when an earlier run with
``--jax-cache-explain`` wrote it::

    <dir>/<program>/<key digest>/
        parts.json          the key, each part's digest, the program's facts, when and by
                            which session, and whether it was a hit
        <part>.bin          the bytes JAX hashed for that part
        <part>.txt          the same bytes, when they are text (XLA flags, versions)
        computation.mlir    the lowered module, as text
        nearest.txt         for a miss, the program's own past (its nearest entry written
                            before this session, by explain.nearest_entry): which parts
                            differ, and the command that compares the two directories

Nothing here touches JAX: :mod:`pytest_jaxcache.jax.adapter` hands over the bytes.
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
from pathlib import Path

from pytest_jaxcache import explain, keys
from pytest_jaxcache.entry import Metadata, key_digest
from pytest_jaxcache.reasons import part_meaning
from pytest_jaxcache.store import Store

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_UNSAFE_IN_PATTERN = re.compile(r"[^A-Za-z0-9_.*?\[\]-]")


def part_file(part: str) -> str:
    """``"XLA flags"`` -> ``"XLA_flags"``: a part's name as a file name."""
    return _UNSAFE.sub("_", part)


def key_form(pattern: str) -> str:
    """A program name (or glob) as the report shows it, as keys hold it:
    ``jit(loss)`` -> ``jit_loss``."""
    return _UNSAFE_IN_PATTERN.sub("_", pattern).rstrip("_") or pattern


def _text(data: bytes) -> str | None:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() or not text else None


class KeyDump:
    """Writes the key inputs of the programs whose names match ``patterns``."""

    def __init__(self, root: Path, patterns: tuple[str, ...], store: Store) -> None:
        self.root = root
        # Names as the report shows them ("jit(loss)") or as keys hold them ("jit_loss").
        self.patterns = tuple(
            sorted({p for pattern in patterns for p in (pattern, key_form(pattern))})
        )
        self._store = store
        self.errors: list[str] = []

    def wants(self, key: str) -> bool:
        program = keys.program_name(keys.file_name(key))
        return any(fnmatch.fnmatchcase(program, pattern) for pattern in self.patterns)

    def write(
        self,
        key: str,
        inputs: dict[str, bytes],
        digests: dict[str, str],
        facts: dict[str, str],
        module: str | None,
        hit: bool,
    ) -> None:
        """Write ``key``'s inputs (``inputs``: part -> bytes hashed) and, for a miss,
        compare them with the program's own past. A failure is kept in :attr:`errors`,
        never raised: this runs inside a compile."""
        program = keys.program_name(keys.file_name(key))
        target = self.root / program / key_digest(key)
        try:
            target.mkdir(parents=True, exist_ok=True)
            for part, data in inputs.items():
                (target / f"{part_file(part)}.bin").write_bytes(data)
                text = _text(data)
                if text is not None:
                    (target / f"{part_file(part)}.txt").write_text(text + "\n")
            if module is not None:
                (target / "computation.mlir").write_text(module)
            record = {
                "key": key,
                "parts": digests,
                "facts": facts,
                "hit": hit,
                "written_at": time.time(),
                "machine": self._store.machine,
                "session": self._store.session,
            }
            (target / "parts.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
            (target / "nearest.txt").write_text(self._nearest(key, program, digests, facts, hit))
        except OSError as error:
            self.errors.append(f"--jax-cache-explain: cannot write {target}: {error}")

    def _nearest(
        self, key: str, program: str, digests: dict[str, str], facts: dict[str, str], hit: bool
    ) -> str:
        head = f"{program} {key_digest(key)}"
        if hit:
            return f"{head}: a hit: its entry was served; nothing to compare.\n"
        store = self._store
        earlier = store.earlier_entries([key], store.session_started)[key]
        here = [metadata for metadata in earlier if metadata.machine == store.machine]
        nearest = explain.nearest_entry(digests, facts, here)
        note = ""
        if nearest is None:  # nothing before this session: the closest of this session
            now = store.earlier_entries([key], time.time())[key]
            here = [metadata for metadata in now if metadata.machine == store.machine]
            nearest = explain.nearest_entry(digests, facts, here)
            note = " (none was written before this session: this one is of this session)"
        if nearest is None:
            return (
                f"{head}: no earlier entry of {program} on this machine records its key's "
                "parts: nothing to compare with.\n"
            )
        return _comparison(self.root, program, key, digests, nearest, note)


def _comparison(
    root: Path, program: str, key: str, digests: dict[str, str], nearest: Metadata, note: str
) -> str:
    differing = explain.difference(digests, nearest.parts)
    try:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(nearest.written_at))
    except (OverflowError, OSError, ValueError):  # a clock this platform cannot show
        when = f"at {nearest.written_at:.0f} s"
    lines = [
        f"{program} {key_digest(key)} (this run: a miss)",
        f"nearest entry: {nearest.key_digest}, written {when} by session "
        f"{nearest.session or '?'}{note}",
        "parts that differ: " + (", ".join(differing) or "none"),
    ]
    lines += [f"  {part}: {part_meaning(part)}" for part in differing]
    theirs = root / program / nearest.key_digest
    if theirs.is_dir():
        lines.append(f"compare: diff -r {program}/{nearest.key_digest} {program}/{key_digest(key)}")
    else:
        lines.append(
            f"its inputs were not kept ({theirs} is missing): run the earlier version with "
            "--jax-cache-explain too, then compare the two directories"
        )
    return "\n".join(lines) + "\n"
