"""Stream framing: reading SSE and NDJSON from the upstream into frames, writing them out.

Readers yield each frame as soon as its last byte arrives; nothing is buffered beyond
one incomplete frame. The frames of one upstream read come marked (`Frame.more`), so
that the relay can send them in one write. Writers add exactly the framing Ollama uses.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator

import gevent
import greenlet

from bridge.core.exchange import Frame, Response

SSE = "sse"
NDJSON = "ndjson"
RAW = "raw"

CONTENT_TYPES = {
    SSE: "text/event-stream",
    NDJSON: "application/x-ndjson",
}


# a byte as an int: `in` finds it without first failing to take the needle for an int
_LF = ord("\n")


def codec_for(content_type: str) -> str | None:
    """The stream codec for an upstream Content-Type, or None when it is not a stream."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "text/event-stream":
        return SSE
    if kind == "application/x-ndjson":
        return NDJSON
    return None


def read_sse(chunks: Iterable[bytes]) -> Iterator[Frame]:
    """Split an SSE byte stream into frames (one per event)."""
    buffer = b""
    for chunk in chunks:
        buffer = buffer + chunk if buffer else chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        if b"\n\n" in buffer:
            read, events = buffer, buffer.split(b"\n\n")
            buffer = events.pop()
            if len(events) == 1:  # one event per read, as upstreams mostly send them
                frame = _sse_event(events[0])
                if frame is not None:
                    yield frame
            else:  # a plain data line, as most events are, without a call
                yield from _read_at_once([
                    Frame(event[6:]) if event.startswith(b"data: ") and _LF not in event
                    else _sse_event(event) for event in events], read)
    if buffer.strip():
        frame = _sse_event(buffer.strip(b"\n"))
        if frame is not None:
            yield frame


def _sse_event(event: bytes) -> Frame | None:
    if not event:
        return None
    if event.startswith(b"data:") and _LF not in event:
        payload = event[5:]
        return Frame(payload[1:] if payload.startswith(b" ") else payload)
    if event.startswith(b"event:"):  # a named event (Anthropic's): as it came
        return Frame(event, verbatim=True)
    lines = event.split(b"\n")
    data = [line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")]
    if data and all(line.startswith((b"data:", b":")) for line in lines):
        return Frame(b"\n".join(data))
    return Frame(event, verbatim=True)  # comments, named events: relayed as they came


def event_data(frame: Frame) -> tuple[str | None, Any]:
    """The name and JSON data of an SSE event as `read_sse` gives it: a plain data line
    (no name), or a named event (`event: NAME` and its `data:` lines, whole in `raw`);
    None for data that is no JSON."""
    if not frame.verbatim:
        return None, frame.data
    head, found, rest = frame.raw.partition(b"\ndata:")
    if found and head.startswith(b"event:") and b"\n" not in head and b"\n" not in rest:
        named = head[6:].strip().decode(errors="replace")
        try:  # `event: NAME` and one data line, as most named events come
            return named, json.loads(rest[1:] if rest.startswith(b" ") else rest)
        except ValueError:
            return named, None
    name, data = None, []
    for line in frame.raw.split(b"\n"):
        if line.startswith(b"event:"):
            name = line[6:].strip().decode(errors="replace")
        elif line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
    try:
        return name, json.loads(b"\n".join(data)) if data else None
    except ValueError:
        return name, None


def read_ndjson(chunks: Iterable[bytes]) -> Iterator[Frame]:
    """Split an NDJSON byte stream into frames (one per line)."""
    buffer = b""
    for chunk in chunks:
        buffer = buffer + chunk if buffer else chunk
        if _LF in buffer:
            read, (*lines, buffer) = buffer, buffer.split(b"\n")
            yield from _read_at_once([Frame(line.rstrip(b"\r")) for line in lines
                                      if line.strip()], read)
    if buffer.strip():
        yield Frame(buffer.strip())


def _read_at_once(frames: list[Frame | None], read: bytes) -> list[Frame]:
    """The frames of one upstream `read` (None: an empty event, dropped), each but the
    last marked `more`: nothing waits between them, so the writer may send them together;
    several hold the read (`Frame.read`), which holds them all and may hold more."""
    if None in frames:
        frames = [frame for frame in frames if frame is not None]
    if len(frames) > 1:
        for frame in frames:
            frame.more = True  # type: ignore[union-attr]
            frame.read = read  # type: ignore[union-attr]
        frames[-1].more = False  # type: ignore[union-attr]
    return frames  # type: ignore[return-value]


def read_raw(chunks: Iterable[bytes]) -> Iterator[Frame]:
    for chunk in chunks:
        if chunk:
            yield Frame(chunk, verbatim=True)


READERS = {SSE: read_sse, NDJSON: read_ndjson, RAW: read_raw}


def flush() -> Frame:
    """A frame that writes nothing: what is pending goes out now (the headers, before any
    frame of a stream whose first frames a stage holds back)."""
    return Frame(b"")


def encode(frame: Frame, codec: str) -> bytes:
    if not frame.raw:  # a `flush()`
        return b""
    if codec == SSE:
        if frame.event is not None:
            return b"event: " + frame.event + b"\ndata: " + frame.raw + b"\n\n"
        return frame.raw + b"\n\n" if frame.verbatim else b"data: " + frame.raw + b"\n\n"
    if codec == NDJSON:
        return frame.raw + b"\n"
    return frame.raw


def is_terminal(frame: Frame, codec: str) -> bool:
    """Whether the frame is the stream's normal end: `[DONE]`, or `done: true` in NDJSON."""
    if codec == SSE:
        return frame.is_done
    if codec == NDJSON:
        if b'"done"' not in frame.raw:  # most lines: no JSON parsing on the relay path
            return False
        data = frame.data
        return isinstance(data, dict) and data.get("done") is True
    return False


def is_error(frame: Frame) -> bool:
    """Whether the frame is an in-band error (`{"error": …}`), as Ollama and OpenAI-style
    servers send one when a stream fails after it started."""
    if frame.verbatim or b'"error"' not in frame.raw:  # most frames: no JSON parsing
        return False
    data = frame.data
    return isinstance(data, dict) and "error" in data


def error_frame(surface: str, message: str, code: str = "stream_error") -> Frame:
    """The in-band error a client sees when a stream cannot finish normally."""
    if surface == "ollama":
        return Frame.of({"error": message})
    return Frame.of({"error": {"message": message, "type": "api_error", "param": None,
                               "code": code}})


TIMED_OUT = object()  # what `PacedReader.read` returns when a timed read gives up a wait


class PacedReader:
    """Reads a stream's frames, each read waiting as long as it takes, or when asked for
    until a deadline (monotonic time): the read then goes on in a greenlet of the
    reader's own, `TIMED_OUT` comes back, and the next call waits for that same read
    again. For a stage that has something to say while the upstream is silent (the think
    filter's empty frames).

    A read without a deadline is a plain `next`: no greenlet, no timer. A read with one
    switches straight to the reader's greenlet (made at the first one), which reads and
    switches straight back: a frame that is there at once costs two switches, never a
    turn of the event loop. The deadline's timer is set once per deadline, not per read.

    `close()` ends a read under way (before the frames it reads are closed)."""

    __slots__ = ("_frames", "_helper", "_waiter", "_result", "_busy", "_timer", "_deadline",
                 "_expired")

    def __init__(self, frames: Iterator[Frame]):
        self._frames = frames
        self._helper: Any = None  # the greenlet that reads, parked between reads
        self._waiter: Any = None  # the greenlet waiting for the read under way
        self._result: tuple[bool, Any] | None = None  # a read's result nobody waited for
        self._busy = False  # a read was asked for and not taken yet
        self._timer: Any = None
        self._deadline: float | None = None  # what the timer is set for
        self._expired = False  # ...and it has passed

    def read(self, deadline: float | None = None) -> Any:
        """The next frame, None at the end, or `TIMED_OUT` once `deadline` (not None)
        has passed."""
        if deadline is None:
            if not self._busy:
                return next(self._frames, None)
            self._disarm()
        elif deadline != self._deadline:
            self._arm(deadline)
        if self._expired:
            return TIMED_OUT
        if not self._busy:
            self._busy = True
            if self._helper is None:
                self._helper = greenlet.greenlet(self._serve, parent=gevent.get_hub())
            result = self._wait(self._helper.switch)
        elif self._result is not None:
            result, self._result = self._result, None
        else:
            result = self._wait(gevent.get_hub().switch)
        if result is TIMED_OUT:
            return TIMED_OUT
        self._busy = False
        ok, value = result
        if not ok:
            raise value
        return value

    def _arm(self, deadline: float) -> None:
        self._disarm()
        self._deadline = deadline
        self._timer = gevent.get_hub().loop.timer(max(deadline - time.monotonic(), 0.0))
        self._timer.start(self._expire)

    def _disarm(self) -> None:
        timer, self._timer = self._timer, None
        self._deadline, self._expired = None, False
        if timer is not None:
            timer.stop()
            timer.close()

    def _expire(self) -> None:
        """The deadline passed (the event loop calls it): wakes a read waiting for it."""
        self._expired = True
        waiter = self._waiter
        if waiter is not None:
            waiter.switch(TIMED_OUT)

    def _wait(self, switch: Callable[[], Any]) -> Any:
        """`switch()` away until the reader hands a result over (or `TIMED_OUT`)."""
        self._waiter = greenlet.getcurrent()
        try:
            return switch()
        finally:
            self._waiter = None

    def _serve(self) -> None:
        """The reader's greenlet: one read each time it is switched to."""
        while True:
            result = _read_one(self._frames)
            if not result[0] and isinstance(result[1], greenlet.GreenletExit):
                return  # closed
            waiter = self._waiter
            if waiter is not None:
                waiter.switch(result)  # back here when the next read is asked for
            else:  # the waiter gave up waiting: kept for its next call
                self._result = result
                gevent.get_hub().switch()

    def close(self) -> None:
        self._disarm()
        helper, self._helper = self._helper, None
        if helper is not None and not helper.dead:
            # raised in the read under way (its frames close behind it), or where it is
            # parked; then back here
            helper.parent = greenlet.getcurrent()
            helper.throw(greenlet.GreenletExit)


def _read_one(frames: Iterator[Frame]) -> tuple[bool, Any]:
    """One read, in a greenlet of its own: (True, the frame or None), or (False, what it
    raised), to be raised again in the reader's greenlet."""
    try:
        return True, next(frames, None)
    except BaseException as exc:  # noqa: BLE001 - handed over, raised by the reader
        return False, exc


def stream_response(status: int, headers: dict[str, str], frames: Iterator[Frame],
                    codec: str) -> Response:
    headers = dict(headers)
    headers["content-type"] = headers.get("content-type") or CONTENT_TYPES.get(codec, "")
    return Response(status=status, headers=headers, frames=frames, codec=codec)


_second: tuple[int, str] = (0, "1970-01-01T00:00:00")  # the last second formatted


def ollama_time(now: float | None = None) -> str:
    """RFC 3339 with nanoseconds, UTC, trailing zeros trimmed (Go's RFC3339Nano).

    Every frame of a translated stream has one: the second is formatted once per second,
    only the fraction per call (rounded as `datetime.fromtimestamp` rounds it)."""
    global _second
    now = time.time() if now is None else now
    second = math.floor(now)
    micro = round((now - second) * 1e6)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    if _second[0] != second:
        _second = (second, datetime.fromtimestamp(second, timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S"))
    if not micro:
        return f"{_second[1]}Z"
    return f"{_second[1]}.{('%06d' % micro).rstrip('0')}Z"
