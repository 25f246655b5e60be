"""Rate limiting of upstream calls (`-r/--rate-limit`): one token bucket for the instance.

The bucket is shared by every gunicorn worker of the instance
(`bridge.rate_limit.local_bucket`): N calls per second with a burst of N whether the
instance runs 1 or 8 workers.

With `--rate-limit-wait`, a request that finds the bucket empty reserves the next
token (the level goes below zero) when it comes within the wait, and sleeps until then,
so short bursts queue in arrival order instead of failing. This stage sits inside the
cache stage: cache hits never reach it. With `--redis-url` the bucket is shared by every
instance instead (`bridge.rate_limit.redis_bucket`), the local one being its fallback. With
`--upstreams`, an upstream's `rate_limit` is a bucket of its own, keyed by its name,
charged to the upstream first in line (a call that fails over is not charged again).
"""

from __future__ import annotations

import math
import time

from bridge.core import instance
from bridge.core.errors import RateLimited
from bridge.core.events import emit
from bridge.core.exchange import Exchange
from bridge.core.pipeline import Context, Stage
from bridge.core.settings import Settings
from bridge.rate_limit.local_bucket import SharedBucket
from bridge.rate_limit.redis_bucket import RedisBucket, shared_bucket


def duration_text(seconds: float) -> str:
    """A duration the way OpenAI's `x-ratelimit-reset-*` headers write it: 20ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 1000) / 1000:g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


class RateLimitStage(Stage):
    name = "rate_limit"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.rate = settings.rate_limit
        self.max_wait = settings.rate_limit_wait / 1000
        self.bucket: SharedBucket | RedisBucket | None = None
        # per routed upstream with a rate_limit (--upstreams), made on first use
        self.upstream_buckets: dict[str, SharedBucket | RedisBucket] = {}

    def start(self) -> None:
        if self.rate:
            self.bucket = self._shared("rate-limit", "bucket", self.rate)

    def _shared(self, file_name: str, name: str, rate: int) -> SharedBucket | RedisBucket:
        local = SharedBucket(instance.directory() / f"{file_name}.bucket", rate=rate,
                             burst=rate)
        return shared_bucket(self.settings, local, name)

    def on_request(self, ex: Exchange) -> None:
        if self.bucket is not None:
            self._take(self.bucket, self.rate, "")
        target = ex.route.current if ex.route is not None else None
        if target is not None and target.rate_limit:
            bucket = self.upstream_buckets.get(target.name)
            if bucket is None:
                bucket = self.upstream_buckets[target.name] = self._shared(
                    f"rate-limit-{target.name}", f"bucket:{target.name}", target.rate_limit)
            self._take(bucket, target.rate_limit, f" of upstream {target.name!r}")

    def _take(self, bucket: SharedBucket, rate: int, whose: str) -> None:
        decision = bucket.take(self.max_wait)
        if not decision.admitted:
            emit("ratelimit.refused")
            raise RateLimited(
                f"rate limit{whose} of {rate} upstream requests per second reached; "
                f"retry in {duration_text(decision.wait)}",
                headers={"retry-after": str(max(1, math.ceil(decision.wait))),
                         "x-ratelimit-limit-requests": str(rate),
                         "x-ratelimit-remaining-requests": "0",
                         "x-ratelimit-reset-requests": duration_text(decision.reset)})
        if decision.wait > 0:
            emit("ratelimit.delayed")
            time.sleep(decision.wait)  # cooperative under gevent


def make_stage(settings: Settings, context: Context) -> Stage | None:
    # with --upstreams, an upstream may have a rate_limit of its own
    return RateLimitStage(settings) if settings.rate_limit > 0 or settings.upstreams else None
