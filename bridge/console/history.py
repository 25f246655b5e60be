"""The last 15 minutes of the console's charts, shared by the workers.

Whichever worker answers `/status` adds a point when the last one is at least
`STEP_SECONDS` old: the rates and latency quantiles since the previous point, computed
from the cumulative counters (kept with the points). Points and counters live in one
small JSON file of the instance's run directory, read and replaced under a lock, so the
page sees one history whichever worker serves it, and a reload keeps it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from bridge.console import recent
from bridge.console.status import SURFACES, quantile
from bridge.core import locking

WINDOW_SECONDS = 15 * 60
STEP_SECONDS = 1.0
_FILE = "history.json"


def _delta(now: list[float], before: list[float] | None) -> list[float]:
    if not before or len(before) != len(now):
        return now  # the first point, or bounds that changed: since the start
    return [max(a - b, 0.0) for a, b in zip(now, before, strict=True)]


def point(now: dict[str, Any], before: dict[str, Any], bounds: dict[str, list[float]]
          ) -> dict[str, Any]:
    """The chart point of the interval between two sets of cumulative counters."""
    elapsed = max(now["t"] - before["t"], 1e-6)

    hits = sum(now["hits"].values()) - sum(before.get("hits", {}).values())
    lookups = hits + now["misses"] - before.get("misses", 0.0)
    made: dict[str, Any] = {"t": round(now["t"], 3), "rps": {}, "p50": {}, "p99": {},
                            "ttft_p50": {}, "hit_ratio": round(hits / lookups, 4)
                            if lookups > 0 else None,
                            "gpu_seconds_saved": round(now["gpu_seconds_saved"], 3),
                            "tokens_saved": now["tokens_saved"],
                            "refused_per_s": round(
                                (now["rate_limited"] + now["refused"]
                                 - before.get("rate_limited", 0.0)
                                 - before.get("refused", 0.0)) / elapsed, 3)}
    for surface in SURFACES:
        made["rps"][surface] = round(max(now["requests"][surface]
                                         - before.get("requests", {}).get(surface, 0.0), 0.0)
                                     / elapsed, 3)
        latency = _delta(now["latency"][surface], before.get("latency", {}).get(surface))
        made["p50"][surface] = quantile(0.5, bounds["latency"], latency)
        made["p99"][surface] = quantile(0.99, bounds["latency"], latency)
        ttft = _delta(now["ttft"][surface], before.get("ttft", {}).get(surface))
        made["ttft_p50"][surface] = quantile(0.5, bounds["ttft"], ttft)
    return made


def update(counters: dict[str, Any], bounds: dict[str, list[float]], now: float
           ) -> list[dict[str, Any]]:
    """Add a point for `counters` (taken at `now`) if one is due; the points kept."""
    path = recent.directory() / _FILE
    with open(recent.directory() / (_FILE + ".lock"), "a") as lock, locking.exclusive(lock):
        try:
            kept = json.loads(path.read_text())
        except (OSError, ValueError):
            kept = {"counters": None, "points": []}
        current = dict(counters, t=now)
        before = kept["counters"]
        if before is None:
            kept["counters"] = current  # the baseline: points start with the next one
        elif now - before["t"] >= STEP_SECONDS:
            kept["points"].append(point(current, before, bounds))
            kept["points"] = [p for p in kept["points"] if p["t"] >= now - WINDOW_SECONDS]
            kept["counters"] = current
        else:
            return kept["points"]
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(kept, separators=(",", ":")))
        os.replace(temporary, path)
        return kept["points"]
