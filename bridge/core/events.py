"""In-process notifications of what the bridge did, for metrics and logs.

Features call `emit("cache.hit", tier="memory")` and know nothing of Prometheus; the
metrics module subscribes and maps each event name to its metric. A counter event
carries the amount to add, a gauge event (named so in the metrics module) the value.
A listener may name the events it hears: an event is handed only to those that hear it.

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
from typing import Any, Callable, Iterable

from gevent import getcurrent

log = logging.getLogger("bridge.events")

Listener = Callable[[str, float, dict[str, str]], None]
Event = tuple[str, float, dict[str, str]]
_listeners: list[tuple[Listener, frozenset[str] | None]] = []  # and the names each hears
_routes: dict[str, tuple[Listener, ...]] = {}  # event name -> its listeners (made on use)
_recorders: dict[Any, list[Event]] = {}  # greenlet -> the events it emitted since record()
_additive: set[str] = set()


def subscribe(listener: Listener, names: Iterable[str] | None = None) -> None:
    """Call `listener` with every event, or only with those of `names`: an event goes
    only to the listeners that hear it (a metric update, a usage row), not to all."""
    if all(known != listener for known, _ in _listeners):
        _listeners.append((listener, frozenset(names) if names is not None else None))
        _routes.clear()


def unsubscribe(listener: Listener) -> None:
    _listeners[:] = [(known, names) for known, names in _listeners if known != listener]
    _routes.clear()


def _route(name: str) -> tuple[Listener, ...]:
    found = _routes[name] = tuple(listener for listener, names in _listeners
                                  if names is None or name in names)
    return found


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
    listeners = _routes.get(name)
    if listeners is None:
        listeners = _route(name)
    for listener in listeners:
        try:
            listener(name, value, labels)
        except Exception:  # noqa: BLE001 - observing must never break serving
            log.exception("event listener failed on %s", name)
