"""`deepseek-ollama-bridge upstreams check --upstreams FILE`: validate the upstreams file
and probe each upstream as its kind answers, printing a table (name, kind, url, whether
it answered its kind's probe, models found).

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
    # one after the other (a plain process), each bounded: each kind's own probe (GET
    # /api/version of an Ollama, /v1/models of the others, with its key as it reads it)
    probes = [client.ask(probe_path(t), t, {}, 5.0)[0] for t in targets]
    rows = [("name", "kind", "url", "probe", "models found")]
    for upstream, status in zip(upstreams.upstreams, probes, strict=True):
        target = upstream.target
        listed = models_of(client, target, None) if status == 200 else None
        found = sorted(name for name in (listed or {}) if upstream.serves(name))
        answered = ("yes" if status == 200 else "NO (unreachable)" if status is None
                    else f"NO ({status})")
        rows.append((upstream.name, target.api, target.url,
                     f"{answered}: GET {probe_path(target)}", ", ".join(found) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(row[i].ljust(widths[i]) for i in range(4)) + "  " + row[4])
    return 0 if all(status == 200 for status in probes) else 1
