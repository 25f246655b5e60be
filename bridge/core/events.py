"""In-process notifications of what the bridge did, for metrics and logs.

Features call `emit("cache.hit", tier="memory")` and know nothing of Prometheus; the
metrics module subscribes and maps each event name to its metric. A counter event
carries the amount to add, a gauge event (named so in the metrics module) the value.

Event names in use (feature.what; labels in brackets):
  think.blocks_removed, think.chars_removed
  cache.hit [tier], cache.miss, cache.bypass, cache.store, cache.eviction [tier],
  cache.expiration [tier], cache.promotion, cache.entries [tier] (gauge),
  cache.hot_threshold (gauge), cache.saved_seconds, cache.saved_gpu_seconds,
  cache.saved_tokens [tier] (what a hit did not cost the upstream)
  upstream.retry, auth.refused [reason], ratelimit.refused, ratelimit.delayed,
  admission.queued, admission.refused [reason], admission.waiting (gauge, ±1)
  upstream.in_flight (gauge, ±1), upstream.duration [endpoint, status] (seconds),
  upstream.ttft [endpoint, surface] (seconds), upstream.failover [upstream],
  routing.in_flight [upstream] (gauge, ±1: calls the balancer counts in flight)
  request.finished [route, method, status, client_key] (seconds; when the console keeps
  a request log, also what it shows: path, request_id, api, model, cache, upstream,
  prompt_tokens, completion_tokens, and prompt, answer with --request-log-bodies),
  stage.failed [stage, phase] (a contained failure of one request),
  tokens.prompt, tokens.completion [client_key, source]
  model.request, model.tokens [model] (successful model requests only)
  request.error [status, path, message, request_id] (an answer >= 400; no metric: the
  console keeps the last ones)
  lua.call, lua.error, lua.timeout [hook], lua.duration [hook] (seconds)
  async.queued, async.refused, async.retried, async.completed, async.failed,
  async.running (gauge, ±1), async.waiting (gauge), async.queue_wait, async.run_time (seconds)
  identity.probe [outcome] (an entitlement probe: 2xx, 4xx, none)
  budget.remaining [client_key] (gauge: tokens left), budget.refused
  redis.up (gauge: 1 answering, 0 degraded), redis.failures
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from gevent import getcurrent

log = logging.getLogger("bridge.events")

Listener = Callable[[str, float, dict[str, str]], None]
Event = tuple[str, float, dict[str, str]]
_listeners: list[Listener] = []
_recorders: dict[Any, list[Event]] = {}  # greenlet -> the events it emitted since record()
_additive: set[str] = set()


def subscribe(listener: Listener) -> None:
    if listener not in _listeners:
        _listeners.append(listener)


def unsubscribe(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def declare_additive(names: set[str]) -> None:
    """Events whose every subscriber only adds their values up (counters): emitting one
    n times may be replaced by emitting n times its value once (`additive`)."""
    _additive.update(names)


def additive(name: str) -> bool:
    return name in _additive


def record() -> list[Event]:
    """Start keeping the events this greenlet (one request) emits, in the list returned,
    until `stop_recording()`: what an identical request would emit again."""
    recorded: list[Event] = []
    _recorders[getcurrent()] = recorded
    return recorded


def stop_recording() -> None:
    _recorders.pop(getcurrent(), None)


def emit(name: str, value: float = 1.0, **labels: str) -> None:
    if _recorders:
        recorded = _recorders.get(getcurrent())
        if recorded is not None:
            recorded.append((name, value, labels))
    for listener in _listeners:
        try:
            listener(name, value, labels)
        except Exception:  # noqa: BLE001 - observing must never break serving
            log.exception("event listener failed on %s", name)
