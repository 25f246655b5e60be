"""One snapshot of what the bridge is doing, for `/status` and the console page.

Everything comes from the metrics registry as `/metrics` shows it (the multiprocess
collector sums the workers' files; nothing is counted a second time here), plus the
last errors (`recent`), the 15-minute history (`history`) and the settings without
their secrets.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from typing import Any, Iterable
from urllib.parse import urlsplit, urlunsplit

from bridge import __version__
from bridge.core import instance
from bridge.core.settings import SETTINGS, Secret, Settings
from bridge.observability import metrics
from bridge.surfaces import NAMES, client_api

Sample = tuple[str, dict[str, str], float]
SURFACES = ("openai", "ollama", *NAMES)  # the console's columns: every API clients speak
TOP = 10


class Samples:
    """The registry's samples, looked up by metric name and labels."""

    def __init__(self, samples: Iterable[Sample]):
        self.by_name: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for name, labels, value in samples:
            self.by_name[name].append((labels, value))

    def total(self, name: str, **match: str) -> float:
        return sum(value for labels, value in self.by_name.get(name, ())
                   if all(labels.get(key) == wanted for key, wanted in match.items()))

    def by(self, name: str, label: str) -> dict[str, float]:
        found: dict[str, float] = defaultdict(float)
        for labels, value in self.by_name.get(name, ()):
            found[labels.get(label, "")] += value
        return dict(found)

    def buckets(self, name: str, label: str) -> dict[str, list[float]]:
        """Cumulative bucket counts of histogram `name` by surface (read from `label`,
        a route template or a surface), in the order of their bounds."""
        grouped: dict[str, dict[float, float]] = {surface: {} for surface in SURFACES}
        for labels, value in self.by_name.get(name + "_bucket", ()):
            raw = labels.get(label, "")
            surface = raw if raw in SURFACES else client_api(raw)
            if surface:
                bound = float(labels["le"])
                grouped[surface][bound] = grouped[surface].get(bound, 0.0) + value
        return {surface: [counts[bound] for bound in sorted(counts)]
                for surface, counts in grouped.items()}

    def bounds(self, name: str) -> list[float]:
        return sorted({float(labels["le"]) for labels, _ in self.by_name.get(name + "_bucket", ())})


def quantile(q: float, bounds: list[float], cumulative: list[float]) -> float | None:
    """The q-quantile of a histogram, interpolated within its bucket as Prometheus'
    histogram_quantile does; None without observations."""
    if not cumulative or cumulative[-1] <= 0:
        return None
    rank = q * cumulative[-1]
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=False):
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            inside = count - previous_count
            share = (rank - previous_count) / inside if inside else 1.0
            return previous_bound + (bound - previous_bound) * share
        previous_bound, previous_count = bound, count
    return previous_bound


def shown_settings(settings: Settings) -> dict[str, Any]:
    """The settings as the console shows them: secrets as "set", the upstream URL
    without credentials, unset values left out."""
    shown: dict[str, Any] = {}
    for setting in SETTINGS:
        value = getattr(settings, setting.name, None)
        if isinstance(value, Secret):
            value = "set" if value else None
        elif setting.name == "ollama" and value:
            parts = urlsplit(str(value))
            value = urlunsplit(parts._replace(netloc=parts.hostname or "" if parts.port is None
                                              else f"{parts.hostname}:{parts.port}"))
        elif isinstance(value, tuple):
            value = ":".join(str(part) for part in value)
        if value is None or value == "":
            continue
        shown[setting.label.lstrip("-")] = value if isinstance(value, (bool, int, float)) \
            else str(value)
    return shown


def _top(counts: dict[str, float]) -> list[dict[str, Any]]:
    ranked = sorted(((name, value) for name, value in counts.items() if name and value),
                    key=lambda item: -item[1])
    return [{"name": name, "value": value} for name, value in ranked[:TOP]]


def counters(found: Samples) -> dict[str, Any]:
    """The cumulative figures the history samples and the page derives rates from."""
    requests = {surface: 0.0 for surface in SURFACES}
    errors = {surface: 0.0 for surface in SURFACES}
    for labels, value in found.by_name.get("bridge_requests_total", ()):
        surface = client_api(labels.get("route", ""))
        if surface:
            requests[surface] += value
            if labels.get("status", "").startswith(("4", "5")):
                errors[surface] += value
    hits = found.by("bridge_cache_hits_total", "tier")
    return {
        "requests": requests, "errors": errors,
        "latency": found.buckets("bridge_request_duration_seconds", "route"),
        "ttft": found.buckets("bridge_upstream_time_to_first_token_seconds", "surface"),
        "hits": hits, "misses": found.total("bridge_cache_misses_total"),
        "gpu_seconds_saved": found.total("bridge_cache_gpu_seconds_saved_total"),
        "tokens_saved": found.total("bridge_cache_tokens_saved_total"),
        "rate_limited": found.total("bridge_ratelimit_refused_total"),
        "refused": found.total("bridge_admission_refused_total"),
    }


def snapshot(settings: Settings, samples: Iterable[Sample] | None = None,
             workers: int | None = None) -> dict[str, Any]:
    """Everything `/status` answers but the history and the errors; `workers` is how many
    gunicorn runs (by default what the settings ask for: `-w`, else the CPU count)."""
    found = Samples(metrics.samples() if samples is None else samples)
    now = time.time()
    figures = counters(found)
    latency_bounds = found.bounds("bridge_request_duration_seconds")
    ttft_bounds = found.bounds("bridge_upstream_time_to_first_token_seconds")
    hits, misses = figures["hits"], figures["misses"]
    lookups = sum(hits.values()) + misses
    started = instance.started()
    return {
        "version": __version__, "time": now, "started": started,
        "uptime_seconds": round(now - started, 1), "workers": workers or settings.worker_count,
        "served_by": os.getpid(), "settings": shown_settings(settings),
        "requests": {surface: {
            "total": figures["requests"][surface], "errors": figures["errors"][surface],
            "p50": quantile(0.5, latency_bounds, figures["latency"][surface]),
            "p99": quantile(0.99, latency_bounds, figures["latency"][surface]),
            "ttft_p50": quantile(0.5, ttft_bounds, figures["ttft"][surface]),
            "ttft_p99": quantile(0.99, ttft_bounds, figures["ttft"][surface]),
        } for surface in SURFACES},
        "cache": {
            "enabled": bool(settings.enable_cache), "hits": hits, "misses": misses,
            "hit_ratio": {tier: count / lookups for tier, count in hits.items()}
            if lookups else {},
            "entries": {"memory": found.total("bridge_cache_memory_entries"),
                        "disk": found.total("bridge_cache_disk_entries")},
            "hot_threshold": found.total("bridge_cache_hot_threshold"),
            "promotions": found.total("bridge_cache_promotions_total"),
            "evictions": found.by("bridge_cache_evictions_total", "tier"),
            "stores": found.total("bridge_cache_stores_total"),
        },
        "saved": {
            "upstream_seconds": found.total("bridge_cache_upstream_seconds_saved_total"),
            "gpu_seconds": figures["gpu_seconds_saved"],
            "tokens": figures["tokens_saved"],
        },
        "traffic": {
            "in_flight": found.total("bridge_upstream_requests_in_flight"),
            "max_concurrency": settings.max_concurrency,
            "queued": found.total("bridge_admission_queue_length"),
            "rate_limited": figures["rate_limited"],
            "rate_delayed": found.total("bridge_ratelimit_delayed_total"),
            "refused": found.by("bridge_admission_refused_total", "reason"),
            "auth_refused": found.by("bridge_auth_refused_total", "reason"),
            "retries": found.total("bridge_upstream_retries_total"),
        },
        "models": {"by_requests": _top(found.by("bridge_model_requests_total", "model")),
                   "by_tokens": _top(found.by("bridge_model_tokens_total", "model"))},
        "client_keys": _top(found.by("bridge_requests_total", "client_key"))
        if settings.enable_shared_mode else [],
        "think": {"blocks_removed": found.total("bridge_think_blocks_removed_total"),
                  "chars_removed": found.total("bridge_think_characters_removed_total")},
        "counters": figures, "latency_bounds": latency_bounds, "ttft_bounds": ttft_bounds,
    }
