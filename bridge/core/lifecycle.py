"""The worker's stop as the app sees it: once a stop has begun, the worker is draining.

The gunicorn worker (`bridge.serve.worker`) marks it on SIGTERM or SIGINT; `/ready`
answers 503 from then on, so a load balancer or a Kubernetes endpoint controller sends
no new work while the requests in progress finish. One flag per process: it is set after
fork, in the worker that received the signal.
"""

from __future__ import annotations

_draining = False


def begin_draining() -> None:
    global _draining
    _draining = True


def is_draining() -> bool:
    return _draining
