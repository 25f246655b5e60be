"""The gunicorn worker class: gunicorn's gevent worker, stopping without waiting on idle
keep-alive connections.

gunicorn's gevent worker keeps serving a kept-alive connection until the keep-alive
timeout, and a graceful stop waits for every such connection: clients and load balancers
that hold pooled connections open would delay each stop (a deploy, a Kubernetes pod
termination) by the whole graceful timeout. Here a stop closes connections that are
waiting for their next request at once; requests and streams in progress still finish
within the graceful timeout.
"""

from __future__ import annotations

from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker as _GunicornGeventWorker

STOP_POLL_SECONDS = 0.1


class _IdleWait:
    """The wait for a connection's next request, bounded by the keep-alive timeout; the
    worker ends it early (as if it had timed out) when it stops."""

    def __init__(self, worker: "GeventWorker"):
        self.worker = worker
        self.timeout = gevent.Timeout(worker.cfg.keepalive, False)
        self.greenlet: Any = None

    def __enter__(self) -> "_IdleWait":
        self.greenlet = gevent.getcurrent()
        self.worker.idle[self.greenlet] = self
        self.timeout.start()
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> bool:
        self.worker.idle.pop(self.greenlet, None)
        return bool(self.timeout.__exit__(kind, value, traceback))

    def end(self) -> None:
        gevent.kill(self.greenlet, self.timeout)  # from the hub, as gevent requires


class GeventWorker(_GunicornGeventWorker):
    def init_process(self) -> None:
        self.idle: dict[Any, _IdleWait] = {}
        super().init_process()

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            # A kept-alive client whose next request is already buffered would otherwise
            # be served again at once, starving the others (a 1 s p99 under load).
            gevent.sleep(0)

    def timeout_ctx(self) -> _IdleWait:
        return _IdleWait(self)

    def run(self) -> None:
        gevent.spawn(self._close_idle_when_stopping)
        super().run()

    def _close_idle_when_stopping(self) -> None:
        while self.alive:
            gevent.sleep(STOP_POLL_SECONDS)
        while True:  # until the worker exits: a connection may finish its request later
            for wait in list(self.idle.values()):
                wait.end()
            gevent.sleep(STOP_POLL_SECONDS)
