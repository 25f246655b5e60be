"""The router's choices as a worker makes them: least loaded first, taking turns on ties,
down upstreams last until a probe brings them back, the back-off doubling while probes
fail. Pure logic, driven with explicit times."""

from __future__ import annotations

from bridge.core.exchange import UpstreamTarget
from bridge.routing.config import Upstream
from bridge.routing.table import BACKOFF_MIN, DOWN_AFTER, Router


def router() -> Router:
    return Router((Upstream(UpstreamTarget("a", "http://a:1", max_concurrency=4), ("qwen*",)),
                   Upstream(UpstreamTarget("b", "http://b:1", max_concurrency=4), ("qwen*",)),
                   Upstream(UpstreamTarget("c", "http://c:1"), ("deepseek-*",))), None)


def test_ties_take_turns_and_the_least_loaded_goes_first():
    table = router()
    firsts = [table.route("qwen3").current.name for _ in range(4)]
    assert sorted(firsts) == ["a", "a", "b", "b"]
    table.health["a"].in_flight = 3
    assert {table.route("qwen3").current.name for _ in range(4)} == {"b"}
    assert table.route("deepseek-r1").candidates == [table.upstreams[2].target]
    assert table.route("llama3") is None  # no pattern and no -o


def test_a_down_upstream_goes_last_until_its_probe_answers():
    table = router()
    assert [table.failed("a", now=100.0) for _ in range(DOWN_AFTER)] == [False] * (
        DOWN_AFTER - 1) + [True]
    route = table.route("qwen3")
    assert [t.name for t in route.candidates] == ["b", "a"] and route.live == 1
    assert table.due_probes(now=100.0) == []
    assert [t.name for t in table.due_probes(now=100.0 + BACKOFF_MIN)] == ["a"]
    table.probe_failed("a", now=101.0)
    assert table.due_probes(now=101.0 + BACKOFF_MIN) == []  # the back-off doubled
    assert table.succeeded("a") is True and table.down() == []
    assert table.route("qwen3").live == 2
