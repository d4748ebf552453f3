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
