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
