"""Records of translated answers (the Responses API's `previous_response_id`): a request
that continues an earlier answer is completed from that answer's record once shared
mode has said who asks, and before the cache keys the request; each answer leaves its
own record, kept for the cache TTL in the cache's tiers (`bridge.cache.records`).

Records belong to the principal that wrote them: another client naming one finds
nothing. Without the cache the bridge keeps nothing, and a request that names a record
is refused with a 400 saying so.
"""

from __future__ import annotations

from functools import partial

from bridge.cache.records import Records
from bridge.core.exchange import Exchange
from bridge.core.pipeline import Context, Stage
from bridge.core.settings import Settings
from bridge.surfaces import adapter_for
from bridge.surfaces.edge import call_of

NO_CACHE = ("the bridge keeps earlier answers only with its cache on (--enable-cache), "
            "and the upstream keeps none: send the whole conversation as 'input' instead")


class RecordsStage(Stage):
    name = "surfaces"

    def __init__(self, context: Context):
        self.context = context
        self.cache: Stage | None = None

    def start(self) -> None:
        pipeline = self.context.pipeline
        self.cache = pipeline.stage("cache") if pipeline is not None else None

    @property
    def records(self) -> Records | None:
        """The cache's records (None without the cache, or before it started)."""
        return getattr(self.cache, "records", None)

    def on_request(self, ex: Exchange) -> None:
        call = call_of(ex)
        surface = adapter_for(ex.api)
        if call is None or surface is None or not surface.keeps_records:
            return
        name = surface.recall(call)
        records = self.records
        if records is None:
            if name is not None:
                surface.resume(call, None, NO_CACHE)
            return
        principal = self.context.principals.of(ex)
        call.remember = partial(records.put, surface.name, principal)
        if name is not None:
            surface.resume(call, records.get(surface.name, principal, name))
            ex.replace_payload(call.native)


def make_stage(settings: Settings, context: Context) -> RecordsStage:
    return RecordsStage(context)
