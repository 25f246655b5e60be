"""The link to the shared Redis of a scale-out deployment (`--redis-url`), per process.

Each worker process has its own `redis-py` connection pool, made on first use after
gunicorn's fork (`PerProcess`). redis-py talks through the `socket` module, so under
gevent's monkey-patching its waits are cooperative: a slow Redis holds the greenlet
that asked, never the worker's event loop (checked by `tests/core/test_redis_link.py`).

Nothing may wait long on Redis: every connect and reply has `--redis-timeout` (50 ms) and no
client-side retry. A call that fails puts the link in degraded mode for
`RECONNECT_SECONDS`: callers get `RedisDown` at once, without touching the network, and
fall back to their instance-local backend; the first call after that tries Redis again
(reconnecting by itself). Degraded mode is logged as a warning when it starts and at
most once a minute while it lasts, counted in `bridge_redis_up` (per worker, the lowest
wins) and shown in `/ready`'s `redis` detail.

A full Redis (`maxmemory` reached under `noeviction`: writes answered with `OOM`) is not
down: it still answers reads, so calls keep going to it; a write it refuses raises
`RedisFull` (a `RedisDown`, so every caller falls back for that one write as it would
for an outage). Being full is logged once when it starts and once when writes are
accepted again, which a one-key write (`PROBE_KEY`, expiring at once) tried at most
every `RECONNECT_SECONDS` with a call that succeeded tells: a read alone says nothing.

Keys are `<prefix>:<feature>:...`, so deployments with different `--redis-prefix`
share one Redis without seeing each other.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit

from bridge.core.events import emit
from bridge.core.forking import PerProcess
from bridge.core.instance import pid_alive
from bridge.core.settings import Settings, defaults

if TYPE_CHECKING:
    import redis

log = logging.getLogger("bridge.redis")

TIMEOUT = defaults().redis_timeout / 1000  # seconds: --redis-timeout's default
RECONNECT_SECONDS = 1.0   # how long a failed Redis is not asked again
TOOL_TIMEOUT = 5.0        # seconds: the `keys` and `cache` commands may wait longer
WARN_EVERY = 60.0         # seconds between two warnings while Redis stays unreachable
OK, DEGRADED, FULL = "ok", "degraded", "full"
PROBE_KEY = "writable"  # <prefix>:writable, the full Redis's write probe (1 ms expiry)

T = TypeVar("T")


def _redis_error() -> type[Exception]:
    """redis-py's base error (the module is loaded by then: a Link made a client)."""
    import redis

    return redis.RedisError


class RedisDown(Exception):
    """Redis is unreachable (or failed): the caller uses its instance-local backend."""


class RedisFull(RedisDown):
    """Redis refused a write for want of memory (`OOM`); it still answers reads."""


def out_of_memory(exc: redis.RedisError) -> bool:
    """Whether Redis refused a command because `maxmemory` is reached (also when the
    command was a write inside a server-side script, whose error keeps the `OOM` code)."""
    import redis  # loaded by then: a Link made a client

    return isinstance(exc, redis.exceptions.OutOfMemoryError) or (
        isinstance(exc, redis.ResponseError) and str(exc).startswith("OOM"))


def safe_url(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def owner_name() -> str:
    """Who holds a lease: host and process, so that an operator can tell them apart."""
    return f"{socket.gethostname()}:{os.getpid()}"


def dead_here(owner: bytes | str) -> bool:
    """Whether a lease holder (`owner_name()`, maybe with a suffix) is a process of this
    host that is gone: its lease can be taken over without waiting for it to run out."""
    text = owner.decode(errors="replace") if isinstance(owner, bytes) else owner
    host, _, rest = text.partition(":")
    pid = rest.partition(":")[0]
    return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))


class _State:
    """One process's pool and health."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self.down_until = 0.0     # monotonic time before which Redis is not asked
        self.down_since: float | None = None
        self.warned_at = 0.0
        self.full_since: float | None = None  # monotonic: when a write was last refused
        self.probe_at = 0.0       # monotonic time of the next write probe while full


class Link:
    """The shared Redis, as seen by this process."""

    def __init__(self, url: str, prefix: str, timeout: float = TIMEOUT):
        # redis-py is loaded here, when a feature makes its link at start, not by a
        # request (a bridge without --redis-url never loads it: a third of a second)
        import redis  # noqa: F401

        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self._state = PerProcess(self._connect)

    def _connect(self) -> _State:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis.from_url(
            self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0,
            client_name=f"deepseek-ollama-bridge-{os.getpid()}")
        emit("redis.up", 1)
        return _State(client)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def up(self) -> bool:
        """Whether this process last found Redis answering."""
        return self._state.get().down_since is None

    def run(self, action: Callable[[redis.Redis], T]) -> T:
        """`action(client)`, or `RedisDown` when Redis fails or is known to be down."""
        state = self._state.get()
        if state.down_since is not None and time.monotonic() < state.down_until:
            raise RedisDown("Redis is unreachable")
        try:
            result = action(state.client)
        except _redis_error() as exc:
            if out_of_memory(exc):
                self._refused(state, exc)
                raise RedisFull(f"{type(exc).__name__}: {exc}") from None
            self._failed(state, exc)
            raise RedisDown(f"{type(exc).__name__}: {exc}") from None
        if state.down_since is not None:
            log.warning("Redis at %s answers again after %.1fs: sharing resumes",
                        safe_url(self.url), time.monotonic() - state.down_since)
            state.down_since = None
            emit("redis.up", 1)
        if state.full_since is not None and time.monotonic() >= state.probe_at:
            self._probe(state)
        return result

    def _refused(self, state: _State, exc: redis.RedisError) -> None:
        """A write refused for want of memory: full (warned once) until a probe succeeds."""
        state.probe_at = time.monotonic() + RECONNECT_SECONDS
        emit("redis.failures")
        if state.full_since is None:
            state.full_since = time.monotonic()
            log.warning("Redis at %s is full (%s): reads go on, writes it refuses are "
                        "skipped (cache stores) or served by this instance's own rate "
                        "limit, slots and job store until it accepts writes again",
                        safe_url(self.url), str(exc)[:200])

    def _probe(self, state: _State) -> None:
        """While full: whether Redis accepts a write again (one tiny key that expires)."""
        state.probe_at = time.monotonic() + RECONNECT_SECONDS
        try:
            state.client.set(self.key(PROBE_KEY), b"1", px=1)
        except _redis_error() as exc:
            if not out_of_memory(exc):
                self._failed(state, exc)
            return
        if state.full_since is not None:
            log.warning("Redis at %s accepts writes again after %.1fs full",
                        safe_url(self.url), time.monotonic() - state.full_since)
            state.full_since = None

    def _failed(self, state: _State, exc: redis.RedisError) -> None:
        now = time.monotonic()
        state.down_until = now + RECONNECT_SECONDS
        emit("redis.failures")
        if state.down_since is None:
            state.down_since = now
            emit("redis.up", 0)
        if now - state.warned_at >= WARN_EVERY:
            state.warned_at = now
            log.warning("Redis at %s is unreachable (%s: %s): degraded, serving with this "
                        "instance's own cache tiers, rate limit and slots until it returns",
                        safe_url(self.url), type(exc).__name__, str(exc)[:200])

    def script(self, source: str) -> "Script":
        return Script(self, source)

    def check(self) -> str:
        """OK, FULL or DEGRADED, asking Redis now (bounded by the timeout): for `/ready`."""
        try:
            self.run(lambda client: client.ping())
        except RedisDown:
            return DEGRADED
        return FULL if self._state.get().full_since is not None else OK


class Script:
    """A server-side Lua script run with EVALSHA (loaded again after a Redis restart)."""

    def __init__(self, link: Link, source: str):
        self.link = link
        self.source = source
        self._scripts = PerProcess(lambda: self.link._state.get().client.register_script(source))

    def __call__(self, keys: list[str], args: list[Any]) -> Any:
        script = self._scripts.get()
        return self.link.run(lambda client: script(keys=keys, args=args, client=client))


_links: dict[tuple[str, str, float], Link] = {}


def link_for(settings: Settings, timeout: float | None = None) -> Link | None:
    """The link of `--redis-url` (one per URL, prefix and timeout in a process), None
    without it. Makes no connection: that happens on first use, in the process that uses
    it. The timeout is `--redis-timeout`; commands run by an operator pass a longer one
    (`TOOL_TIMEOUT`)."""
    secret = getattr(settings, "redis_url", None)
    if not secret:
        return None
    if timeout is None:
        timeout = settings.redis_timeout / 1000
    url = secret.reveal()
    prefix = settings.redis_prefix
    link = _links.get((url, prefix, timeout))
    if link is None:
        link = _links[(url, prefix, timeout)] = Link(url, prefix, timeout)
    return link


def status(settings: Settings) -> str | None:
    """`/ready`'s Redis detail: None without Redis, else OK or DEGRADED."""
    link = link_for(settings)
    return None if link is None else link.check()
