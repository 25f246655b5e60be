"""The Redis link: a Redis that never answers costs a request at most a short bound, the
wait is cooperative under gevent (the worker's other greenlets keep running), and a bad
`--redis-url` stops the bridge with one line that does not echo the URL's password."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bridge.core import settings as bridge_settings
from bridge.serve.processes import ROOT

# In a process of its own: gevent's monkey-patching, as in a worker. A listening socket
# that never answers stands for a hung Redis; a 1 ms ticker greenlet measures whether
# the event loop went on while a request waited on it.
PROBE = """
from gevent import monkey
monkey.patch_all()
import json, socket, time
import gevent
from bridge.core.redis_link import Link, RedisDown

hung = socket.socket()
hung.bind(("127.0.0.1", 0))
hung.listen(16)
link = Link(f"redis://127.0.0.1:{hung.getsockname()[1]}/0", "probe")
ticks = []
ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.001)) for _ in range(10_000)])
waits, outcomes = [], []
for _ in range(3):
    started = time.monotonic()
    try:
        link.run(lambda client: client.get("k"))
        outcomes.append("answered")
    except RedisDown:
        outcomes.append("down")
    waits.append(time.monotonic() - started)
ticker.kill()
print(json.dumps({"waits": waits, "outcomes": outcomes, "ticks": len(ticks),
                  "up": link.up, "status": link.check()}))
"""


def test_a_hung_redis_costs_a_short_bounded_wait_and_the_loop_runs_on() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["outcomes"] == ["down", "down", "down"]
    # the first call waits for the timeout; the next ones know Redis is down and do not ask
    assert result["waits"][0] < 1.0 and max(result["waits"][1:]) < 0.01
    assert result["ticks"] > 5  # the ticker greenlet ran while the call waited
    assert result["up"] is False and result["status"] == "degraded"


@pytest.mark.parametrize("url", ["http://localhost:6379", "redis://:hunter2@:6379",
                                 "redis://:hunter2@localhost:port", "redis://localhost/zero",
                                 "unix://"])
def test_a_bad_redis_url_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(bridge_settings.SettingError) as refused:
        bridge_settings.load(["--redis-url", url])
    assert "--redis-url" in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_a_good_redis_url_is_held_as_a_secret() -> None:
    settings = bridge_settings.load(["--redis-url", "redis://:hunter2@localhost:6379/2"])
    assert settings.redis_url.reveal() == "redis://:hunter2@localhost:6379/2"
    assert "hunter2" not in repr(settings)
    assert "redis://:hunter2@localhost:6379/2" in bridge_settings.configured_secrets(settings)
