"""``python -m pytest_jaxcache``: inspect and maintain a cache directory from CI steps.

python -m pytest_jaxcache show DIR
python -m pytest_jaxcache prune DIR [--max-size SIZE] [--prune-after N]
python -m pytest_jaxcache clear DIR
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pytest_jaxcache.settings import format_size, parse_size
from pytest_jaxcache.store import Store


def _store(path: str) -> Store:
    root = Path(path)
    if not (root / "entries").is_dir():
        raise SystemExit(f"pytest-jaxcache: {root} is not a pytest-jaxcache cache directory")
    return Store(root)


def show(store: Store) -> None:
    usage = store.usage()
    sessions = store.sessions()
    print(f"cache:    {store.root}")
    print(f"entries:  {usage.entries} ({format_size(usage.bytes)})")
    if sessions:
        last = time.strftime("%Y-%m-%d %H:%M", time.localtime(sessions[-1]))
        print(f"sessions: {len(sessions)} recorded, last started {last}")
    programs = Counter(key.rsplit("-", 1)[0] for key in store.entry_names())
    if programs:
        print("programs with most entries:")
        for name, count in programs.most_common(10):
            print(f"  {count:>6}  {name}")


def prune(store: Store, max_size: str | None, prune_after: int | None) -> None:
    before = store.usage()
    result = store.maintain(
        max_size_bytes=parse_size(max_size) if max_size else None,
        prune_after_sessions=prune_after,
        session_start=None,
    )
    if not result.ran:
        raise SystemExit(f"pytest-jaxcache: maintenance did not run: {result.reason}")
    after = store.usage()
    print(
        f"{before.entries} entries ({format_size(before.bytes)}) -> {after.entries} entries "
        f"({format_size(after.bytes)}): {result.evicted} evicted, {result.pruned} pruned"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_jaxcache", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("show", help="entries, size, sessions").add_argument("dir")
    prune_parser = commands.add_parser("prune", help="evict to a size and drop unused entries")
    prune_parser.add_argument("dir")
    prune_parser.add_argument("--max-size", help="e.g. 500MB, 2GiB")
    prune_parser.add_argument("--prune-after", type=int, help="sessions without use")
    commands.add_parser("clear", help="remove every entry").add_argument("dir")
    args = parser.parse_args(argv)
    store = _store(args.dir)
    if args.command == "show":
        show(store)
    elif args.command == "prune":
        try:
            prune(store, args.max_size, args.prune_after)
        except ValueError as error:
            parser.error(str(error))
    else:
        print(f"removed {store.clear()} entries from {store.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
