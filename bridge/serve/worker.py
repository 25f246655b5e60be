"""The gunicorn worker class: gunicorn's gevent worker, stopping promptly, cleanly and
quietly.

gunicorn's gevent worker keeps serving a kept-alive connection until the keep-alive
timeout, and a graceful stop waits for every such connection: clients and load balancers
that hold pooled connections open would delay each stop (a deploy, a Kubernetes pod
termination) by the whole graceful timeout. Here a stop closes connections that are
waiting for their next request at once; requests and streams in progress still finish
within the graceful timeout. Streams still running just before it runs out (when the
master would kill the worker) are ended with an in-band error event and a log line,
instead of a silent cut.

A stop (SIGTERM, or SIGINT as Ctrl-C sends it to the whole process group) first drains:
the worker marks itself draining (`/ready` answers 503 from then on) and closes idle
connections, but keeps accepting and serving new requests for --drain-delay, so that
load balancers and endpoint controllers, which poll `/ready`, take it out of rotation
before it stops listening. Only then does gunicorn's graceful stop begin (listener
closed, requests in progress finish). The graceful timeout, as the master counts it,
starts at the signal: gunicorn's `graceful_timeout` is drain delay + grace period.

SIGQUIT (what the master sends on a second signal) is a quick stop that ends the streams
in progress at once, the same way, and exits as quietly as SIGTERM (gunicorn's own exits
with `sys.exit(0)` from a greenlet, printed as a `SystemExit: 0` traceback by every
worker).
"""

from __future__ import annotations

import email.utils
import signal
import time
from typing import Any

import gevent
from gevent.server import StreamServer
from gunicorn import util
from gunicorn.http import message, wsgi
from gunicorn.workers import ggevent
from gunicorn.workers.ggevent import GeventWorker as _GunicornGeventWorker

from bridge.core import lifecycle
from bridge.observability import logs

STOP_POLL_SECONDS = 0.1
QUICK_STOP_SECONDS = 1.0  # how long a quick stop lets cut streams send their error event


def cut_delay(graceful_timeout: float) -> float:
    """Seconds after a graceful stop began at which streams still running are ended:
    just before the master's deadline (a second, or half of a short timeout, ahead)."""
    return max(graceful_timeout - 1.0, graceful_timeout / 2)


# Connections a worker accepts each time the listener is readable. gunicorn's gevent
# worker accepts one per loop turn when there are several workers (so that one does not
# take them all); under load a turn serves every ready connection first, so 64 clients
# connecting at once waited up to a second for their first answer (the p99 of a load
# run). A small batch keeps the workers balanced and accepts a burst within a few turns.
ACCEPT_BATCH = 16


class _Server(StreamServer):
    """gevent's server with the accept batch fixed (gunicorn sets `max_accept = 1`)."""

    max_accept = property(lambda self: ACCEPT_BATCH, lambda self, value: None)



class _IdleWait:
    """A connection's wait for its next request, bounded by the keep-alive timeout; the
    worker ends it early (as if it had timed out) when it stops. One per connection, its
    timer started again for each wait (not a timer made and closed per request)."""

    def __init__(self, worker: "GeventWorker"):
        self.worker = worker
        self.timeout = gevent.Timeout(worker.cfg.keepalive, False)
        self.greenlet: Any = gevent.getcurrent()
        # kept alive after a request (not a new connection whose request is on its way)
        self.kept_alive = False

    def __enter__(self) -> "_IdleWait":
        self.worker.idle[self.greenlet] = self
        self.timeout.start()
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> bool:
        self.worker.idle.pop(self.greenlet, None)
        self.timeout.cancel()
        return value is self.timeout  # it ran out, or the worker ended it: no request

    def end(self) -> None:
        gevent.kill(self.greenlet, self.timeout)  # from the hub, as gevent requires


class _Collected:
    """Stands in for a socket while gunicorn writes a response's headers and first body
    bytes, collecting them."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.parts.append(data)


class Response(wsgi.Response):
    """gunicorn's response, its headers sent with the first body bytes in one write.

    gunicorn writes the headers, then each body chunk, with a system call each: a
    stream's first frame would go out as two small segments, the client woken twice
    before it has its first byte. Later writes are gunicorn's own.
    """

    def write(self, arg: bytes) -> None:
        if self.headers_sent:
            super().write(arg)
            return
        sock, collected = self.sock, _Collected()
        self.sock = collected
        try:
            super().write(arg)
        finally:
            self.sock = sock
        if collected.parts:
            data = b"".join(collected.parts)
            # one `send` (gevent's `sendall` asks the socket its buffer size first, a
            # system call per response); the rest, when the buffer was full, as before
            sent = sock.send(data)
            if sent < len(data):
                sock.sendall(memoryview(data)[sent:])


class _Settled:
    """gunicorn's configuration as a worker reads it: each setting looked up once.

    gunicorn reads two dozen settings per request, each through `Config.__getattr__`
    (0.4 µs: a tenth of a memory hit's time in the worker). In a worker they never
    change (a reload starts new workers), so the first value read is kept.
    """

    def __init__(self, cfg: Any):
        self.__dict__["_cfg"] = cfg

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.__dict__["_cfg"], name)
        self.__dict__[name] = value
        return value


_date: tuple[int, str] = (-1, "")  # the second `_http_date` last formatted, and how


def _http_date(timestamp: float | None = None) -> str:
    """gunicorn's `http_date` (a response's Date header, 1.8 µs), formatted once per
    second."""
    global _date
    if timestamp is not None:
        return email.utils.formatdate(timestamp, usegmt=True)
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, usegmt=True))
    return _date[1]


def _peers_once(check: Any) -> Any:
    """gunicorn's check of a request's peer against `forwarded_allow_ips` (parsing the
    address, 2 µs per request), its answer kept per address: the list is fixed in a
    worker."""
    answers: dict[str, bool] = {}

    def in_allow_list(ip: str, allow_list: Any, networks: Any) -> bool:
        answer = answers.get(ip)
        if answer is None:
            if len(answers) >= 1024:
                answers.clear()
            answer = answers[ip] = check(ip, allow_list, networks)
        return answer

    return in_allow_list


class GeventWorker(_GunicornGeventWorker):
    def init_process(self) -> None:
        # The heartbeat starts now, not at the first beat of the run loop: gunicorn's
        # heartbeat file is made in the master with the wall-clock time as its mtime, which
        # the master compares with its monotonic clock, so until the first beat it never
        # finds the worker late. A worker that hangs before it serves (in the stages'
        # start, say) is then killed after the timeout like any other stuck worker.
        self.notify()
        # gunicorn makes its servers (`run`) and responses (`wsgi.create`) from these
        # names: replaced in the worker process only, after fork
        ggevent.StreamServer = _Server
        wsgi.Response = Response
        util.http_date = _http_date
        if hasattr(message, "_ip_in_allow_list"):  # gunicorn's private helper, kept
            message._ip_in_allow_list = _peers_once(message._ip_in_allow_list)
        self.cfg = _Settled(self.cfg)
        self.idle: dict[Any, _IdleWait] = {}  # connections waiting for their next request
        self.connections: dict[Any, _IdleWait] = {}  # by the greenlet serving each
        self.busy: set[Any] = set()  # greenlets serving a request (a stream included)
        self.quick = False
        self.draining = False
        self.stop_began: float | None = None  # monotonic time of the stop signal
        self._main: Any = None
        super().init_process()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        current = gevent.getcurrent()
        self.connections[current] = _IdleWait(self)
        try:
            super().handle(listener, client, addr)
        finally:
            self.connections.pop(current).timeout.close()

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        current = gevent.getcurrent()
        self.busy.add(current)
        wait = self.connections.get(current)
        if wait is not None:
            wait.kept_alive = True
        if self.draining:  # "Connection: close": the client's next request goes elsewhere
            req.must_close = True
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            self.busy.discard(current)
            # A kept-alive client whose next request is already buffered would otherwise
            # be served again at once, starving the others (a 1 s p99 under load).
            gevent.sleep(0)

    def timeout_ctx(self) -> _IdleWait:
        return self.connections.get(gevent.getcurrent()) or _IdleWait(self)

    def handle_exit(self, sig: Any, frame: Any) -> None:
        """SIGTERM: drain for --drain-delay, then stop gracefully."""
        if self.draining:  # the master's SIGTERM after a Ctrl-C that reached us too
            return
        self.draining = True
        self.stop_began = time.monotonic()
        lifecycle.begin_draining(self.stop_began + cut_delay(self.cfg.graceful_timeout))
        gevent.spawn(self._stop_after_drain)  # not from the signal handler: it sleeps

    def handle_quit(self, sig: Any, frame: Any) -> None:
        """SIGQUIT: stop now, without gunicorn's `sys.exit` from a greenlet (see
        `_when_stopping`). SIGINT: Ctrl-C reaches every process of the group; the master
        turns it into a graceful stop, so the worker drains as on SIGTERM."""
        if sig == signal.SIGINT:
            self.handle_exit(sig, frame)
            return
        self.quick = True
        self.alive = False
        lifecycle.begin_draining(time.monotonic())  # background work is handed back now

    def _stop_after_drain(self) -> None:
        settings = getattr(self.wsgi, "extensions", {}).get("bridge.settings")
        gevent.sleep(settings.drain_delay / 1000 if settings is not None else 0)
        self.alive = False  # gunicorn's run loop now closes the listener and waits

    def run(self) -> None:
        self._main = gevent.getcurrent()
        logs.write_per_turn()  # the loop runs from here on: its lines go out once per turn
        stopper = gevent.spawn(self._when_stopping)
        try:
            super().run()
            # the loop ended by itself: no quick stop from here on, and one the stopper
            # already asked for lands here, not in the stages' stop at the worker's exit
            stopper.kill()
            gevent.sleep(0)
        except _QuickStop:
            pass  # the streams in progress were ended; nothing else to wait for

    def _when_stopping(self) -> None:
        while self.alive and not self.draining:
            gevent.sleep(STOP_POLL_SECONDS)
        # the master's deadline counts from the signal (drain delay included)
        cut_at = (self.stop_began or time.monotonic()) + cut_delay(self.cfg.graceful_timeout)
        cut_time = None
        while True:  # until the worker exits: a connection may finish its request later
            for wait in list(self.idle.values()):
                if wait.kept_alive or not self.alive:  # draining: new connections are served
                    wait.end()
            now = time.monotonic()
            if cut_time is None and (self.quick or now >= cut_at):
                cut_time = now
                # GreenletExit: the relay of a stream ends it with an error event
                gevent.killall(list(self.busy), block=False)
            if self.quick and cut_time is not None and (
                    not self.busy or now > cut_time + QUICK_STOP_SECONDS):
                self.cfg.worker_int(self)
                gevent.kill(self._main, _QuickStop)  # out of gunicorn's 1 s sleep loop
                return
            gevent.sleep(STOP_POLL_SECONDS)


class _QuickStop(BaseException):
    """Ends the worker's main loop at once (a BaseException: gunicorn's loop catches
    Exception)."""
