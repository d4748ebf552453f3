"""Bench 3: the store at 5,000 entries, ours against JAX's own file store.

Stores compared, each in its own directory:

- ours: ``pytest_jaxcache.store.Store``, unsigned;
- ours signed: the same with a signing key (``JAX_CACHE_SIGNING_KEY``): an HMAC-SHA256
  over key, header and payload on every put and get;
- JAX capped: ``jax._src.lru_cache.LRUCache(path, max_size=10 GB)``: eviction on, so
  every write takes one global lock and scans the whole directory, as it does for users
  who set ``jax_compilation_cache_max_size``;
- JAX uncapped: ``LRUCache(path, max_size=-1)``, for reference.

Puts of ~20 KB random payloads with JAX-shaped keys, then gets of every entry. The
capped store is O(N) per write (O(N^2) to fill), so only its last puts are timed: its
directory is first filled through ``LRUCache(max_size=-1)``, and then every entry is
read once through the capped instance, whose ``get`` writes the ``-atime`` file that its
eviction scan needs (entries written with eviction off have none, and the scan fails
on them). Operations run in small chunks, the stores taking turns in a rotating order;
cells are medians over chunks of per-op time ratios (theirs / ours: > 1 means ours is
faster).
"""

from __future__ import annotations

import hashlib
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchlib import (
    BenchError,
    Context,
    Summary,
    fmt_ratio,
    fmt_x,
    log,
    ratio,
    rotate,
    section,
    summarise,
    table,
    verdict,
)
from jax._src.lru_cache import LRUCache

from pytest_jaxcache.ownership import adopt
from pytest_jaxcache.store import Policy, Store
from pytest_jaxcache.trust import Signer

NAME = "store"
TITLE = "Bench 3: store at 5,000 entries"
N_ENTRIES = 5000
PAYLOAD_BYTES = 20_000
PAYLOAD_POOL = 64
CAP_BYTES = 10 * 10**9
PUT_TARGET = 50.0
SIGNED_TARGET = 1.02  # signed / unsigned per-operation time
OURS, SIGNED, CAPPED, UNCAPPED = "ours", "ours_signed", "jax_capped", "jax_uncapped"
MACHINE = "0123456789abcdef"  # the namespace a session binds the store to
SECRET = b"benchmark-signing-key"

Put = Callable[[str, bytes], None]
Get = Callable[[str], bytes | None]


@dataclass(frozen=True)
class Plan:
    """How many puts are timed against the capped store, and chunk sizes."""

    capped_puts: int
    fill_chunk: int
    capped_chunk: int
    get_chunk: int

    @property
    def fill_end(self) -> int:
        return N_ENTRIES - self.capped_puts


def plan(quick: bool) -> Plan:
    if quick:
        return Plan(capped_puts=50, fill_chunk=100, capped_chunk=10, get_chunk=250)
    return Plan(capped_puts=500, fill_chunk=100, capped_chunk=25, get_chunk=250)


@dataclass(frozen=True)
class Ops:
    put: Put
    get: Get


def make_keys(n: int) -> list[str]:
    """Keys shaped like JAX's: ``<module name>-<sha256 hex>``."""
    return [f"jit_bench_{i % 97}-{hashlib.sha256(str(i).encode()).hexdigest()}" for i in range(n)]


def make_payloads(n: int) -> list[bytes]:
    """``n`` random payloads of ~20 KB, from a small pool (content does not matter)."""
    rng = random.Random(0)
    pool = [rng.randbytes(PAYLOAD_BYTES + rng.randrange(512)) for _ in range(PAYLOAD_POOL)]
    return [pool[i % PAYLOAD_POOL] for i in range(n)]


def our_ops(root: Path, *, signed: bool = False) -> Ops:
    policy = Policy(signer=Signer((SECRET,) if signed else ()))
    store = Store(adopt(root, readonly=False), policy=policy)
    store.bind(MACHINE, {"jaxlib": "bench"}, "be4c4be4c4be4c4b")

    def get(key: str) -> bytes | None:
        entry = store.get(key).entry
        return None if entry is None else entry.payload

    def put(key: str, payload: bytes) -> None:
        if not store.put(key, payload, 0.01):
            raise BenchError(f"our store did not write {key}: {store.stats.errors}")

    return Ops(put, get)


def jax_ops(root: Path, max_size: int) -> Ops:
    cache = LRUCache(str(root), max_size=max_size)
    return Ops(cache.put, cache.get)


def _time_puts(put: Put, keys: Sequence[str], payloads: Sequence[bytes]) -> float:
    started = time.perf_counter()
    for key, payload in zip(keys, payloads, strict=True):
        put(key, payload)
    return time.perf_counter() - started


def _time_gets(get: Get, keys: Sequence[str], expected: dict[str, bytes]) -> float:
    started = time.perf_counter()
    values = [get(key) for key in keys]
    elapsed = time.perf_counter() - started
    for key, value in zip(keys, values, strict=True):
        if value != expected[key]:
            raise BenchError(f"wrong value read back for {key}")
    return elapsed


def _chunks(start: int, stop: int, size: int) -> list[range]:
    return [range(i, min(i + size, stop)) for i in range(start, stop, size)]


def _timed_puts(
    stores: dict[str, Ops], chunks: list[range], keys: list[str], payloads: list[bytes]
) -> dict[str, list[float]]:
    """Per-chunk put times of every store, the stores taking turns per chunk."""
    times: dict[str, list[float]] = {name: [] for name in stores}
    for index, chunk in enumerate(chunks):
        for name in rotate(list(stores), index):
            ks = [keys[i] for i in chunk]
            times[name].append(_time_puts(stores[name].put, ks, [payloads[i] for i in chunk]))
    return times


def _prefill_capped(root: Path, keys: list[str], payloads: list[bytes]) -> Ops:
    """The capped store's first entries, written the fast way, then stamped with the
    access times that its eviction scan reads (by its own ``get``)."""
    uncapped = jax_ops(root, -1)
    for key, payload in zip(keys, payloads, strict=True):
        uncapped.put(key, payload)
    capped = jax_ops(root, CAP_BYTES)
    for key in keys:
        capped.get(key)
    return capped


def _ratios(times: dict[str, list[float]], theirs: str) -> Summary:
    return summarise(ratio(t, o) for t, o in zip(times[theirs], times[OURS], strict=True))


@dataclass(frozen=True)
class Results:
    fill: dict[str, list[float]]
    last: dict[str, list[float]]
    gets: dict[str, list[float]]


def _measure(root: Path, p: Plan) -> Results:
    keys, payloads = make_keys(N_ENTRIES), make_payloads(N_ENTRIES)
    ours = our_ops(root / OURS)
    signed = our_ops(root / SIGNED, signed=True)
    uncapped = jax_ops(root / UNCAPPED, -1)
    log(f"{NAME}: puts 0..{p.fill_end} (ours, ours signed, JAX uncapped)")
    fill = _timed_puts(
        {OURS: ours, SIGNED: signed, UNCAPPED: uncapped},
        _chunks(0, p.fill_end, p.fill_chunk),
        keys,
        payloads,
    )
    log(f"{NAME}: pre-filling the capped store to {p.fill_end} entries (untimed)")
    capped = _prefill_capped(root / CAPPED, keys[: p.fill_end], payloads[: p.fill_end])
    log(f"{NAME}: puts {p.fill_end}..{N_ENTRIES} (ours, signed, JAX capped, JAX uncapped)")
    stores = {OURS: ours, SIGNED: signed, CAPPED: capped, UNCAPPED: uncapped}
    last = _timed_puts(stores, _chunks(p.fill_end, N_ENTRIES, p.capped_chunk), keys, payloads)
    log(f"{NAME}: gets of all {N_ENTRIES} entries, shuffled")
    order = random.Random(1).sample(keys, len(keys))
    expected = dict(zip(keys, payloads, strict=True))
    gets: dict[str, list[float]] = {name: [] for name in stores}
    for index, chunk in enumerate(_chunks(0, N_ENTRIES, p.get_chunk)):
        for name in rotate(list(stores), index):
            ks = [order[i] for i in chunk]
            gets[name].append(_time_gets(stores[name].get, ks, expected))
    return Results(fill, last, gets)


def _rows(r: Results, p: Plan) -> list[list[str]]:
    capped_put = _ratios(r.last, CAPPED)
    fill_all = {name: r.fill[name] + r.last[name] for name in (OURS, SIGNED, UNCAPPED)}
    signed_put, signed_get = _ratios(fill_all, SIGNED), _ratios(r.gets, SIGNED)
    return [
        [
            f"put, entries 0 -> {N_ENTRIES:,}",
            "not timed (O(N) per put)",
            fmt_x(_ratios(fill_all, UNCAPPED)),
            fmt_ratio(signed_put),
            f"signed <= {SIGNED_TARGET:.2f}: {verdict(signed_put.median <= SIGNED_TARGET)}",
        ],
        [
            f"put, entries {p.fill_end:,} -> {N_ENTRIES:,} ({p.capped_puts} puts)",
            fmt_x(capped_put),
            fmt_x(_ratios(r.last, UNCAPPED)),
            fmt_ratio(_ratios(r.last, SIGNED)),
            f"capped >= {PUT_TARGET:.0f}x: {verdict(capped_put.median >= PUT_TARGET)}",
        ],
        [
            f"get, all {N_ENTRIES:,} entries (shuffled)",
            fmt_x(_ratios(r.gets, CAPPED)),
            fmt_x(_ratios(r.gets, UNCAPPED)),
            fmt_ratio(signed_get),
            f"signed <= {SIGNED_TARGET:.2f}: {verdict(signed_get.median <= SIGNED_TARGET)}",
        ],
    ]


def run(ctx: Context) -> str:
    """Run bench 3 and return its markdown section."""
    p = plan(ctx.quick)
    root = ctx.workspace.fresh("stores")
    try:
        results = _measure(root, p)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    intro = (
        f"{N_ENTRIES:,} entries of ~{PAYLOAD_BYTES // 1000} KB with JAX-shaped keys. "
        "Per-operation time ratio, theirs / ours (> 1: ours is faster); cells: median "
        "(min-max) over chunks in which the stores take turns. JAX capped = "
        f"`LRUCache(max_size={CAP_BYTES // 10**9} GB)` (eviction on: a global lock and "
        "a directory scan per put); JAX uncapped = `LRUCache(max_size=-1)`; ours signed "
        "= our store with a signing key (HMAC-SHA256 on every put and get: that column "
        "is signed / unsigned, so < 1.02 means signing costs under 2%)."
    )
    note = (
        f"The capped store is timed only on puts {p.fill_end:,} -> {N_ENTRIES:,}: its "
        f"directory is pre-filled to {p.fill_end:,} entries through "
        "`LRUCache(max_size=-1)`, then each entry is read once through the capped "
        "instance, whose `get` writes the `<key>-atime` file its eviction scan reads "
        "(entries written with eviction off have none, and the scan fails on them). "
        "Our store and the uncapped one are timed on every put."
    )
    headers = [
        "operation",
        "JAX capped / ours",
        "JAX uncapped / ours",
        "ours signed / ours",
        "target",
    ]
    return section(TITLE, intro, table(headers, _rows(results, p)), note)
