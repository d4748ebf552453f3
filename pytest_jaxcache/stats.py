"""The counters of the store and of the remote tier: what one process did, summed over
the processes of a session (:class:`~pytest_jaxcache.tally.Tally`). Plain data, so that
a worker's figures cross to the controller and into the report without the store or the
remote tier being imported there."""

from __future__ import annotations

from dataclasses import dataclass, field

from pytest_jaxcache.tally import Tally


@dataclass
class StoreStats(Tally):
    """What one process's store did; summed over processes with :meth:`Tally.add`."""

    hits: int = 0
    misses: int = 0
    writes: int = 0
    bytes_written: int = 0
    repaired: int = 0  # corrupt entries found (and removed, unless read-only)
    wrong_key: int = 0  # entries of another key under this key's name
    untrusted: int = 0  # unsigned, badly signed, or writable by others: not loaded
    foreign: int = 0  # this key's entry exists for another machine only: not loaded
    odd_files: int = 0  # unreadable, oversized, links, FIFOs... where an entry should be
    resigned: int = 0  # entries signed with an old key, signed again with the current one
    write_errors: int = 0
    skipped_writes: int = 0  # read-only mode
    lock_waits: int = 0  # waited for another process compiling the same key...
    waited_hits: int = 0  # ...and then read its entry instead of compiling
    lock_timeouts: int = 0
    wait_secs: float = 0.0  # time spent waiting for other processes' compiles
    errors: list[str] = field(default_factory=list)


@dataclass
class RemoteStats(Tally):
    """What one process did with the remote; summed over processes."""

    hits: int = 0  # local misses served from the remote
    misses: int = 0  # local misses the remote could not serve either
    refused: int = 0  # remote entries that did not verify: never loaded
    prefetched: int = 0  # entries downloaded ahead by prefetch...
    prefetched_used: int = 0  # ...and then hit (counted over the whole session)
    uploads: int = 0
    upload_failures: int = 0
    not_uploaded: int = 0  # still queued when the session ended
    bytes_down: int = 0
    bytes_up: int = 0
    io_secs: float = 0.0
    foreign_names: int = 0  # names in a listing or manifest that are not entry names
    oversized: int = 0  # objects larger than the entry limit: not downloaded
    manifests_ignored: int = 0  # too large, not JSON of our shape, or not signed
    errors: list[str] = field(default_factory=list)


@dataclass
class LoweringStats(Tally):
    """What one process's lowering tier did (``--jax-cache-lowering``); summed over
    processes."""

    hits: int = 0  # modules served from the cache: lowering skipped
    misses: int = 0  # keyed, not in the cache: JAX lowered it...
    stored: int = 0  # ...and it was written
    # lowered and not written, by reason (no exact key, host callbacks, effects, ...)
    not_stored: dict[str, int] = field(default_factory=dict)
    verified: int = 0  # verify: a served module was identical to a fresh lowering
    # ...of which identical but for debug locations (JAX's cache key leaves them out)
    relocated: int = 0
    mismatched: int = 0  # verify: it was not; the fresh module was used
    mismatches: list[str] = field(default_factory=list)  # each: program, key, diff command
    checked: int = 0  # JAX's cache key of a served module was the one recorded...
    check_failed: int = 0  # ...or not: that entry is not served again
    saved_secs: float = 0.0  # recorded lowering time of the hits, less serving them
    serve_secs: float = 0.0  # keying, lookup and parsing, over every program seen
    lower_secs: float = 0.0  # JAX's own lowering inside the tier
    errors: list[str] = field(default_factory=list)
