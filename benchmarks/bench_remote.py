"""Bench: the remote tier of issue 10, against moto's S3 server on 127.0.0.1.

The server is tests/emulators.py's ``start_s3`` (a bucket, clients pointed at it by the
environment alone, as in tests/test_remote.py). Variants, on one copy of the examples
suite, each with a fresh local ``--jax-cache-dir`` unless said:

- (a) cold, no remote;
- (b) cold with ``--jax-cache-remote=s3://jaxcache/<fresh prefix per repeat>``;
- (c) local warm: (a)'s directory again, no remote;
- (d) a fresh machine: an empty local directory, (b)'s prefix, prefetch on (default);
- (e) the same with ``--jax-cache-prefetch=no`` (read-through, lookup by lookup);
- (f) remote down: the endpoint is a 127.0.0.1 port where nothing listens;
- (g) remote silent: a server that accepts connections and never answers
  (``silent_server``), the default ``--jax-cache-remote-timeout``;
- (h) cold with ``-n 2``, no remote, and (i) the same with a remote that answers the
  bucket probe and then stalls (``stalling_proxy`` in front of the S3 server, answering
  only ``HEAD`` requests), ``--jax-cache-remote-timeout=5``: the remote must cost the
  session at most one deadline, whatever the number of workers.

Each repeat runs the blocks (a, c), (b, d, e), (f), (g), (h, i) in a rotated order;
figures are ratios within the repeat. (d) and (e) must hit every cachable program, all
of them served by the remote; (f), (g) and (i) must turn the remote off.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    BenchError,
    Context,
    Run,
    Summary,
    Workspace,
    copy_examples,
    fmt_count,
    fmt_pct,
    fmt_ratio,
    log,
    prime,
    ratio,
    rotate,
    run_pytest,
    section,
    summarise,
    table,
    verdict,
    worst_rate,
)

# tests/ is on sys.path: benchlib puts it there.
from emulators import Emulator, free_port, silent_server, stalling_proxy, start_s3

NAME = "remote"
TITLE = "Bench: remote tier (S3 on a local moto server)"
BASE_ARGS = ("-p", "no:cacheprovider")
LABELS = {
    "a": "(a) cold, no remote",
    "b": "(b) cold, remote (fresh prefix)",
    "c": "(c) local warm ((a)'s directory again)",
    "d": "(d) fresh machine, prefetch (empty local dir, (b)'s prefix)",
    "e": "(e) fresh machine, `--jax-cache-prefetch=no`",
    "f": "(f) remote down (nothing listens on its port)",
    "g": "(g) remote silent (accepts, never answers; default timeout)",
    "h": "(h) cold, `-n 2`, no remote",
    "i": "(i) cold, `-n 2`, remote answers the bucket probe, then stalls",
}
BLOCKS: tuple[tuple[str, ...], ...] = (("a", "c"), ("b", "d", "e"), ("f",), ("g",), ("h", "i"))
WITH_REMOTE = ("b", "d", "e", "f", "g", "i")
FROM_REMOTE = ("d", "e")
REMOTE_OFF = ("f", "g", "i")
XDIST = ("h", "i")
COLD_TARGET = 1.05  # (b) / (a) and (f) / (a)
FRESH_TARGET = 1.3  # (d) / (c)
STALL_TIMEOUT_SECS = 5.0  # --jax-cache-remote-timeout of (i)
STALL_TARGET = 1.0  # ((i) - (h)) / the timeout: at most one deadline


def repeats(quick: bool) -> int:
    return 1 if quick else 2


@dataclass(frozen=True)
class Outcome:
    """One run and what its report says about the remote and the local directory."""

    run: Run
    remote: dict[str, Any]
    hit_rate: float | None
    writes: int
    entries_on_disk: int
    entries_reported: int

    @property
    def served(self) -> int:
        """Entries the remote gave this session: read-through hits and prefetched ones."""
        return int(self.remote.get("hits", 0)) + int(self.remote.get("prefetched_used", 0))


@dataclass
class Repeat:
    outcomes: dict[str, Outcome] = field(default_factory=dict)


@dataclass(frozen=True)
class Servers:
    """Where each variant's remote points: the live emulator, a dead port, a silent
    server, a proxy that answers the bucket probe and stalls every other request."""

    s3: Emulator
    dead: str
    silent: str
    stalling: str

    def env(self, key: str) -> dict[str, str]:
        endpoints = {"f": self.dead, "g": self.silent, "i": self.stalling}
        endpoint = endpoints.get(key, self.s3.endpoint)
        return {**self.s3.env, "FSSPEC_S3_ENDPOINT_URL": endpoint}


def entries_on_disk(cache: Path) -> int:
    """Entry files in a local cache directory (all namespaces)."""
    entries = cache / "entries"
    if not entries.is_dir():
        return 0
    return sum(sum(1 for p in d.iterdir() if p.is_file()) for d in entries.iterdir() if d.is_dir())


def _outcome(run: Run, cache: Path) -> Outcome:
    report = run.require_report()
    rate = report["cachable"]["hit_rate"]
    return Outcome(
        run=run,
        remote=report["remote"] or {},
        hit_rate=None if rate is None else float(rate),
        writes=int(report["store"]["writes"]),
        entries_on_disk=entries_on_disk(cache),
        entries_reported=int((report["cache"]["after"] or {}).get("entries", 0)),
    )


def _check(key: str, outcome: Outcome) -> None:
    """Raise :class:`BenchError` when a variant is not what it claims to measure."""
    off = outcome.remote.get("off")
    if key in WITH_REMOTE and not outcome.remote:
        raise BenchError(f"{LABELS[key]}: the report has no remote section")
    if key in REMOTE_OFF and not off:
        raise BenchError(f"{LABELS[key]}: the remote was not turned off")
    if key in ("b", *FROM_REMOTE) and off:
        raise BenchError(f"{LABELS[key]}: the remote was turned off: {off}")
    if key == "b" and (outcome.remote["uploads"] == 0 or outcome.remote["not_uploaded"]):
        raise BenchError(f"{LABELS[key]}: uploads incomplete: {outcome.remote}")
    if key in FROM_REMOTE and (outcome.hit_rate != 1.0 or outcome.writes or not outcome.served):
        raise BenchError(
            f"{LABELS[key]}: cachable hit rate {fmt_pct(outcome.hit_rate)}, "
            f"{outcome.writes} local writes, {outcome.served} entries from the remote: "
            "expected 100%, 0 and > 0"
        )


def _args(key: str, cache: Path, url: str) -> list[str]:
    args = [*BASE_ARGS, f"--jax-cache-dir={cache}"]
    if key in WITH_REMOTE:
        args.append(f"--jax-cache-remote={url}")
    if key == "e":
        args.append("--jax-cache-prefetch=no")
    if key in XDIST:
        args += ["-n", "2"]
    if key == "i":
        args.append(f"--jax-cache-remote-timeout={STALL_TIMEOUT_SECS:g}")
    return args


def _run_variant(
    key: str, suite: Path, caches: Mapping[str, Path], url: str, servers: Servers, ws: Workspace
) -> Outcome:
    cache = caches[key]
    run = run_pytest(
        _args(key, cache, url),
        cwd=suite,
        workspace=ws,
        extra_env=servers.env(key) if key in WITH_REMOTE else None,
        report=ws.path(f"report-{key}.json"),
    )
    outcome = _outcome(run, cache)
    _check(key, outcome)
    return outcome


def _run_repeat(index: int, total: int, suite: Path, servers: Servers, ws: Workspace) -> Repeat:
    fresh = {key: ws.path(f"cache-{key}") for key in LABELS if key != "c"}
    caches = {**fresh, "c": fresh["a"]}
    live = servers.s3.url(f"bench-{index}")
    repeat = Repeat()
    for block in rotate(BLOCKS, index):
        for key in block:
            log(f"{NAME}: repeat {index + 1}/{total}: {LABELS[key]}")
            url = live if key not in REMOTE_OFF else "s3://jaxcache/down"
            repeat.outcomes[key] = _run_variant(key, suite, caches, url, servers, ws)
    return repeat


def _vs(repeats_: list[Repeat], key: str, base: str, cpu: bool = False) -> Summary:
    """Over repeats: wall (or CPU) time of ``key`` / that of ``base`` in the same repeat."""

    def figure(run: Run) -> float:
        return run.cpu_secs if cpu else run.wall_secs

    return summarise(
        ratio(figure(r.outcomes[key].run), figure(r.outcomes[base].run)) for r in repeats_
    )


def _stall_cost(repeats_: list[Repeat]) -> Summary:
    """Over repeats: ((i) wall - (h) wall) / (i)'s remote timeout."""
    return summarise(
        (r.outcomes["i"].run.wall_secs - r.outcomes["h"].run.wall_secs) / STALL_TIMEOUT_SECS
        for r in repeats_
    )


def _counts(outs: list[Outcome], field_: str) -> str:
    return fmt_count([int(o.remote.get(field_, 0)) for o in outs])


def _io_share(outs: list[Outcome]) -> Summary:
    """The report's remote ``io_secs`` (summed over threads) / the run's wall time."""
    return summarise(ratio(float(o.remote.get("io_secs", 0.0)), o.run.wall_secs) for o in outs)


def _variant_row(repeats_: list[Repeat], key: str) -> list[str]:
    outs = [r.outcomes[key] for r in repeats_]
    remote = key in WITH_REMOTE
    disk = fmt_count([o.entries_on_disk for o in outs])
    reported = fmt_count([o.entries_reported for o in outs])
    return [
        LABELS[key],
        fmt_ratio(_vs(repeats_, key, "a")),
        fmt_ratio(_vs(repeats_, key, "a", cpu=True)),
        fmt_pct(worst_rate([o.hit_rate for o in outs])),
        _counts(outs, "hits") if remote else "-",
        f"{_counts(outs, 'prefetched')} ({_counts(outs, 'prefetched_used')})" if remote else "-",
        _counts(outs, "uploads") if remote else "-",
        fmt_ratio(_io_share(outs)) if remote else "-",
        f"{disk} / {reported}",
        ("off" if all(o.remote.get("off") for o in outs) else "on") if remote else "-",
    ]


def _target_row(figure: str, value: Summary, target: float | None) -> list[str]:
    if target is None:
        return [figure, fmt_ratio(value), "-", "-"]
    return [figure, fmt_ratio(value), f"<= {target:.2f}", verdict(value.median <= target)]


def _target_rows(repeats_: list[Repeat]) -> list[list[str]]:
    fresh = worst_rate([r.outcomes[k].hit_rate for r in repeats_ for k in FROM_REMOTE])
    return [
        _target_row("(b) cold with remote / (a) cold, wall", _vs(repeats_, "b", "a"), COLD_TARGET),
        _target_row("(f) remote down / (a) cold, wall", _vs(repeats_, "f", "a"), COLD_TARGET),
        _target_row(
            "(d) fresh machine, prefetch / (c) local warm, wall",
            _vs(repeats_, "d", "c"),
            FRESH_TARGET,
        ),
        [
            "(d), (e) cachable hit rate, all from the remote (worst)",
            fmt_pct(fresh),
            "100%",
            verdict(fresh == 1.0),
        ],
        _target_row("(e) no prefetch / (c) local warm, wall", _vs(repeats_, "e", "c"), None),
        _target_row("(e) no prefetch / (d) prefetch, wall", _vs(repeats_, "e", "d"), None),
        _target_row("(g) remote silent / (a) cold, wall", _vs(repeats_, "g", "a"), None),
        _target_row(
            "(i) stalling remote / (h) no remote, `-n 2`, wall", _vs(repeats_, "i", "h"), None
        ),
        _target_row(
            f"((i) - (h)) / timeout ({STALL_TIMEOUT_SECS:g} s): deadlines the stall cost",
            _stall_cost(repeats_),
            STALL_TARGET,
        ),
    ]


def _measure(ctx: Context, suite: Path) -> list[Repeat]:
    """Start the emulator and a silent server, run the repeats, stop both."""
    total = repeats(ctx.quick)
    log(f"{NAME}: starting moto's S3 server on 127.0.0.1")
    s3 = start_s3()
    try:
        with ExitStack() as stack:
            silent = stack.enter_context(silent_server())
            proxy = stack.enter_context(
                stalling_proxy(s3.endpoint, lambda method, _path: method == "HEAD")
            )
            dead = f"http://127.0.0.1:{free_port()}"
            servers = Servers(s3, dead, silent, proxy.endpoint)
            return [_run_repeat(i, total, suite, servers, ctx.workspace) for i in range(total)]
    finally:
        s3.kill()


def run(ctx: Context) -> str:
    """Run the remote-tier bench and return its markdown section."""
    suite = copy_examples(ctx.workspace.path("examples"), ctx.example_files)
    prime(suite, ctx.workspace)
    repeats_ = _measure(ctx, suite)
    intro = (
        f"Suite: {ctx.suite_label()}, `python -m pytest -q -p no:randomly -p no:cacheprovider "
        "--jax-cache-dir=DIR [--jax-cache-remote=s3://jaxcache/PREFIX]`, the S3 client "
        "pointed at moto's server on 127.0.0.1 by the environment (tests/emulators.py). "
        f"{len(repeats_)} repeat(s); in each, the blocks (a, c), (b, d, e), (f), (g), (h, i) "
        "run in a rotated order and every ratio is taken within the repeat. Cells: median "
        "(min-max) over repeats; counts: median (min-max)."
    )
    headers = [
        "variant",
        "wall / (a)",
        "CPU / (a)",
        "cachable hit rate (worst)",
        "remote hits (read-through)",
        "prefetched (used)",
        "uploads",
        "remote I/O / wall",
        "local entries after: on disk / report",
        "remote",
    ]
    variants = table(headers, [_variant_row(repeats_, key) for key in LABELS])
    targets = table(["figure", "value", "target", ""], _target_rows(repeats_))
    note = (
        "Remote I/O = the report's `remote.io_secs`, summed over threads (background "
        "uploads overlap the tests), as a share of the run's wall time. A local server "
        "answers in well under a millisecond: these ratios are a floor for a real bucket, "
        "where each read-through lookup of (b) and (e) costs a network round trip. "
        "(h) and (i) run with `-n 2`; (i)'s proxy answers `HEAD` (the bucket probe) "
        "and holds every other request unanswered."
    )
    return section(TITLE, intro, variants, targets, note)
