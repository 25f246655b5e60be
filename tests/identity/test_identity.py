"""Who is served what: one principal per request, and stored answers only for the
principals the upstream entitles to that model on that upstream (issue: identity).

The stand-in gives per-model entitlements as a cloud API or an auth proxy does: the
model `private` answers only the bearer key `sk-a` (others: OpenAI's 404 on /v1, 403 on
/api, /api/show and /v1/models/<model> included); every other model answers everyone.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import requests
from helpers import show_upstream_is_open, wait_for

from bridge.cache.disk import FILE_NAME, TABLE
from bridge.cache.entry import decode_entry
from bridge.ollama_standin import StandIn
from bridge.ollama_standin.config import DEFAULT_MODELS
from bridge.serve.processes import Process, start_bridge

CHAT = "/v1/chat/completions"
NATIVE = "/api/chat"
PRIVATE = "private:latest"
KEY_A = {"Authorization": "Bearer sk-a-0123456789"}
WRONG = {"Authorization": "Bearer sk-wrong-0123456789"}


@pytest.fixture
def entitled(standin: StandIn) -> StandIn:
    standin.configure(models=[*DEFAULT_MODELS, PRIVATE],
                      entitlements={PRIVATE: ["sk-a-0123456789"]})
    return standin


def chat(model: str, text: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def post(bridge: Process, body: dict, headers: dict | None = None, path: str = CHAT
         ) -> requests.Response:
    return requests.post(bridge.url + path, json=body, headers={**(headers or {}),
                                                                "Connection": "close"},
                         timeout=30)


def generations(standin: StandIn) -> int:
    return standin.count(CHAT) + standin.count(NATIVE)


def probes(standin: StandIn) -> int:
    return standin.count("/api/show") + standin.count(f"/v1/models/{PRIVATE}")


def cache_flags(tmp_path: Path, *flags: str) -> tuple[str, ...]:
    return ("--enable-cache", "--cache-dir", str(tmp_path / "cache"),
            "--state-dir", str(tmp_path / "state"), *flags)


@pytest.mark.parametrize("path", [CHAT, NATIVE])
def test_key_only_answers_never_reach_anonymous_or_wrong_keys(entitled, make_bridge, tmp_path,
                                                              path):
    bridge = make_bridge(*cache_flags(tmp_path))
    question = chat(PRIVATE, f"secret plans {uuid.uuid4().hex}")
    first = post(bridge, question, KEY_A, path)
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
    refused = 404 if path == CHAT else 403
    for _ in range(2):  # an open model answered nobody yet, then it has (below)
        for headers in ({}, WRONG, {"Authorization": "Bearer "}):
            answer = post(bridge, question, headers, path)
            assert answer.status_code == refused and answer.headers["x-cache"] == "MISS"
            assert "secret plans" not in answer.text
        # the open model answers an anonymous client: that says nothing of `private`
        show_upstream_is_open(bridge, model="qwen3")
        open_question = chat("qwen3", f"open {uuid.uuid4().hex}")
        assert post(bridge, open_question, {}, path).headers["x-cache"] == "MISS"
        assert post(bridge, open_question, WRONG, path).headers["x-cache"].startswith("HIT-")
    hit = post(bridge, question, KEY_A, path)
    assert hit.status_code == 200 and hit.headers["x-cache"].startswith("HIT-")


def test_after_a_restart_the_entitled_key_hits_at_once(entitled, tmp_path):
    flags = cache_flags(tmp_path)
    question = chat(PRIVATE, f"restart {uuid.uuid4().hex}")
    with start_bridge(*flags, upstream=entitled.url, log_dir=tmp_path) as bridge:
        assert post(bridge, question, KEY_A).headers["x-cache"] == "MISS"
    assert generations(entitled) == 1
    with start_bridge(*flags, upstream=entitled.url, log_dir=tmp_path) as bridge:
        before = probes(entitled)
        hit = post(bridge, question, KEY_A)
        assert hit.status_code == 200 and hit.headers["x-cache"] == "HIT-DISK"
        assert generations(entitled) == 1  # no generation: at most a probe
        assert probes(entitled) - before <= 1
        for headers in (WRONG, {}):
            refused = post(bridge, question, headers)
            assert refused.status_code == 404 and refused.headers["x-cache"] == "MISS"
    assert (tmp_path / "state" / "principal.secret").stat().st_mode & 0o077 == 0


def test_a_stream_of_hits_keeps_a_key_entitled_without_generations(entitled, make_bridge,
                                                                   tmp_path):
    ttl_ms = 1000
    bridge = make_bridge(*cache_flags(tmp_path, "--entitlement-ttl", str(ttl_ms)), workers=1)
    question = chat(PRIVATE, f"steady {uuid.uuid4().hex}")
    assert post(bridge, question, KEY_A).headers["x-cache"] == "MISS"
    # Repeats until the upstream was probed past several lifetimes of the verdict: each
    # is a hit, and the upstream never generates again.
    served = 0
    while probes(entitled) < 4 and served < 5000:
        answer = post(bridge, question, KEY_A)
        assert answer.status_code == 200 and answer.headers["x-cache"].startswith("HIT-")
        served += 1
    assert probes(entitled) >= 4, "hits never renewed the entitlement"
    assert generations(entitled) == 1


class EchoUpstream(BaseHTTPRequestHandler):
    """An OpenAI-compatible upstream that echoes the Authorization it was sent (as some
    do in debug fields), and lets every key use every model."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._json({"id": self.path.rpartition("/")[2], "object": "model"})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._json({"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                    "model": "m", "debug": {"authorization": self.headers.get("authorization")},
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {
                        "role": "assistant", "content": "hello"}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    def _json(self, data: dict) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoUpstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("shared", [False, True])
def test_what_is_stored_is_what_the_client_was_sent(echo_upstream, make_bridge, tmp_path,
                                                    shared):
    secret = "sk-upstream-echoed-0123456789"
    flags = cache_flags(tmp_path, *(("--enable-shared-mode",) if shared else ()))
    bridge = make_bridge(*flags, upstream=echo_upstream,
                         env={"BRIDGE_API_KEY": secret} if shared else None)
    headers = {} if shared else {"Authorization": f"Bearer {secret}"}
    question = chat("m", f"echo {uuid.uuid4().hex}")
    first = post(bridge, question, headers)
    assert first.status_code == 200 and secret not in first.text
    hit = post(bridge, question, headers)
    assert hit.headers["x-cache"].startswith("HIT-") and secret not in hit.text
    stored = wait_for(lambda: stored_entries(tmp_path / "cache"), what="the stored entry")
    assert b"[REDACTED]" in stored and secret.encode() not in stored


def stored_entries(cache_dir: Path) -> bytes:
    """Every entry of the disk tier, decoded (they are compressed on disk)."""
    with closing(sqlite3.connect(cache_dir / FILE_NAME)) as db:
        rows = db.execute(f'SELECT value FROM "{TABLE}"').fetchall()
    entries = [decode_entry(value) for (value,) in rows]
    return b"".join(entry.body or b"".join(entry.frames) for entry in entries)


def test_a_miss_on_one_instance_is_a_hit_for_the_same_key_on_another(entitled, make_bridge,
                                                                      redis_server, tmp_path):
    prefix = f"identity-{uuid.uuid4().hex[:8]}"
    a, b = (make_bridge(*cache_flags(tmp_path / name, "--redis-timeout", "1000",
                                     "--redis-prefix", prefix, "--redis-url",
                                     redis_server.url))
            for name in ("a", "b"))
    question = chat(PRIVATE, f"fleet {uuid.uuid4().hex}")
    assert post(a, question, KEY_A).headers["x-cache"] == "MISS"
    hit = post(b, question, KEY_A)
    assert hit.status_code == 200 and hit.headers["x-cache"] == "HIT-REDIS"
    assert generations(entitled) == 1
    for headers in (WRONG, {}):
        refused = post(b, question, headers)
        assert refused.status_code == 404 and refused.headers["x-cache"] == "MISS"
    # both instances key clients by the fleet's secret
    assert (tmp_path / "a" / "state" / "principal.secret").read_bytes() == \
        (tmp_path / "b" / "state" / "principal.secret").read_bytes()


def test_routed_upstreams_each_decide_for_their_own_models(make_bridge, tmp_path):
    """An open local box says nothing of a paid upstream's models, and an upstream that
    gets the bridge's own key says nothing of the client's credentials."""
    local, paid, keyed = StandIn().start(), StandIn().start(), StandIn().start()
    try:
        paid.configure(models=[PRIVATE], entitlements={PRIVATE: ["sk-a-0123456789"]})
        keyed.configure(api_key="sk-bridge-own-0123456789")
        upstreams = tmp_path / "upstreams.toml"
        upstreams.write_text(f'''
[[upstream]]
name = "local"
url = "{local.url}"
models = ["qwen*"]

[[upstream]]
name = "paid"
url = "{paid.url}"
models = ["private*"]

[[upstream]]
name = "keyed"
url = "{keyed.url}"
models = ["deepseek-*"]
api_key_env = "TEST_KEYED_KEY"
''')
        bridge = make_bridge(*cache_flags(tmp_path, "--upstreams", str(upstreams)),
                             upstream=None, env={"TEST_KEYED_KEY": "sk-bridge-own-0123456789"})
        show_upstream_is_open(bridge, model="qwen3:latest")  # the local box is open
        secret = chat(PRIVATE, f"paid answer {uuid.uuid4().hex}")
        assert post(bridge, secret, KEY_A).headers["x-cache"] == "MISS"
        # the junk key uses the keyed upstream (the bridge's key goes there): shared
        keyed_question = chat("deepseek-r1:7b", f"keyed {uuid.uuid4().hex}")
        assert post(bridge, keyed_question, WRONG).status_code == 200
        shared = post(bridge, keyed_question, {})
        assert shared.status_code == 200 and shared.headers["x-cache"].startswith("HIT-")
        for headers in ({}, WRONG):  # ... and that never entitles it to the paid model
            refused = post(bridge, secret, headers)
            assert refused.status_code == 404 and refused.headers["x-cache"] == "MISS"
            assert "paid answer" not in refused.text
        assert post(bridge, secret, KEY_A).headers["x-cache"].startswith("HIT-")
        assert paid.count(CHAT) == 1 + 2
    finally:
        for box in (local, paid, keyed):
            box.stop()


def test_a_bridge_that_keeps_nothing_makes_no_secret(standin, make_bridge, tmp_path):
    """Without the cache, async jobs and the usage ledger (on by default: it records per
    principal) nobody asks who asks: a relay (a read-only deployment, say) writes nothing
    to its state directory."""
    bridge = make_bridge("--state-dir", str(tmp_path / "state"), "--disable-usage-ledger")
    assert post(bridge, chat("qwen3", "hello"), KEY_A).status_code == 200
    bridge.stop()  # whatever its exchanges' closers would write is written by now
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())
