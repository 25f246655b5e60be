"""The async job store in Redis (`--redis-url`): any instance answers for any fingerprint.

A job is one Redis hash (`<prefix>:jobs:j:<fingerprint>`: the request, its state, the
lease holder, the result) plus sorted sets that index it: `queued` (by the time it is
due), `running` (by the end of its lease), `ended` (by the expiry of its result) and
`all` (by creation, for `jobs list`). Submitting, claiming, finishing and putting back
are server-side scripts, so exactly one runner of all instances claims a job; a job
whose runner died is claimed again once its lease runs out (at once when the dead
process was on this host). As with the SQLite store, a pass-through client's
credentials are kept only while the job waits or runs and deleted by the script that
stores its result.

Durability is Redis's: with the default snapshots a Redis crash loses the last minutes
of jobs; users who need every accepted job to survive run Redis with `appendonly yes`
(and `appendfsync everysec`). While Redis is unreachable, new jobs go to the instance's
own SQLite store (`FallbackJobStore`) and are run and answered from there.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any, Callable

from bridge.async_jobs.store import (
    ENDED,
    QUEUED,
    RUNNING,
    Job,
    JobStore,
    QueueFull,
    Result,
    worker_pid,
)
from bridge.core import redis_link
from bridge.core.redis_link import Link, RedisDown, RedisFull
from bridge.core.settings import Settings

# KEYS: job, queued, all, ended, running. ARGV: fingerprint, max queued, now, request
# JSON, body, credential JSON ('' for none). 1 stored, 0 one exists, -1 queue full.
_SUBMIT = """
local status = redis.call('HGET', KEYS[1], 'status')
local now = tonumber(ARGV[3])
if status then
  local expires = tonumber(redis.call('HGET', KEYS[1], 'expires') or '0')
  if not ((status == 'done' or status == 'failed') and expires > 0 and expires < now) then
    return 0
  end
end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return -1 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'request', ARGV[4], 'body', ARGV[5],
           'status', 'queued', 'created', ARGV[3], 'attempts', 0)
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'credential', ARGV[6]) end
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZADD', KEYS[3], now, ARGV[1])
return 1
"""
# KEYS: queued, running. ARGV: now, worker, lease end, host, job key prefix.
_CLAIM = """
local fp = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)[1]
if not fp then fp = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 1)[1] end
if not fp then return false end
local job = ARGV[5] .. fp
redis.call('ZREM', KEYS[1], fp)
if redis.call('EXISTS', job) == 0 then
  redis.call('ZREM', KEYS[2], fp)
  return false
end
redis.call('ZADD', KEYS[2], ARGV[3], fp)
redis.call('HSET', job, 'status', 'running', 'worker', ARGV[2], 'host', ARGV[4])
redis.call('HINCRBY', job, 'attempts', 1)
redis.call('HSETNX', job, 'started', ARGV[1])
return redis.call('HGETALL', job)
"""
# KEYS: running. ARGV: worker, lease end, job key prefix, fingerprints...
_RENEW = """
for i = 4, #ARGV do
  local job = ARGV[3] .. ARGV[i]
  if redis.call('HGET', job, 'worker') == ARGV[1] and
     redis.call('HGET', job, 'status') == 'running' then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[i])
  end
end
return 1
"""
# The same, allowed to run on a full Redis (Redis 7's script flags): moving a lease's end
# takes no memory, and a lease that could not be renewed would let another instance
# start a second run of a job that is still running here.
_RENEW_WHEN_FULL = "#!lua flags=allow-oom\n" + _RENEW
# KEYS: job, running, ended. ARGV: fingerprint, worker, status, now, expires, result
# JSON, result body. 1 when this worker still held the job.
_FINISH = """
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] or
   redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished', ARGV[4], 'expires', ARGV[5],
           'result', ARGV[6], 'result_body', ARGV[7])
redis.call('HDEL', KEYS[1], 'credential', 'worker')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
return 1
"""
# KEYS: job, running, queued. ARGV: fingerprint, worker, due.
_RETRY = """
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] or
   redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('HDEL', KEYS[1], 'worker')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1
"""


def _number(value: bytes | None) -> float | None:
    return float(value) if value is not None else None


def job_from_hash(fingerprint: str, fields: dict[bytes, bytes]) -> Job:
    request = json.loads(fields[b"request"])
    result = json.loads(fields[b"result"]) if b"result" in fields else {}
    credential = fields.get(b"credential")
    return Job(fingerprint=fingerprint, body=fields[b"body"],
               credential=json.loads(credential) if credential else None,
               status=fields[b"status"].decode(), created=float(fields[b"created"]),
               attempts=int(fields.get(b"attempts", b"0")),
               worker=fields[b"worker"].decode() if b"worker" in fields else None,
               started=_number(fields.get(b"started")),
               finished=_number(fields.get(b"finished")),
               expires=_number(fields.get(b"expires")),
               result_status=result.get("status"), result_headers=result.get("headers", {}),
               result_codec=result.get("codec"), result_body=fields.get(b"result_body", b""),
               **request)


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class RedisJobStore:
    """`JobStore`'s interface over Redis; every call may raise `RedisDown`."""

    def __init__(self, link: Link):
        self.link = link
        self.prefix = link.key("jobs", "j", "")
        self.queued, self.running = link.key("jobs", "queued"), link.key("jobs", "running")
        self.ended, self.index = link.key("jobs", "ended"), link.key("jobs", "all")
        self.host = socket.gethostname()
        self._submit, self._claim = link.script(_SUBMIT), link.script(_CLAIM)
        self._renew, self._finish = link.script(_RENEW), link.script(_FINISH)
        self._renew_when_full = link.script(_RENEW_WHEN_FULL)
        self._retry = link.script(_RETRY)
        self._mine: set[str] = set()  # jobs this process runs (their leases it renews)

    def submit(self, job: Job, max_queued: int) -> tuple[Job, bool]:
        request = {"owner": job.owner, "content_hash": job.content_hash,
                   "surface": job.surface, "endpoint": job.endpoint, "method": job.method,
                   "path": job.path, "query": job.query, "headers": job.headers,
                   "facts": job.facts}
        now = time.time()
        stored = self._submit(
            [self.prefix + job.fingerprint, self.queued, self.index, self.ended, self.running],
            [job.fingerprint, max_queued, repr(now), json.dumps(request), job.body,
             json.dumps(job.credential) if job.credential else ""])
        if stored == -1:
            raise QueueFull(f"{max_queued} or more async jobs are waiting (--async-max-queued)")
        if stored == 1:
            job.status, job.created = QUEUED, now
            return job, True
        existing = self.get(job.fingerprint)
        if existing is None:  # it expired between the two calls: store it now
            return self.submit(job, max_queued)
        return existing, False

    def get(self, fingerprint: str) -> Job | None:
        fields = self.link.run(lambda client: client.hgetall(self.prefix + fingerprint))
        if not fields or b"request" not in fields:
            return None
        job = job_from_hash(fingerprint, fields)
        if job.status in ENDED and job.expires is not None and job.expires < time.time():
            return None
        return job

    def claim(self, worker: str, lease: float) -> Job | None:
        now = time.time()
        flat = self._claim([self.queued, self.running],
                           [repr(now), worker, repr(now + lease), self.host, self.prefix])
        if not flat:
            return None
        fields = _pairs(flat)
        fingerprint = fields[b"fingerprint"].decode()
        self._mine.add(fingerprint)
        return job_from_hash(fingerprint, fields)

    def renew(self, worker: str, lease: float) -> None:
        if self._mine:
            args = [worker, repr(time.time() + lease), self.prefix, *self._mine]
            try:
                self._renew([self.running], args)
            except RedisFull:  # (a Redis older than 7 cannot: the leases then run out)
                self._renew_when_full([self.running], args)

    def release_orphans(self, alive: Callable[[int], bool]) -> int:
        """End the leases of running jobs whose worker process on this host is gone."""
        fingerprints = [member.decode() for member in self.link.run(
            lambda client: client.zrange(self.running, 0, -1))]
        if not fingerprints:
            return 0
        holders = self.link.run(lambda client: [client.hmget(self.prefix + fp, "worker", "host")
                                                for fp in fingerprints])
        dead = [fp for fp, (worker, host) in zip(fingerprints, holders, strict=True)
                if host is not None and host.decode() == self.host and worker is not None
                and worker_pid(worker.decode()) and not alive(worker_pid(worker.decode()))]
        if dead:
            self.link.run(lambda client: client.zadd(self.running, dict.fromkeys(dead, 0),
                                                     xx=True))
        return len(dead)

    def finish(self, job: Job, status: str, result: Result, keep: float) -> bool:
        """Store the result; False when `job.worker` no longer holds the job. Raises
        `RedisFull` when Redis refuses it: the job is still this process's, its lease
        renewed, until a later call stores the result."""
        now = time.time()
        meta = json.dumps({"status": result.status, "headers": result.headers,
                           "codec": result.codec})
        try:
            stored = self._finish([self.prefix + job.fingerprint, self.running, self.ended],
                                  [job.fingerprint, job.worker or "", status, repr(now),
                                   repr(now + keep), meta, result.body])
        except RedisFull:
            raise
        except RedisDown:
            self._mine.discard(job.fingerprint)
            raise
        self._mine.discard(job.fingerprint)
        return stored == 1

    def retry_later(self, job: Job, delay: float) -> bool:
        self._mine.discard(job.fingerprint)
        return self._retry([self.prefix + job.fingerprint, self.running, self.queued],
                           [job.fingerprint, job.worker or "", repr(time.time() + delay)]) == 1

    def purge_expired(self) -> int:
        expired = [member.decode() for member in self.link.run(
            lambda client: client.zrangebyscore(self.ended, "-inf", time.time()))]
        return self._remove(expired)

    def _remove(self, fingerprints: list[str]) -> int:
        if not fingerprints:
            return 0

        def remove(client: Any) -> int:
            pipe = client.pipeline()
            pipe.delete(*(self.prefix + fp for fp in fingerprints))
            for index in (self.queued, self.running, self.ended, self.index):
                pipe.zrem(index, *fingerprints)
            return pipe.execute()[0]
        return int(self.link.run(remove))

    def count(self, status: str) -> int:
        if status in (QUEUED, RUNNING):
            key = self.queued if status == QUEUED else self.running
            return int(self.link.run(lambda client: client.zcard(key)))
        return sum(job.status == status for job in self.all())

    def all(self) -> list[Job]:
        fingerprints = [member.decode() for member in self.link.run(
            lambda client: client.zrange(self.index, 0, -1))]
        jobs = (self.get(fp) for fp in fingerprints)
        return [job for job in jobs if job is not None]

    def purge(self, fingerprint: str | None = None, everything: bool = False) -> int:
        if fingerprint is not None:
            return self._remove([fingerprint])
        if everything:
            return self._remove([member.decode() for member in self.link.run(
                lambda client: client.zrange(self.index, 0, -1))])
        return self._remove([member.decode() for member in self.link.run(
            lambda client: client.zrange(self.ended, 0, -1))])


class FallbackJobStore:
    """The Redis store, with the instance's SQLite store for the time Redis is away:
    new jobs go where they can, reads look in both, and a job is finished where it was
    claimed."""

    def __init__(self, shared: RedisJobStore, local: JobStore):
        self.shared = shared
        self.local = local
        self.path = local.path
        self._claimed_locally: set[str] = set()

    def open(self, create: bool = True) -> "FallbackJobStore":
        self.local.open(create)
        return self

    def close(self) -> None:
        self.local.close()

    def submit(self, job: Job, max_queued: int) -> tuple[Job, bool]:
        try:
            return self.shared.submit(job, max_queued)
        except RedisDown:
            return self.local.submit(job, max_queued)

    def get(self, fingerprint: str) -> Job | None:
        try:
            job = self.shared.get(fingerprint)
            if job is not None:
                return job
        except RedisDown:
            pass
        return self.local.get(fingerprint)

    def claim(self, worker: str, lease: float) -> Job | None:
        try:
            job = self.shared.claim(worker, lease)
            if job is not None:
                return job
        except RedisDown:
            pass
        job = self.local.claim(worker, lease)
        if job is not None:
            self._claimed_locally.add(job.fingerprint)
        return job

    def renew(self, worker: str, lease: float) -> None:
        self._both(lambda store: store.renew(worker, lease))

    def release_orphans(self, alive: Callable[[int], bool]) -> int:
        return sum(self._both(lambda store: store.release_orphans(alive)))

    def finish(self, job: Job, status: str, result: Result, keep: float) -> bool:
        if job.fingerprint in self._claimed_locally:
            self._claimed_locally.discard(job.fingerprint)
            return self.local.finish(job, status, result, keep)
        try:
            return self.shared.finish(job, status, result, keep)
        except RedisFull:
            raise  # the job is still ours: the runner stores its result when Redis can
        except RedisDown:
            return False  # its lease runs out and a later run stores the result

    def retry_later(self, job: Job, delay: float) -> bool:
        if job.fingerprint in self._claimed_locally:
            self._claimed_locally.discard(job.fingerprint)
            return self.local.retry_later(job, delay)
        try:
            return self.shared.retry_later(job, delay)
        except RedisDown:
            return False

    def purge_expired(self) -> int:
        return sum(self._both(lambda store: store.purge_expired()))

    def count(self, status: str) -> int:
        return sum(self._both(lambda store: store.count(status)))

    def all(self) -> list[Job]:
        return [job for jobs in self._both(lambda store: store.all()) for job in jobs]

    def purge(self, fingerprint: str | None = None, everything: bool = False) -> int:
        return sum(self._both(lambda store: store.purge(fingerprint, everything)))

    def _both(self, action: Callable[[Any], Any]) -> list[Any]:
        """`action` on the Redis store (unless it is away) and on the local one."""
        results = []
        try:
            results.append(action(self.shared))
        except RedisDown:
            pass
        results.append(action(self.local))
        return results


def shared_store(settings: Settings, local: JobStore) -> JobStore | FallbackJobStore:
    """The job store: in Redis with `--redis-url` (the local one while Redis is away),
    else the instance's own SQLite store."""
    link = redis_link.link_for(settings)
    return local if link is None else FallbackJobStore(RedisJobStore(link), local)
