"""The disk tier: one sqlitedict file shared by every worker, surviving restarts.

The file is `<cache-dir>/responses.sqlite`, table `responses` in sqlitedict's layout
(`key TEXT PRIMARY KEY, value BLOB`), journal WAL, values encoded by `bridge.cache.entry`
(never pickle). sqlitedict's `REPLACE INTO` gives a rewritten key a new, highest rowid,
so rowid order is age order: eviction and TTL sweeps delete from the smallest rowid
with short statements. Triggers keep the entry count in `cache_meta` (a `COUNT(*)` over
a million rows would stall a worker), and `cache_purges` lets workers see purges made
by the `cache` command so they drop the same entries from memory. `cache_flights` holds short leases
that make single flight work across workers: the worker holding a key's lease calls
the upstream, the others wait for the entry to appear.

A file SQLite cannot use, found at open or by any later statement, is moved aside
(`responses.sqlite.corrupt-<time>`) with an error in the log and a fresh one is created:
once, by the first process that finds it (under a file lock; the others see a new inode
and just reopen). An entry that fails to decode is removed. Opening happens per
process, after fork.

Nothing here holds a worker's event loop while SQLite waits for another process. A store
or a lease claim is tried on the loop on a "quick" connection that never waits for the
write lock and never checkpoints the WAL (a sub-millisecond statement in WAL mode); when
another process holds the write lock, it is done instead on the writer
connection in one native thread of this process (`bridge.core.offloop`, when gevent
has patched threading), where waiting up to `BUSY_TIMEOUT_MS` costs the calling greenlet
only. Everything else that writes (releases, deletes, TTL sweeps, eviction, the WAL
checkpoint each sweeper round) always runs there. Reads run on the loop: entries are
read through sqlitedict (`SqliteDict` on the tier's table, values as bytes: its
connection thread is a greenlet under gevent, fine for reads, since in WAL mode a reader
never waits for writers), maintenance reads (counts, purges, sweeps) on a plain
connection; a read that still cannot go ahead within `READ_BUSY_TIMEOUT_MS` is a miss.
Writes do not go through sqlitedict's thread: as a greenlet it would hold the loop for
as long as another process holds the write lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from sqlitedict import SqliteDict, SqliteMultithread

from bridge.cache.entry import (
    HEADER_SIZE,
    Entry,
    UndecodableEntry,
    created_of,
    decode_entry,
    encode_entry,
    pack_created,
)
from bridge.cache.keys import SEPARATOR, key_model, model_prefix
from bridge.core import locking
from bridge.core.events import emit
from bridge.core.instance import pid_alive
from bridge.core.offloop import SerialThread

log = logging.getLogger("bridge.cache")
logging.getLogger("sqlitedict").setLevel(logging.CRITICAL)  # its errors reach us raised

TIER = "disk"
FILE_NAME = "responses.sqlite"
TABLE = "responses"
BUSY_TIMEOUT_MS = 2000
READ_BUSY_TIMEOUT_MS = 5
INLINE_EVICTION = 64  # rows evicted by a store itself; the sweeper does larger backlogs
RECOVER_INTERVAL = 10.0
OPEN_LOCK_TIMEOUT = 30.0  # another process opening or recovering the file takes far less

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS "{TABLE}" (key TEXT PRIMARY KEY, value BLOB);
CREATE TABLE IF NOT EXISTS cache_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cache_purges (id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT,
                                         at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS cache_flights (key TEXT PRIMARY KEY, pid INTEGER NOT NULL,
                                          expires REAL NOT NULL);
CREATE TRIGGER IF NOT EXISTS responses_added AFTER INSERT ON "{TABLE}"
  BEGIN UPDATE cache_meta SET value = value + 1 WHERE name = 'entries'; END;
CREATE TRIGGER IF NOT EXISTS responses_removed AFTER DELETE ON "{TABLE}"
  BEGIN UPDATE cache_meta SET value = value - 1 WHERE name = 'entries'; END;
"""
# Per connection: REPLACE's implicit delete must fire the delete trigger too; small WAL
# checkpoints (100 pages instead of 1000), so that one commit never pays for a long one.
CONNECTION_PRAGMAS = ("PRAGMA recursive_triggers = ON",
                      f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
                      "PRAGMA wal_autocheckpoint = 100")
# The writer connection: as sqlitedict sets its own (a crash of the machine may lose the
# last stores, never corrupt the file in WAL mode).
WRITER_PRAGMAS = (*CONNECTION_PRAGMAS, "PRAGMA synchronous = OFF")
READER_PRAGMAS = (f"PRAGMA busy_timeout = {READ_BUSY_TIMEOUT_MS}",)
# Stores and lease claims try the loop first, where they cost no thread hand-over (which
# waits for the GIL, up to 5 ms a time while other threads run Python): only when the
# write lock is free at once (no busy wait: SQLite's sleeps would be the loop's), and
# never paying for a WAL checkpoint (`checkpoint`, off the loop, does).
QUICK_PRAGMAS = (*CONNECTION_PRAGMAS[:1], "PRAGMA busy_timeout = 0",
                 "PRAGMA wal_autocheckpoint = 0", "PRAGMA synchronous = OFF")
_OLDEST = f'SELECT rowid FROM "{TABLE}" ORDER BY rowid LIMIT ?'
# Counted once, when the file has no count yet (made by an older version or by hand).
INIT_COUNT = f"""INSERT INTO cache_meta (name, value)
  SELECT 'entries', (SELECT COUNT(*) FROM "{TABLE}")
  WHERE NOT EXISTS (SELECT 1 FROM cache_meta WHERE name = 'entries')"""


def cache_file(cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir) / FILE_NAME


def is_corruption(exc: BaseException) -> bool:
    """SQLite errors meaning the file itself is bad (not a lock or a full disk)."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.DatabaseError) and (
        "malformed" in text or "not a database" in text or "corrupt" in text)


def _probe(path: Path) -> None:
    """Raise sqlite3.DatabaseError when `path` exists and SQLite cannot read it."""
    if not path.exists():
        return
    with contextlib.closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if TABLE in tables:
            conn.execute(f'SELECT key, length(value) FROM "{TABLE}" ORDER BY rowid DESC '
                         "LIMIT 1").fetchall()


def _move_aside(path: Path, reason: str) -> Path:
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            os.replace(source, f"{aside}{suffix}")
    log.error("cache file %s is unreadable (%s): moved aside to %s; starting a fresh one",
              path, reason, aside)
    return aside


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialises opening and recovery between the processes using the cache file.
    Opening yields to the loop while it holds the lock (sqlitedict's connection thread is
    a greenlet): the wait for it is cooperative and bounded, never a blocking `flock`."""
    with open(f"{path}.lock", "a+") as handle:
        with locking.exclusive(handle, OPEN_LOCK_TIMEOUT, f"the lock of {path}"):
            yield


def _tolerant_text(data: bytes) -> str:
    """TEXT that is not UTF-8 (a foreign or damaged row) is read, not an exception."""
    return data.decode("utf-8", "surrogateescape")


def _as_bytes(value: Any) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)


class _EntryConnection(SqliteMultithread):
    """sqlitedict's connection thread for entry reads: TEXT that is not UTF-8 is read
    without failing, and a lock is not waited for beyond `READ_BUSY_TIMEOUT_MS`."""

    def _connect(self) -> tuple[sqlite3.Connection, sqlite3.Cursor]:
        conn, cursor = super()._connect()
        conn.text_factory = _tolerant_text
        for pragma in READER_PRAGMAS:
            conn.execute(pragma)
        return conn, cursor


class _Entries(SqliteDict):
    """The tier's table as sqlitedict sees it (keys to stored bytes)."""

    def _new_conn(self) -> SqliteMultithread:
        return _EntryConnection(self.filename, autocommit=self.autocommit,
                                journal_mode=self.journal_mode, outer_stack=self._outer_stack)


def _entries(path: Path) -> _Entries:
    return _Entries(str(path), tablename=TABLE, flag="c", autocommit=True,
                    journal_mode="WAL", encode=bytes, decode=_as_bytes, outer_stack=False)


def _connection(path: Path, pragmas: Iterable[str]) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           timeout=BUSY_TIMEOUT_MS / 1000)
    conn.text_factory = _tolerant_text
    for pragma in pragmas:
        conn.execute(pragma)
    return conn


def _fetch_all(conn: sqlite3.Connection, sql: str, args: tuple) -> list[tuple]:
    return conn.execute(sql, args).fetchall()


def _entry_count(conn: sqlite3.Connection) -> int:
    """The entry count the triggers keep (one row: never a `COUNT(*)`)."""
    row = conn.execute("SELECT value FROM cache_meta WHERE name = 'entries'").fetchone()
    return int(row[0]) if row else 0


def _store(conn: sqlite3.Connection, key: str, value: bytes) -> int:
    """Write one entry; returns the entry count read with it."""
    conn.execute(f'REPLACE INTO "{TABLE}" (key, value) VALUES (?, ?)', (key, value))
    return _entry_count(conn)


def _delete_counted(conn: sqlite3.Connection, where: str, args: tuple) -> tuple[list[str], int]:
    """Delete the entries `where` says; returns their keys and the entry count after
    (read with them, in the writer's thread: no `count()` on the loop after a store)."""
    rows = conn.execute(f'DELETE FROM "{TABLE}" WHERE {where} RETURNING key', args).fetchall()
    return [row[0] for row in rows], _entry_count(conn)


def _locked(exc: Exception) -> bool:
    return "locked" in str(exc).lower() or "busy" in str(exc).lower()


def _claim(conn: sqlite3.Connection, key: str, seconds: float) -> bool:
    """The lease statements of `DiskTier.claim`, on the writer connection."""
    now = time.time()
    if conn.execute(
            "INSERT INTO cache_flights (key, pid, expires) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET pid = excluded.pid, expires = "
            "excluded.expires WHERE cache_flights.expires < ? OR cache_flights.pid = "
            "excluded.pid RETURNING 1", (key, os.getpid(), now + seconds, now)).fetchall():
        return True
    holder = conn.execute("SELECT pid FROM cache_flights WHERE key = ?", (key,)).fetchall()
    if holder and not pid_alive(holder[0][0]):  # its worker died: take the lease over
        return bool(conn.execute(
            "UPDATE cache_flights SET pid = ?, expires = ? WHERE key = ? AND pid = ? "
            "RETURNING 1", (os.getpid(), now + seconds, key, holder[0][0])).fetchall())
    return False


class DiskTier:
    """The shared disk tier; `open()` in each process before use, after fork."""

    def __init__(self, cache_dir: str | os.PathLike, ttl: float, max_entries: int):
        self.path = cache_file(cache_dir)
        self.ttl = ttl
        self.max_entries = max_entries
        self.reader: sqlite3.Connection | None = None  # on the loop: maintenance reads
        self.entries_table: _Entries | None = None  # on the loop: entry reads (sqlitedict)
        self._quick: sqlite3.Connection | None = None  # on the loop: bounded writes
        self._writer: sqlite3.Connection | None = None  # used in the writer's thread only
        self.writer = SerialThread()  # where the writer connection is used
        self._inode = 0
        self._recovered_at = 0.0
        self.moved_aside: Path | None = None  # where this process moved a corrupt file
        self.entries = 0  # the entry count as last read (with a store or a sweep step)

    # --- opening and recovery ---------------------------------------------------------

    def open(self) -> "DiskTier":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.path):
            try:
                _probe(self.path)
                self._connect()  # the schema statements read pages the probe did not
            except sqlite3.DatabaseError as exc:
                if not is_corruption(exc):
                    raise
                self.close()
                self.moved_aside = _move_aside(self.path, str(exc))
                self._connect()
        return self

    def _connect(self) -> None:
        writer = _connection(self.path, WRITER_PRAGMAS)
        try:
            writer.execute("PRAGMA journal_mode = WAL")
            for statement in [*SCHEMA.split(";\n"), INIT_COUNT]:
                if statement.strip():
                    writer.execute(statement)
            self.reader = _connection(self.path, READER_PRAGMAS)
            self.entries_table = _entries(self.path)
            self._quick = _connection(self.path, QUICK_PRAGMAS)
        except BaseException:
            writer.close()
            raise
        self._writer = writer
        self._inode = os.stat(self.path).st_ino

    def close(self) -> None:
        reader, writer, self.reader, self._writer = self.reader, self._writer, None, None
        table, self.entries_table = self.entries_table, None
        if table is not None:
            with contextlib.suppress(Exception):
                table.close()
        quick, self._quick = self._quick, None
        for conn in (reader, quick):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        if writer is not None:  # in the writer's thread, after what it is running
            with contextlib.suppress(Exception):
                self.writer.run(writer.close)

    def _failed(self, exc: Exception, doing: str) -> None:
        """Log a failed operation; when the file is corrupt, replace it."""
        log.error("cache disk tier: %s failed: %s: %s", doing, type(exc).__name__, exc)
        if is_corruption(exc):
            self.recover(exc)

    def recover(self, exc: Exception) -> None:
        """Move the corrupt file aside and reopen a fresh one (at most once per process
        and `RECOVER_INTERVAL`, and only if no other process replaced it already)."""
        if time.monotonic() - self._recovered_at < RECOVER_INTERVAL:
            return
        self._recovered_at = time.monotonic()
        self.close()
        try:
            with _file_lock(self.path):
                try:
                    same_file = os.stat(self.path).st_ino == self._inode
                except FileNotFoundError:
                    same_file = False
                if same_file and is_corruption(exc):
                    self.moved_aside = _move_aside(self.path, str(exc))
                self._connect()
        except (sqlite3.Error, OSError) as again:  # LockTimeout included: tried again later
            log.error("cache disk tier: cannot reopen %s: %s", self.path, again)

    def _select(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        """A read on the loop (never waits long for a lock: see READ_BUSY_TIMEOUT_MS)."""
        if self.reader is None:  # not opened, or a recovery could not reopen it
            raise sqlite3.OperationalError(f"cache file {self.path} is not open")
        return self.reader.execute(sql, tuple(args)).fetchall()

    def _write(self, function: Any, *args: Any) -> Any:
        """`function(writer connection, *args)` off the event loop (see `SerialThread`)."""
        if self._writer is None:
            raise sqlite3.OperationalError(f"cache file {self.path} is not open")
        return self.writer.run(function, self._writer, *args)

    def _quickly(self, function: Any, *args: Any) -> Any:
        """`function(connection, *args)` on the loop when the write lock is free, else off
        the loop on the writer connection (waiting for another process's lock there)."""
        if self._quick is not None:
            try:
                return function(self._quick, *args)
            except sqlite3.OperationalError as exc:
                if not _locked(exc):
                    raise
        return self._write(function, *args)

    def checkpoint(self) -> None:
        """Move the WAL into the file (what the loop's writes leave for later), off the loop."""
        try:
            self._execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            self._failed(exc, "checkpoint")

    def _execute(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        """A writing statement, off the event loop; returns its rows (RETURNING)."""
        return self._write(_fetch_all, sql, tuple(args))

    # --- entries ----------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        """The entry under `key`, or None (absent, expired, undecodable or unreadable)."""
        table = self.entries_table
        if table is None:
            return None
        try:
            value = table.get(key)
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                self._failed(exc, "read")
            return None  # locked for a moment (see READ_BUSY_TIMEOUT_MS): a miss
        except sqlite3.Error as exc:
            self._failed(exc, "read")
            return None
        if value is None:
            return None
        try:
            entry = decode_entry(value)
        except UndecodableEntry as exc:
            log.warning("cache entry for %s could not be decoded (%s): removed", key_model(key),
                        exc)
            self.delete(key)
            return None
        if entry.expired(self.ttl):
            if self.delete(key):
                emit("cache.expiration", tier=TIER)
            return None
        return entry

    def put(self, key: str, entry: Entry) -> bool:
        """Store `entry` (encoded here, written off the loop); raises UnicodeDecodeError
        when a frame is not UTF-8. The count comes back with the write: no `count()`."""
        if self._writer is None:
            return False
        value = encode_entry(entry)
        try:
            self.entries = self._quickly(_store, key, value)
        except sqlite3.Error as exc:
            self._failed(exc, "write")
            return False
        emit("cache.entries", self.entries, tier=TIER)
        if self.entries > self.max_entries:
            self.evict_excess(INLINE_EVICTION, self.entries)
        return True

    def delete(self, key: str) -> bool:
        try:
            return bool(self._execute(f'DELETE FROM "{TABLE}" WHERE key = ? RETURNING 1', (key,)))
        except sqlite3.Error as exc:
            self._failed(exc, "delete")
            return False

    def count(self) -> int:
        try:
            rows = self._select("SELECT value FROM cache_meta WHERE name = 'entries'")
        except sqlite3.Error as exc:
            if not _locked(exc):
                self._failed(exc, "count")
            return self.entries
        self.entries = int(rows[0][0]) if rows else 0
        return self.entries

    def report(self) -> None:
        emit("cache.entries", self.count(), tier=TIER)

    # --- single flight across workers ----------------------------------------------------

    def claim(self, key: str, seconds: float) -> bool:
        """Take (or, held by this process, renew) the lease on `key` for `seconds` unless
        another live one holds it. Without a readable disk, every worker may go ahead."""
        if self._writer is None or self._quick is None:
            return True
        try:
            return self._quickly(_claim, key, seconds)
        except sqlite3.Error as exc:
            self._failed(exc, "flight claim")
            return True

    def release(self, key: str) -> None:
        """Give the lease on `key` back, off the loop and without waiting for it: nobody
        needs the answer, and the lease expires anyway should this fail."""
        if self._writer is not None:
            self.writer.submit(self._release, self._writer, key, os.getpid())

    @staticmethod
    def _release(conn: sqlite3.Connection, key: str, pid: int) -> None:
        try:
            conn.execute("DELETE FROM cache_flights WHERE key = ? AND pid = ?", (key, pid))
        except sqlite3.Error as exc:  # in the writer thread: a log line (no recovery from here)
            log.error("cache disk tier: flight release failed: %s: %s", type(exc).__name__, exc)

    # --- maintenance in small steps (each one short statement) --------------------------

    def _delete_returning(self, where: str, args: tuple, doing: str) -> list[str]:
        """Delete entries off the loop, reporting the entry count that comes back with
        them; returns their keys."""
        try:
            keys, self.entries = self._write(_delete_counted, where, args)
        except sqlite3.Error as exc:
            self._failed(exc, doing)
            return []
        if keys:
            emit("cache.entries", self.entries, tier=TIER)
        return keys

    def evict_excess(self, batch: int, count: int | None = None) -> int:
        """Delete up to `batch` oldest entries beyond `max_entries` (of `count` entries,
        read when not given); returns how many."""
        excess = min(batch, (self.count() if count is None else count) - self.max_entries)
        if excess <= 0:
            return 0
        keys = self._delete_returning(f"rowid IN ({_OLDEST})", (excess,), "eviction")
        if keys:
            emit("cache.eviction", len(keys), tier=TIER)
        return len(keys)

    def expire_step(self, batch: int, now: float | None = None) -> tuple[list[str], bool]:
        """Delete the expired among the `batch` oldest entries.

        Returns the deleted keys and whether more may be expired (a whole batch went).
        Creation times are compared as big-endian doubles, which order like the numbers.
        """
        limit = pack_created((time.time() if now is None else now) - self.ttl)
        keys = self._delete_returning(
            f"rowid IN ({_OLDEST}) AND substr(value, 5, 8) < ?", (batch, limit), "TTL sweep")
        if keys:
            emit("cache.expiration", len(keys), tier=TIER)
        return keys, len(keys) == batch

    # --- operations: purge and statistics -----------------------------------------------

    def purge(self, model: str | None = None, batch: int = 1000) -> int:
        """Delete every entry (or those of `model`) and record the purge for the workers."""
        if model is None:
            where, args = "1", ()
        else:
            start = model_prefix(model)
            where, args = "key >= ? AND key < ?", (start, start[:-1] + chr(ord(SEPARATOR) + 1))
        removed = 0
        while True:
            keys = self._delete_returning(
                f'rowid IN (SELECT rowid FROM "{TABLE}" WHERE {where} LIMIT ?)',
                (*args, batch), "purge")
            removed += len(keys)
            if len(keys) < batch:
                break
        self._execute("INSERT INTO cache_purges (model, at) VALUES (?, ?) RETURNING id",
                      (model, time.time()))
        return removed

    def purges_since(self, last_id: int) -> list[tuple[int, str | None]]:
        """Purges recorded after `last_id`: (id, model or None for all)."""
        try:
            return [(row[0], row[1]) for row in self._select(
                "SELECT id, model FROM cache_purges WHERE id > ? ORDER BY id", (last_id,))]
        except sqlite3.Error as exc:
            self._failed(exc, "purge check")
            return []

    def last_purge(self) -> int:
        rows = self._select("SELECT COALESCE(MAX(id), 0) FROM cache_purges")
        return int(rows[0][0])

    def stats(self) -> dict[str, Any]:
        """Counts by model, ages and file sizes (a full scan: for the `cache` command)."""
        now = time.time()
        by_model: dict[str, int] = {}
        expired = 0
        oldest = newest = None
        for key, header in self._select(
                f'SELECT key, substr(CAST(value AS BLOB), 1, {HEADER_SIZE}) FROM "{TABLE}" '
                'ORDER BY rowid'):
            by_model[key_model(key)] = by_model.get(key_model(key), 0) + 1
            try:
                created = created_of(bytes(header))
            except UndecodableEntry:
                continue
            expired += now - created >= self.ttl
            oldest = created if oldest is None else min(oldest, created)
            newest = created if newest is None else max(newest, created)
        total = sum(by_model.values())
        # the triggers' count is what the workers use; a full scan is the moment to fix drift
        self._execute("UPDATE cache_meta SET value = ? WHERE name = 'entries' RETURNING 1",
                      (total,))
        size = sum(os.path.getsize(f"{self.path}{suffix}") for suffix in ("", "-wal")
                   if os.path.exists(f"{self.path}{suffix}"))
        return {"file": str(self.path), "bytes": size, "entries": total, "expired": expired,
                "max_entries": self.max_entries, "ttl_seconds": self.ttl,
                "oldest_age_seconds": None if oldest is None else round(now - oldest, 1),
                "newest_age_seconds": None if newest is None else round(now - newest, 1),
                "models": dict(sorted(by_model.items()))}


def bulk_insert(cache_dir: str | os.PathLike, items: Iterable[tuple[str, Entry]],
                batch: int = 10_000) -> int:
    """Write many entries fast with plain sqlite3 in the tier's format (benchmarks, tests,
    imports). Items are written in order, so the first is the oldest."""
    return bulk_write(cache_dir, ((key, encode_entry(entry)) for key, entry in items), batch)


def bulk_write(cache_dir: str | os.PathLike, rows: Iterable[tuple[str, bytes]],
               batch: int = 10_000) -> int:
    """`bulk_insert` for values already encoded: `executemany` in transactions of `batch`."""
    path = cache_file(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        for pragma in CONNECTION_PRAGMAS:
            conn.execute(pragma)
        conn.executescript(SCHEMA)
        conn.execute(INIT_COUNT)
        pending: list[tuple[str, bytes]] = []
        for row in rows:
            pending.append(row)
            if len(pending) >= batch:
                written += _write(conn, pending)
        written += _write(conn, pending)
    return written


def _write(conn: sqlite3.Connection, rows: list[tuple[str, bytes]]) -> int:
    conn.execute("BEGIN")
    conn.executemany(f'REPLACE INTO "{TABLE}" (key, value) VALUES (?, ?)', rows)
    conn.execute("COMMIT")
    count = len(rows)
    rows.clear()
    return count
