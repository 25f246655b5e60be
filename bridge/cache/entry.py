"""One cache entry (what the upstream produced for a question) and its bytes on disk.

An entry holds either the upstream's stream frames (raw JSON payloads, in their original
boundaries) or its whole body, plus when it was stored. On disk a value is
`MAGIC | created (8-byte big-endian float, Unix seconds) | zlib(payload)`: no pickle, and
the creation time can be read with SQL (`substr(value, 5, 8)`) without decoding the rest.

The payload (format 2, magic `BRC2`) is binary so that decoding a long stream costs no
per-frame work in Python: a small JSON header, the body, the whole answer assembled from
the frames when it is known (`derived["body"]`: a disk hit asking for a whole answer
does not assemble it again), the frames' lengths and the frames back to back. Values of
format 1 (`BRC1`, one JSON document) are still read.

An entry also records what producing it cost the upstream (wall time, and Ollama's
`total_duration` and generated tokens when reported): each hit saves that much. The
cost is an optional JSON member, so entries stored before it existed still decode.
"""

from __future__ import annotations

import itertools
import json
import re
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from bridge.core.exchange import Frame

MAGIC = b"BRC2"
MAGIC_V1 = b"BRC1"
_MAGICS = (MAGIC, MAGIC_V1)
_CREATED = struct.Struct(">d")
_LENGTH = struct.Struct(">I")
HEADER_SIZE = len(MAGIC) + _CREATED.size
FORMAT_VERSION = 2
# Keys in `Entry.derived` of what is stored with the entry: the whole answer assembled
# from its frames (bytes), and the notes its replay needs (JSON, `bridge.cache.replay`).
ASSEMBLED = "body"
REPLAY = "replay"
JOINED = "joined"  # the frames joined by SEPARATOR, as decoded (not stored twice)
SEPARATOR = b"\0"  # never in a JSON text (control characters are escaped there)
_TOTAL_DURATION = re.compile(rb'"total_duration"\s*:\s*(\d+)')


class UndecodableEntry(ValueError):
    """A stored value that is not an entry of this format (corrupt, foreign, older)."""


@dataclass
class Entry:
    surface: str
    endpoint: str
    model: str
    created: float                         # Unix time (shared by processes and restarts)
    codec: str | None = None               # "sse"/"ndjson" when `frames` is set
    frames: tuple[bytes, ...] = ()         # the upstream's frames, terminator included
    verbatim: frozenset[int] = frozenset()  # indexes of frames that are not data lines
    body: bytes | None = None              # the upstream's body when it did not stream
    upstream_seconds: float = 0.0          # how long the upstream took to produce it
    gpu_seconds: float | None = None       # Ollama's total_duration, when it reported one
    tokens: int = 0                        # tokens it generated, when reported
    derived: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_stream(self) -> bool:
        return self.body is None

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.created)

    def expired(self, ttl: float, now: float | None = None) -> bool:
        return self.age(now) >= ttl

    def frame(self, index: int) -> Frame:
        return Frame(self.frames[index], verbatim=index in self.verbatim)


def encode_entry(entry: Entry) -> bytes:
    """The bytes stored on disk; raises UnicodeDecodeError when a frame is not UTF-8."""
    body = entry.body if entry.body is not None else b""
    assembled = entry.derived.get(ASSEMBLED) if entry.body is None else None
    header: dict[str, Any] = {"surface": entry.surface, "endpoint": entry.endpoint,
                              "model": entry.model, "codec": entry.codec,
                              "body": None if entry.body is None else len(body),
                              "assembled": None if assembled is None else len(assembled),
                              "frames": len(entry.frames)}
    if entry.verbatim:
        header["verbatim"] = sorted(entry.verbatim)
    if entry.derived.get(REPLAY) is not None:
        header[REPLAY] = entry.derived[REPLAY]
    if entry.upstream_seconds or entry.gpu_seconds or entry.tokens:
        header["cost"] = {"s": round(entry.upstream_seconds, 6), "gpu": entry.gpu_seconds,
                          "tok": entry.tokens}
    for data in (*entry.frames, body):  # text only: what a client can be sent as UTF-8
        if not data.isascii():
            data.decode()
    # Frames without a NUL byte (all JSON ones) are stored joined by it: decoding is
    # one split, and replay uses the joined bytes as they are.
    joined = entry.derived.get(JOINED) or SEPARATOR.join(entry.frames)
    if joined.count(SEPARATOR) == len(entry.frames) - 1:
        header["joined"] = True
        frames = joined
    else:
        frames = struct.pack(f">{len(entry.frames)}I", *map(len, entry.frames)) + joined
    meta = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    payload = b"".join((_LENGTH.pack(len(meta)), meta, body, assembled or b"", frames))
    return MAGIC + pack_created(entry.created) + zlib.compress(payload, 1)


def pack_created(created: float) -> bytes:
    """A creation time as stored; these bytes compare (memcmp) like the times."""
    return _CREATED.pack(created)


def created_of(header: bytes) -> float:
    """The creation time from a value's first `HEADER_SIZE` bytes (or `substr(value, 5, 8)`)."""
    if len(header) == _CREATED.size:
        return _CREATED.unpack(header)[0]
    if len(header) < HEADER_SIZE or not header.startswith(_MAGICS):
        raise UndecodableEntry("not a cache entry")
    return _CREATED.unpack(header[len(MAGIC):HEADER_SIZE])[0]


def decode_entry(value: bytes) -> Entry:
    """An entry from its stored bytes; raises UndecodableEntry for anything else."""
    try:
        value = bytes(value)
        created = created_of(value[:HEADER_SIZE])
        payload = zlib.decompress(value[HEADER_SIZE:])
        if value.startswith(MAGIC_V1):
            return _decode_v1(payload, created)
        (size,) = _LENGTH.unpack_from(payload)
        at = _LENGTH.size + size
        data = json.loads(payload[_LENGTH.size:at])
        entry = Entry(surface=data["surface"], endpoint=data["endpoint"], model=data["model"],
                      created=created, codec=data["codec"])
        if data["body"] is not None:
            entry.body, at = payload[at:at + data["body"]], at + data["body"]
        if data["assembled"] is not None:
            entry.derived[ASSEMBLED] = payload[at:at + data["assembled"]]
            at += data["assembled"]
        count = data["frames"]
        if data.get("joined"):
            joined = payload[at:]
            entry.frames = tuple(joined.split(SEPARATOR)) if count else ()
            if len(entry.frames) != count:
                raise UndecodableEntry("frame count does not add up")
            entry.derived[JOINED] = joined
            return _with_header(entry, data)
        lengths = struct.unpack_from(f">{count}I", payload, at)
        at += 4 * count
        starts = list(itertools.accumulate((length + 1 for length in lengths), initial=at))
        if count and starts[-1] - 1 != len(payload):
            raise UndecodableEntry("frame lengths do not add up")
        entry.frames = tuple(payload[start:start + length]
                             for start, length in zip(starts, lengths, strict=False))
        return _with_header(entry, data)
    except UndecodableEntry:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, zlib.error, struct.error) as exc:
        raise UndecodableEntry(f"{type(exc).__name__}: {exc}") from None


def reported_gpu_seconds(parts: tuple[bytes, ...]) -> float | None:
    """Ollama's `total_duration` (nanoseconds, in its last frame or whole body) as
    seconds; None when the upstream did not report it (the OpenAI surface, vLLM, ...)."""
    for part in reversed(parts[-3:]):  # the final frame, before any terminator lines
        found = _TOTAL_DURATION.search(part)
        if found:
            return int(found.group(1)) / 1e9
    return None


def _with_header(entry: Entry, data: dict) -> Entry:
    """What a header adds to a decoded entry: verbatim frames, replay notes, its cost."""
    entry.verbatim = frozenset(data.get("verbatim", ()))
    if REPLAY in data:
        entry.derived[REPLAY] = data[REPLAY]
    cost = data.get("cost") or {}
    entry.upstream_seconds = float(cost.get("s") or 0.0)
    entry.gpu_seconds = None if cost.get("gpu") is None else float(cost["gpu"])
    entry.tokens = int(cost.get("tok") or 0)
    return entry


def _decode_v1(payload: bytes, created: float) -> Entry:
    """An entry of format 1: one JSON document, frames as strings."""
    data = json.loads(payload)
    if data.get("v") != 1:
        raise UndecodableEntry(f"entry format {data.get('v')!r}")
    entry = Entry(surface=data["surface"], endpoint=data["endpoint"], model=data["model"],
                  created=created)
    if "body" in data:
        entry.body = data["body"].encode()
    else:
        entry.codec = data["codec"]
        entry.frames = tuple(frame.encode() for frame in data["frames"])
    return _with_header(entry, data)
