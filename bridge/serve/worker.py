"""The gunicorn worker class: gunicorn's gevent worker, stopping without waiting on idle
keep-alive connections.

gunicorn's gevent worker keeps serving a kept-alive connection until the keep-alive
timeout, and a graceful stop waits for every such connection: clients and load balancers
that hold pooled connections open would delay each stop (a deploy, a Kubernetes pod
termination) by the whole graceful timeout. Here a stop closes connections that are
waiting for their next request at once; requests and streams in progress still finish
within the graceful timeout.

A stop (SIGTERM, or SIGINT as Ctrl-C sends it) first drains: the worker marks itself
draining (`/ready` answers 503 from then on) and closes idle connections, but keeps
accepting and serving new requests for the drain delay, so that load balancers and
endpoint controllers, which poll `/ready`, take it out of rotation before it stops
listening. Only then does gunicorn's graceful stop begin (listener closed, requests in
progress finish). A second signal is the master's business: it then sends SIGQUIT, which
stops the worker quickly as in gunicorn.
"""

from __future__ import annotations

import signal
from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker as _GunicornGeventWorker

from bridge.core import lifecycle

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
        self.draining = False
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

    def handle_exit(self, sig: Any, frame: Any) -> None:
        """SIGTERM: drain for --drain-delay, then stop gracefully."""
        if self.draining:  # the master's SIGTERM after a Ctrl-C that reached us too
            return
        self.draining = True
        lifecycle.begin_draining()
        gevent.spawn(self._stop_after_drain)  # not from the signal handler: it sleeps

    def handle_quit(self, sig: Any, frame: Any) -> None:
        if sig == signal.SIGINT:  # Ctrl-C reaches every process of the group: drain too
            self.handle_exit(sig, frame)
        else:
            super().handle_quit(sig, frame)

    def _stop_after_drain(self) -> None:
        settings = getattr(self.wsgi, "extensions", {}).get("bridge.settings")
        gevent.sleep(settings.drain_delay / 1000 if settings is not None else 0)
        self.alive = False  # gunicorn's run loop now closes the listener and waits

    def run(self) -> None:
        gevent.spawn(self._close_idle_when_stopping)
        super().run()

    def _close_idle_when_stopping(self) -> None:
        while self.alive and not self.draining:
            gevent.sleep(STOP_POLL_SECONDS)
        while True:  # until the worker exits: a connection may finish its request later
            for wait in list(self.idle.values()):
                wait.end()
            gevent.sleep(STOP_POLL_SECONDS)
