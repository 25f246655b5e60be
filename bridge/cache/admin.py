"""`deepseek-ollama-bridge cache stats|purge`: inspect or empty the disk tier, even while
the bridge runs (it opens the same SQLite file; running workers drop purged entries
from their memory tier within a second).

The cache settings (`--cache-dir`, `--cache-ttl`, `--cache-max-entries`) are the
server's own, from the same flags or environment, so the TTL that `stats` applies is
the one the bridge uses. A file SQLite cannot use is moved aside as the workers would,
and any failure is one line on stderr (exit 1), never a traceback. With `--redis-url`
both work on the Redis tier shared by the instances.
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
from typing import Any, Sequence

from bridge.cache.disk import DiskTier, cache_file, is_corruption
from bridge.cache.redis_tier import RedisTier
from bridge.core import redis_link
from bridge.core import settings as bridge_settings
from bridge.core.redis_link import RedisDown

CACHE_SETTINGS = ("cache_dir", "cache_ttl", "cache_max_entries", "redis_url", "redis_prefix")


def _parser() -> argparse.ArgumentParser:
    parser, _ = bridge_settings.tool_parser(
        "cache", "Show statistics of the response cache, or purge it.", CACHE_SETTINGS,
        commands=False)
    parser.add_argument("action", choices=("stats", "purge"))
    parser.add_argument("--model", metavar="M", help="purge only the entries of this model")
    parser.add_argument("--json", action="store_true", help="statistics as JSON")
    return parser


def _fail(message: str) -> int:
    print(f"{bridge_settings.PROG} cache: error: {message}", file=sys.stderr)
    return 1


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        settings = bridge_settings.resolve(args, CACHE_SETTINGS)
    except bridge_settings.SettingError as exc:
        print(f"{bridge_settings.PROG} cache: error: {exc}", file=sys.stderr)
        return 2
    if args.model is not None and args.action != "purge":
        print(f"{bridge_settings.PROG} cache: error: --model goes with purge", file=sys.stderr)
        return 2
    link = redis_link.link_for(settings, redis_link.TOOL_TIMEOUT)
    if link is not None:
        return _redis_main(args, settings, link)
    path = cache_file(settings.cache_dir)
    if not path.exists():
        print(f"no cache file at {path}", file=sys.stderr)
        return 1
    # this command reports in one line of its own, not with the workers' log lines
    logging.getLogger("bridge.cache").addHandler(logging.NullHandler())
    disk = DiskTier(settings.cache_dir, settings.cache_ttl / 1000, settings.cache_max_entries)
    try:
        disk.open()
        if disk.moved_aside is not None:
            return _fail(f"{path} was unreadable: moved aside to {disk.moved_aside.name}; "
                         "a fresh, empty cache file was started")
        if args.action == "purge":
            removed = disk.purge(args.model)
            what = f"of model {args.model!r} " if args.model is not None else ""
            print(f"purged {removed} entries {what}from {path}")
            return 0
        stats = disk.stats()
    except (sqlite3.Error, OSError) as exc:
        if isinstance(exc, sqlite3.Error) and is_corruption(exc):
            disk.recover(exc)
            if disk.moved_aside is not None:
                return _fail(f"{path} was unreadable ({exc}): moved aside to "
                             f"{disk.moved_aside.name}; a fresh, empty cache file was started")
        return _fail(f"cannot read {path}: {type(exc).__name__}: {exc}")
    finally:
        disk.close()
    _print(stats, args.json)
    return 0


def _redis_main(args: argparse.Namespace, settings: bridge_settings.Settings,
                link: redis_link.Link) -> int:
    """`stats` and `purge` on the Redis tier (a purge also empties this host's file)."""
    ttl = settings.cache_ttl / 1000
    local = None
    if cache_file(settings.cache_dir).exists():
        local = DiskTier(settings.cache_dir, ttl, settings.cache_max_entries).open()
    tier = RedisTier(link, local, ttl, settings.cache_max_entries)
    try:
        if args.action == "purge":
            removed = tier.purge(args.model)
            what = f"of model {args.model!r} " if args.model is not None else ""
            print(f"purged {removed} entries {what}from Redis at "
                  f"{redis_link.safe_url(link.url)} (prefix {link.prefix})")
            return 0
        stats = tier.stats()
    except RedisDown as exc:
        return _fail(f"Redis at {redis_link.safe_url(link.url)} did not answer ({exc})")
    finally:
        tier.close()
    _print(stats, args.json)
    return 0


def _print(stats: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(stats, indent=2))
        return
    print(f"file: {stats['file']} ({stats['bytes']} bytes)")
    print(f"entries: {stats['entries']} of at most {stats['max_entries']}, "
          f"{stats['expired']} expired (TTL {stats['ttl_seconds']:g} s)")
    if stats["entries"]:
        print(f"oldest: {stats['oldest_age_seconds']} s ago, newest: "
              f"{stats['newest_age_seconds']} s ago")
    for model, count in stats["models"].items():
        print(f"  {model or '(no model)'}: {count}")
