"""`deepseek-ollama-bridge upstreams check --upstreams FILE`: validate the upstreams file
and probe each upstream, printing a table (name, url, reachable, models found).

Exit status: 0 when the file is valid and every upstream answered, 1 when one did not,
2 when the file is unusable (one line naming the file and the line or field).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from bridge.core.settings import PROG, SettingError, add_arguments, defaults, resolve
from bridge.core.upstream import UpstreamClient
from bridge.routing import config
from bridge.routing.stage import models_of, probe_path


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"{PROG} upstreams",
                                     description="Check the upstreams file (--upstreams).")
    parser.add_argument("command", choices=["check"])
    add_arguments(parser, ["upstreams", "timeout", "connect_timeout"])
    parsed = parser.parse_args(list(argv))
    try:
        settings = resolve(parsed, ["upstreams", "timeout", "connect_timeout"])
    except SettingError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if not settings.upstreams:
        print(f"{PROG}: error: --upstreams: give the file to check (or BRIDGE_UPSTREAMS)",
              file=sys.stderr)
        return 2
    try:
        upstreams = config.load(settings.upstreams)
    except config.UpstreamsError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    client = UpstreamClient(defaults().replace(timeout=settings.timeout,
                                               connect_timeout=settings.connect_timeout))
    targets = [u.target for u in upstreams.upstreams]
    # one after the other (a plain process), each bounded
    reachable = [client.get_json(probe_path(t), t, None, 5.0) is not None for t in targets]
    rows = [("name", "url", "reachable", "models found")]
    for upstream, ok in zip(upstreams.upstreams, reachable, strict=True):
        listed = models_of(client, upstream.target, None) if ok else None
        found = sorted(name for name in (listed or {}) if upstream.serves(name))
        rows.append((upstream.name, upstream.target.url, "yes" if ok else "NO",
                     ", ".join(found) if found else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(row[i].ljust(widths[i]) for i in range(3)) + "  " + row[3])
    return 0 if all(reachable) else 1

