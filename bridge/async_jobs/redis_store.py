"""The async job store in Redis (`--redis-url`): any instance answers for any fingerprint.

A job is one Redis hash (`<prefix>:jobs:j:<id>`, the id being `<fingerprint>/<owner>`:
the request, its state, the lease holder, the result) plus sorted sets of ids that
index it: `queued` (by the time it is due), `running` (by the end of its lease), `ended`
(by the expiry of its result) and `all` (by creation, for `jobs list`). Submitting,
claiming, finishing and putting back are server-side scripts, so exactly one runner of
all instances claims a job; a job whose runner died is claimed again once its lease
runs out (at once when the dead process was on this host). As with the SQLite store, a
pass-through client's credentials (headers and credential query parameters) are kept
only while the job waits or runs and deleted by the script that stores its result.

Durability is Redis's: with the default snapshots a Redis crash loses the last minutes
of jobs; users who need every accepted job to survive run Redis with `appendonly yes`
(and `appendfsync everysec`). While Redis is unreachable, new jobs go to the instance's
own SQLite store (`FallbackJobStore`) and are run and answered from there.

The request's JSON only ever gains fields that have a default in `Job` (`api`, `asked`:
a job sent on a client API served by translation), so a job stored by an older
version reads as it was.
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
    Credential,
    Job,
    JobStore,
    QueueFull,
    Result,
    worker_pid,
)
from bridge.core import redis_link
from bridge.core.redis_link import Link, RedisDown, RedisFull
from bridge.core.settings import Settings

# KEYS: job, queued, all, ended, running. ARGV: id, max queued, now, request JSON, body,
# credential JSON ('' for none), fingerprint. 1 stored, 0 one exists, -1 queue full.
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
redis.call('HSET', KEYS[1], 'fingerprint', ARGV[7], 'request', ARGV[4], 'body', ARGV[5],
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
# KEYS: running. ARGV: worker, lease end, job key prefix, ids...
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
# KEYS: job, running, ended. ARGV: id, worker, status, now, expires, result
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
# KEYS: job, running, queued. ARGV: id, worker, due, '1' when the run is not
# counted (handed back by a stopping worker) else '0'.
_RETRY = """
if redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] or
   redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('HDEL', KEYS[1], 'worker')
if ARGV[4] == '1' and tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') > 0 then
  redis.call('HINCRBY', KEYS[1], 'attempts', -1)
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1
"""
# KEYS: job, ended, all. ARGV: id, created. 1 when the ended job made then was removed.
_DISCARD = """
local status = redis.call('HGET', KEYS[1], 'status')
if (status ~= 'done' and status ~= 'failed') or
   redis.call('HGET', KEYS[1], 'created') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""


def job_id(owner: str, fingerprint: str) -> str:
    """The job's name in Redis: a fingerprint never holds `/`, so the first one ends it.
    A job stored before jobs had owners (owner '') keeps the fingerprint alone."""
    return f"{fingerprint}/{owner}" if owner else fingerprint


def _number(value: bytes | None) -> float | None:
    return float(value) if value is not None else None


def job_from_hash(fields: dict[bytes, bytes]) -> Job:
    request = json.loads(fields[b"request"])
    result = json.loads(fields[b"result"]) if b"result" in fields else {}
    return Job(fingerprint=fields[b"fingerprint"].decode(), body=fields[b"body"],
               credential=Credential.loads(fields.get(b"credential")),
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
        self._retry, self._discard = link.script(_RETRY), link.script(_DISCARD)
        self._mine: set[str] = set()  # ids of the jobs this process runs (it renews them)
        self._renew_when_full = link.script(_RENEW_WHEN_FULL)

    def submit(self, job: Job, max_queued: int) -> tuple[Job, bool]:
        request = {"owner": job.owner, "content_hash": job.content_hash,
                   "surface": job.surface, "endpoint": job.endpoint, "method": job.method,
                   "path": job.path, "query": job.query, "headers": job.headers,
                   "facts": job.facts, "api": job.api, "asked": job.asked}
        now = time.time()
        name = job_id(*job.key)
        stored = self._submit(
            [self.prefix + name, self.queued, self.index, self.ended, self.running],
            [name, max_queued, repr(now), json.dumps(request), job.body,
             job.credential.dumps() if job.credential else "", job.fingerprint])
        if stored == -1:
            raise QueueFull(f"{max_queued} or more async jobs are waiting (--async-max-queued)")
        if stored == 1:
            job.status, job.created = QUEUED, now
            return job, True
        existing = self.get(*job.key)
        if existing is None:  # it expired between the two calls: store it now
            return self.submit(job, max_queued)
        return existing, False

    def get(self, owner: str, fingerprint: str) -> Job | None:
        return self._get(job_id(owner, fingerprint))

    def _get(self, name: str) -> Job | None:
        fields = self.link.run(lambda client: client.hgetall(self.prefix + name))
        if not fields or b"request" not in fields:
            return None
        job = job_from_hash(fields)
        if job.status in ENDED and job.expires is not None and job.expires < time.time():
            return None
        return job

    def discard(self, job: Job) -> bool:
        name = job_id(*job.key)
        return self._discard([self.prefix + name, self.ended, self.index],
                             [name, repr(job.created)]) == 1

    def claim(self, worker: str, lease: float) -> Job | None:
        now = time.time()
        flat = self._claim([self.queued, self.running],
                           [repr(now), worker, repr(now + lease), self.host, self.prefix])
        if not flat:
            return None
        job = job_from_hash(_pairs(flat))
        self._mine.add(job_id(*job.key))
        return job

    def renew(self, worker: str, lease: float) -> None:
        if self._mine:
            args = [worker, repr(time.time() + lease), self.prefix, *self._mine]
            try:
                self._renew([self.running], args)
            except RedisFull:  # (a Redis older than 7 cannot: the leases then run out)
                self._renew_when_full([self.running], args)

    def release_orphans(self, alive: Callable[[int], bool]) -> int:
        """End the leases of running jobs whose worker process on this host is gone."""
        names = self._members(self.running)
        if not names:
            return 0
        holders = self.link.run(lambda client: [client.hmget(self.prefix + name, "worker",
                                                             "host") for name in names])
        dead = [name for name, (worker, host) in zip(names, holders, strict=True)
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
        name = job_id(*job.key)
        meta = json.dumps({"status": result.status, "headers": result.headers,
                           "codec": result.codec})
        try:
            stored = self._finish([self.prefix + name, self.running, self.ended],
                                  [name, job.worker or "", status, repr(now),
                                   repr(now + keep), meta, result.body])
        except RedisFull:
            raise  # still ours: the lease is renewed until Redis takes the result
        except RedisDown:
            self._mine.discard(name)
            raise
        self._mine.discard(name)
        return stored == 1

    def retry_later(self, job: Job, delay: float) -> bool:
        return self._requeue(job, time.time() + delay, counted=True)

    def hand_back(self, job: Job) -> bool:
        """As `JobStore.hand_back`: queued again in its place (due since its creation)."""
        return self._requeue(job, job.created, counted=False)

    def _requeue(self, job: Job, due: float, counted: bool) -> bool:
        name = job_id(*job.key)
        self._mine.discard(name)
        return self._retry([self.prefix + name, self.running, self.queued],
                           [name, job.worker or "", repr(due), "0" if counted else "1"]) == 1

    def purge_expired(self) -> int:
        return self._remove([member.decode() for member in self.link.run(
            lambda client: client.zrangebyscore(self.ended, "-inf", time.time()))])

    def _members(self, index: str) -> list[str]:
        return [member.decode() for member in self.link.run(
            lambda client: client.zrange(index, 0, -1))]

    def _remove(self, names: list[str]) -> int:
        if not names:
            return 0

        def remove(client: Any) -> int:
            pipe = client.pipeline()
            pipe.delete(*(self.prefix + name for name in names))
            for index in (self.queued, self.running, self.ended, self.index):
                pipe.zrem(index, *names)
            return pipe.execute()[0]
        return int(self.link.run(remove))

    def count(self, status: str) -> int:
        if status in (QUEUED, RUNNING):
            key = self.queued if status == QUEUED else self.running
            return int(self.link.run(lambda client: client.zcard(key)))
        return sum(job.status == status for job in self.all())

    def all(self) -> list[Job]:
        jobs = (self._get(name) for name in self._members(self.index))
        return [job for job in jobs if job is not None]

    def purge(self, fingerprint: str | None = None, everything: bool = False) -> int:
        if fingerprint is not None:  # every owner's job of that fingerprint
            return self._remove([name for name in self._members(self.index)
                                 if name.partition("/")[0] == fingerprint])
        return self._remove(self._members(self.index if everything else self.ended))


class FallbackJobStore:
    """The Redis store, with the instance's SQLite store for the time Redis is away:
    new jobs go where they can, reads look in both, and a job is finished where it was
    claimed."""

    def __init__(self, shared: RedisJobStore, local: JobStore):
        self.shared = shared
        self.local = local
        self.path = local.path
        self._claimed_locally: set[tuple[str, str]] = set()

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

    def get(self, owner: str, fingerprint: str) -> Job | None:
        try:
            job = self.shared.get(owner, fingerprint)
            if job is not None:
                return job
        except RedisDown:
            pass
        return self.local.get(owner, fingerprint)

    def discard(self, job: Job) -> bool:
        return any(self._both(lambda store: store.discard(job)))

    def claim(self, worker: str, lease: float) -> Job | None:
        try:
            job = self.shared.claim(worker, lease)
            if job is not None:
                return job
        except RedisDown:
            pass
        job = self.local.claim(worker, lease)
        if job is not None:
            self._claimed_locally.add(job.key)
        return job

    def renew(self, worker: str, lease: float) -> None:
        self._both(lambda store: store.renew(worker, lease))

    def release_orphans(self, alive: Callable[[int], bool]) -> int:
        return sum(self._both(lambda store: store.release_orphans(alive)))

    def finish(self, job: Job, status: str, result: Result, keep: float) -> bool:
        return self._where_claimed(job, lambda store: store.finish(job, status, result, keep))

    def retry_later(self, job: Job, delay: float) -> bool:
        return self._where_claimed(job, lambda store: store.retry_later(job, delay))

    def hand_back(self, job: Job) -> bool:
        return self._where_claimed(job, lambda store: store.hand_back(job))

    def _where_claimed(self, job: Job, action: Callable[[Any], bool]) -> bool:
        """`action` on the store the job was claimed from; False while that is an
        unreachable Redis (its lease runs out and a later run stores the result)."""
        if job.key in self._claimed_locally:
            self._claimed_locally.discard(job.key)
            return action(self.local)
        try:
            return action(self.shared)
        except RedisFull:
            raise  # the job is still ours: the runner stores its result when Redis can
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
