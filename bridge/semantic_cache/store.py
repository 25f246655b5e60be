"""Where semantic entries (label, scope, exact cache key, vector) are kept, so that every
worker, a restart and, with `--redis-url`, every instance finds them.

Without Redis: `<cache-dir>/semantic.sqlite` beside the disk tier, table `semantic`
(the rowid is the label, so labels grow with age), written off the event loop in one
native thread (`bridge.core.offloop`), read on the loop (WAL: readers never wait).
With Redis: one stream, `<prefix>:semantic:<model digest>:entries`, capped near the
bound (`XADD MAXLEN ~`): stock Redis, no module; a new instance reads it whole. A label
there is the stream id `ms-seq` as `ms << 12 | seq`. Either way each worker reads what
was added since its last read in a background greenlet and before each lookup (a range
read from its cursor), so what another worker or instance stored is found at once.

Vectors are float32, little-endian. Entries of another embedding model (or dimension)
are never read: SQLite forgets them when the model changes, Redis keys them by model.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bridge.core.offloop import SerialThread
from bridge.core.redis_link import Link, RedisDown
from bridge.semantic_cache.index import Row

log = logging.getLogger("bridge.semantic_cache")

FILE_NAME = "semantic.sqlite"
BATCH = 1000  # entries read per statement
REDIS_BATCH = 200  # entries per XRANGE: a reply well within --redis-timeout
BUSY_TIMEOUT_MS = 2000
READ_BUSY_TIMEOUT_MS = 5
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS semantic (label INTEGER PRIMARY KEY AUTOINCREMENT, "
    "scope TEXT NOT NULL, key TEXT NOT NULL, vector BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS semantic_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_SEQ_BITS = 12


class Store(Protocol):
    def add(self, scope: str, key: str, vector: np.ndarray) -> int | None: ...
    def read(self, cursor: Any, count: int = BATCH) -> tuple[list[Row], Any]: ...
    def close(self) -> None: ...


def _vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


class SqliteStore:
    """The entries of this instance, in a SQLite file beside the disk tier."""

    first: Any = 0  # the cursor before every entry

    def __init__(self, cache_dir: str, model: str, dims: int, max_entries: int):
        self.path = Path(cache_dir) / FILE_NAME
        self.max_entries = max_entries
        self.writer = SerialThread()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = self.writer.run(self._open_writer, model, dims)
        self._reader = sqlite3.connect(self.path, timeout=READ_BUSY_TIMEOUT_MS / 1000,
                                       check_same_thread=False, isolation_level=None)

    def _open_writer(self, model: str, dims: int) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                               check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = OFF")
        for statement in SCHEMA:
            conn.execute(statement)
        wanted = f"{model}\n{dims}"
        with conn:  # one transaction: a worker starting beside this one sees it whole
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT value FROM semantic_meta WHERE name = 'model'").fetchone()
            if row is None or row[0] != wanted:
                conn.execute("DELETE FROM semantic")  # another model's vectors: useless
                conn.execute("REPLACE INTO semantic_meta (name, value) VALUES ('model', ?)",
                             (wanted,))
        return conn

    def add(self, scope: str, key: str, vector: np.ndarray) -> int | None:
        try:
            return self.writer.run(self._insert, scope, key,
                                   vector.astype("<f4").tobytes())
        except sqlite3.Error as exc:
            log.warning("semantic cache: entry not stored (%s)", exc)
            return None

    def _insert(self, scope: str, key: str, blob: bytes) -> int:
        with self._writer:
            label = self._writer.execute(
                "INSERT INTO semantic (scope, key, vector) VALUES (?, ?, ?)",
                (scope, key, blob)).lastrowid
            self._writer.execute("DELETE FROM semantic WHERE label <= ?",
                                 (label - self.max_entries,))
        return int(label)

    def read(self, cursor: Any, count: int = BATCH) -> tuple[list[Row], Any]:
        """Up to `count` entries after `cursor`, oldest first, and the cursor after them."""
        try:
            rows = self._reader.execute(
                "SELECT label, scope, key, vector FROM semantic WHERE label > ? "
                "ORDER BY label LIMIT ?", (int(cursor), count)).fetchall()
        except sqlite3.Error:
            return [], cursor  # busy or gone: read again on the next round
        entries = [(int(label), scope, key, _vector(blob)) for label, scope, key, blob in rows]
        return entries, (entries[-1][0] if entries else cursor)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._reader.close()
        with contextlib.suppress(Exception):
            self.writer.run(self._writer.close)


class RedisStore:
    """The entries of the fleet, in one Redis stream."""

    first: Any = "-"

    def __init__(self, link: Link, model: str, dims: int, max_entries: int):
        self.link = link
        digest = hashlib.sha256(f"{model}\n{dims}".encode()).hexdigest()[:16]
        self.stream = link.key("semantic", digest, "entries")
        self.max_entries = max_entries

    def add(self, scope: str, key: str, vector: np.ndarray) -> int | None:
        fields = {"s": scope, "k": key, "v": vector.astype("<f4").tobytes()}
        try:
            stream_id = self.link.run(lambda client: client.xadd(
                self.stream, fields, maxlen=self.max_entries, approximate=True))
        except RedisDown:
            return None  # this answer is not shared; the exact entry still is
        return label_of(stream_id)

    def read(self, cursor: Any, count: int = BATCH) -> tuple[list[Row], Any]:
        start = cursor if cursor == "-" else f"({cursor}"
        count = min(count, REDIS_BATCH)
        try:
            found = self.link.run(lambda client: client.xrange(self.stream, start, "+",
                                                               count=count))
        except RedisDown:
            return [], cursor
        rows = []
        for stream_id, fields in found:
            try:
                rows.append((label_of(stream_id), fields[b"s"].decode(), fields[b"k"].decode(),
                             _vector(fields[b"v"])))
            except (KeyError, UnicodeDecodeError, ValueError):
                continue  # not an entry of ours
        return rows, (_text(found[-1][0]) if found else cursor)

    def close(self) -> None:
        pass


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def label_of(stream_id: bytes | str) -> int:
    milliseconds, _, sequence = _text(stream_id).partition("-")
    return int(milliseconds) << _SEQ_BITS | min(int(sequence or 0), (1 << _SEQ_BITS) - 1)
