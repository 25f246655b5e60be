"""deploy/grafana/bridge-dashboard.json: a well-formed Grafana dashboard whose PromQL
promtool parses, querying only metrics that a real bridge's `/metrics` shows once it has
served hits, misses, streams, queued requests and 429s."""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml
from deploy_helpers import DEPLOY, run_tool, tool
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = DEPLOY / "grafana" / "bridge-dashboard.json"
METRIC_NAME = re.compile(r"\bbridge_[a-z0-9_]+\b")
PANEL_KINDS = {"row", "timeseries", "stat"}
GRID_COLUMNS = 24
# Grafana's own variables, as Grafana substitutes them before Prometheus sees a query
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "6h"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def queries() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def test_the_dashboard_is_a_well_formed_grafana_dashboard():
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        assert panel["type"] in PANEL_KINDS and panel["title"]
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= GRID_COLUMNS
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" /
                               "bridge.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_promtool_parses_every_query(tmp_path):
    promtool = tool("promtool")
    rules = []
    for number, expr in enumerate(queries()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{number}", "expr": expr})
    rule_file = tmp_path / "dashboard-rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_tool(promtool, "check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr


def chat(url: str, content: str, **extra: object) -> requests.Response:
    headers = extra.pop("headers", {})
    return requests.post(url + "/v1/chat/completions", timeout=30, headers=headers,
                         json={"model": "deepseek-r1:7b", "messages": [
                             {"role": "user", "content": content}], **extra})


@pytest.fixture
def served(make_bridge, tmp_path) -> str:
    """A bridge (cache, rate limit, one upstream slot) that has served every kind of
    traffic the dashboard shows; its /metrics scrape."""
    bridge = make_bridge("--enable-cache", "--cache-dir", str(tmp_path / "cache"),
                         "-r", "3", "--max-concurrency", "1")
    # Two streams at once for one slot: one waits in the queue. The stand-in sends the
    # reasoning in <think> tags, which the think filter removes.
    think = {"x-standin-think": "tags", "x-standin-first-token-delay": "0.5"}
    streams = [threading.Thread(target=lambda n=n: chat(bridge.url, f"stream {n}",
                                                        stream=True, headers=think).text)
               for n in range(2)]
    for stream in streams:
        stream.start()
    for stream in streams:
        stream.join(30)
    missed = chat(bridge.url, "cache me")
    hit = chat(bridge.url, "cache me")
    assert missed.headers["x-cache"] == "MISS" and hit.headers["x-cache"].startswith("HIT")
    with ThreadPoolExecutor(8) as pool:  # at once: a loaded machine refills no bucket
        statuses = [answer.status_code
                    for answer in pool.map(lambda n: chat(bridge.url, f"burst {n}"), range(8))]
    assert 429 in statuses
    return requests.get(bridge.url + "/metrics", timeout=10).text


def test_every_metric_the_dashboard_queries_is_in_a_real_scrape(served):
    scraped = {sample.name for family in text_string_to_metric_families(served)
               for sample in family.samples}
    wanted = {name for expr in queries() for name in METRIC_NAME.findall(expr)}
    assert wanted, "the dashboard queries no bridge metric"
    assert wanted - scraped == set()
