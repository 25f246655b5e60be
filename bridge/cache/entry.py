"""One cache entry (what the upstream produced for a question) and its bytes on disk.

An entry holds either the upstream's stream frames (raw JSON payloads, in their original
boundaries) or its whole body, plus when it was stored. On disk a value is
`MAGIC | created (8-byte big-endian float, Unix seconds) | zlib(JSON)`: no pickle, and
the creation time can be read with SQL (`substr(value, 5, 8)`) without decoding the rest.

An entry also records what producing it cost the upstream (wall time, and Ollama's
`total_duration` and generated tokens when reported): each hit saves that much. The
cost is an optional JSON member, so entries stored before it existed still decode.
"""

from __future__ import annotations

import json
import re
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from bridge.core.exchange import Frame

MAGIC = b"BRC1"
_CREATED = struct.Struct(">d")
HEADER_SIZE = len(MAGIC) + _CREATED.size
FORMAT_VERSION = 1
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
    data: dict[str, Any] = {"v": FORMAT_VERSION, "surface": entry.surface,
                            "endpoint": entry.endpoint, "model": entry.model}
    if entry.body is not None:
        data["body"] = entry.body.decode()
    else:
        data["codec"] = entry.codec
        data["frames"] = [frame.decode() for frame in entry.frames]
        if entry.verbatim:
            data["verbatim"] = sorted(entry.verbatim)
    if entry.upstream_seconds or entry.gpu_seconds or entry.tokens:
        data["cost"] = {"s": round(entry.upstream_seconds, 6), "gpu": entry.gpu_seconds,
                        "tok": entry.tokens}
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return MAGIC + pack_created(entry.created) + zlib.compress(text, 1)


def pack_created(created: float) -> bytes:
    """A creation time as stored; these bytes compare (memcmp) like the times."""
    return _CREATED.pack(created)


def created_of(header: bytes) -> float:
    """The creation time from a value's first `HEADER_SIZE` bytes (or `substr(value, 5, 8)`)."""
    if len(header) == _CREATED.size:
        return _CREATED.unpack(header)[0]
    if len(header) < HEADER_SIZE or not header.startswith(MAGIC):
        raise UndecodableEntry("not a cache entry")
    return _CREATED.unpack(header[len(MAGIC):HEADER_SIZE])[0]


def decode_entry(value: bytes) -> Entry:
    """An entry from its stored bytes; raises UndecodableEntry for anything else."""
    try:
        value = bytes(value)
        created = created_of(value[:HEADER_SIZE])
        data = json.loads(zlib.decompress(value[HEADER_SIZE:]))
        if data.get("v") != FORMAT_VERSION:
            raise UndecodableEntry(f"entry format {data.get('v')!r}")
        entry = Entry(surface=data["surface"], endpoint=data["endpoint"], model=data["model"],
                      created=created)
        if "body" in data:
            entry.body = data["body"].encode()
        else:
            entry.codec = data["codec"]
            entry.frames = tuple(frame.encode() for frame in data["frames"])
            entry.verbatim = frozenset(data.get("verbatim", ()))
        cost = data.get("cost") or {}
        entry.upstream_seconds = float(cost.get("s") or 0.0)
        entry.gpu_seconds = None if cost.get("gpu") is None else float(cost["gpu"])
        entry.tokens = int(cost.get("tok") or 0)
        return entry
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
