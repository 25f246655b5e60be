"""The transport to the upstreams: this worker's connection pools, requests sent in one
write, and bodies read as they arrive within a deadline. It knows HTTP, not the bridge:
retries, fail-over and the gateway's errors are `bridge.core.upstream`'s.

The only module that touches `requests` and urllib3 (their private fields included) for
upstream calls; what it raises are requests' exceptions before an answer, and
`BodyTimeout`/`BodyCut` while its body is read.
"""

from __future__ import annotations

import email.parser
import http.client
import re
import select
import socket
import time
from functools import lru_cache, partial
from typing import Any, BinaryIO, Callable, Iterator
from urllib.parse import urlsplit

import requests
import urllib3
from gevent import monkey
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from bridge.core.forking import PerProcess

READ_SIZE = 65536

# What the policy sees of the transport: an answer (its status, headers and `close()`),
# and the failures of a request before its answer.
Answer = requests.Response
TransportError = requests.RequestException
ConnectTimeout = requests.ConnectTimeout


class BodyTimeout(TimeoutError):
    """An answer's body did not arrive within its deadline."""


class BodyCut(Exception):
    """An answer's body ended before its end."""


def is_timeout(exc: Exception) -> bool:
    """Whether a failure is a timeout, whichever layer raised it (requests, urllib3, socket)."""
    return (isinstance(exc, (requests.Timeout, TimeoutError))
            or "Timeout" in type(exc).__name__)


class _OneWrite:
    """A urllib3 connection that sends a request's headers and body in one write.

    urllib3 writes the header block, then the body: two small segments, and an upstream
    that reads the headers first is woken twice before it has the whole request (what
    `Nagle` and delayed ACKs make worse on connections without TCP_NODELAY).
    """

    _held: bytes | None = None
    _holding = False

    def endheaders(self, message_body: bytes | None = None, *,
                   encode_chunked: bool = False) -> None:
        self._holding = True  # the header block waits for the body's first write
        super().endheaders(message_body, encode_chunked=encode_chunked)  # type: ignore[misc]

    def send(self, data: bytes) -> None:
        if self._holding and self._held is None and isinstance(data, bytes):
            self._held = data
            return
        self._holding = False
        held, self._held = self._held, None
        super().send(held + data if held is not None and isinstance(data, bytes)  # type: ignore[misc]
                     else data)

    def getresponse(self, *args: object, **kwargs: object) -> object:
        held, self._held = self._held, None
        self._holding = False
        if held is not None:  # a request without a body
            super().send(held)  # type: ignore[misc]
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


# A header line as the email parser reads it without a second look: a name of printable
# ASCII but the colon (`email.feedparser.headerRE`), a value without CR or LF, its end.
_PLAIN_HEADER = re.compile(rb"([\x21-\x39\x3b-\x7e]+):([^\r\n]*)\r?\n")
_BLANK = (b"\r\n", b"\n", b"")


def parse_headers(fp: BinaryIO, _class: type = http.client.HTTPMessage) -> Any:
    """`http.client.parse_headers` (what every answer's headers go through) without the
    email parser for plain header lines: the same `HTTPMessage`, name and value as its
    compat32 policy stores them, in ~3 µs instead of ~15; a block with any other line
    (folded, without a name, not ASCII) goes to the email parser as before. Installed
    for the process by this module: http.client reads its module's name at each call."""
    lines = http.client._read_headers(fp)  # type: ignore[attr-defined]
    message = _class()
    found = []
    for line in lines:
        if line in _BLANK:
            break
        plain = _PLAIN_HEADER.fullmatch(line)
        if plain is None:
            return email.parser.Parser(_class=_class).parsestr(
                b"".join(lines).decode("iso-8859-1"))
        found.append((plain[1].decode("ascii"),
                      plain[2].decode("iso-8859-1").lstrip(" \t")))
    message._headers = found
    message._payload = ""
    return message


http.client.parse_headers = parse_headers


# The system's poll, not gevent's: a poll that does not wait never blocks the loop, and
# gevent's costs a timer, a watcher and a switch through the hub (~25 us) per call.
_system_poll = monkey.get_original("select", "poll")


class _Probed:
    """A urllib3 connection whose check before it is used again (is the idle connection
    still open? urllib3 asks before every request on a pooled one) costs one system call:
    the same zero-timeout poll for readability that urllib3 makes, without gevent's."""

    sock: socket.socket | None

    @property
    def is_connected(self) -> bool:
        sock = self.sock
        if sock is None:
            return False
        poll = _system_poll()
        poll.register(sock, select.POLLIN)
        return not poll.poll(0)  # readable while idle: closed by the upstream (or junk)


class _Connection(_Probed, _OneWrite, urllib3.connection.HTTPConnection):
    pass


class _TLSConnection(_Probed, _OneWrite, urllib3.connection.HTTPSConnection):
    pass


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


class BadChunking(Exception):
    """The upstream's chunked body is malformed (or cut in the middle of a chunk)."""


def dechunked(fp: BinaryIO, done: Callable[[], None]) -> Iterator[bytes]:
    """The body of a chunked HTTP response, one piece per socket read (`read1`: whatever
    has arrived), the chunk framing taken off in bulk; `done()` once its end was read.

    urllib3's `read_chunked` reads line by line and chunk by chunk, a few Python calls
    and a buffer copy for every chunk, and a streaming upstream sends one chunk per
    event: here the events of one read come as one piece, and the stream readers mark
    them as such (`Frame.more`) for the relay. Yields b"" for a read that completed no
    data (the caller checks its deadline between reads). A connection that ends early
    raises `BadChunking`.
    """
    data = b""
    state, left = _SIZE, 0
    while True:
        read = fp.read1(READ_SIZE)
        if not read:
            raise BadChunking("the connection ended inside the chunked body")
        data = data + read if data else read
        pieces = []
        pos, end = 0, len(data)
        while pos < end:
            if state == _DATA:
                stop = min(pos + left, end)
                pieces.append(data[pos:stop])
                left -= stop - pos
                pos = stop
                if left:
                    break
                state = _DATA_END
            elif state == _DATA_END:  # the CRLF after a chunk's data
                if data[pos:pos + 1] == b"\n":
                    pos += 1
                elif end - pos < 2:
                    break
                elif data[pos:pos + 2] == b"\r\n":
                    pos += 2
                else:
                    raise BadChunking("no line break after a chunk's data")
                state = _SIZE
            else:  # a chunk-size line, or a trailer line after the last chunk
                eol = data.find(b"\n", pos)
                if eol < 0:
                    if end - pos > _MAX_LINE:
                        raise BadChunking("chunk-size line too long")
                    break
                line, pos = data[pos:eol].strip(), eol + 1
                if state == _TRAILER:
                    if not line:  # the empty line that ends the body
                        if pieces:
                            yield b"".join(pieces)
                        done()
                        return
                    continue
                try:
                    size = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    raise BadChunking("bad chunk size") from None
                if size < 0:
                    raise BadChunking("bad chunk size")
                state, left = (_DATA, size) if size else (_TRAILER, 0)
        data = data[pos:] if pos < end else b""
        yield pieces[0] if len(pieces) == 1 else b"".join(pieces)


_SIZE, _DATA, _DATA_END, _TRAILER = range(4)
_MAX_LINE = 4096


def _release(raw: object) -> None:
    """A chunked body read to its end outside urllib3: close its response the way
    `read_chunked` does, which gives the connection back to the pool."""
    raw._original_response.close()  # type: ignore[attr-defined]
    raw.release_conn()  # type: ignore[attr-defined]


class _Adapter(HTTPAdapter):
    """requests' adapter, lean on each call: the pool of an upstream found by its origin
    in a dict once it is known (not through the pool manager's key), and the answer built
    without the cookie jar, which a proxy never reads (both methods are requests' own
    extension points, overridden as its documentation offers)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
        self._by_origin: dict[tuple[str, Any, Any], Any] = {}

    def get_connection_with_tls_context(self, request: requests.PreparedRequest,
                                        verify: Any, proxies: Any = None,
                                        cert: Any = None) -> Any:
        if proxies:
            return super().get_connection_with_tls_context(request, verify, proxies, cert)
        origin = (_origin(request.url or ""), verify, cert)
        pool = self._by_origin.get(origin)
        if pool is None:
            pool = self._by_origin[origin] = super().get_connection_with_tls_context(
                request, verify, proxies, cert)
        return pool

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        response = requests.Response()
        response.status_code = resp.status
        response.headers = CaseInsensitiveDict(resp.headers)
        response.raw = resp
        response.reason = resp.reason
        response.url = req.url or ""
        response.request = req
        response.connection = self
        return response


@lru_cache(maxsize=512)
def _origin(url: str) -> str:
    """scheme://host:port of a URL: which pool it goes to."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


@lru_cache(maxsize=512)
def _prepared_url(url: str) -> str:
    """A URL as requests sends it (`PreparedRequest.prepare_url`: checked, quoted): most
    calls go to a handful of URLs, each worked out once."""
    prepared = requests.PreparedRequest()
    prepared.prepare_url(url, None)
    return prepared.url or url


class Transport:
    """This worker's connections to the upstreams, one pool per upstream host, made after
    fork: a `requests` adapter whose pools send each request in one write.

    `Session.request` would merge session headers, cookies, hooks and environment settings
    on every call (~0.1 ms of CPU each, and a cookie jar shared by all clients): a proxy
    wants none of them, so each call is a prepared request made from the client's own
    headers and body (its URL prepared once per URL), sent by the pooled adapter.

    `connect_timeout` bounds connecting alone (within each request's own timeout).
    """

    def __init__(self, pool_size: int, connect_timeout: float):
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        # one pool per worker process, made after fork
        self._pools = PerProcess(self._new)

    def _new(self) -> tuple[requests.Session, _Adapter]:
        session = requests.Session()
        session.trust_env = False  # no proxy/netrc lookups per call (see platform notes)
        adapter = _Adapter(pool_connections=4, pool_maxsize=self.pool_size,
                           max_retries=0, pool_block=False)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session, adapter

    @property
    def session(self) -> requests.Session:
        """This worker's session (for the bridge's probes); its adapter holds the pools."""
        return self._pools.get()[0]

    def send(self, method: str, url: str, headers: dict[str, str],
             body: bytes, timeout: float) -> Answer:
        """One upstream call through the session's adapter; raises requests' exceptions
        for a failure before the answer."""
        prepared = requests.PreparedRequest()
        prepared.method = method.upper()
        prepared.url = _prepared_url(url)
        prepared.prepare_headers(headers)
        prepared.prepare_body(body or None, None)
        adapter = self._pools.get()[1]
        return adapter.send(prepared, stream=True,
                            timeout=(min(self.connect_timeout, timeout), timeout))

    @staticmethod
    def body(upstream: Answer, deadline: float) -> Iterator[bytes]:
        """An answer's body as it arrives, chunk by chunk (never waiting to fill a
        buffer), each read bounded by what is left until `deadline` (`time.monotonic()`):
        `BodyTimeout` past it, `BodyCut` for a body that ends before its end (a dropped
        connection, fewer bytes than its Content-Length, broken chunking)."""
        raw = upstream.raw
        connection = raw.connection
        original = raw._original_response  # http.client's response, under urllib3's
        if (raw.chunked and original is not None and original.fp is not None
                and original._method != "HEAD"):  # a HEAD answer has no body to read
            reads = dechunked(original.fp, partial(_release, raw))
        elif raw.chunked:
            reads = raw.stream(READ_SIZE, decode_content=False)
        else:  # read1: whatever has arrived, where read(n) would wait for n bytes
            reads = iter(partial(raw.read1, READ_SIZE, decode_content=False), b"")
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BodyTimeout("the body outlived its deadline")
                sock = getattr(connection, "sock", None)
                if sock is not None:
                    sock.settimeout(left)
                chunk = next(reads, None)
                if chunk is None:
                    return
                if chunk:  # b"": a read that completed no data, the deadline is checked
                    yield chunk
        except BodyTimeout:
            raise
        except Exception as exc:  # noqa: BLE001 - requests', urllib3's and socket errors alike
            if is_timeout(exc):
                raise BodyTimeout("a read outlived the deadline") from exc
            raise BodyCut("the connection ended before the body") from exc
