"""Which upstreams may serve a model, in which order: matching, balancing and health.

Each worker keeps its own view (no shared state on the request path): calls in flight
per upstream, and its health. A connect error, a timeout or a 5xx before the first byte
counts against an upstream; `DOWN_AFTER` in a row mark it down for a back-off
(`BACKOFF_MIN`, doubling up to `BACKOFF_MAX` while probes fail), and it gets traffic
again only once a probe (`GET /api/version` of an Ollama, `/v1/models` otherwise) has
answered. Among the live upstreams serving a model, the one with the fewest calls in
flight for its capacity (`max_concurrency`, else 1, times `weight`) comes first; ties
rotate, so sequential traffic spreads too. Down upstreams stay at the end of the list:
the last resort when every other one fails.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import Sequence

from bridge.core.events import emit
from bridge.core.exchange import Route, UpstreamTarget
from bridge.routing.config import Upstream

log = logging.getLogger("bridge.routing")

DOWN_AFTER = 3        # failures in a row that mark an upstream down
BACKOFF_MIN = 1.0     # seconds before the first probe of an upstream marked down
BACKOFF_MAX = 30.0
MATCH_MEMO = 4096     # model names whose matching upstreams are remembered
FALLBACK = "default"  # the name of -o's upstream when it takes unmatched models


@dataclass
class Health:
    """One upstream as this worker sees it."""

    in_flight: int = 0
    failures: int = 0          # in a row
    down: bool = False
    retry_at: float = 0.0      # when a down upstream is probed next
    backoff: float = BACKOFF_MIN

    def load(self, target: UpstreamTarget) -> float:
        return self.in_flight / ((target.max_concurrency or 1) * target.weight)


class Router:
    """The upstreams of the file (and -o for unmatched models, if given), their health."""

    def __init__(self, upstreams: tuple[Upstream, ...], fallback: UpstreamTarget | None):
        self.upstreams = upstreams
        self.fallback = fallback
        self.health = {u.name: Health() for u in upstreams}
        if fallback is not None:
            self.health[fallback.name] = Health()
        self._matches: dict[str, tuple[UpstreamTarget, ...]] = {}
        self._turn = itertools.count()

    def serving(self, model: str) -> tuple[UpstreamTarget, ...]:
        """The upstreams that serve `model` in file order; () when none (and no -o)."""
        found = self._matches.get(model)
        if found is None:
            found = tuple(u.target for u in self.upstreams if u.serves(model))
            if not found and self.fallback is not None:
                found = (self.fallback,)
            if len(self._matches) >= MATCH_MEMO:
                self._matches.clear()
            self._matches[model] = found
        return found

    def route(self, model: str) -> "TrackedRoute | None":
        """The exchange's route for `model`: live upstreams least loaded first, then the
        down ones; None when no upstream serves it."""
        serving = self.serving(model)
        if not serving:
            return None
        if len(serving) == 1:
            return TrackedRoute(self, serving)
        health = self.health
        turn = next(self._turn)
        count = len(serving)
        ordered = sorted(range(count), key=lambda i: (
            health[serving[i].name].down, health[serving[i].name].load(serving[i]),
            (i - turn) % count))
        live = sum(1 for target in serving if not health[target.name].down)
        return TrackedRoute(self, [serving[i] for i in ordered], live)

    def default_route(self) -> "TrackedRoute | None":
        """For requests without a model (`/api/version`, `/api/ps`, other paths): -o if
        given, else the first upstream of the file."""
        target = self.fallback or (self.upstreams[0].target if self.upstreams else None)
        return TrackedRoute(self, [target]) if target is not None else None

    def targets(self) -> list[UpstreamTarget]:
        targets = [u.target for u in self.upstreams]
        return targets + ([self.fallback] if self.fallback is not None else [])

    # --- what calls report ----------------------------------------------------------

    def failed(self, name: str, now: float | None = None) -> bool:
        """Count a failure; True when it marks the upstream down now."""
        health = self.health[name]
        health.failures += 1
        if health.down or health.failures < DOWN_AFTER:
            return False
        health.down = True
        health.backoff = BACKOFF_MIN
        health.retry_at = (time.monotonic() if now is None else now) + health.backoff
        return True

    def succeeded(self, name: str) -> bool:
        """An answer, or a probe that answered: True when the upstream was down."""
        health = self.health[name]
        was_down = health.down
        health.failures, health.down, health.backoff = 0, False, BACKOFF_MIN
        return was_down

    def probe_failed(self, name: str, now: float | None = None) -> None:
        health = self.health[name]
        health.backoff = min(BACKOFF_MAX, health.backoff * 2)
        health.retry_at = (time.monotonic() if now is None else now) + health.backoff

    def due_probes(self, now: float | None = None) -> list[UpstreamTarget]:
        """The down upstreams whose back-off is over."""
        now = time.monotonic() if now is None else now
        return [t for t in self.targets() if self.health[t.name].down
                and self.health[t.name].retry_at <= now]

    def down(self) -> list[str]:
        return [name for name, health in self.health.items() if health.down]


class TrackedRoute(Route):
    """A route whose calls count in the router's balancing and health."""

    __slots__ = ("router",)

    def __init__(self, router: Router, candidates: Sequence[UpstreamTarget], live: int = 0):
        super().__init__("routed", candidates, live)
        self.router = router

    def started(self, target: UpstreamTarget) -> None:
        self.router.health[target.name].in_flight += 1
        emit("routing.in_flight", 1, upstream=target.name)

    def ended(self, target: UpstreamTarget) -> None:
        health = self.router.health[target.name]
        if health.in_flight > 0:
            health.in_flight -= 1
            emit("routing.in_flight", -1, upstream=target.name)

    def answered(self, target: UpstreamTarget, ok: bool) -> None:
        if ok:
            self.router.succeeded(target.name)
        elif self.router.failed(target.name):
            log.warning("upstream %r marked down after %d failures in a row; probing it in "
                        "%.0fs", target.name, DOWN_AFTER, self.router.health[target.name].backoff)
