"""``--jax-cache-explain``: what went into each part of a program's cache key, written
where the user can diff it (as ccache's debug mode writes its input text).

One directory per key, named by the key's digest: the digest every entry records, so
that the nearest earlier entry's directory is found by name when an earlier run with
``--jax-cache-explain`` wrote it::

    <dir>/<program>/<key digest>/
        parts.json          the key, each part's digest, when and by which session
        <part>.bin          the bytes JAX hashed for that part
        <part>.txt          the same bytes, when they are text (XLA flags, versions)
        computation.mlir    the lowered module, as text
        nearest.txt         the nearest earlier entry of the program: which parts differ,
                            and the command that compares the two

Nothing here touches JAX: :mod:`pytest_jaxcache.jaxhooks` hands over the bytes.
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
from pathlib import Path

from pytest_jaxcache import explain, keys
from pytest_jaxcache.entry import Metadata, key_digest
from pytest_jaxcache.store import Store

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def part_file(part: str) -> str:
    """``"XLA flags"`` -> ``"XLA_flags"``: a part's name as a file name."""
    return _UNSAFE.sub("_", part)


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
        self.patterns = patterns
        self._store = store
        self.written: list[Path] = []
        self.errors: list[str] = []

    def wants(self, key: str) -> bool:
        program = keys.program_name(keys.file_name(key))
        return any(fnmatch.fnmatchcase(program, pattern) for pattern in self.patterns)

    def write(
        self, key: str, inputs: dict[str, bytes], digests: dict[str, str], module: str | None
    ) -> None:
        """Write ``key``'s inputs (``inputs``: part -> bytes hashed) and compare them
        with the nearest earlier entry. A failure is kept in :attr:`errors`, never raised:
        this runs inside a compile."""
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
            facts = {
                "key": key,
                "parts": digests,
                "written_at": time.time(),
                "machine": self._store.machine,
                "session": self._store.session,
            }
            (target / "parts.json").write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
            (target / "nearest.txt").write_text(self._nearest(key, program, digests))
        except OSError as error:
            self.errors.append(f"--jax-cache-explain: cannot write {target}: {error}")
            return
        self.written.append(target)

    def _nearest(self, key: str, program: str, digests: dict[str, str]) -> str:
        earlier = self._store.earlier_entries([key], time.time())[key]
        here = [metadata for metadata in earlier if metadata.machine == self._store.machine]
        nearest = explain.nearest_entry(digests, here)
        if nearest is None:
            return (
                f"{program} {key_digest(key)}: no earlier entry of {program} on this machine "
                "records its key's parts: nothing to compare with.\n"
            )
        return _comparison(self.root, program, key, digests, nearest)


def _comparison(
    root: Path, program: str, key: str, digests: dict[str, str], nearest: Metadata
) -> str:
    differing = explain.difference(digests, nearest.parts)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(nearest.written_at))
    lines = [
        f"{program} {key_digest(key)} (this run)",
        f"nearest earlier entry: {nearest.key_digest}, written {when} by session "
        f"{nearest.session or '?'}",
        "parts that differ: " + (", ".join(differing) or "none"),
    ]
    lines += [f"  {part}: {explain.part_meaning(part)}" for part in differing]
    if (root / program / nearest.key_digest).is_dir():
        lines.append(f"compare: diff -r {program}/{nearest.key_digest} {program}/{key_digest(key)}")
    else:
        lines.append(
            f"its inputs were not kept ({program}/{nearest.key_digest} is missing): run the "
            "earlier version with --jax-cache-explain too, then compare the two directories"
        )
    return "\n".join(lines) + "\n"
