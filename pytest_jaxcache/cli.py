"""``jaxcache`` (or ``python -m pytest_jaxcache``): inspect and maintain a cache
directory from CI steps and shells. Values are read with the plugin's own parsers, so
``--max-size`` and ``--prune-after`` accept exactly what the pytest options accept."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pytest_jaxcache import keys, settings
from pytest_jaxcache.bookkeeping import Bookkeeping
from pytest_jaxcache.maintenance import Maintenance
from pytest_jaxcache.settings import format_size
from pytest_jaxcache.store import ENTRIES, Store

PROG = "jaxcache"


class CliError(Exception):
    """A problem to report in one line, with exit status 2."""


def _argument(option: settings.Option[Any]) -> Callable[[str], Any]:
    """An argparse ``type=`` from a settings option's parser."""

    def parse(text: str) -> Any:
        try:
            return option.parse(text, Path.cwd())
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = option.attr  # argparse names it in its messages
    return parse


def _store(path: str) -> Store:
    root = Path(path)
    store = Store(root)
    if not store.directory.has(ENTRIES):
        raise CliError(f"{root} is not a pytest-jaxcache cache directory")
    return store


def show(args: argparse.Namespace) -> None:
    store = _store(args.dir)
    usage = Maintenance(store.directory).usage()
    sessions = Bookkeeping(store.directory).sessions()
    print(f"cache:    {store.root}")
    print(f"entries:  {usage.entries} ({format_size(usage.bytes)})")
    if sessions:
        last = time.strftime("%Y-%m-%d %H:%M", time.localtime(sessions[-1]))
        print(f"sessions: {len(sessions)} recorded, last started {last}")
    programs = Counter(keys.program_name(name) for name in store.entry_names())
    if programs:
        print("programs with most entries:")
        for name, count in programs.most_common(10):
            print(f"  {count:>6}  {name}")


def prune(args: argparse.Namespace) -> None:
    store = _store(args.dir)
    maintenance = Maintenance(store.directory)
    before = maintenance.usage()
    result = maintenance.maintain(
        max_size_bytes=args.max_size, prune_after_sessions=args.prune_after, session_start=None
    )
    if not result.ran:
        raise CliError(f"maintenance did not run: {result.reason}")
    after = maintenance.usage()
    print(
        f"{before.entries} entries ({format_size(before.bytes)}) -> {after.entries} entries "
        f"({format_size(after.bytes)}): {result.evicted} evicted, {result.pruned} pruned"
    )


def clear(args: argparse.Namespace) -> None:
    store = _store(args.dir)
    print(f"removed {Maintenance(store.directory).clear()} entries from {store.root}")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and maintain a pytest-jaxcache cache directory.",
        epilog=f"'{PROG} COMMAND --help' describes each command.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, run: Callable[[argparse.Namespace], None], summary: str, text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=text)
        sub.set_defaults(run=run)
        sub.add_argument("dir", metavar="DIR", help="the cache directory")
        return sub

    command(
        "show",
        show,
        "entries, size, sessions, programs",
        "Print how many entries the cache holds, their size, the sessions recorded and "
        "the programs with the most entries.",
    )
    prune_parser = command(
        "prune",
        prune,
        "evict to a size, drop unused entries",
        "Evict least recently used entries until the cache fits --max-size, and remove "
        "entries no session used in the last --prune-after sessions.",
    )
    prune_parser.add_argument(
        "--max-size",
        type=_argument(settings.MAX_SIZE),
        metavar="SIZE",
        help="evict least recently used entries until the cache fits SIZE: 500MB, 2GiB "
        "(default: no cap)",
    )
    prune_parser.add_argument(
        "--prune-after",
        type=_argument(settings.PRUNE_AFTER),
        metavar="N",
        help=settings.PRUNE_AFTER.help,
    )
    command("clear", clear, "remove every entry", "Remove every entry of the cache.")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    try:
        args.run(args)
    except CliError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return 0
