"""The durable job store of async requests: one SQLite file (WAL) in the state directory.

A job row holds the request (enough to rebuild its exchange), its state (queued,
running, done, failed), the lease of the worker running it and, once it ended, its
result. Every change is one short `BEGIN IMMEDIATE` transaction, so exactly one worker
claims a job, and a job whose worker died (its lease ran out, or its process is gone) is
claimed again. A pass-through client's credential headers are kept in the row only
while the job waits or runs, and removed in the transaction that stores its result
(overwritten in the file, and the write-ahead log truncated after it).
Each process opens its own connection, after fork.

Nothing here holds a worker's event loop while SQLite waits for another process: what
may wait for a lock (opening, `BEGIN IMMEDIATE`, `COMMIT`, reads, the WAL checkpoint)
runs in this process's one native thread for the store (`bridge.core.offloop`), so a
write lock held elsewhere for seconds costs the waiting greenlet only. The statements
inside a transaction run where its caller is: the write lock is held by then, and in
WAL mode they wait for nobody.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from bridge.core.offloop import SerialThread

log = logging.getLogger("bridge.async")

FILE_NAME = "jobs.sqlite3"
BUSY_TIMEOUT = 5.0
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
ENDED = (DONE, FAILED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    fingerprint TEXT PRIMARY KEY,
    owner TEXT NOT NULL,            -- NAME of the client key that created it, or ''
    content_hash TEXT NOT NULL,
    surface TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    query TEXT NOT NULL,
    headers TEXT NOT NULL,          -- JSON, credentials never included
    body BLOB NOT NULL,             -- without request_fingerprint
    facts TEXT NOT NULL,            -- JSON: the typed exchange fields set by outer stages
    credential TEXT,                -- JSON, pass-through mode only; NULL once the job ended
    status TEXT NOT NULL,
    created REAL NOT NULL,
    not_before REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    started REAL,
    finished REAL,
    expires REAL,
    result_status INTEGER,
    result_headers TEXT,
    result_codec TEXT,
    result_body BLOB
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, not_before, created);
"""


class QueueFull(Exception):
    """The bound on queued jobs (--async-max-queued) is reached."""


@dataclass
class Job:
    """One async request: what to run, and where it stands."""

    fingerprint: str
    owner: str
    content_hash: str
    surface: str
    endpoint: str
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    facts: dict[str, Any] = field(default_factory=dict)
    credential: dict[str, str] | None = field(default=None, repr=False)
    status: str = QUEUED
    created: float = 0.0
    attempts: int = 0
    worker: str | None = None
    started: float | None = None
    finished: float | None = None
    expires: float | None = None
    result_status: int | None = None
    result_headers: dict[str, str] = field(default_factory=dict)
    result_codec: str | None = None
    result_body: bytes = field(default=b"", repr=False)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        return cls(
            fingerprint=row["fingerprint"], owner=row["owner"],
            content_hash=row["content_hash"], surface=row["surface"],
            endpoint=row["endpoint"], method=row["method"], path=row["path"],
            query=row["query"], headers=json.loads(row["headers"]), body=bytes(row["body"]),
            facts=json.loads(row["facts"]),
            credential=json.loads(row["credential"]) if row["credential"] else None,
            status=row["status"], created=row["created"], attempts=row["attempts"],
            worker=row["worker"], started=row["started"], finished=row["finished"],
            expires=row["expires"], result_status=row["result_status"],
            result_headers=json.loads(row["result_headers"] or "{}"),
            result_codec=row["result_codec"], result_body=bytes(row["result_body"] or b""))


@dataclass(frozen=True)
class Result:
    """What a job produced: a whole body, or a stream's frames as written on the wire."""

    status: int
    headers: dict[str, str]
    body: bytes
    codec: str | None = None


def worker_pid(worker: str | None) -> int:
    """The process id in a worker name `PID:TOKEN` (0 when there is none)."""
    head = (worker or "").partition(":")[0]
    return int(head) if head.isdigit() else 0


class JobStore:
    """The jobs of `state_dir`, shared by all workers (and the `jobs` command)."""

    def __init__(self, state_dir: str | os.PathLike):
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / FILE_NAME
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        # one connection per process, shared by its greenlets (or threads): one
        # transaction at a time on it
        self._lock = threading.Lock()
        self._offloop = SerialThread()  # where what may wait for another process runs

    def _connection(self) -> sqlite3.Connection:
        """This process's connection, opened (off the loop) on first use."""
        if self._db is None or self._pid != os.getpid():
            self._offloop.run(self.open)
        assert self._db is not None
        return self._db

    def open(self, create: bool = True) -> "JobStore":
        if self._db is not None and self._pid == os.getpid():
            return self
        if not create and not self.path.exists():
            raise FileNotFoundError(f"no job store at {self.path}")
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fresh = not self.path.exists()
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                             check_same_thread=False)
        if fresh:
            os.chmod(self.path, 0o600)  # requests (and, while queued, credentials)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: a killed process loses nothing
        db.execute("PRAGMA secure_delete=ON")  # a removed credential is overwritten
        db.executescript(_SCHEMA)
        self._db, self._pid = db, os.getpid()
        return self

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        db = self._connection()
        with self._lock:
            return self._offloop.run(lambda: db.execute(sql, params).fetchall())

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction, taken at once (no lock upgrade deadlocks)."""
        db = self._connection()
        with self._lock:
            try:
                self._offloop.run(db.execute, "BEGIN IMMEDIATE")  # waits for other processes
                yield db
                self._offloop.run(db.execute, "COMMIT")  # may checkpoint the WAL: disk writes
            except BaseException:
                # Queued behind what the thread still runs for us (a BEGIN whose waiting
                # greenlet was killed still takes the lock): no transaction outlives this.
                self._offloop.submit(_end_transaction, db)
                raise

    # --- the clients' side ----------------------------------------------------------------

    def submit(self, job: Job, max_queued: int) -> tuple[Job, bool]:
        """The job stored under `job.fingerprint` (True when `job` was just stored);
        raises `QueueFull` rather than storing more than `max_queued` waiting jobs."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT * FROM jobs WHERE fingerprint = ?",
                             (job.fingerprint,)).fetchone()
            if row is not None and not _expired(row, now):
                return Job.from_row(row), False
            queued = db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?",
                                (QUEUED,)).fetchone()[0]
            if queued >= max_queued:
                raise QueueFull(f"{queued} async jobs are waiting (--async-max-queued)")
            job.status, job.created = QUEUED, now
            db.execute("DELETE FROM jobs WHERE fingerprint = ?", (job.fingerprint,))
            db.execute(
                "INSERT INTO jobs (fingerprint, owner, content_hash, surface, endpoint, "
                "method, path, query, headers, body, facts, credential, status, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.fingerprint, job.owner, job.content_hash, job.surface, job.endpoint,
                 job.method, job.path, job.query, json.dumps(job.headers), job.body,
                 json.dumps(job.facts),
                 json.dumps(job.credential) if job.credential else None, QUEUED, now))
        return job, True

    def get(self, fingerprint: str) -> Job | None:
        """The job, or None when there is none or its result has expired."""
        rows = self._read("SELECT * FROM jobs WHERE fingerprint = ?", (fingerprint,))
        if not rows or _expired(rows[0], time.time()):
            return None
        return Job.from_row(rows[0])

    # --- the runners' side ----------------------------------------------------------------

    def claim(self, worker: str, lease: float) -> Job | None:
        """Take the oldest job that is due (queued, or running under a lease that ran
        out) for `worker`; None when there is none."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE (status = ? AND not_before <= ?) "
                "OR (status = ? AND lease_until < ?) ORDER BY created LIMIT 1",
                (QUEUED, now, RUNNING, now)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET status = ?, worker = ?, lease_until = ?, "
                       "attempts = attempts + 1, started = COALESCE(started, ?) "
                       "WHERE fingerprint = ?",
                       (RUNNING, worker, now + lease, now, row["fingerprint"]))
        job = Job.from_row(row)
        job.status, job.worker, job.attempts = RUNNING, worker, job.attempts + 1
        job.started = job.started or now
        return job

    def renew(self, worker: str, lease: float) -> None:
        """Extend the leases of every job `worker` runs."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET lease_until = ? WHERE worker = ? AND status = ?",
                       (time.time() + lease, worker, RUNNING))

    def release_orphans(self, alive: Callable[[int], bool]) -> int:
        """End at once the leases of running jobs whose worker process is gone (a worker
        or the whole bridge was killed): they are claimed again without waiting."""
        rows = self._read("SELECT fingerprint, worker FROM jobs WHERE status = ? AND "
                          "lease_until > 0", (RUNNING,))
        dead = [(row["fingerprint"], row["worker"]) for row in rows
                if worker_pid(row["worker"]) and not alive(worker_pid(row["worker"]))]
        if dead:
            with self._transaction() as db:
                db.executemany("UPDATE jobs SET lease_until = 0 WHERE fingerprint = ? AND "
                               "worker = ? AND status = 'running'", dead)
        return len(dead)

    def finish(self, job: Job, status: str, result: Result, keep: float) -> bool:
        """Store the job's result (and forget its credential); False when `job.worker`
        no longer holds it (its lease ran out and another worker took it)."""
        now = time.time()
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET status = ?, finished = ?, expires = ?, credential = NULL, "
                "lease_until = 0, result_status = ?, result_headers = ?, result_codec = ?, "
                "result_body = ? WHERE fingerprint = ? AND worker = ? AND status = ?",
                (status, now, now + keep, result.status, json.dumps(result.headers),
                 result.codec, result.body, job.fingerprint, job.worker, RUNNING)).rowcount
        if changed and job.credential:
            self._forget_old_pages()
        return changed == 1

    def _forget_old_pages(self) -> None:
        """Copy the log into the file and empty it, so that the page versions that held
        a credential are gone from the log too (best effort: a reader may delay it)."""
        db = self._connection()
        with self._lock:  # waits for readers and writers of every process
            self._offloop.run(db.execute, "PRAGMA wal_checkpoint(TRUNCATE)")

    def retry_later(self, job: Job, delay: float) -> bool:
        """Put the job back in the queue, due in `delay` seconds."""
        with self._transaction() as db:
            return db.execute(
                "UPDATE jobs SET status = ?, worker = NULL, lease_until = 0, not_before = ? "
                "WHERE fingerprint = ? AND worker = ? AND status = ?",
                (QUEUED, time.time() + delay, job.fingerprint, job.worker,
                 RUNNING)).rowcount == 1

    def purge_expired(self) -> int:
        with self._transaction() as db:
            return db.execute("DELETE FROM jobs WHERE status IN (?, ?) AND expires < ?",
                              (*ENDED, time.time())).rowcount

    def count(self, status: str) -> int:
        return self._read("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,))[0][0]

    # --- operators (the `jobs` command) ---------------------------------------------------

    def all(self) -> list[Job]:
        rows = self._read("SELECT * FROM jobs ORDER BY created")
        return [Job.from_row(row) for row in rows]

    def purge(self, fingerprint: str | None = None, everything: bool = False) -> int:
        """Remove one job, the ended jobs, or (`everything`) every job."""
        with self._transaction() as db:
            if fingerprint is not None:
                return db.execute("DELETE FROM jobs WHERE fingerprint = ?",
                                  (fingerprint,)).rowcount
            if everything:
                return db.execute("DELETE FROM jobs").rowcount
            return db.execute("DELETE FROM jobs WHERE status IN (?, ?)", ENDED).rowcount


def _end_transaction(db: sqlite3.Connection) -> None:
    """Roll back what is left open (nothing, when BEGIN itself failed); in the thread,
    where nobody hears of a failure: the next BEGIN would report it."""
    try:
        if db.in_transaction:
            db.execute("ROLLBACK")
    except sqlite3.Error as exc:
        log.error("async job store: rollback failed: %s", exc)


def _expired(row: sqlite3.Row, now: float) -> bool:
    return row["status"] in ENDED and row["expires"] is not None and row["expires"] < now
