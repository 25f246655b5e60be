"""The transport to the upstreams: this worker's connection pools, requests sent in one
write, and bodies read as they arrive within a deadline. It knows HTTP, not the bridge:
retries, fail-over and the gateway's errors are `bridge.core.upstream`'s.

The only module that touches `requests` and urllib3 (their private fields included) for
upstream calls; what it raises are requests' exceptions before an answer, and
`BodyTimeout`/`BodyCut` while its body is read. A call goes straight to urllib3's pool,
as requests' adapter would send it, without the adapter's per-call layers.
"""

from __future__ import annotations

import select
import socket
import time
from functools import lru_cache, partial
from typing import Any, BinaryIO, Callable, Iterator

import requests
import urllib3
from gevent import monkey
from requests import exceptions as failures
from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3 import exceptions as urllib3_failures
from urllib3.util.retry import Retry

from bridge.core.forking import PerProcess

READ_SIZE = 65536

# The failures of a request before its answer, as the policy sees them.
TransportError = requests.RequestException
ConnectTimeout = requests.ConnectTimeout


class Answer:
    """An upstream's answer before its body is read: its status, its headers (names in
    any case) and `close()`, which gives the connection back to its pool once the body
    was read, and closes it otherwise. `raw`: urllib3's response, for `Transport.body`."""

    __slots__ = ("raw", "status_code", "headers")

    def __init__(self, raw: urllib3.BaseHTTPResponse):
        self.raw = raw
        self.status_code = raw.status
        self.headers = raw.headers

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    def header_items(self) -> Iterator[tuple[str, str]]:
        """Each header once, a repeated one's values joined with ", " (as requests has
        them)."""
        return self.headers.itermerged()

    def close(self) -> None:
        raw = self.raw
        raw.close()  # the connection, unless the body was read and gave it back already
        raw.release_conn()


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


# requests' adapter with max_retries=0: no retry, and a failed read is not retried
_NO_RETRIES = Retry(0, read=False)


@lru_cache(maxsize=512)
def _target(url: str) -> tuple[str, str, int | None, str]:
    """A URL as requests would send it (quoted as `PreparedRequest.prepare_url` quotes
    it): (scheme, host, port, the path and query that go on the request line). Most
    calls go to a handful of URLs: worked out once each."""
    prepared = requests.PreparedRequest()
    prepared.prepare_url(url, None)
    parts = urllib3.util.parse_url(prepared.url)
    if not parts.host:
        raise failures.InvalidURL(f"no host in {url!r}")
    return (parts.scheme or "http").lower(), parts.host, parts.port, prepared.path_url


class Transport:
    """This worker's connections to the upstreams, one pool per upstream host, made after
    fork, whose connections send each request in one write.

    A call is sent as requests' adapter sends a prepared request (the same request line,
    headers and body, the same TLS verification, its exceptions), without the layers it
    adds to each call (a `PreparedRequest`, the pool manager's key, a `requests.Response`):
    none of what `Session.request` merges in (session headers, cookies, hooks, the
    environment) either, which a proxy wants none of.

    `connect_timeout` bounds connecting alone (within each request's own timeout).
    """

    def __init__(self, pool_size: int, connect_timeout: float):
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        # per worker process, made after fork: (scheme, host, port) -> pool
        self._pools: PerProcess[dict[tuple[str, str, int | None], Any]] = PerProcess(dict)
        self._session = PerProcess(self._new_session)

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # no proxy/netrc lookups per call (see platform notes)
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self.pool_size,
                              max_retries=0, pool_block=False)
        adapter.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    @property
    def session(self) -> requests.Session:
        """A session of this worker's own, for the bridge's probes (redirects followed)."""
        return self._session.get()

    def _pool(self, scheme: str, host: str, port: int | None) -> Any:
        pools = self._pools.get()
        pool = pools.get((scheme, host, port))
        if pool is None:
            if scheme == "https":  # verified as requests verifies (its CA bundle)
                pool = _TLSPool(host, port, maxsize=self.pool_size, block=False,
                                cert_reqs="CERT_REQUIRED", ca_certs=DEFAULT_CA_BUNDLE_PATH)
            elif scheme == "http":
                pool = _Pool(host, port, maxsize=self.pool_size, block=False)
            else:
                raise failures.InvalidSchema(f"no connection adapters were found for {scheme!r}")
            pools[(scheme, host, port)] = pool
        return pool

    def send(self, method: str, url: str, headers: dict[str, str],
             body: bytes, timeout: float) -> Answer:
        """One upstream call; raises requests' exceptions for a failure before the answer."""
        try:
            scheme, host, port, path = _target(url)
            pool = self._pool(scheme, host, port)
        except urllib3_failures.LocationValueError as exc:
            raise failures.InvalidURL(exc) from None
        method = method.upper()
        if body or method not in _NO_BODY:  # as requests sets it, last
            headers = {name: value for name, value in headers.items()
                       if name.lower() != "content-length"}
            headers["Content-Length"] = str(len(body))
        try:
            raw = pool.urlopen(method, path, body=body or None, headers=headers,
                               redirect=False, assert_same_host=False,
                               preload_content=False, decode_content=False,
                               retries=_NO_RETRIES, chunked=False,
                               timeout=urllib3.Timeout(
                                   connect=min(self.connect_timeout, timeout), read=timeout))
        except Exception as exc:  # noqa: BLE001 - each mapped as requests maps it
            failure = _failure(exc)
            if failure is exc:
                raise
            raise failure from exc
        return Answer(raw)

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


_NO_BODY = frozenset(("GET", "HEAD"))


def _failure(exc: Exception) -> Exception:
    """The requests exception for a urllib3 failure, as requests' adapter maps it."""
    if isinstance(exc, urllib3_failures.MaxRetryError):
        reason = exc.reason
        if (isinstance(reason, urllib3_failures.ConnectTimeoutError)
                and not isinstance(reason, urllib3_failures.NewConnectionError)):
            return failures.ConnectTimeout(exc)
        if isinstance(reason, urllib3_failures.ResponseError):
            return failures.RetryError(exc)
        if isinstance(reason, urllib3_failures.SSLError):
            return failures.SSLError(exc)
        return failures.ConnectionError(exc)
    if isinstance(exc, (urllib3_failures.ProtocolError, OSError,
                        urllib3_failures.ClosedPoolError)):
        return failures.ConnectionError(exc)
    if isinstance(exc, urllib3_failures.SSLError):
        return failures.SSLError(exc)
    if isinstance(exc, urllib3_failures.ReadTimeoutError):
        return failures.ReadTimeout(exc)
    if isinstance(exc, (urllib3_failures.InvalidHeader, ValueError)):
        # requests refuses a header value that http.client would refuse (a line break)
        return failures.InvalidHeader(exc)
    return exc
