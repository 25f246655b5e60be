"""The usage ledger's pipeline stage: every model exchange is recorded once, when it
closes (its usage is then final), under its principal and model.

It sits outside the cache, so hits are recorded too (as cache hits, with what they
saved); inside shared mode and async jobs, so the principal is known and a job's run is
recorded when it runs. Off with `--disable-usage-ledger`.
"""

from __future__ import annotations

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
        self.recorder.record(
            self.principals.of(ex), ex.model, requests=int(ok),
            prompt=paid.usage.prompt if paid else 0,
            completion=paid.usage.completion if paid else 0,
            estimated=paid is not None and paid.estimated,
            cache_hit=ok and (ex.cache_status or "").startswith("HIT"),
            saved_tokens=saved.tokens if saved else 0,
            saved_seconds=saved.seconds if saved else 0.0)


def make_stage(settings: Settings, context: Context) -> Stage | None:
    if settings.disable_usage_ledger:
        return None
    return UsageStage(settings, context.principals)
