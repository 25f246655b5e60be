"""The token bucket shared by every bridge instance (`--redis-url`).

The bucket is one Redis hash (`<prefix>:ratelimit:bucket`: tokens, and the time of the
last update in Redis's own clock, so that instances with skewed clocks agree), read and
changed by one server-side script: N instances together make at most `-r` upstream calls
per second with a burst of `-r`, and reserve future tokens for `--rate-limit-wait` the
same way the instance-local bucket does. While Redis is unreachable, each instance
draws from its own local bucket (degraded: N instances may then make N × `-r` calls).
"""

from __future__ import annotations

import math

from bridge.core import redis_link
from bridge.core.redis_link import Link, RedisDown
from bridge.core.settings import Settings
from bridge.rate_limit.local_bucket import Decision, SharedBucket

# KEYS: bucket. ARGV: rate, burst, max wait (s). Returns tokens left and wait, as strings
# (a Lua number would be truncated to an integer on its way back).
_TAKE = """
local rate, burst, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens, last = tonumber(state[1]), tonumber(state[2])
if tokens == nil or last == nil then tokens, last = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local wait = math.max(0, (1 - tokens) / rate)
local admitted = 0
if wait <= max_wait then
  tokens = tokens - 1
  admitted = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst / rate + max_wait + 1) * 1000))
return {admitted, tostring(tokens), tostring(wait)}
"""


class RedisBucket:
    """`SharedBucket`'s interface, with the bucket in Redis and the local one as fallback."""

    def __init__(self, link: Link, local: SharedBucket, name: str = "bucket"):
        self.link = link
        self.local = local
        self.rate = local.rate
        self.burst = local.burst
        self.key = link.key("ratelimit", name)
        self._take = link.script(_TAKE)

    def take(self, max_wait: float = 0.0) -> Decision:
        try:
            admitted, tokens_text, wait_text = self._take(
                [self.key], [repr(self.rate), repr(self.burst), repr(max_wait)])
        except RedisDown:
            return self.local.take(max_wait)
        tokens, wait = float(tokens_text), float(wait_text)
        return Decision(bool(admitted), wait, max(0, math.floor(tokens)),
                        (self.burst - tokens) / self.rate)


def shared_bucket(settings: Settings, local: SharedBucket, name: str = "bucket"
                  ) -> SharedBucket | RedisBucket:
    """The bucket `name` of this instance: in Redis with `--redis-url` (shared by every
    instance), else the local one."""
    link = redis_link.link_for(settings)
    return local if link is None else RedisBucket(link, local, name)
