"""The stand-in's HTTP transport: a threaded keep-alive server that records and counts
requests, applies queued faults and timing, and writes replies byte by byte.
"""

from __future__ import annotations

import copy
import dataclasses
import email.utils
import json
import logging
import select
import socket
import socketserver
import struct
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import kinds, routes, wire
from .config import Fault, StandInConfig

log = logging.getLogger(__name__)

CONTROL_PREFIX = "/_standin/"
FIRST_TOKEN_DELAY_HEADER = "x-standin-first-token-delay"
TOKEN_DELAY_HEADER = "x-standin-token-delay"


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # original case
    body: bytes
    time: float

    def json(self) -> object:
        return json.loads(self.body)

    def as_dict(self) -> dict:
        return {"method": self.method, "path": self.path, "query": self.query,
                "headers": self.headers, "body": self.body.decode("utf-8", "replace"),
                "time": self.time}


class StandIn:
    """A real HTTP server speaking Ollama's wire format, for tests, benchmarks and demos.

    `start()` may be called again after `stop()`: it rebinds the same port, so a test
    can take the upstream down and bring it back.
    """

    def __init__(self, config: StandInConfig | None = None, host: str = "127.0.0.1",
                 port: int = 0, max_recorded: int | None = None) -> None:
        self.config = config if config is not None else StandInConfig()
        self.max_recorded = max_recorded  # keep only the last N in `requests` (counts stay)
        self._initial_config = copy.deepcopy(self.config)
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed_early = 0
        self._counts: Counter[str] = Counter()
        self._faults: list[list] = []  # [fault, remaining times], FIFO
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- life cycle

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stand-in is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> StandIn:
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((self.host, self.port), _Handler)
        server.standin = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"ollama-standin:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes handlers waiting out delays
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- steering

    def push_fault(self, fault: Fault, times: int = 1) -> None:
        """The next `times` requests matching `fault.path` get `fault` (FIFO with others)."""
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times!r}")
        with self._lock:
            self._faults.append([fault, times])

    def configure(self, **changes: object) -> StandInConfig:
        """Update config fields in place, validated as a whole."""
        fields = {f.name for f in dataclasses.fields(StandInConfig)}
        unknown = set(changes) - fields
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        updated = StandInConfig(**{**dataclasses.asdict(self.config), **changes})
        for name in fields:
            setattr(self.config, name, getattr(updated, name))
        return self.config

    def reset(self) -> None:
        """Forget faults, counters and recorded requests; restore the initial config."""
        with self._lock:
            self._faults.clear()
            self._counts.clear()
            self.requests.clear()
            self.max_in_flight = self.in_flight
            self.closed_early = 0
        self.configure(**dataclasses.asdict(copy.deepcopy(self._initial_config)))

    # -- observing

    def count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(self._counts.values()) if path is None else self._counts[path]

    def stats(self, with_requests: bool = True) -> dict:
        with self._lock:
            stats = {"count": sum(self._counts.values()), "counts_by_path": dict(self._counts),
                     "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
                     "closed_early": self.closed_early}
            if with_requests:
                stats["requests"] = [r.as_dict() for r in self.requests]
            return stats

    # -- used by the handler

    def _admit(self, request: RecordedRequest) -> Fault | None:
        """Record and count a request, then take the fault it gets, if any."""
        with self._lock:
            self.requests.append(request)
            if self.max_recorded is not None and len(self.requests) > self.max_recorded:
                del self.requests[:len(self.requests) - self.max_recorded]
            self._counts[request.path] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            for entry in self._faults:
                fault = entry[0]
                if fault.matches(request.path):
                    entry[1] -= 1
                    if entry[1] == 0:
                        self._faults.remove(entry)
                    return fault
        return None

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _client_left(self) -> None:
        with self._lock:
            self.closed_early += 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True
    standin: StandIn

    def __init__(self, address: tuple[str, int], handler: type) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host name (getfqdn): slow, useless here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = super().get_request()
        # Without it, keep-alive requests stall ~40 ms on Nagle + delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._connections_lock:
            self._connections.add(sock)
        return sock, address

    def shutdown_request(self, request: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End kept-alive connections, so a stopped stand-in really stops answering."""
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: object, client_address: object) -> None:
        log.debug("stand-in connection from %s failed: %r", client_address, sys.exc_info()[1])


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


def _delay_header(headers: dict[str, str], name: str, default: float) -> float:
    try:
        return max(0.0, float(headers[name]))
    except (KeyError, ValueError):
        return default


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    _in_flight = False  # this request still counts in StandIn.in_flight

    def log_message(self, format: str, *args: object) -> None:
        log.debug("stand-in: " + format, *args)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    # -- request

    def _dispatch(self) -> None:
        path, _, query = self.path.partition("?")
        try:
            body = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        if path.startswith(CONTROL_PREFIX):
            self._send(self._control(path, query, body))
            return
        standin = self.server.standin
        headers = dict(self.headers.items())
        fault = standin._admit(RecordedRequest(self.command, path, query, headers, body,
                                               time.time()))
        self._in_flight = True
        try:
            self._serve(path, {k.lower(): v for k, v in headers.items()}, body, fault)
        finally:
            self._leave()

    def _leave(self) -> None:
        """Stop counting this request as in flight: called just before its last bytes go
        out, so a client that reacts at once does not see it still counted."""
        if self._in_flight:
            self._in_flight = False
            self.server.standin._leave()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self, path: str, headers: dict[str, str], body: bytes,
               fault: Fault | None) -> None:
        config = self.server.standin.config
        first_delay = _delay_header(headers, FIRST_TOKEN_DELAY_HEADER, config.first_token_delay)
        token_delay = _delay_header(headers, TOKEN_DELAY_HEADER, config.token_delay)
        cut = None
        if fault is not None:
            if fault.kind in ("refuse", "reset"):
                self._drop(rst=fault.kind == "reset")
                return
            if fault.kind == "hang":
                self._wait(fault.delay)
                self._drop()
                return
            if fault.kind == "slow_headers" and not self._wait(fault.delay):
                self._drop()
                return
            if fault.kind == "status":
                if not self._wait(fault.delay):  # an error that takes its time
                    self._drop()
                    return
                message = fault.body or routes.default_error_message(fault.status)
                self._send(kinds.error_reply(config.kind, path, fault.status, message,
                                             fault.retry_after))
                return
            if fault.kind == "cut":
                cut = fault.after_chunks
        in_band = fault if fault is not None and fault.kind == "inband" else None
        reply = kinds.handle(routes.Call(self.command, path, headers, body, config, in_band))
        if isinstance(reply, routes.StreamReply):
            self._stream(reply, first_delay, token_delay, cut)
            return
        if reply.generated and not self._wait(first_delay):
            self._drop()
            return
        self._send(reply, cut)

    # -- response

    def _head(self, status: int, content_type: str, length: int | None,
              extra: dict[str, str] | None = None) -> bytes:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        lines = [f"HTTP/1.1 {status} {phrase}", f"Content-Type: {content_type}",
                 f"Date: {_http_date()}"]
        lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        elif self.request_version == "HTTP/1.1":
            lines.append("Transfer-Encoding: chunked")
        else:
            self.close_connection = True
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send(self, reply: routes.Reply, cut: int | None = None) -> None:
        head = self._head(reply.status, reply.content_type, len(reply.body), reply.headers)
        body = b"" if self.command == "HEAD" else reply.body
        if cut is not None:  # a "cut" fault on a whole body: half of it, then hang up
            self._write(head + body[:len(body) // 2])
            self._drop()
            return
        self._leave()
        self._write(head + body)

    def _stream(self, reply: routes.StreamReply, first_delay: float, token_delay: float,
                cut: int | None) -> None:
        standin = self.server.standin
        if not self._wait(first_delay):
            standin._client_left()
            self._drop()
            return
        head = self._head(200, reply.content_type, None)  # sent with the first frame only
        chunked = self.request_version == "HTTP/1.1"
        for sent, (payload, terminal) in enumerate(reply.frames):
            if cut is not None and (sent >= cut or terminal):
                self._write(head)
                self._drop()
                return
            if sent and token_delay and not self._wait(token_delay):
                standin._client_left()
                self._drop()
                return
            data = b"%x\r\n%s\r\n" % (len(payload), payload) if chunked else payload
            if terminal:
                self._leave()
                if chunked:
                    data += b"0\r\n\r\n"
            if not self._write(head + data):
                standin._client_left()
                return
            head = b""

    def _write(self, data: bytes) -> bool:
        if not data:
            return True
        try:
            self.wfile.write(data)
            return True
        except OSError:
            self.close_connection = True
            return False

    def _wait(self, seconds: float) -> bool:
        """Sleep, watching the client: False if it hung up (or the stand-in stopped)."""
        if seconds <= 0:
            return True
        deadline = time.monotonic() + seconds
        poller = select.poll()
        poller.register(self.connection, select.POLLIN | select.POLLHUP)
        while not self.server.standin._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            if not poller.poll(min(remaining, 0.5) * 1000):
                continue
            try:
                if not self.connection.recv(1, socket.MSG_PEEK):
                    return False
            except OSError:
                return False
            # A pipelined next request, not a hang-up: wait out the rest blindly.
            return not self.server.standin._stopping.wait(max(0.0, deadline - time.monotonic()))
        return False

    def _drop(self, rst: bool = False) -> None:
        """Close the connection now: FIN, or RST with `rst`. No response is completed."""
        self.close_connection = True
        self._leave()
        try:
            if rst:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.rfile.close()  # drop makefile's reference, so close() is real
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- control endpoints (neither recorded nor counted)

    def _control(self, path: str, query: str, body: bytes) -> routes.Reply:
        standin = self.server.standin
        action = (self.command, path[len(CONTROL_PREFIX):].rstrip("/"))
        try:
            fields = json.loads(body) if body.strip() else {}
            if not isinstance(fields, dict):
                raise TypeError("the body must be a JSON object")
            if action == ("GET", "stats"):
                result: object = standin.stats(with_requests="requests=0" not in query)
            elif action in (("GET", "config"), ("POST", "config")):
                result = dataclasses.asdict(standin.configure(**fields))
            elif action == ("POST", "faults"):
                times = fields.pop("times", 1)
                standin.push_fault(Fault(**fields), times)
                result = {"queued": times}
            elif action == ("POST", "reset"):
                standin.reset()
                result = {"reset": True}
            else:
                return routes.Reply(404, routes.TEXT, b"404 page not found")
        except (TypeError, ValueError) as exc:
            return routes.Reply(400, routes.JSON, wire.go_json({"error": str(exc)}) + b"\n")
        return routes.Reply(200, routes.JSON, wire.go_json(result) + b"\n")
