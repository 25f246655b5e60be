"""May this principal be served what was stored for this request? Decided per
(upstream, model, principal), the way the upstream would decide it.

Without shared mode the bridge forwards each client's credentials and the upstream
checks them, so a stored answer, served before anyone checks, goes only to a principal
the upstream is known to answer for that model on that upstream:

- Learned from every model call: a 2xx makes the principal entitled, a 401 or 403
  forgets that (and says so for the next `ttl`, so that the client goes upstream on its
  own and gets the upstream's own refusal).
- When nothing is known (a new instance, a restart, a verdict older than `ttl`), a probe
  that costs no generation is sent with the client's own credentials: `POST /api/show
  {"model": …}` to an Ollama upstream (the `/api` surface), `GET /v1/models/<model>` to an
  OpenAI-compatible one. 2xx: entitled, a hit at once. 401, 403 or 404: refused, the
  client goes upstream alone. No answer: not known, the client goes upstream alone.
- An upstream that checks nothing is known by the anonymous principal being entitled:
  a credential-less call or probe of that same model on that same upstream, never
  another model's answer.
- A hit on a verdict older than half its `ttl` renews it with a probe in the background,
  so a client served only from the cache stays entitled without any generation.
- A routed upstream with its own key (`--upstreams` `key`): what the client may use is
  decided by the bridge (shared mode, or the README's warning about pass-through with
  keyed upstreams), so every principal that reaches the bridge is entitled there, and
  nothing is learned of the client's credentials from its answers.
- Shared mode: the shared-mode stage has already decided who may use which model.

Verdicts are kept for the instance in its run directory (a file each, its mtime the
time it was learned) and, with `--redis-url`, in Redis with their expiry, so a fleet
shares them. Probes are joined per worker: concurrent requests of one principal for one
model send one probe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import gevent
from gevent.event import AsyncResult

from bridge.core import instance
from bridge.core.events import emit
from bridge.core.exchange import Exchange, UpstreamTarget
from bridge.core.redaction import CREDENTIAL_HEADERS, split_query
from bridge.core.redis_link import RedisDown, link_for
from bridge.core.settings import Settings
from bridge.core.upstream import UpstreamClient
from bridge.identity.principal import ANONYMOUS, Principals

log = logging.getLogger("bridge.identity")

ENTITLED, REFUSED = "ok", "no"
_REFUSALS = (401, 403, 404)      # a probe's answers that mean "not for this principal"
_DENIED = (401, 403)             # a model call's answers that take an entitlement away
PROBE_TIMEOUT = 5.0              # seconds: a probe is a metadata call, never a generation
SWEEP_INTERVAL = 60.0            # how often expired verdicts' files are removed
_DIRECTORY = "entitlements"
MEMO_ENTRIES = 4096
# A verdict read from the shared files is trusted this long in the worker that read it
# (a stat per hit otherwise): what another worker learns is seen within this time.
RECHECK_SECONDS = 1.0


class Scope:
    """Where a verdict applies: one upstream (as the cache keys it) and one model, and
    what a probe of it sends."""

    __slots__ = ("upstream", "model", "target", "surface")

    def __init__(self, upstream: str, model: str, target: UpstreamTarget | None,
                 surface: str):
        self.upstream, self.model, self.target, self.surface = upstream, model, target, surface

    @property
    def bridge_decides(self) -> bool:
        """The upstream gets the bridge's key, not the client's credentials."""
        return self.target is not None and self.target.key is not None


class Entitlements:
    """The verdicts of this instance (and fleet), and the probes that renew them."""

    def __init__(self, settings: Settings, upstream: UpstreamClient, principals: Principals):
        self.everyone = settings.enable_shared_mode
        self.default_upstream = settings.ollama
        self.ttl = settings.entitlement_ttl / 1000
        self.upstream = upstream
        self.principals = principals
        self.link = link_for(settings)
        self._directory: Path | None = None
        self._paths: dict[tuple[str, str, str], str] = {}
        # (upstream, model, principal) -> (verdict, learned, read at): see RECHECK_SECONDS
        self._seen: dict[tuple[str, str, str], tuple[str | None, float, float]] = {}
        self._probes: dict[tuple[str, str, str], AsyncResult] = {}
        self._swept = 0.0

    def start(self) -> None:
        if self.everyone:
            return
        self._directory = instance.directory() / _DIRECTORY
        self._directory.mkdir(exist_ok=True)

    # --- the decision -------------------------------------------------------------------

    def scope(self, ex: Exchange) -> Scope:
        route = ex.route
        return Scope(ex.upstream or self.default_upstream, ex.model,
                     route.current if route is not None else None, ex.surface)

    def allows(self, ex: Exchange) -> bool:
        """Whether `ex`'s principal may be served what others' requests stored (and join
        their flights); probes the upstream when that is not known."""
        if self.everyone:
            return True
        scope = self.scope(ex)
        if scope.bridge_decides:
            return True
        principal = self.principals.of(ex)
        now = time.time()
        verdict, learned = self._verdict(scope, principal, now)
        if verdict is None and principal != ANONYMOUS:
            open_verdict, open_learned = self._verdict(scope, ANONYMOUS, now)
            if open_verdict == ENTITLED:  # the upstream checks nothing for this model
                verdict, learned, principal = open_verdict, open_learned, ANONYMOUS
        if verdict is None:
            return self._probe(scope, principal, _credentials(ex, principal)).get() is True
        if verdict == ENTITLED and now - learned > self.ttl / 2:
            self._probe(scope, principal, _credentials(ex, principal))  # renewed meanwhile
        return verdict == ENTITLED

    def learn(self, ex: Exchange, status: int) -> None:
        """What the upstream said to this exchange's credentials (a model call's status)."""
        if self.everyone:
            return
        scope = self.scope(ex)
        if scope.bridge_decides:
            return
        principal = self.principals.of(ex)
        if 200 <= status < 300:
            self._record(scope, principal, ENTITLED)
        elif status in _DENIED:
            self._record(scope, principal, REFUSED)

    # --- probes -------------------------------------------------------------------------

    def _probe(self, scope: Scope, principal: str, credentials: Credentials) -> AsyncResult:
        """Ask the upstream whether `principal` may use the model (one probe at a time per
        principal, model and upstream in this worker): True, False, or None (no answer)."""
        key = (scope.upstream, scope.model, principal)
        running = self._probes.get(key)
        if running is not None:
            return running
        result = self._probes[key] = AsyncResult()

        def run() -> None:
            try:
                result.set(self._ask(scope, principal, credentials))
            except Exception:  # noqa: BLE001 - a failed probe is "not known", never a hit
                log.exception("identity: entitlement probe failed")
                result.set(None)
            finally:
                self._probes.pop(key, None)

        gevent.spawn(run)
        return result

    def _ask(self, scope: Scope, principal: str, credentials: Credentials) -> bool | None:
        model = scope.target.upstream_model(scope.model) if scope.target else scope.model
        # an Ollama is asked for the model's description (on the client's surface when
        # it is the -o upstream); any other kind lists it at /v1/models/{model}
        kind = self.upstream.kind_of(scope.target)
        api = "ollama" if kind == "ollama" and (scope.target is not None
                                                or scope.surface == "ollama") else "openai"
        query = f"?{credentials.query}" if credentials.query else ""
        if api == "openai":
            status, _ = self.upstream.ask(f"/v1/models/{quote(model, safe=':')}{query}",
                                          scope.target, credentials.headers, PROBE_TIMEOUT)
        else:
            status, _ = self.upstream.ask("/api/show" + query, scope.target,
                                          credentials.headers, PROBE_TIMEOUT, {"model": model})
        emit("identity.probe", outcome="none" if status is None else str(status // 100) + "xx")
        if status is None or not (200 <= status < 300 or status in _REFUSALS):
            return None
        verdict = ENTITLED if 200 <= status < 300 else REFUSED
        self._record(scope, principal, verdict)
        return verdict == ENTITLED

    # --- verdicts -----------------------------------------------------------------------

    def _name(self, scope: Scope, principal: str) -> str:
        key = (scope.upstream, scope.model, principal)
        name = self._paths.get(key)
        if name is None:
            text = "\n".join(key).encode("utf-8", "surrogatepass")
            name = hashlib.sha256(text).hexdigest()
            if len(self._paths) >= MEMO_ENTRIES:
                del self._paths[next(iter(self._paths))]
            self._paths[key] = name
        return name

    def _verdict(self, scope: Scope, principal: str, now: float
                 ) -> tuple[str | None, float]:
        """The verdict on `principal` still in force, and when it was learned."""
        key = (scope.upstream, scope.model, principal)
        seen = self._seen.get(key)
        if seen is not None and now - seen[2] < RECHECK_SECONDS and now - seen[1] < self.ttl:
            return seen[0], seen[1]
        verdict, learned = self._read(self._name(scope, principal), now)
        self._remember(key, verdict, learned, now)
        return verdict, learned

    def _remember(self, key: tuple[str, str, str], verdict: str | None, learned: float,
                  now: float) -> None:
        if verdict is None:
            self._seen.pop(key, None)
            return
        if len(self._seen) >= MEMO_ENTRIES and key not in self._seen:
            del self._seen[next(iter(self._seen))]
        self._seen[key] = (verdict, learned, now)

    def _read(self, name: str, now: float) -> tuple[str | None, float]:
        """The verdict on file (this instance's, else the fleet's) still in force."""
        assert self._directory is not None, "Entitlements.start() first"
        for verdict in (ENTITLED, REFUSED):
            try:
                learned = os.stat(self._directory / f"{name}.{verdict}").st_mtime
            except FileNotFoundError:
                continue
            if now - learned < self.ttl:
                return verdict, learned
        return self._shared_verdict(name, now)

    def _shared_verdict(self, name: str, now: float) -> tuple[str | None, float]:
        """The fleet's verdict from Redis (kept here too), or (None, 0)."""
        if self.link is None:
            return None, 0.0
        try:
            value = self.link.run(lambda client: client.get(self.link.key("entitled", name)))
        except RedisDown:
            return None, 0.0
        verdict, _, learned_text = (value or b"").decode("ascii", "replace").partition(":")
        try:
            learned = float(learned_text)
        except ValueError:
            return None, 0.0
        if verdict not in (ENTITLED, REFUSED) or now - learned >= self.ttl:
            return None, 0.0
        self._keep(name, verdict, learned)
        return verdict, learned

    def _record(self, scope: Scope, principal: str, verdict: str) -> None:
        name, now = self._name(scope, principal), time.time()
        self._remember((scope.upstream, scope.model, principal), verdict, now, now)
        self._keep(name, verdict, now)
        if self.link is not None:
            try:
                self.link.run(lambda client: client.set(
                    self.link.key("entitled", name), f"{verdict}:{now}",
                    px=max(1, int(self.ttl * 1000))))
            except RedisDown:
                pass  # this instance keeps it; the fleet learns it by its own calls
        self._sweep(now)

    def _keep(self, name: str, verdict: str, learned: float) -> None:
        if self._directory is None:
            return
        other = REFUSED if verdict == ENTITLED else ENTITLED
        try:
            path = self._directory / f"{name}.{verdict}"
            path.touch()
            os.utime(path, (learned, learned))
            (self._directory / f"{name}.{other}").unlink(missing_ok=True)
        except OSError as exc:  # the run directory is gone: the instance is stopping
            log.warning("identity: cannot keep an entitlement: %s", exc)

    def _sweep(self, now: float) -> None:
        """Remove the files of verdicts past their time (bounded growth)."""
        if now - self._swept < SWEEP_INTERVAL or self._directory is None:
            return
        self._swept = now
        for path in self._directory.iterdir():
            try:
                if now - path.stat().st_mtime >= self.ttl:
                    path.unlink()
            except OSError:
                continue  # another worker removed it first


class Credentials(NamedTuple):
    """What a probe sends for a principal: the client's own credential headers and
    credential query parameters (none for the anonymous principal)."""

    headers: dict[str, str]
    query: str


def _credentials(ex: Exchange, principal: str) -> Credentials:
    if principal == ANONYMOUS:
        return Credentials({}, "")
    return Credentials({name: ex.headers[name] for name in CREDENTIAL_HEADERS
                        if name in ex.headers}, split_query(ex.query)[1])

