"""The routing stage (`--upstreams FILE`): which upstreams serve an exchange, and with
which key; the merged model lists; `/ready` for several upstreams.

It sets `Exchange.route` (the candidate upstreams, best first: see `bridge.routing.table`)
which the upstream client honours: each upstream's URL, key and model names, and
fail-over to the next candidate before the first byte. A model no pattern matches goes
to `-o` when `-o` was given, else gets 404 `model_not_found`. `Exchange.upstream`, which
the cache keys by, becomes the constant route name: a cached answer is the answer to the
client's request, whichever upstream produced it.

`GET /v1/models` and `/api/tags` are answered here: the lists of every upstream (asked
concurrently), each filtered by its patterns and with `model_map`'s names added, a name
listed once. Responses are scrubbed of the upstreams' keys, as are log lines, and a
renamed model is named back as the client asked for it.

The stage sits inside async jobs (a job is routed when it runs) and outside the think
filter (which asks the upstream that answers about a model's capabilities), the cache,
the rate limit and admission (both keyed by upstream name).
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from typing import Any, Callable, Iterator

import gevent

from bridge.core import redaction
from bridge.core.errors import NotFound
from bridge.core.exchange import Exchange, Frame, Response, UpstreamTarget, encode_json
from bridge.core.json_body import parse_json
from bridge.core.pipeline import Context, Stage
from bridge.core.settings import Settings, upstream_key
from bridge.core.upstream import READY_PROBES, UpstreamClient
from bridge.routing import config
from bridge.routing.table import FALLBACK, Router
from bridge.surfaces import crossing
from bridge.surfaces.adapter import MODELS, Call

log = logging.getLogger("bridge.routing")

PROBE_EVERY = 0.25       # seconds between looks for down upstreams due a probe
PROBE_TIMEOUT = 2.0
LIST_TIMEOUT = 10.0      # seconds an upstream may take to list its models
_RENAMED = "routing.renamed"  # ex.notes: (upstream's name, client's name) of the model
MODEL_LISTS = {("openai", "models"), ("ollama", "tags")}


def probe_path(target: UpstreamTarget) -> str:
    """What an upstream of its kind answers when it is up."""
    return crossing.kind_of(target.api).probe


class RoutingStage(Stage):
    name = "routing"

    def __init__(self, settings: Settings, context: Context, upstreams: config.Upstreams):
        fallback = None
        if "ollama" in settings.explicit:  # -o given: it takes the models nothing matches
            # in shared mode with the bridge's key, as its requests go (the auth stage
            # puts it on them), so that its probes are let in too
            key = (upstream_key(settings) or None) if settings.enable_shared_mode else None
            fallback = UpstreamTarget(FALLBACK, settings.ollama, key=key,
                                      api=settings.upstream_api)
        self.router = Router(upstreams.upstreams, fallback)
        self.upstreams = upstreams.upstreams
        context.upstream_targets = [upstream.target for upstream in upstreams.upstreams]
        self.client = context.upstream
        keys = [t.key for t in self.router.targets() if t.key]
        self.redactor = redaction.Redactor(keys)
        self._keys = keys
        self._stopped = threading.Event()
        context.readiness = self.readiness

    def start(self) -> None:
        redaction.add(self._keys)

    def begin_background(self) -> None:
        self._stopped.clear()
        gevent.spawn(self._probe_loop)

    def stop(self) -> None:
        self._stopped.set()  # the probe loop ends at its next look

    # --- requests ---------------------------------------------------------------------

    def on_request(self, ex: Exchange) -> None:
        if (ex.surface, ex.endpoint) in MODEL_LISTS and ex.method == "GET":
            ex.response = self.model_list(ex)
            return
        if ex.is_model_request or ex.endpoint == "show":
            model = ex.model if ex.is_model_request else _model_of(ex.body)
            route = self.router.route(model)
            if route is None:
                raise NotFound(f"The model {model!r} does not exist: no upstream serves it",
                               code="model_not_found", param="model")
        else:
            route = self.router.default_route()
            if route is None:  # pragma: no cover - a file has at least one upstream
                return
        ex.route = route
        ex.upstream = route.name
        if ex.is_model_request:
            ex.notes[_RENAMED] = ex.model

    def on_response(self, ex: Exchange) -> None:
        response = ex.response
        if response is None:
            return
        self.redactor.response(response)
        asked = ex.notes.get(_RENAMED)
        route = ex.route
        if asked is None or route is None or not response.ok:
            return
        served = route.current.upstream_model(asked)
        if served == asked:
            return
        old, new = _model_field(served), _model_field(asked)
        if response.frames is None:
            if old in response.body:
                response.set_body(response.body.replace(old, new))
        else:
            response.map_frames(lambda frames: _renamed(frames, old, new))

    # --- model lists ------------------------------------------------------------------

    def model_list(self, ex: Exchange) -> Response:
        """Every upstream's models, filtered and renamed, each name once (file order)."""
        authorization = ex.headers.get("authorization")
        targets = self.router.targets()
        entries: dict[str, dict[str, Any]] = {}
        lists = each(lambda target: models_of(self.client, target, authorization), targets,
                     LIST_TIMEOUT + 1)
        for target, listed in zip(targets, lists, strict=True):
            if listed is None:
                log.warning("upstream %r did not list its models [%s]", target.name,
                            ex.request_id)
                continue
            upstream = next((u for u in self.upstreams if u.name == target.name), None)
            for name, entry in listed.items():
                if upstream is None or upstream.serves(name):
                    entries.setdefault(name, entry)
            for alias, real in target.model_map.items():
                if real in listed:
                    entries.setdefault(alias, listed[real])
        canonical = {"models": [{**entry, "name": name, "model": name}
                                for name, entry in entries.items()]}
        wire = crossing.WIRES[(ex.surface, ex.endpoint)]  # the list in the client's shape
        body = wire.body(canonical, Call(native={}, model="", stream=False))
        return Response(status=200, headers={"content-type": "application/json"},
                        body=encode_json(body))

    # --- health -----------------------------------------------------------------------

    def _probe(self, target: UpstreamTarget) -> bool:
        return self.client.get_json(probe_path(target), target, None, PROBE_TIMEOUT) is not None

    def _probe_loop(self) -> None:
        """Probe each down upstream when its back-off is over; it gets traffic again once
        a probe answers. Runs as long as the worker."""
        while not self._stopped.wait(PROBE_EVERY):
            for target in self.router.due_probes():
                if self._probe(target):
                    if self.router.succeeded(target.name):
                        log.warning("upstream %r is back: its probe answered", target.name)
                else:
                    self.router.probe_failed(target.name)

    def readiness(self, timeout: float) -> tuple[bool, dict[str, Any]]:
        """Ready while every model pattern (and -o, if given) has a live upstream: each
        upstream is probed, concurrently, unless a worker of this instance probed it less
        than a second ago (`READY_PROBES`: however often `/ready` is asked, an upstream
        gets at most one probe a second); the answer names those that are down."""
        targets = self.router.targets()
        answered = each(lambda target: READY_PROBES.get(
            f"routed {target.name}", partial(self._probe, target), timeout), targets,
            timeout + 1)
        up = {t.name for t, ok in zip(targets, answered, strict=True) if ok}
        for name in up:
            self.router.succeeded(name)
        down = sorted({t.name for t in targets} - up)
        unserved = sorted({pattern for u in self.upstreams
                           for pattern in (*u.patterns, *u.target.model_map)}
                          - {pattern for u in self.upstreams if u.name in up
                             for pattern in (*u.patterns, *u.target.model_map)})
        if self.router.fallback is not None and FALLBACK not in up:
            unserved.append("(models no pattern matches: -o)")
        ready = not unserved
        said: dict[str, Any] = {"status": "ready" if ready else "upstreams down",
                                "upstreams": {t.name: ("up" if t.name in up else "down")
                                              for t in targets},
                                "down": down}
        if unserved:
            said["unserved"] = unserved
        return ready, said


def models_of(client: UpstreamClient, target: UpstreamTarget,
              authorization: str | None) -> dict[str, dict[str, Any]] | None:
    """name → entry (canonical: as Ollama's /api/tags lists it) of one upstream's list,
    asked as its kind lists models (/api/tags of an Ollama, /v1/models else)."""
    kind = crossing.kind_of(target.api)
    answer = client.get_json(kind.outbound(MODELS, {}).path, target, authorization,
                             LIST_TIMEOUT)
    if not isinstance(answer, dict):
        return None
    items = kind.whole(MODELS, answer, {}).get("models")
    if not isinstance(items, list):
        return None
    return {item["name"]: item for item in items
            if isinstance(item, dict) and isinstance(item.get("name"), str)}


def each(call: Callable[[UpstreamTarget], Any], targets: list[UpstreamTarget],
         timeout: float) -> list[Any]:
    """`call(target)` for every target at once (greenlets), within `timeout`: the values
    in the targets' order, None for a call that failed or did not finish."""
    jobs = [gevent.spawn(call, target) for target in targets]
    gevent.joinall(jobs, timeout=timeout)
    for job in jobs:
        job.kill(block=False)  # a no-op for those done
    return [job.value if job.successful() else None for job in jobs]


def _model_of(body: bytes) -> str:
    """The model an `/api/show` body names; a body that is not JSON is a 400, as the
    bodies of model requests are (the same checked parser: never a `RecursionError`)."""
    payload = parse_json(body)
    model = payload.get("model", payload.get("name", "")) if isinstance(payload, dict) else ""
    return model if isinstance(model, str) else ""


def _model_field(name: str) -> bytes:
    return b'"model":' + encode_json(name)


def _renamed(frames: Iterator[Frame], old: bytes, new: bytes) -> Iterator[Frame]:
    for frame in frames:
        yield Frame(frame.raw.replace(old, new), verbatim=frame.verbatim) \
            if old in frame.raw else frame


def make_stage(settings: Settings, context: Context) -> Stage | None:
    if not settings.upstreams:
        return None
    return RoutingStage(settings, context, config.load(
        settings.upstreams, shared_mode=settings.enable_shared_mode))

