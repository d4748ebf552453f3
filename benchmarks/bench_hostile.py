"""Bench: what hostile input costs a session in memory and time (issue 15).

A session facing something built to exhaust it must stay within a few MB of the same
session facing nothing: what is too large is judged by its size or its first bytes,
never read whole. Each variant runs a small suite (``helpers.programs_suite(3)``, one
process, ``-p no:xdist``) under a wrapper that prints the peak resident memory of the
largest process it waited for (``ru_maxrss`` of its children). Variants, in pairs:

- local: (a) a warm cache with one entry deleted (that program compiles); (b) the same
  cache with that entry a sparse file of 2 GiB (over the entry limit: refused by its
  size) and (c) of 900 MB (under it: refused by its first bytes);
- remote (S3 on moto's server, 127.0.0.1, a fresh local directory each run): (d) a
  bucket another machine filled, read through (``--jax-cache-prefetch=no``), one entry's
  object deleted; (e) the same with that object 200 MB of zeros; (f) prefetch from the
  bucket's manifest; (g) the same with the manifest replaced by one of 300,000 names.

Each pair compiles the same programs, so that the difference is what the hostile
input costs, not the compile it forces.

Figures: peak memory of each hostile variant minus its pair's (b, c against a; e
against d; g against f), in MB, and its wall / the pair's, medians over repeats.
Target: within 50 MB. Each repeat rebuilds what the previous one repaired (the session
replaces the sparse file, the large object and the giant manifest with its own).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from benchlib import (
    PYTEST,
    BenchError,
    Context,
    Workspace,
    bytecode_env,
    fmt_ratio,
    log,
    ratio,
    run_timed,
    section,
    subprocess_env,
    summarise,
    table,
    verdict,
)

# tests/ is on sys.path: benchlib puts it there.
from emulators import Emulator, object_sizes, put_object, put_zeros, remove_object, start_s3
from helpers import entries, programs_suite, write_files

NAME = "hostile"
TITLE = "Bench: hostile input, peak memory and wall"
TARGET_MB = 50.0
SPARSE_OVER = 2 * 2**30  # over the entry limit (the default 1 GiB cap)
SPARSE_UNDER = 900 * 2**20  # under it
OBJECT_BYTES = 200 * 2**20
MANIFEST_NAMES = 300_000
LABELS = {
    "a": "(a) warm local cache, one entry deleted",
    "b": "(b) that entry a sparse 2 GiB file",
    "c": "(c) that entry a sparse 900 MB file",
    "d": "(d) fresh machine, read-through, one object deleted",
    "e": "(e) one entry's object 200 MB of zeros",
    "f": "(f) fresh machine, prefetch from the manifest",
    "g": "(g) the manifest 300,000 names",
}
PAIRS = {"b": "a", "c": "a", "e": "d", "g": "f"}
# The wrapper: runs its argv, then prints the peak resident set (KiB) of the largest
# process it waited for, as its last line.
MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)\n"
    "sys.exit(code)\n"
)


def repeats(quick: bool) -> int:
    return 1 if quick else 3


@dataclass(frozen=True)
class Measured:
    wall_secs: float
    peak_mb: float
    report: dict[str, object]


def _session(
    suite: Path, ws: Workspace, cache: Path, *args: str, env: Mapping[str, str] | None = None
) -> Measured:
    report = ws.path("report.json")
    argv = [
        *PYTEST,
        "-p",
        "no:xdist",
        "-p",
        "no:cacheprovider",
        f"--jax-cache-dir={cache}",
        f"--jax-cache-report={report}",
        *args,
    ]
    timed = run_timed(
        [sys.executable, "-c", MEASURE, *argv],
        cwd=suite,
        env=subprocess_env({**bytecode_env(ws), **(env or {})}),
    )
    peak_kib = int(timed.output.splitlines()[-1])
    return Measured(timed.wall_secs, peak_kib / 1024, json.loads(report.read_text()))


def _sparse(cache: Path, size: int) -> None:
    """Delete the first entry and, with a ``size``, put a sparse file in its place."""
    victim = entries(cache)[0]
    victim.unlink()
    if size:
        with open(victim, "wb") as handle:
            handle.truncate(size)


def _require(key: str, measured: Measured, path: str, expected: int) -> None:
    """Raise unless the report shows the variant met what it was built to show."""
    value: object = measured.report
    for part in path.split("."):
        value = value[part] if isinstance(value, dict) else None
    if value != expected:
        raise BenchError(f"{LABELS[key]}: report {path} = {value!r}, expected {expected}")


def _local(suite: Path, ws: Workspace, warm: Path) -> dict[str, Measured]:
    out: dict[str, Measured] = {}
    for key, size in (("a", 0), ("b", SPARSE_OVER), ("c", SPARSE_UNDER)):
        cache = ws.path(f"cache-{key}")
        shutil.copytree(warm, cache)
        _sparse(cache, size)
        log(f"{NAME}: {LABELS[key]}")
        out[key] = _session(suite, ws, cache)
        _require(key, out[key], "totals.misses", 1)
    return out


def _remote(suite: Path, ws: Workspace, s3: Emulator, index: int) -> dict[str, Measured]:
    out: dict[str, Measured] = {}
    for key in ("d", "e", "f", "g"):
        url = s3.url(f"hostile-{index}-{key}")
        _session(suite, ws, ws.path("filler"), f"--jax-cache-remote={url}", env=s3.env)
        sizes = object_sizes(s3, url)
        [manifest] = [path for path in sizes if "/manifests/" in path]
        victim = sorted(path for path in sizes if path != manifest)[0]
        if key == "d":
            remove_object(s3, url, victim)
        if key == "e":
            put_zeros(s3, url, victim, OBJECT_BYTES)
        if key == "g":
            names = [f"jit_noise{i}-{i:064x}" for i in range(MANIFEST_NAMES)]
            put_object(s3, url, manifest, json.dumps({"sessions": [names]}).encode())
        prefetch = "no" if key in ("d", "e") else "yes"
        log(f"{NAME}: {LABELS[key]}")
        out[key] = _session(
            suite,
            ws,
            ws.path(f"cache-{key}"),
            f"--jax-cache-remote={url}",
            f"--jax-cache-prefetch={prefetch}",
            env=s3.env,
        )
    _require("e", out["e"], "remote.refused", 1)
    _require("g", out["g"], "remote.manifests_ignored", 1)
    return out


def run(ctx: Context) -> str:
    """Run the bench and return its markdown section."""
    ws = ctx.workspace
    suite = ws.fresh("suite")
    write_files(suite, programs_suite(3))
    warm = ws.path("warm")
    _session(suite, ws, warm)
    log(f"{NAME}: starting moto's S3 server on 127.0.0.1")
    s3 = start_s3()
    try:
        runs = [
            {**_local(suite, ws, warm), **_remote(suite, ws, s3, index)}
            for index in range(repeats(ctx.quick))
        ]
    finally:
        s3.kill()
    rows = []
    for key, base in PAIRS.items():
        extra = statistics.median(run[key].peak_mb - run[base].peak_mb for run in runs)
        walls = summarise(ratio(run[key].wall_secs, run[base].wall_secs) for run in runs)
        rows.append(
            [
                LABELS[key],
                LABELS[base][:3],
                f"{round(extra):+d} MB",
                fmt_ratio(walls),
                f"<= +{TARGET_MB:.0f} MB",
                verdict(extra <= TARGET_MB),
            ]
        )
    intro = (
        f"A 3-program suite, one process; {len(runs)} repeat(s). Peak resident memory "
        "(ru_maxrss of the session's process) of each hostile variant minus its pair's, "
        "median over repeats; wall: median (min-max) of per-repeat ratios. The S3 "
        "bucket is moto's server on 127.0.0.1."
    )
    headers = ["variant", "against", "peak memory", "wall / pair", "target", ""]
    return section(TITLE, intro, table(headers, rows))
