"""``jaxcache`` (or ``python -m pytest_jaxcache``): inspect and maintain a cache
directory from CI steps and shells. Values are read with the plugin's own parsers, so
``--max-size`` and ``--prune-after`` accept exactly what the pytest options accept."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pytest_jaxcache import keys, ownership, settings
from pytest_jaxcache.bookkeeping import Bookkeeping
from pytest_jaxcache.cachedir import CacheDir
from pytest_jaxcache.cikey import DEFAULT_PREFIX
from pytest_jaxcache.entry import MAX_ENTRY_BYTES
from pytest_jaxcache.formats import format_size
from pytest_jaxcache.maintenance import ENTRY, OLD, Maintenance, Merged, usage_of
from pytest_jaxcache.maintenance import merge as merge_caches

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


def _cache(path: str, *, adopt: bool = False) -> CacheDir:
    """An existing cache directory (never created or tagged here), or, with ``adopt``,
    a cache directory made or tagged if it is new or empty."""
    root = Path(path)
    try:
        directory = ownership.adopt(root, readonly=not adopt)
        if adopt:
            ownership.claim(directory)
    except ownership.NotOurs as error:
        raise CliError(str(error)) from None
    except OSError as error:
        raise CliError(f"{root}: {error.strerror or error}") from None
    odd = ownership.odd_layout(directory)
    if odd:
        raise CliError(f"{root} cannot be used: {'; '.join(odd)}")
    return directory


def show(args: argparse.Namespace) -> None:
    directory = _cache(args.dir)
    items = Maintenance(directory).inventory()
    usage = usage_of(items)
    sessions = Bookkeeping(directory).sessions()
    print(f"cache:    {directory.root}")
    print(f"entries:  {usage.entries} ({format_size(usage.bytes)})")
    machines = Counter(item.machine for item in items if item.kind == ENTRY)
    if len(machines) > 1:
        print(f"machines: {len(machines)} ({', '.join(f'{n} entries' for n in machines.values())})")
    old = sum(item.kind == OLD for item in items)
    if old:
        print(f"older layout: {old} entries, never loaded (evicted first)")
    if usage.jax_files:
        print(
            f"JAX's own store: {usage.jax_files} files ({format_size(usage.jax_bytes)}), "
            "not loaded (evicted first)"
        )
    if sessions:
        last = time.strftime("%Y-%m-%d %H:%M", time.localtime(sessions[-1]))
        print(f"sessions: {len(sessions)} recorded, the last started {last}")
    programs = Counter(keys.program_name(item.name) for item in items if item.kind == ENTRY)
    if programs:
        print("programs with most entries:")
        for name, count in programs.most_common(10):
            print(f"  {count:>6}  {name}")


def prune(args: argparse.Namespace) -> None:
    maintenance = Maintenance(_cache(args.dir))
    before = maintenance.usage()
    result = maintenance.maintain(
        max_size_bytes=args.max_size, prune_after_sessions=args.prune_after, session_start=None
    )
    if not result.ran:
        raise CliError(f"maintenance did not run: {result.reason}")
    after = maintenance.keep_contents()
    print(
        f"{before.entries} entries ({format_size(before.bytes)}) -> {after.entries} entries "
        f"({format_size(after.bytes)}): {result.evicted} evicted, {result.pruned} pruned"
    )


def clear(args: argparse.Namespace) -> None:
    directory = _cache(args.dir)
    maintenance = Maintenance(directory)
    removed = maintenance.clear()
    maintenance.keep_contents()
    print(f"removed {removed} entries from {directory.root}")


def merge(args: argparse.Namespace) -> None:
    target = _cache(args.dir, adopt=True)
    maintenance = Maintenance(target)
    before = maintenance.usage()
    total = Merged()
    for path in args.sources:
        found = merge_caches(target, _cache(path), MAX_ENTRY_BYTES)
        total = Merged(
            total.entries + found.entries,
            total.records + found.records,
            total.tests + found.tests,
        )
    after = maintenance.keep_contents()
    print(
        f"{before.entries} entries ({format_size(before.bytes)}) -> {after.entries} entries "
        f"({format_size(after.bytes)}): {total.entries} entries and the history of "
        f"{total.tests} tests merged from {len(args.sources)} caches"
    )


def _github_output(lines: list[str]) -> None:
    """Append ``lines`` to the file GitHub Actions reads a step's outputs from."""
    path = os.environ.get("GITHUB_OUTPUT")
    if not path:
        raise CliError("--github-output: GITHUB_OUTPUT is not set (not in GitHub Actions?)")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(f"{line}\n" for line in lines))


def key(args: argparse.Namespace) -> None:
    from pytest_jaxcache import cikey
    from pytest_jaxcache.jax.fingerprint import fingerprint_outside_a_session
    from pytest_jaxcache.jax.importing import JaxMissing

    xla_caches = settings.XLA_CACHES.default
    variable = settings.XLA_CACHES.env
    if variable is not None and variable in os.environ:
        source = settings.Source("env", variable)
        try:
            xla_caches = settings.parse_one(
                settings.XLA_CACHES, os.environ[variable], source, Path.cwd()
            )
        except settings.SettingsError as error:
            raise CliError(str(error)) from None
    try:
        fingerprint = fingerprint_outside_a_session(xla_caches)
    except JaxMissing as error:
        raise CliError(str(error)) from None
    primary = cikey.key(fingerprint, args.prefix)
    fallbacks = cikey.restore_keys(fingerprint, args.prefix)
    if args.json:
        document = {"key": primary, "restore_keys": fallbacks, "fingerprint": fingerprint}
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        print("\n".join(fallbacks) if args.restore_keys else primary)
    if args.github_output:
        marker = "EOF_JAXCACHE_RESTORE_KEYS"
        _github_output([f"key={primary}", f"restore-keys<<{marker}", *fallbacks, marker])


def digest(args: argparse.Namespace) -> None:
    value = Maintenance(_cache(args.dir)).usage().digest
    print(value)
    if args.github_output:
        _github_output([f"digest={value}"])


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
    merge_parser = command(
        "merge",
        merge,
        "merge other caches into this one",
        "Copy into DIR (made if new) the entries, records and test history that other "
        "caches hold and DIR does not: the caches the shards of a CI matrix wrote become "
        "one to save.",
    )
    merge_parser.add_argument("sources", nargs="+", metavar="SOURCE", help="a cache to merge")

    key_parser = commands.add_parser(
        "key",
        help="a CI cache key for this machine and environment",
        description="Print a key for actions/cache made from what makes entries unusable "
        "elsewhere (OS, architecture, CPU features, jax and jaxlib versions) and a digest "
        "of the rest of the fingerprint the plugin stamps on its entries (Python, "
        "XLA_FLAGS, key-relevant JAX config, the jaxlib build). Imports JAX and starts "
        "its backends; compiles nothing.",
    )
    key_parser.set_defaults(run=key)
    key_parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="the key's first part")
    key_parser.add_argument(
        "--restore-keys",
        action="store_true",
        help="print the fallback prefixes instead, most specific first",
    )
    key_parser.add_argument("--json", action="store_true", help="key, fallbacks and fingerprint")
    key_parser.add_argument(
        "--github-output",
        action="store_true",
        help="also append key= and restore-keys= to $GITHUB_OUTPUT",
    )
    digest_parser = command(
        "digest",
        digest,
        "a digest of the cache's contents",
        "Print a digest of the entries the cache holds (not of when they were used): "
        "unchanged contents, unchanged digest. Put it in the key a CI cache is saved "
        "under, and an unchanged cache is never saved again.",
    )
    digest_parser.add_argument(
        "--github-output", action="store_true", help="also append digest= to $GITHUB_OUTPUT"
    )
    return top


def main(argv: Sequence[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    try:
        args.run(args)
        sys.stdout.flush()
    except BrokenPipeError:  # `jaxcache show | head`: the reader left; so do we, quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except CliError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the directory changed under us: say so, plainly
        print(
            f"{PROG}: error: {error.filename or args.dir}: {error.strerror or error}",
            file=sys.stderr,
        )
        return 1
    return 0
