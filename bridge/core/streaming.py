"""Stream framing: reading SSE and NDJSON from the upstream into frames, writing them out.

Readers yield each frame as soon as its last byte arrives; nothing is buffered beyond
one incomplete frame. The frames of one upstream read come marked (`Frame.more`), so
that the relay can send them in one write. Writers add exactly the framing Ollama uses.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from bridge.core.exchange import Frame, Response

SSE = "sse"
NDJSON = "ndjson"
RAW = "raw"

CONTENT_TYPES = {
    SSE: "text/event-stream",
    NDJSON: "application/x-ndjson",
}


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
            *events, buffer = buffer.split(b"\n\n")
            yield from _read_at_once([frame for frame in map(_sse_event, events) if frame])
    if buffer.strip():
        frame = _sse_event(buffer.strip(b"\n"))
        if frame is not None:
            yield frame


def _sse_event(event: bytes) -> Frame | None:
    if not event:
        return None
    if event.startswith(b"data:") and b"\n" not in event:
        payload = event[5:]
        return Frame(payload[1:] if payload.startswith(b" ") else payload)
    lines = event.split(b"\n")
    data = [line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")]
    if data and all(line.startswith((b"data:", b":")) for line in lines):
        return Frame(b"\n".join(data))
    return Frame(event, verbatim=True)  # comments, named events: relayed as they came


def read_ndjson(chunks: Iterable[bytes]) -> Iterator[Frame]:
    """Split an NDJSON byte stream into frames (one per line)."""
    buffer = b""
    for chunk in chunks:
        buffer = buffer + chunk if buffer else chunk
        if b"\n" in buffer:
            *lines, buffer = buffer.split(b"\n")
            yield from _read_at_once([Frame(line.rstrip(b"\r")) for line in lines
                                      if line.strip()])
    if buffer.strip():
        yield Frame(buffer.strip())


def _read_at_once(frames: list[Frame]) -> list[Frame]:
    """The frames of one upstream read, each but the last marked `more`: nothing waits
    between them, so the writer may send them together."""
    for frame in frames[:-1]:
        frame.more = True
    return frames


def read_raw(chunks: Iterable[bytes]) -> Iterator[Frame]:
    for chunk in chunks:
        if chunk:
            yield Frame(chunk, verbatim=True)


READERS = {SSE: read_sse, NDJSON: read_ndjson, RAW: read_raw}


def encode(frame: Frame, codec: str) -> bytes:
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


def stream_response(status: int, headers: dict[str, str], frames: Iterator[Frame],
                    codec: str) -> Response:
    headers = dict(headers)
    headers["content-type"] = headers.get("content-type") or CONTENT_TYPES.get(codec, "")
    return Response(status=status, headers=headers, frames=frames, codec=codec)
