"""Async requests' pipeline stage: a model request carrying `request_fingerprint` is
stored as a durable job and answered 202 Accepted; the stages inside this one run it
later, in a background greenlet of some worker (`bridge.async_jobs.runner`).

A job belongs to the principal that sent it (`context.principals`: the client key in
shared mode, a digest of the credentials in pass-through): the same fingerprint from
another principal is another job, and at the status URL another principal's job does
not exist (the same 404 as an unknown fingerprint).

Asking again, with the same request or at the status URL (`GET /v1/async/<fingerprint>`,
`GET /api/async/<fingerprint>`), answers 202 while the job waits or runs, then its
stored result (a stream replayed as a stream) through the stages outside this one. The
same fingerprint with another request is a 409.

A job sent on a client API served by translation (`bridge.surfaces`: /v1/messages,
/v1/responses) runs as the native chat it means, and remembers the API and the client's
request: its stored native result is answered, at the status URL too, in that API's
shape (`edge.adopt`), a stream as that API's events. Its status (202) is the same
everywhere; its Location is /v1's status URL. A job refused by the upstream (401,
403) is answered once and then forgotten, so that asking again runs it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import secrets
from typing import Any

from bridge.async_jobs.redis_store import shared_store
from bridge.async_jobs.runner import Runner
from bridge.async_jobs.store import DONE, ENDED, Credential, Job, JobStore, QueueFull
from bridge.core import lifecycle, streaming
from bridge.core.errors import BadRequest, Conflict, NotFound, ServiceUnavailable
from bridge.core.events import emit
from bridge.core.exchange import Exchange, Response, encode_json
from bridge.core.pipeline import Context, Stage
from bridge.core.redaction import CREDENTIAL_HEADERS, split_query
from bridge.core.settings import Settings, upstream_key
from bridge.core.upstream import Backoff
from bridge.surfaces import edge

log = logging.getLogger("bridge.async")

FIELD = "request_fingerprint"
FINGERPRINT = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
ASYNC_ENDPOINTS = frozenset({"chat", "completions", "generate"})  # /v1 and /api alike
STATUS_ENDPOINT = "async"   # the routes' endpoint kind of GET /v1|/api/async/<fingerprint>
# by the client's API: those served by translation live under /v1
STATUS_PATHS = {"openai": "/v1/async/", "ollama": "/api/async/"}
# The client's credentials: never in the stored request (see `credentials`).
STORED_CREDENTIALS = (*CREDENTIAL_HEADERS, "cookie")
NOT_STORED = frozenset(STORED_CREDENTIALS) | {"content-length", "x-request-id"}
# Typed exchange fields set by outer stages, which the job's exchange gets back.
FACTS = ("client_key", "cache_scope", "upstream")
RETRY_AFTER = "1"           # seconds: most generations are over in a few
QUEUE_FULL_RETRY_AFTER = "5"
DEFAULT_SLOTS = 16          # jobs one worker runs at once without --max-concurrency
# The upstream refused the credentials: not a result to keep, since a retry may find
# them accepted (a key activated, the bridge's key replaced).
REFUSED = frozenset({401, 403})


def checked_fingerprint(value: Any) -> str:
    if not isinstance(value, str) or not FINGERPRINT.match(value):
        raise BadRequest(f"{FIELD} must be a string of 1 to 128 characters from A-Z a-z 0-9 "
                         ". _ : -", param=FIELD, code="invalid_request_fingerprint")
    return value


def content_hash(ex: Exchange) -> str:
    """What makes two requests "the same": route and body (without the fingerprint and
    the credentials: those make the principal); for a translated API, also the API and
    the client's request as it wrote it."""
    query = split_query(ex.query)[0]
    same = [ex.surface, ex.endpoint, ex.path, query, ex.payload]
    if edge.translated(ex):
        same += [ex.api, edge.asked_of(ex)]
    canonical = json.dumps(same, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def status_response(ex: Exchange, job: Job) -> Response:
    """202 Accepted with where the job stands and where to ask again."""
    body = {"fingerprint": job.fingerprint, "status": job.status, "created": int(job.created)}
    return Response(status=202, body=encode_json(body) + b"\n", headers={
        "content-type": "application/json", "retry-after": RETRY_AFTER,
        "location": STATUS_PATHS.get(ex.api, STATUS_PATHS["openai"]) + job.fingerprint})


def result_response(job: Job) -> Response:
    """The stored result, as the synchronous call answered it (a stream as a stream)."""
    assert job.result_status is not None
    if job.result_codec is None:
        return Response(status=job.result_status, headers=dict(job.result_headers),
                        body=job.result_body)
    codec = job.result_codec
    response = streaming.stream_response(job.result_status, job.result_headers,
                                         streaming.READERS[codec]([job.result_body]), codec)
    response.outcome = "complete" if job.status == DONE else "truncated"
    return response


class AsyncStage(Stage):
    name = "async"

    def __init__(self, settings: Settings, context: Context):
        self.context = context
        self.max_queued = settings.async_max_queued
        # shared mode: jobs go upstream with the bridge's key, as every request does
        self.upstream_authorization = (f"Bearer {upstream_key(settings)}"
                                       if settings.enable_shared_mode else None)
        self.store = shared_store(settings, JobStore(settings.state_dir))  # Redis or not
        slots = (math.ceil(settings.max_concurrency / settings.worker_count)
                 if settings.max_concurrency else DEFAULT_SLOTS)
        keep = (settings.async_result_ttl or settings.cache_ttl) / 1000
        self.runner = Runner(
            self.store, self.execute, slots=slots, retry_attempts=settings.retry_attempts,
            backoff=Backoff(settings.retry_min_interval / 1000,
                            settings.retry_max_interval / 1000), keep_seconds=keep)

    def start(self) -> None:
        self.store.open()
        self.runner.start()

    def begin_background(self) -> None:
        self.runner.begin()  # jobs run through the stages inside: all started by now

    def stop(self) -> None:
        self.runner.stop(lifecycle.stop_deadline())
        self.store.close()

    # --- the client's side ----------------------------------------------------------------

    def on_request(self, ex: Exchange) -> None:
        if ex.endpoint == STATUS_ENDPOINT:
            ex.response = self.answer(ex, self.find(ex, ex.path.rpartition("/")[2]))
            return
        if (ex.endpoint not in ASYNC_ENDPOINTS or not ex.is_model_request
                or FIELD not in ex.payload):
            return
        fingerprint = checked_fingerprint(ex.payload[FIELD])
        ex.replace_payload({key: value for key, value in ex.payload.items() if key != FIELD})
        job = self.job_for(ex, fingerprint)
        try:
            stored, created = self.store.submit(job, self.max_queued)
        except QueueFull as exc:
            emit("async.refused")
            raise ServiceUnavailable(f"too many async requests are waiting: {exc}; retry "
                                     "later", code="async_queue_full",
                                     headers={"retry-after": QUEUE_FULL_RETRY_AFTER}) from None
        if created:
            emit("async.queued")
            log.info("async job %s queued [%s]", fingerprint, ex.request_id)
            self.runner.wake()
        elif stored.content_hash != job.content_hash:
            raise Conflict(f"{FIELD} {fingerprint!r} was already used for a different "
                           "request", param=FIELD, code="request_fingerprint_conflict")
        ex.response = self.answer(ex, stored)

    def find(self, ex: Exchange, fingerprint: str) -> Job:
        """The asking principal's job: another's is as unknown as one never sent."""
        job = self.store.get(self.context.principals.of(ex), checked_fingerprint(fingerprint))
        if job is None:
            raise self.not_found(fingerprint)
        return job

    @staticmethod
    def not_found(fingerprint: str) -> NotFound:
        return NotFound(f"no async request with {FIELD} {fingerprint!r}", param=FIELD,
                        code="request_fingerprint_not_found")

    def answer(self, ex: Exchange, job: Job) -> Response:
        if job.status not in ENDED:
            return status_response(ex, job)
        if job.result_status in REFUSED:
            self.store.discard(job)
        if job.api and job.asked is not None and not edge.translated(ex):
            # the status URL of a job sent on a translated API: the result in its shape
            edge.adopt(ex, job.api, job.asked, job.headers)
        return result_response(job)

    def job_for(self, ex: Exchange, fingerprint: str) -> Job:
        query, in_query = split_query(ex.query)
        return Job(fingerprint=fingerprint, owner=self.context.principals.of(ex),
                   content_hash=content_hash(ex), surface=ex.surface, endpoint=ex.endpoint,
                   method=ex.method, path=ex.path, query=query,
                   headers={name: value for name, value in ex.headers.items()
                            if name not in NOT_STORED},
                   body=ex.body, facts={name: getattr(ex, name) for name in FACTS},
                   credential=self.credentials(ex, in_query),
                   api=ex.api if edge.translated(ex) else "", asked=edge.asked_of(ex))

    def credentials(self, ex: Exchange, in_query: str) -> Credential | None:
        """The pass-through client's credentials (headers, and `in_query`: the credential
        parameters of its query), needed to call the upstream later: kept in the job's
        record until the job ends. In shared mode there are none to keep (the headers
        hold the bridge's own key by now, which is never stored, and the shared-mode
        stage dropped the query's)."""
        if self.upstream_authorization is not None:
            return None
        given = {name: ex.headers[name] for name in STORED_CREDENTIALS if name in ex.headers}
        return Credential(given, in_query) if given or in_query else None

    # --- the runner's side ----------------------------------------------------------------

    def execute(self, job: Job) -> Response:
        """Run the stages inside this one for the job, as for the client that sent it."""
        headers, query = dict(job.headers), job.query
        if self.upstream_authorization is not None:
            headers["authorization"] = self.upstream_authorization
        elif job.credential:
            headers.update(job.credential.headers)
            query = job.credential.full_query(query)
        ex = Exchange(surface=job.surface, endpoint=job.endpoint, method=job.method,
                      path=job.path, query=query, headers=headers, body=job.body,
                      request_id=f"async-{secrets.token_hex(8)}", payload=json.loads(job.body))
        if job.api and job.asked is not None:  # the stages inside see the client's API
            edge.adopt(ex, job.api, job.asked, headers)
        for name in FACTS:
            setattr(ex, name, job.facts.get(name))
        ex.principal = job.owner or None  # who sent it (a job without one: from its credentials)
        log.info("async job %s runs as request %s", job.fingerprint, ex.request_id)
        pipeline = self.context.pipeline
        assert pipeline is not None
        response = pipeline.drain(ex, after=self.name)
        again = edge.relaxed(ex, response) if edge.translated(ex) else None
        if again is not None:  # what the native chat refused, relaxed as the API does
            for name in (*FACTS, "principal"):
                setattr(again, name, getattr(ex, name))
            response = pipeline.drain(again, after=self.name)
        return response


def make_stage(settings: Settings, context: Context) -> AsyncStage | None:
    return AsyncStage(settings, context) if settings.enable_async_request else None
