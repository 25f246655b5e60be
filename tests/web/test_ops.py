"""`/health` (the process answers) and `/ready` (the upstream answers)."""

from __future__ import annotations

import requests

from bridge import __version__
from bridge.serve.processes import free_port


def test_health_answers_without_touching_the_upstream(bridge, standin):
    response = requests.get(bridge.url + "/health", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": __version__}
    assert standin.count() == 0


def test_ready_is_200_when_the_upstream_answers(bridge):
    response = requests.get(bridge.url + "/ready", timeout=10)
    assert response.status_code == 200 and response.json()["status"] == "ready"


def test_ready_is_503_when_the_upstream_is_down_and_health_stays_200(make_bridge):
    down = make_bridge(upstream=f"http://127.0.0.1:{free_port()}", workers=1)
    ready = requests.get(down.url + "/ready", timeout=10)
    assert ready.status_code == 503 and ready.json()["status"] == "upstream unreachable"
    assert requests.get(down.url + "/health", timeout=10).status_code == 200


def test_metrics_named_in_the_query_are_the_only_ones_shown(bridge, standin):
    requests.post(bridge.url + "/v1/chat/completions", timeout=30, json={
        "model": "qwen2.5", "messages": [{"role": "user", "content": "hi"}]}).raise_for_status()
    named = requests.get(bridge.url + "/metrics?name[]=bridge_requests_total", timeout=10)
    assert named.status_code == 200
    samples = [line for line in named.text.splitlines() if line and not line.startswith("#")]
    assert samples and all(line.startswith("bridge_requests_total{") for line in samples)
    unknown = requests.get(bridge.url + "/metrics?name[]=no_such_metric", timeout=10)
    assert unknown.status_code == 200 and not unknown.text.strip()
