"""The usage ledger's pipeline stage: every model exchange is recorded once, when it
closes (its usage is then final), under its principal and model, as `usage.*` events
the worker's recorder adds up (`bridge.usage.recorder`).

It sits outside the cache, so hits are recorded too (as cache hits, with what they
saved); inside shared mode and async jobs, so the principal is known and a job's run is
recorded when it runs. Off with `--disable-usage-ledger`.
"""

from __future__ import annotations

from bridge.core.events import emit
from bridge.core.exchange import Exchange
from bridge.core.pipeline import Context, Stage
from bridge.core.settings import Settings
from bridge.identity.principal import Principals
from bridge.observability.stage import answered, spent
from bridge.usage.recorder import Recorder


class UsageStage(Stage):
    name = "usage"

    def __init__(self, settings: Settings, principals: Principals):
        self.recorder = Recorder(settings)
        self.principals = principals

    def begin_background(self) -> None:
        self.recorder.start()

    def stop(self) -> None:
        self.recorder.stop()

    def on_request(self, ex: Exchange) -> None:
        if ex.is_model_request:
            ex.on_close(self.record)

    def record(self, ex: Exchange) -> None:
        found = spent(ex)
        # usage read from an answer no upstream call made (a hit) cost nothing: not counted
        paid = found if found is not None and found.source == "upstream" else None
        ok = answered(ex)
        if not ok and paid is None:
            return
        saved = ex.saved
        figures = (
            ("usage.requests", int(ok)),
            ("usage.prompt_tokens", paid.usage.prompt if paid else 0),
            ("usage.completion_tokens", paid.usage.completion if paid else 0),
            ("usage.estimated", int(paid is not None and paid.estimated)),
            ("usage.cache_hits", int(ok and (ex.cache_status or "").startswith("HIT"))),
            ("usage.saved_tokens", saved.tokens if saved else 0),
            ("usage.saved_seconds", saved.seconds if saved else 0.0))
        principal, model = self.principals.of(ex), ex.model
        for name, value in figures:
            if value:
                emit(name, value, principal=principal, model=model)

def make_stage(settings: Settings, context: Context) -> Stage | None:
    if settings.disable_usage_ledger:
        return None
    return UsageStage(settings, context.principals)
