"""The budget check: inside the cache stage, so only calls that reach the upstream are
checked (exact, semantic and single-flight hits are always served: they cost no GPU).

A key's own budget (`keys create/update --budget-tokens N --budget-period P`, put on the
exchange by shared mode) or the instance-wide default (`--budget-tokens`,
`--budget-period`) caps the prompt + completion tokens of the principal's upstream calls
per UTC day, week (from Monday) or calendar month. The check is one dict lookup in the
usage recorder's totals (`bridge.usage.recorder`): the fleet's (or instance's) total at
the last flush plus this worker's unflushed tokens. So a budget can be passed by the
calls in flight when it is crossed, plus what the other workers and instances spent in
the last flush interval (about a second); the next call is refused.
"""

from __future__ import annotations

import math
import time

from bridge.core.errors import RateLimited
from bridge.core.events import emit
from bridge.core.exchange import Exchange
from bridge.core.pipeline import Context, Stage
from bridge.core.settings import Settings
from bridge.identity.principal import Principals
from bridge.usage import periods
from bridge.usage.recorder import Recorder
from bridge.usage.report import default_budget
from bridge.usage.stage import UsageStage

CODE = "budget_exceeded"


class BudgetStage(Stage):
    name = "budgets"

    def __init__(self, settings: Settings, recorder: Recorder, principals: Principals):
        self.default = default_budget(settings)
        self.recorder = recorder
        self.principals = principals

    def on_request(self, ex: Exchange) -> None:
        budget = ex.budget or self.default
        if budget is None or not ex.is_model_request:
            return
        principal = self.principals.of(ex)
        remaining = budget.tokens - self.recorder.used(principal, budget.period)
        emit("budget.remaining", max(0, remaining), client_key=principal)
        if remaining > 0:
            return
        emit("budget.refused")
        wait = periods.seconds_left(budget.period, time.time())
        raise RateLimited(
            f"{CODE}: token budget of {principal!r} used up: {budget.tokens} tokens per "
            f"{budget.period} (UTC); it resets in {math.ceil(wait)}s",
            code=CODE, headers={"retry-after": str(max(1, math.ceil(wait)))})


def make_stage(settings: Settings, context: Context) -> Stage | None:
    usage = context.pipeline.stage("usage") if context.pipeline is not None else None
    if not isinstance(usage, UsageStage):
        return None  # no ledger (--disable-usage-ledger): nothing to count against
    if not usage.recorder.budgets:
        return None  # no budget can apply (no default, no shared mode): nothing to check
    return BudgetStage(settings, usage.recorder, context.principals)
