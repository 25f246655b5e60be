"""Prometheus metrics at `/metrics`, aggregated across all gunicorn workers.

prometheus-flask-exporter in multiprocess mode serves `/metrics` on the bridge's own
port, aggregating the files of all workers. The metrics are declared once in `METRICS`,
each fed by an event of `bridge.core.events`:
features emit events and never import Prometheus. This is the only module that does,
and only once `PROMETHEUS_MULTIPROC_DIR` is set (prometheus_client reads it at import):
the master sets it in `on_starting` (`bridge.core.instance`), before forking the workers.

`/metrics` names client keys and shows per-model traffic: with `--metrics-key KEY` it
answers only requests that carry `Authorization: Bearer KEY` (401 otherwise), as
Prometheus sends it with `authorization: {credentials: KEY}` in its scrape config.

Gauges say how workers' values combine: a per-worker quantity (memory-tier entries,
calls in flight) is summed over live workers; a shared one (disk-tier entries) is the
largest value any worker saw.
"""

from __future__ import annotations

import atexit
import bisect
import functools
import glob
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import flask

from bridge.core import events, instance
from bridge.core.errors import Unauthorized, error_response
from bridge.core.redaction import bearer_token, secret_matches
from bridge.core.turns import TurnEnd

log = logging.getLogger("bridge.metrics")

METRICS_PATH = "/metrics"
CHALLENGE = {"www-authenticate": 'Bearer realm="deepseek-ollama-bridge metrics"'}

COUNTER, GAUGE_SET, GAUGE_ADD, HISTOGRAM = "counter", "gauge_set", "gauge_add", "histogram"

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
LUA_BUCKETS = (0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.025, 0.1, 1, 10)
SIMILARITY_BUCKETS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 1.0)
EMBEDDING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2)
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
MAX_PENDING = 10_000  # values of one series kept before they are written, loop turn or not


@dataclass(frozen=True)
class Metric:
    """One metric and the event that feeds it.

    A counter adds the event's value (or 1 with `count_events`), a gauge sets it (or
    adds it, GAUGE_ADD), a histogram observes it. `only` keeps the events whose labels
    have those values. Labels missing from an event are "".
    """

    event: str
    kind: str
    name: str
    help: str
    labels: tuple[str, ...] = ()
    count_events: bool = False
    mode: str = ""
    buckets: tuple[float, ...] = ()
    only: tuple[tuple[str, str], ...] = ()


METRICS: tuple[Metric, ...] = (
    # requests, every route but /metrics, labelled by route template (never the raw path)
    Metric("request.finished", COUNTER, "bridge_requests_total",
           "Requests answered, by route template, method, status and client key name",
           ("route", "method", "status", "client_key"), count_events=True),
    Metric("request.finished", HISTOGRAM, "bridge_request_duration_seconds",
           "Request duration until the last byte of the response (whole stream)",
           ("route", "method", "status"), buckets=REQUEST_BUCKETS),
    Metric("stage.failed", COUNTER, "bridge_stage_failures_total",
           "Unexpected failures contained to one request, by stage and phase",
           ("stage", "phase")),
    Metric("tokens.prompt", COUNTER, "bridge_prompt_tokens_total",
           "Prompt tokens reported in usage, by client key name and source (upstream, cache)",
           ("client_key", "source")),
    Metric("tokens.completion", COUNTER, "bridge_completion_tokens_total",
           "Completion tokens reported in usage, by client key name and source",
           ("client_key", "source")),
    Metric("model.request", COUNTER, "bridge_model_requests_total",
           "Model requests answered successfully, by model", ("model",)),
    Metric("model.tokens", COUNTER, "bridge_model_tokens_total",
           "Prompt and completion tokens of successful model requests, by model", ("model",)),
    # upstream
    Metric("upstream.duration", HISTOGRAM, "bridge_upstream_request_duration_seconds",
           "Upstream call duration, retries and whole stream included, by upstream name "
           "(--upstreams; empty: -o)", ("endpoint", "status", "upstream"),
           buckets=REQUEST_BUCKETS),
    Metric("upstream.ttft", HISTOGRAM, "bridge_upstream_time_to_first_token_seconds",
           "Time from sending an upstream request to its first stream frame, by endpoint "
           "and surface", ("endpoint", "surface"), buckets=FIRST_TOKEN_BUCKETS),
    Metric("upstream.in_flight", GAUGE_ADD, "bridge_upstream_requests_in_flight",
           "Upstream calls in progress", mode="livesum"),
    Metric("routing.in_flight", GAUGE_ADD, "bridge_routing_in_flight",
           "Calls in flight per routed upstream, as the balancer counts them "
           "(--upstreams)", ("upstream",), mode="livesum"),
    Metric("upstream.retry", COUNTER, "bridge_upstream_retries_total",
           "Upstream calls retried after a failure"),
    Metric("upstream.failover", COUNTER, "bridge_upstream_failovers_total",
           "Calls handed to the next upstream after this one failed before the first byte "
           "(--upstreams)", ("upstream",)),
    # traffic control
    Metric("ratelimit.refused", COUNTER, "bridge_ratelimit_refused_total",
           "Requests refused with 429 by the rate limit"),
    Metric("ratelimit.delayed", COUNTER, "bridge_ratelimit_delayed_total",
           "Requests that waited for a rate-limit token"),
    Metric("admission.queued", COUNTER, "bridge_admission_queued_total",
           "Requests that waited in the queue for an upstream slot"),
    Metric("admission.refused", COUNTER, "bridge_admission_refused_total",
           "Requests refused with 503 for want of an upstream slot, by reason",
           ("reason",)),
    Metric("admission.waiting", GAUGE_ADD, "bridge_admission_queue_length",
           "Requests waiting for an upstream slot now", mode="livesum"),
    # think filter
    Metric("think.blocks_removed", COUNTER, "bridge_think_blocks_removed_total",
           "Think blocks removed from responses"),
    Metric("think.chars_removed", COUNTER, "bridge_think_characters_removed_total",
           "Characters of think blocks removed from responses"),
    # cache
    Metric("cache.hit", COUNTER, "bridge_cache_hits_total", "Cache hits, by tier", ("tier",)),
    Metric("cache.miss", COUNTER, "bridge_cache_misses_total", "Cache misses"),
    Metric("cache.bypass", COUNTER, "bridge_cache_bypasses_total",
           "Cacheable-looking requests that bypassed the cache"),
    Metric("cache.store", COUNTER, "bridge_cache_stores_total", "Responses stored in the cache"),
    Metric("cache.eviction", COUNTER, "bridge_cache_evictions_total",
           "Entries evicted to make room, by tier", ("tier",)),
    Metric("cache.expiration", COUNTER, "bridge_cache_expirations_total",
           "Entries removed after their TTL, by tier", ("tier",)),
    Metric("cache.promotion", COUNTER, "bridge_cache_promotions_total",
           "Disk entries promoted into the memory tier"),
    Metric("cache.saved_seconds", COUNTER, "bridge_cache_upstream_seconds_saved_total",
           "Upstream seconds that cache hits did not cost: each hit adds how long the "
           "upstream took to produce the entry, by tier", ("tier",)),
    Metric("cache.saved_gpu_seconds", COUNTER, "bridge_cache_gpu_seconds_saved_total",
           "GPU seconds that cache hits did not cost: Ollama's total_duration of the entry "
           "(the upstream time when it reported none), by tier", ("tier",)),
    Metric("cache.saved_tokens", COUNTER, "bridge_cache_tokens_saved_total",
           "Tokens not generated thanks to cache hits (the entry's completion tokens), "
           "by tier", ("tier",)),
    Metric("cache.entries", GAUGE_SET, "bridge_cache_memory_entries",
           "Entries in the memory tiers of all workers", mode="livesum",
           only=(("tier", "memory"),)),
    Metric("cache.entries", GAUGE_SET, "bridge_cache_disk_entries",
           "Entries in the shared disk tier", mode="max", only=(("tier", "disk"),)),
    Metric("cache.entries", GAUGE_SET, "bridge_cache_redis_entries",
           "Entries in the shared Redis tier (--redis-url)", mode="livemostrecent",
           only=(("tier", "redis"),)),
    # semantic cache (hits: bridge_cache_hits_total{tier="semantic"})
    Metric("semantic.similarity", HISTOGRAM, "bridge_semantic_similarity",
           "Cosine similarity of the nearest stored question of the same scope, per "
           "semantic lookup (a hit at --semantic-cache-threshold or above)",
           buckets=SIMILARITY_BUCKETS),
    Metric("semantic.embedding", COUNTER, "bridge_semantic_embedding_calls_total",
           "Embedding calls of the semantic cache, by outcome (ok, failed: a plain miss)",
           ("outcome",), count_events=True),
    Metric("semantic.embedding_seconds", HISTOGRAM, "bridge_semantic_embedding_seconds",
           "Duration of the semantic cache's embedding calls", buckets=EMBEDDING_BUCKETS),
    Metric("semantic.entries", GAUGE_SET, "bridge_semantic_entries",
           "Entries in the semantic index (the largest of the workers')", mode="max"),
    # scale-out on Redis
    Metric("redis.up", GAUGE_SET, "bridge_redis_up",
           "1 when Redis answers, 0 while the bridge is degraded to instance-local "
           "backends (the lowest of the workers)", mode="livemin"),
    Metric("redis.failures", COUNTER, "bridge_redis_failures_total",
           "Redis calls that failed or timed out (each one fell back to a local backend)",
           count_events=True),
    Metric("cache.hot_threshold", GAUGE_SET, "bridge_cache_hot_threshold",
           "Current hot-promotion threshold, requests per minute", mode="livemostrecent"),
    # Lua middleware
    Metric("lua.call", COUNTER, "bridge_lua_calls_total",
           "Calls of the Lua script's hooks, by hook", ("hook",)),
    Metric("lua.error", COUNTER, "bridge_lua_errors_total",
           "Lua hook calls that failed with a Lua error, by hook", ("hook",)),
    Metric("lua.timeout", COUNTER, "bridge_lua_timeouts_total",
           "Lua hook calls stopped at their time budget, by hook", ("hook",)),
    Metric("lua.duration", HISTOGRAM, "bridge_lua_hook_duration_seconds",
           "Duration of Lua hook calls, waiting for a free runtime included, by hook",
           ("hook",), buckets=LUA_BUCKETS),
    # async requests
    Metric("async.queued", COUNTER, "bridge_async_jobs_queued_total",
           "Async jobs accepted (202) and stored"),
    Metric("async.refused", COUNTER, "bridge_async_jobs_refused_total",
           "Async requests refused with 503: too many jobs waiting (--async-max-queued)"),
    Metric("async.waiting", GAUGE_SET, "bridge_async_jobs_waiting",
           "Async jobs waiting to run (instance-wide)", mode="livemostrecent"),
    Metric("async.running", GAUGE_ADD, "bridge_async_jobs_running",
           "Async jobs running now", mode="livesum"),
    Metric("async.completed", COUNTER, "bridge_async_jobs_completed_total",
           "Async jobs whose result is stored"),
    Metric("async.failed", COUNTER, "bridge_async_jobs_failed_total",
           "Async jobs that failed for good (their final error is stored)"),
    Metric("async.retried", COUNTER, "bridge_async_jobs_retried_total",
           "Async job runs that failed and were queued again"),
    Metric("async.queue_wait", HISTOGRAM, "bridge_async_job_queue_wait_seconds",
           "Time from accepting an async job to its first run", buckets=REQUEST_BUCKETS),
    Metric("async.run_time", HISTOGRAM, "bridge_async_job_run_seconds",
           "Duration of one run of an async job (the whole generation)",
           buckets=REQUEST_BUCKETS),
    # shared mode
    Metric("auth.refused", COUNTER, "bridge_auth_refused_total",
           "Requests refused by client-key authentication, by reason", ("reason",)),
    # usage ledger and budgets
    Metric("budget.remaining", GAUGE_SET, "bridge_client_budget_remaining_tokens",
           "Tokens left in the current period of a client key (or credential digest) with "
           "a budget, as last checked by a request", ("client_key",),
           mode="livemostrecent"),
    Metric("budget.refused", COUNTER, "bridge_budget_refused_total",
           "Requests refused with 429 budget_exceeded"),
    # identity
    Metric("identity.probe", COUNTER, "bridge_entitlement_probes_total",
           "Probes that asked an upstream whether a client may be served stored answers "
           "of a model (no generation), by outcome (2xx, 4xx, none: no answer)",
           ("outcome",)),
)


class _Bridge:
    """The Prometheus objects of `METRICS`, created once per process, fed by events in
    batches.

    Writing a sample is a lock and an mmap write (prometheus_client's multiprocess
    values), a histogram's two or more: done per event, they were most of what a cache
    hit cost. So an event of a counter or a histogram only joins this process's pending
    ones, listed by event name and the values of the labels its metrics keep. They are
    written (`flush`) once per turn of the event loop, before this process answers a
    scrape or lists its samples, and when it exits: a counter gets their sum (or count)
    in one write, a histogram its sum and the count of each bucket hit. What the files
    then say is what the events one by one would have written; another worker's scrape
    sees a request's counts once the worker that served it is back in its event loop
    (right after the response, as it waits for the next request). Gauges (what is in
    flight or waiting now) are written at once: none changes per cache hit; so are the
    events of another native thread (an off-loop flush), which the loop's batch must not
    race.
    """

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.feeds: dict[str, list[tuple[int, Metric]]] = {}
        self.made: list[Any] = []  # per metric of METRICS, its Prometheus object
        for index, metric in enumerate(METRICS):
            kwargs: dict[str, Any] = {"labelnames": metric.labels, "registry": None}
            if metric.kind == COUNTER:
                made: Any = Counter(metric.name, metric.help, **kwargs)
            elif metric.kind == HISTOGRAM:
                made = Histogram(metric.name, metric.help, buckets=metric.buckets, **kwargs)
            else:
                made = Gauge(metric.name, metric.help, multiprocess_mode=metric.mode, **kwargs)
            self.made.append(made)
            self.feeds.setdefault(metric.event, []).append((index, metric))
        # per event, the labels any of its metrics keeps or selects on (`only`)
        self.kept: dict[str, tuple[str, ...]] = {
            event: tuple(dict.fromkeys(name for _, metric in feeds for name in
                                       (*metric.labels, *(name for name, _ in metric.only))))
            for event, feeds in self.feeds.items()}
        # events that feed gauges: written at once (what is in flight or waiting now, as
        # a scrape should find it; none is updated per cache hit)
        self.at_once = {event for event, feeds in self.feeds.items()
                        if all(metric.kind in (GAUGE_SET, GAUGE_ADD) for _, metric in feeds)}
        # a pending key -> the metrics (labelled children) its events feed
        self.targets: dict[tuple, list[tuple[Metric, Any]]] = {}
        # (event, *values of its kept labels, None when missing) -> the values not written
        self.pending: dict[tuple, list[float]] = {}
        self.turn_end = TurnEnd(self.flush)
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        """In a new process (and a forked one: what the parent held is the parent's to
        write)."""
        self.pending.clear()

    def __call__(self, event: str, value: float, labels: Mapping[str, str]) -> None:
        kept = self.kept[event]
        if len(kept) == 1:  # most events: one label, or none
            key = (event, labels.get(kept[0]))
        else:
            key = (event, *map(labels.get, kept)) if kept else (event,)
        if event in self.at_once or not self.turn_end.on_loop():
            # a gauge; or an event of another native thread, which must not race the
            # loop's flush over the pending lists
            self._write_all(key, [value])
            return
        values = self.pending.get(key)
        if values is None:
            self.pending[key] = [value]
            self.turn_end.ask()
        else:
            values.append(value)
            if len(values) >= MAX_PENDING:  # no loop turns (a script): bounded all the same
                self.flush()

    def flush(self) -> None:
        """Write the pending updates to the metric files."""
        pending, self.pending = self.pending, {}
        for key, values in pending.items():
            self._write_all(key, values)

    def _write_all(self, key: tuple, values: list[float]) -> None:
        """Write the values of one pending key to every metric its events feed."""
        targets = self.targets.get(key)
        if targets is None:
            targets = self.targets[key] = self._targets(key)
        for metric, child in targets:
            try:
                _write(metric, child, values)
            except Exception:  # noqa: BLE001 - observing must never break serving
                log.exception("cannot update the metric %s", metric.name)

    def _targets(self, key: tuple) -> list[tuple[Metric, Any]]:
        """The metrics (labelled children) that the events of one pending key feed."""
        event, *found = key
        labels = {name: "" if value is None else str(value)
                  for name, value in zip(self.kept[event], found, strict=True)}
        targets = []
        for index, metric in self.feeds[event]:
            if all(labels[name] == wanted for name, wanted in metric.only):
                made = self.made[index]
                targets.append((metric, made.labels(*[labels[name] for name in metric.labels])
                                if metric.labels else made))
        return targets


def _write(metric: Metric, child: Any, values: list[float]) -> None:
    if metric.kind == HISTOGRAM:
        # what `observe` does per value, added up: the sum, and each bucket's count
        # (prometheus_client's own attributes: `observe` has no batch form)
        bounds = child._upper_bounds
        counts = [0] * len(bounds)
        for value in values:
            at = bisect.bisect_left(bounds, value)
            if at < len(bounds) and value <= bounds[at]:  # never for NaN, as there
                counts[at] += 1
        child._sum.inc(sum(values))
        for bucket, count in zip(child._buckets, counts, strict=True):
            if count:
                bucket.inc(count)
    elif metric.kind == GAUGE_SET:
        child.set(values[-1])
    else:
        total = len(values) if metric.count_events else sum(values)
        if total:
            child.inc(total)


def flush() -> None:
    """Write this process's pending metric updates now (before reading the files)."""
    if _bridge is not None:
        _bridge.flush()


_bridge: _Bridge | None = None


def init_app(app: flask.Flask) -> None:
    """Serve `/metrics` on `app` and start feeding the bridge's metrics from events."""
    global _bridge
    instance.directory()  # a process started without the master gets its own directory
    # its default request metrics would time streams to the first byte only and cost a
    # second set of writes per request: bridge_requests_total and
    # bridge_request_duration_seconds (by route template) take their place
    exporter = _exporter_class().for_app_factory(
        export_defaults=False, group_by="url_rule", defaults_prefix="bridge")
    exporter.init_app(app)
    settings = app.extensions.get("bridge.settings")
    key = getattr(settings, "metrics_key", None)
    if key:
        app.before_request(_metrics_key_check(key.reveal()))
    if _bridge is None:
        _bridge = _Bridge()
        events.subscribe(_bridge, _bridge.feeds)
        atexit.register(flush)  # a worker's last updates, after its stages stopped
        # events that only feed counters add up (the console listens to request.error,
        # which feeds no metric)
        events.declare_additive(
            {metric.event for metric in METRICS}
            - {metric.event for metric in METRICS
               if metric.kind not in (COUNTER, GAUGE_ADD) or metric.only})


def _exporter_class() -> type:
    """The exporter, with `/metrics?name[]=…` (only the named samples) working across
    workers: the library restricts the registry before the multiprocess collector
    registers on it, which a restricted registry cannot take (an AttributeError, a 500
    for any scrape that names samples). Here the collector registers first, on a
    registry that learns its names, which is then restricted."""
    from prometheus_client.exposition import choose_encoder
    from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

    class Exporter(GunicornInternalPrometheusMetrics):
        def generate_metrics(self, accept_header: str | None = None,
                             names: list[str] | None = None) -> tuple[str, str]:
            flush()
            registry: Any = _registry(described=bool(names))
            if names:
                registry = registry.restricted_registry(names)
            generate_latest, content_type = choose_encoder(accept_header)
            return generate_latest(registry).decode("utf-8"), content_type

    return Exporter


def _registry(described: bool = False) -> Any:
    """A registry of the instance's metrics, aggregated across its workers. `described`:
    it knows which collector makes which names (read once more when registering), as a
    restricted registry needs to find any."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=described)
    _collector_class()(registry)
    return registry


@functools.cache
def _collector_class() -> type:
    """The multiprocess collector, without the files a worker is creating: a metric's
    file is empty for an instant after it is made (a new worker, a first sample), and
    the library's reader fails on it (a `struct.error`, a 500 for the whole scrape). An
    empty file holds no sample yet; it is read by the next scrape."""
    from prometheus_client import multiprocess

    class Collector(multiprocess.MultiProcessCollector):
        def collect(self) -> Any:
            files = []
            for path in glob.glob(os.path.join(self._path, "*.db")):
                try:
                    if os.path.getsize(path):
                        files.append(path)
                except FileNotFoundError:  # a dead worker's gauge file, just removed
                    pass
            return self.merge(files, accumulate=True)

    return Collector


def _metrics_key_check(key: str) -> Callable[[], flask.Response | None]:
    """A `before_request` hook: `/metrics` without the metrics key is a 401."""
    def check() -> flask.Response | None:
        if flask.request.path != METRICS_PATH:
            return None
        given = flask.request.headers.get("authorization", "").strip()
        if secret_matches(bearer_token(given), key):
            return None
        message = ("Incorrect metrics key" if given else
                   "Missing metrics key: send 'Authorization: Bearer <the --metrics-key>'")
        refusal = error_response("openai", Unauthorized(message, code="invalid_api_key",
                                                        headers=CHALLENGE))
        return flask.Response(refusal.body, status=refusal.status, headers=refusal.headers)

    return check


def samples() -> list[tuple[str, dict[str, str], float]]:
    """Every sample of the instance's metrics, aggregated across its workers as `/metrics`
    shows them: (name, labels, value). For the console, which reads them without
    importing Prometheus itself."""
    flush()
    return [(sample.name, sample.labels, sample.value)
            for family in _registry().collect() for sample in family.samples]


def worker_exited(pid: int) -> None:
    """In the master: drop the live gauges of a worker that is gone."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
