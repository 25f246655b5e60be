"""`deepseek-ollama-bridge cache stats|purge`: inspect or empty the disk tier, even while
the bridge runs (it opens the same SQLite file; running workers drop purged entries
from their memory tier within a second)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from bridge.cache.disk import DiskTier, cache_file
from bridge.core import settings as bridge_settings


def _parser() -> argparse.ArgumentParser:
    parser = bridge_settings._OneLineParser(
        prog=f"{bridge_settings.PROG} cache",
        description="Show statistics of the response cache, or purge it.")
    parser.add_argument("action", choices=("stats", "purge"))
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="the bridge's cache directory (default: BRIDGE_CACHE_DIR or ./cache)")
    parser.add_argument("--model", metavar="M", help="purge only the entries of this model")
    parser.add_argument("--json", action="store_true", help="statistics as JSON")
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        settings = bridge_settings.load([] if args.cache_dir is None
                                        else ["--cache-dir", args.cache_dir])
    except bridge_settings.SettingError as exc:
        print(f"{bridge_settings.PROG} cache: error: {exc}", file=sys.stderr)
        return 2
    if args.model is not None and args.action != "purge":
        print(f"{bridge_settings.PROG} cache: error: --model goes with purge", file=sys.stderr)
        return 2
    path = cache_file(settings.cache_dir)
    if not path.exists():
        print(f"no cache file at {path}", file=sys.stderr)
        return 1
    disk = DiskTier(settings.cache_dir, settings.cache_ttl / 1000,
                    settings.cache_max_entries).open()
    try:
        if args.action == "purge":
            removed = disk.purge(args.model)
            what = f"of model {args.model!r} " if args.model is not None else ""
            print(f"purged {removed} entries {what}from {path}")
            return 0
        stats = disk.stats()
    finally:
        disk.close()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"file: {stats['file']} ({stats['bytes']} bytes)")
    print(f"entries: {stats['entries']} of at most {stats['max_entries']}, "
          f"{stats['expired']} expired (TTL {stats['ttl_seconds']:g} s)")
    if stats["entries"]:
        print(f"oldest: {stats['oldest_age_seconds']} s ago, newest: "
              f"{stats['newest_age_seconds']} s ago")
    for model, count in stats["models"].items():
        print(f"  {model or '(no model)'}: {count}")
    return 0
