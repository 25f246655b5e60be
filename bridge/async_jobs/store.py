"""The durable job store of async requests: one SQLite file (WAL, mode 600) in the state
directory.

A job is named by its owner (the principal that submitted it) and its fingerprint: the
same fingerprint from two principals is two jobs. A job row holds the request (enough
to rebuild its exchange, without credentials), its state (queued, running, done,
failed), the lease of the worker running it and, once it ended, its result. Every
change is one short `BEGIN IMMEDIATE` transaction, so exactly one worker claims a job,
and a job whose worker died (its lease ran out, or its process is gone) is claimed
again. A pass-through client's credentials (headers and credential query parameters)
are kept in the row only while the job waits or runs, and removed in the transaction
that stores its result (overwritten in the file, and the write-ahead log truncated
after it). Each process opens its own connection, after fork; the first to open a
file of an older version migrates it (`SCHEMA_VERSION`).

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
from bridge.core.redaction import split_query

log = logging.getLogger("bridge.async")

FILE_NAME = "jobs.sqlite3"
BUSY_TIMEOUT = 5.0
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
ENDED = (DONE, FAILED)

# 1: one job per fingerprint (`fingerprint` the key, `owner` '' in pass-through mode);
# 2: one job per (owner, fingerprint), credential query parameters out of `query`;
# 3: `api` and `asked`, the client API served by translation and the client's request.
SCHEMA_VERSION = 3
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
    owner TEXT NOT NULL,            -- the principal that submitted it ('': a version-1
                                    -- job without one, which answers nobody)
    fingerprint TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    surface TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    query TEXT NOT NULL,            -- without credential parameters
    headers TEXT NOT NULL,          -- JSON, credentials never included
    body BLOB NOT NULL,             -- without request_fingerprint
    facts TEXT NOT NULL,            -- JSON: the typed exchange fields set by outer stages
    credential TEXT,                -- JSON `Credential`, pass-through mode only; NULL once
                                    -- the job ended
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
    result_body BLOB,
    api TEXT NOT NULL DEFAULT '',   -- the client API served by translation ('': none)
    asked TEXT,                     -- JSON: the client's request on `api` (no fingerprint)
    PRIMARY KEY (owner, fingerprint)
)""",
    "CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, not_before, created)",
)
# the columns of versions 1 and 2
_COLUMNS = ("owner", "fingerprint", "content_hash", "surface", "endpoint", "method", "path",
            "query", "headers", "body", "facts", "credential", "status", "created",
            "not_before", "attempts", "worker", "lease_until", "started", "finished",
            "expires", "result_status", "result_headers", "result_codec", "result_body")


class QueueFull(Exception):
    """The bound on queued jobs (--async-max-queued) is reached."""


@dataclass(frozen=True)
class Credential:
    """What a pass-through job needs to call the upstream as its client did: the
    credential headers, and the credential query parameters taken out of its query."""

    headers: dict[str, str] = field(repr=False)
    query: str = field(default="", repr=False)

    def dumps(self) -> str:
        return json.dumps({"headers": self.headers, "query": self.query})

    @classmethod
    def loads(cls, text: str | bytes | None) -> "Credential | None":
        if not text:
            return None
        data = json.loads(text)
        if isinstance(data.get("headers"), dict) and set(data) <= {"headers", "query"}:
            return cls(data["headers"], data.get("query", ""))
        return cls(data)  # version 1: the headers alone

    def full_query(self, query: str) -> str:
        """`query` (a job's stored one) with the credential parameters put back."""
        return "&".join(part for part in (query, self.query) if part)


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
    credential: Credential | None = field(default=None, repr=False)
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
    # sent on a client API served by translation (`bridge.surfaces`): its name, and the
    # client's request as it wrote it, to answer the native result in its shape
    api: str = ""
    asked: dict[str, Any] | None = field(default=None, repr=False)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        return cls(
            fingerprint=row["fingerprint"], owner=row["owner"],
            content_hash=row["content_hash"], surface=row["surface"],
            endpoint=row["endpoint"], method=row["method"], path=row["path"],
            query=row["query"], headers=json.loads(row["headers"]), body=bytes(row["body"]),
            facts=json.loads(row["facts"]),
            credential=Credential.loads(row["credential"]),
            status=row["status"], created=row["created"], attempts=row["attempts"],
            worker=row["worker"], started=row["started"], finished=row["finished"],
            expires=row["expires"], result_status=row["result_status"],
            result_headers=json.loads(row["result_headers"] or "{}"),
            result_codec=row["result_codec"], result_body=bytes(row["result_body"] or b""),
            api=row["api"], asked=json.loads(row["asked"]) if row["asked"] else None)

    @property
    def key(self) -> tuple[str, str]:
        """What names the job: (owner, fingerprint)."""
        return self.owner, self.fingerprint


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
        _private(self.path)  # requests and, while jobs wait, credentials
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                             check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")  # the -wal and -shm files take the file's mode
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: a killed process loses nothing
        db.execute("PRAGMA secure_delete=ON")  # a removed credential is overwritten
        if _migrate(db):
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the old rows' pages too
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
        """The job stored under `job.key` (True when `job` was just stored); raises
        `QueueFull` rather than storing more than `max_queued` waiting jobs."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT * FROM jobs WHERE owner = ? AND fingerprint = ?",
                             job.key).fetchone()
            if row is not None and not _expired(row, now):
                return Job.from_row(row), False
            queued = db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?",
                                (QUEUED,)).fetchone()[0]
            if queued >= max_queued:
                raise QueueFull(f"{queued} async jobs are waiting (--async-max-queued)")
            job.status, job.created = QUEUED, now
            db.execute("DELETE FROM jobs WHERE owner = ? AND fingerprint = ?", job.key)
            _insert(db, {
                "owner": job.owner, "fingerprint": job.fingerprint,
                "content_hash": job.content_hash, "surface": job.surface,
                "endpoint": job.endpoint, "method": job.method, "path": job.path,
                "query": job.query, "headers": json.dumps(job.headers), "body": job.body,
                "facts": json.dumps(job.facts),
                "credential": job.credential.dumps() if job.credential else None,
                "status": QUEUED, "created": now, "api": job.api,
                "asked": json.dumps(job.asked) if job.asked is not None else None})
        return job, True

    def get(self, owner: str, fingerprint: str) -> Job | None:
        """`owner`'s job, or None when there is none or its result has expired."""
        rows = self._read("SELECT * FROM jobs WHERE owner = ? AND fingerprint = ?",
                          (owner, fingerprint))
        if not rows or _expired(rows[0], time.time()):
            return None
        return Job.from_row(rows[0])

    def discard(self, job: Job) -> bool:
        """Remove `job` once it ended (and not a later job under its name)."""
        with self._transaction() as db:
            return db.execute(
                "DELETE FROM jobs WHERE owner = ? AND fingerprint = ? AND created = ? AND "
                "status IN (?, ?)", (*job.key, job.created, *ENDED)).rowcount == 1

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
                       "WHERE owner = ? AND fingerprint = ?",
                       (RUNNING, worker, now + lease, now, row["owner"], row["fingerprint"]))
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
        rows = self._read("SELECT owner, fingerprint, worker FROM jobs WHERE status = ? AND "
                          "lease_until > 0", (RUNNING,))
        dead = [(row["owner"], row["fingerprint"], row["worker"]) for row in rows
                if worker_pid(row["worker"]) and not alive(worker_pid(row["worker"]))]
        if dead:
            with self._transaction() as db:
                db.executemany("UPDATE jobs SET lease_until = 0 WHERE owner = ? AND "
                               "fingerprint = ? AND worker = ? AND status = 'running'", dead)
        return len(dead)

    def finish(self, job: Job, status: str, result: Result, keep: float) -> bool:
        """Store the job's result (and forget its credential); False when `job.worker`
        no longer holds it (its lease ran out and another worker took it)."""
        now = time.time()
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET status = ?, finished = ?, expires = ?, credential = NULL, "
                "lease_until = 0, result_status = ?, result_headers = ?, result_codec = ?, "
                "result_body = ? WHERE owner = ? AND fingerprint = ? AND worker = ? AND "
                "status = ?",
                (status, now, now + keep, result.status, json.dumps(result.headers),
                 result.codec, result.body, *job.key, job.worker, RUNNING)).rowcount
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
                "WHERE owner = ? AND fingerprint = ? AND worker = ? AND status = ?",
                (QUEUED, time.time() + delay, *job.key, job.worker, RUNNING)).rowcount == 1

    def hand_back(self, job: Job) -> bool:
        """Put a job `job.worker` will not finish (its worker is stopping) back in the
        queue, due now and in its place, its run not counted: it did not crash."""
        with self._transaction() as db:
            return db.execute(
                "UPDATE jobs SET status = ?, worker = NULL, lease_until = 0, not_before = 0, "
                "attempts = MAX(attempts - 1, 0) WHERE owner = ? AND fingerprint = ? AND "
                "worker = ? AND status = ?", (QUEUED, *job.key, job.worker, RUNNING)
            ).rowcount == 1

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
        """Remove the jobs of one fingerprint (every owner's), the ended jobs, or
        (`everything`) every job."""
        with self._transaction() as db:
            if fingerprint is not None:
                return db.execute("DELETE FROM jobs WHERE fingerprint = ?",
                                  (fingerprint,)).rowcount
            if everything:
                return db.execute("DELETE FROM jobs").rowcount
            return db.execute("DELETE FROM jobs WHERE status IN (?, ?)", ENDED).rowcount


def _private(path: Path) -> None:
    """Make `path` readable by this user only: created so (no moment with a wider mode),
    or narrowed when an older version or an operator left it wider."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)


def _insert(db: sqlite3.Connection, values: dict[str, Any]) -> None:
    names = ", ".join(values)
    db.execute(f"INSERT INTO jobs ({names}) VALUES ({', '.join('?' * len(values))})",
               tuple(values.values()))


def _migrate(db: sqlite3.Connection) -> bool:
    """Bring the file to `SCHEMA_VERSION` (creating it when new), in one transaction, so
    that the workers opening it at once migrate it once; True when old rows moved."""
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version >= SCHEMA_VERSION:
            db.execute("COMMIT")
            return False
        old = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                         "name = 'jobs'").fetchone() is not None
        if old and version == 2:  # its rows stay: two columns more, empty for them
            db.execute("ALTER TABLE jobs ADD COLUMN api TEXT NOT NULL DEFAULT ''")
            db.execute("ALTER TABLE jobs ADD COLUMN asked TEXT")
            old = False
        elif old:
            db.execute("ALTER TABLE jobs RENAME TO jobs_v1")
            db.execute("DROP INDEX IF EXISTS jobs_by_status")  # its name is the new one's
        for statement in _SCHEMA:
            db.execute(statement)
        if old:
            for row in db.execute("SELECT * FROM jobs_v1").fetchall():
                _insert(db, _version_2(row))
            db.execute("DROP TABLE jobs_v1")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return old


def _version_2(row: sqlite3.Row) -> dict[str, Any]:
    """A version-1 row as a version-2 one: its credential query parameters join its
    credential while it waits or runs, and are dropped once it ended."""
    values = {name: row[name] for name in _COLUMNS}
    values["query"], in_query = split_query(row["query"])
    credential = Credential.loads(row["credential"])
    if in_query and row["status"] not in ENDED:
        credential = Credential(credential.headers if credential else {}, in_query)
    values["credential"] = credential.dumps() if credential else None
    return values


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
