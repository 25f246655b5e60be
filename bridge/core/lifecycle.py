"""The worker's stop as the app sees it: once a stop has begun, the worker is draining.

The gunicorn worker (`bridge.serve.worker`) marks it on SIGTERM or SIGINT (and on
SIGQUIT's quick stop); `/ready` answers 503 from then on, so a load balancer or a
Kubernetes endpoint controller sends no new work while the requests in progress finish,
and background work takes nothing new (the async runner claims no more jobs). The
deadline is when work still in progress must be over or handed back: the master kills
the worker soon after. One flag per process: it is set after fork, in the worker that
received the signal.
"""

from __future__ import annotations

import logging
from typing import Callable

import gevent

_draining = False
_deadline: float | None = None


def begin_draining(deadline: float | None = None) -> None:
    """Mark the stop; `deadline` (monotonic time) moves the stop deadline earlier only."""
    global _draining, _deadline
    _draining = True
    if deadline is not None:
        _deadline = deadline if _deadline is None else min(_deadline, deadline)


def is_draining() -> bool:
    return _draining


def stop_deadline() -> float | None:
    """When work in progress must have ended (monotonic time); None: no stop has begun,
    or one without a deadline (a stop that is not gunicorn's)."""
    return _deadline


def repeat(interval: float, work: Callable[[], None], what: str, log: logging.Logger) -> None:
    """The body of a background greenlet: `work()` every `interval` seconds until the
    greenlet is killed (between two rounds); a round that fails is logged, the next
    one still runs."""
    while True:
        gevent.sleep(interval)
        try:
            work()
        except Exception:  # noqa: BLE001 - the loop must outlive any one failure
            log.exception("%s failed", what)
