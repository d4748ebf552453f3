"""``--dist=jaxcache``: an xdist scheduler that knows what each test will cost.

- The longest predicted tests go first (the history of earlier sessions, and which of
  their programs the cache holds now: :mod:`pytest_jaxcache.shards`).
- Tests that would compile the same program (its entry not in the cache) go to the same
  worker: one compiles it, the others load it, instead of waiting on its lock.
- Tests marked ``jax_errors`` run on one worker, as one block, whatever pytest and
  xdist do with ``--dist loadgroup``: each worker tells the controller which tests it
  found marked (a file in a directory the controller names), before it sends its
  collection.
- Without any history, tests go out in collection order in small chunks, as xdist's
  ``load`` does (said once).

The protocol is xdist's ``Scheduling`` (``xdist.scheduler.protocol``); the plugin hands
this class to xdist through ``pytest_xdist_make_scheduler``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from pytest_jaxcache.history import History
from pytest_jaxcache.shards import DEFAULT_SECS, LOAD_SECS, predict

_MAX_MARKED_BYTES = 16 * 2**20


def write_marked(directory: str, worker: str, nodeids: Sequence[str]) -> None:
    """A worker's marked tests, for the controller (before its collection is sent)."""
    path = Path(directory) / f"{''.join(c for c in worker if c.isalnum())}.json"
    path.write_text(json.dumps(list(nodeids)))


def read_marked(directory: str, worker: str) -> set[str]:
    path = Path(directory) / f"{''.join(c for c in worker if c.isalnum())}.json"
    try:
        if path.stat().st_size > _MAX_MARKED_BYTES:
            return set()
        found = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return set()
    return {item for item in found if isinstance(item, str)} if isinstance(found, list) else set()


class Unit:
    """Tests that go to one worker together, in collection order."""

    def __init__(self, indices: list[int], cost: float, marked: bool = False) -> None:
        self.indices = indices
        self.cost = cost
        self.marked = marked


def plan(
    collection: Sequence[str],
    history: History,
    present: Collection[str],
    marked: Collection[str],
    workers: int = 2,
) -> list[Unit]:
    """The units of work, costliest first: the marked tests as one unit; tests that
    share a program whose entry is missing as one unit each (a union of such tests:
    the first compiles it, the others load it, so the program counts once); every other
    test alone. A unit larger than a worker's fair share is split."""
    costs = predict(collection, history, present)
    guess = statistics.median(costs.values()) if costs else DEFAULT_SECS
    parent = list(range(len(collection)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    missing: list[set[str]] = []  # per test: the programs it would compile
    first_user: dict[str, int] = {}
    for index, nodeid in enumerate(collection):
        record = history.tests.get(nodeid)
        programs = set(record.programs) - set(present) if record is not None else set()
        missing.append(programs if nodeid not in marked else set())
        for program in missing[index]:
            parent[root(index)] = root(first_user.setdefault(program, index))

    def unit_cost(indices: list[int]) -> float:
        """Each test's cost, with a program shared by the unit compiled once."""
        total, compiled = 0.0, set()
        for i in indices:
            total += costs.get(collection[i], guess)
            record = history.tests.get(collection[i])
            for program in missing[i]:
                if program in compiled and record is not None:
                    total -= history.programs.get(program, 0.0) - LOAD_SECS
                compiled.add(program)
        return max(total, 0.0)

    groups: dict[int, list[int]] = {}
    marked_indices = []
    for index, nodeid in enumerate(collection):
        if nodeid in marked:
            marked_indices.append(index)
        else:
            groups.setdefault(root(index), []).append(index)
    share = sum(unit_cost(members) for members in groups.values()) / max(1, workers) or 1.0
    units = []
    for members in groups.values():
        chunk: list[int] = []
        for index in members:
            if chunk and unit_cost([*chunk, index]) > share:
                units.append(Unit(chunk, unit_cost(chunk)))
                chunk = []
            chunk.append(index)
        units.append(Unit(chunk, unit_cost(chunk)))
    if marked_indices:
        units.append(Unit(marked_indices, unit_cost(marked_indices), marked=True))
    units.sort(key=lambda unit: (-unit.cost, unit.indices[0]))
    return units


class CostScheduling:
    """xdist's ``Scheduling`` protocol, sending units of :func:`plan` to idle workers."""

    def __init__(
        self,
        numnodes: int,
        history: History,
        present: Collection[str],
        marked_dir: str,
        notice: Any,
    ) -> None:
        self.numnodes = numnodes
        self.history = history
        self.present = present
        self.marked_dir = marked_dir
        self._notice = notice
        self.node2collection: dict[Any, list[str]] = {}
        self.node2pending: dict[Any, list[int]] = {}
        self.collection: list[str] | None = None
        self.units: list[Unit] = []
        self.pending: list[int] = []  # requeued after a crash
        self._marked: set[str] = set()

    # -- the protocol ----------------------------------------------------------------

    @property
    def nodes(self) -> list[Any]:
        return list(self.node2pending)

    @property
    def collection_is_completed(self) -> bool:
        return len(self.node2collection) >= self.numnodes

    @property
    def tests_finished(self) -> bool:
        if not self.collection_is_completed or self.units or self.pending:
            return False
        return all(len(pending) < 2 for pending in self.node2pending.values())

    @property
    def has_pending(self) -> bool:
        return bool(self.units or self.pending or any(self.node2pending.values()))

    def add_node(self, node: Any) -> None:
        self.node2pending[node] = []

    def add_node_collection(self, node: Any, collection: Sequence[str]) -> None:
        self.node2collection[node] = list(collection)
        self._marked |= read_marked(self.marked_dir, str(node.workerinput.get("workerid", "")))

    def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
        self.node2pending[node].remove(item_index)
        self._feed(node)

    def mark_test_pending(self, item: str) -> None:
        assert self.collection is not None
        self.pending.insert(0, self.collection.index(item))
        for node in self.nodes:
            self._feed(node)

    def remove_pending_tests_from_node(self, node: Any, indices: Sequence[int]) -> None:
        raise NotImplementedError  # only xdist's work stealing asks for this

    def remove_node(self, node: Any) -> str | None:
        pending = self.node2pending.pop(node)
        if not pending:
            return None
        assert self.collection is not None
        crashed = self.collection[pending.pop(0)]
        self.pending.extend(pending)
        for other in self.nodes:
            self._feed(other)
        return crashed

    def schedule(self) -> None:
        assert self.collection_is_completed
        if self.collection is not None:
            for node in self.nodes:
                self._feed(node)
            return
        collections = list(self.node2collection.values())
        if any(collection != collections[0] for collection in collections[1:]):
            self._notice("--dist=jaxcache: the workers collected different tests; none run")
            return
        self.collection = collections[0]
        if not self.history:
            self._notice(
                "--dist=jaxcache: no history of earlier sessions yet: tests go out in "
                "collection order, as with --dist load (jax_errors tests still together)"
            )
        self.units = plan(
            self.collection, self.history, self.present, self._marked, len(self.nodes)
        )
        for node in self.nodes:
            self._feed(node)

    # -- dispatch ----------------------------------------------------------------------

    def _feed(self, node: Any) -> None:
        """Keep ``node`` two tests ahead (an xdist worker runs a test once it knows the
        next one, or that there is none): requeued tests first, then the next units (the
        marked block goes whole to the first worker that asks). With nothing left to
        hand out, the worker is told to finish what it holds."""
        if node.shutting_down:
            return
        pending = self.node2pending[node]
        while len(pending) < 2 and (self.pending or self.units):
            if self.pending:
                self._send(node, [self.pending.pop(0)])
            else:
                self._send(node, self.units.pop(0).indices)
        if not self.pending and not self.units:
            node.shutdown()

    def _send(self, node: Any, indices: list[int]) -> None:
        self.node2pending[node].extend(indices)
        node.send_runtest_some(indices)
