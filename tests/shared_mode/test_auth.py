"""Shared mode end to end: a real gunicorn with 2 gevent workers in front of the stand-in,
the `openai` SDK and the `ollama` client as users, client keys made and revoked with the
real `keys` command while the bridge runs."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import ollama
import openai
import pytest
import requests
from helpers import keys_command, wait_for

from bridge.core import settings as bridge_settings
from bridge.core.errors import ServiceUnavailable
from bridge.core.exchange import Exchange
from bridge.core.redaction import REDACTED
from bridge.ollama_standin import Fault, StandIn
from bridge.serve.processes import ROOT, Process, start_bridge
from bridge.shared_mode.stage import AuthStage

UPSTREAM_KEY = "sk-upstream-" + secrets.token_hex(16)
HAS_CACHE = "enable_cache" in {setting.name for setting in bridge_settings.SETTINGS}


@dataclass
class Locked:
    """A shared-mode bridge with client keys, and where it keeps what it writes."""

    process: Process
    state_dir: Path
    cache_dir: Path
    keys: dict[str, str]  # name → the raw key `keys create` printed
    brief_expires: float


def create_key(state_dir: Path, name: str, *flags: str) -> str:
    done = keys_command(state_dir, "create", name, *flags)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def locked(standin_server: StandIn, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Locked]:
    home = tmp_path_factory.mktemp("shared")
    state_dir, cache_dir, key_file = home / "state", home / "cache", home / "upstream.key"
    key_file.write_text(UPSTREAM_KEY + "\n")
    (home / "logs").mkdir()
    keys = {"alice": create_key(state_dir, "alice"),
            "coder": create_key(state_dir, "coder", "--models", "deepseek-coder,qwen2.5"),
            "limited": create_key(state_dir, "limited", "--rate", "3/min"),
            "leaver": create_key(state_dir, "leaver"),
            "brief": create_key(state_dir, "brief", "--expires", "2s")}
    brief_expires = time.time() + 2
    cache = (["--enable-cache", "--cache-dir", str(cache_dir), "--cache-per-client-key"]
             if HAS_CACHE else [])
    # the key comes from a file: it must not be in the process list
    with start_bridge("--enable-shared-mode", "--api-key-file", str(key_file), "--state-dir",
                      str(state_dir), "-d", *cache, upstream=standin_server.url, workers=2,
                      log_dir=home / "logs") as process:
        yield Locked(process, state_dir, cache_dir, keys, brief_expires)


def sdk(bridge: Process, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=bridge.url + "/v1", api_key=key, max_retries=0)


def ask(bridge: Process, key: str, model: str = "llama3.2", stream: bool = False) -> str:
    """One chat through the openai SDK with a question never asked before (no cache hit)."""
    question = [{"role": "user", "content": f"question {uuid.uuid4().hex}"}]
    with sdk(bridge, key) as client:
        if stream:
            chunks = client.chat.completions.create(model=model, messages=question,
                                                    stream=True)
            return "".join(chunk.choices[0].delta.content or "" for chunk in chunks
                           if chunk.choices)
        answer = client.chat.completions.create(model=model, messages=question)
        return answer.choices[0].message.content


def upstream_headers(standin: StandIn) -> list[dict[str, str]]:
    return [upstream_headers_of(request) for request in standin.requests]


def post_chat(bridge: Process, key: str | None, surface: str = "openai") -> requests.Response:
    """A raw chat request on a new connection (so requests spread over the workers)."""
    path = "/v1/chat/completions" if surface == "openai" else "/api/chat"
    headers = {"Connection": "close"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    body = {"model": "llama3.2", "stream": False,
            "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
    return requests.post(bridge.url + path, json=body, headers=headers, timeout=30)


def test_the_upstream_sees_the_shared_key_and_never_the_clients(locked: Locked,
                                                                standin: StandIn) -> None:
    alice = locked.keys["alice"]
    assert ask(locked.process, alice).startswith("Echo:")
    assert ask(locked.process, alice, stream=True).startswith("Echo:")
    seen = upstream_headers(standin)
    assert len(seen) == 2
    for headers in seen:
        assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert not any(alice in value for value in headers.values())


@pytest.mark.parametrize("key", [None, "", "sk-bridge-" + "x" * 43, "sk-my-own-openai-key"])
def test_no_key_or_a_wrong_key_is_401_in_the_openai_shape(locked: Locked, standin: StandIn,
                                                          key: str | None) -> None:
    response = post_chat(locked.process, key)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert standin.count() == 0
    if key:
        with pytest.raises(openai.AuthenticationError) as refused:
            ask(locked.process, key)
        assert refused.value.status_code == 401
        assert refused.value.body["type"] == "authentication_error"


def test_an_expired_key_is_401(locked: Locked, standin: StandIn) -> None:
    time.sleep(max(0.0, locked.brief_expires + 0.2 - time.time()))
    with pytest.raises(openai.AuthenticationError, match="expired") as refused:
        ask(locked.process, locked.keys["brief"])
    assert refused.value.status_code == 401
    assert standin.count() == 0


def test_a_model_the_key_may_not_use_is_403(locked: Locked, standin: StandIn) -> None:
    coder = locked.keys["coder"]
    with pytest.raises(openai.PermissionDeniedError) as refused:
        ask(locked.process, coder, model="llama3.2")
    assert refused.value.status_code == 403
    assert refused.value.body["type"] == "permission_error"
    assert refused.value.body["code"] == "model_not_allowed"
    assert refused.value.body["param"] == "model"
    assert standin.count() == 0
    assert ask(locked.process, coder, model="deepseek-coder")  # `:latest` implied
    assert ask(locked.process, coder, model="qwen2.5:latest")


def test_a_key_over_its_rate_is_429(locked: Locked, standin: StandIn) -> None:
    if time.time() % 60 > 50:  # keep the four requests inside one minute window
        time.sleep(60.5 - time.time() % 60)
    limited = locked.keys["limited"]
    for _ in range(3):
        assert post_chat(locked.process, limited).status_code == 200
    with pytest.raises(openai.RateLimitError) as refused:
        ask(locked.process, limited)
    assert refused.value.status_code == 429
    assert refused.value.body["type"] == "rate_limit_error"
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 60
    assert standin.count() == 3
    assert post_chat(locked.process, locked.keys["alice"]).status_code == 200  # others unaffected


def test_the_ollama_surface_refuses_in_ollamas_shape(locked: Locked, standin: StandIn) -> None:
    refused = post_chat(locked.process, None, surface="ollama")
    assert refused.status_code == 401
    assert set(refused.json()) == {"error"} and isinstance(refused.json()["error"], str)
    client = ollama.Client(host=locked.process.url,
                           headers={"Authorization": f"Bearer {locked.keys['coder']}"})
    with client._client:  # closed, so that stopping the bridge need not wait for it
        with pytest.raises(ollama.ResponseError) as forbidden:
            client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
        answer = client.chat(model="qwen2.5", messages=[{"role": "user", "content": "hi"}])
    assert forbidden.value.status_code == 403 and "may not use" in forbidden.value.error
    assert answer.message.content
    assert upstream_headers(standin)[-1]["authorization"] == f"Bearer {UPSTREAM_KEY}"


ACCEPTED = "client key 'leaver' accepted"
REFUSED = "request refused (revoked, key 'leaver')"


def worker_pids(log: str, line: str) -> set[str]:
    """The worker processes that logged `line` (the debug log names each line's pid)."""
    return set(re.findall(rf"\[(\d+)\] DEBUG bridge\.auth: {re.escape(line)}", log))


def test_a_key_revoked_through_the_cli_is_refused_within_a_second_on_every_worker(
        locked: Locked, standin: StandIn) -> None:
    leaver, bridge = locked.keys["leaver"], locked.process

    def burst() -> list[int]:  # concurrent connections spread over the workers
        return list(pool.map(lambda _: post_chat(bridge, leaver).status_code, range(8)))

    with ThreadPoolExecutor(8) as pool:
        for _ in range(40):  # until both workers have served (and cached) the key
            assert burst() == [200] * 8
            if len(worker_pids(bridge.log(), ACCEPTED)) == 2:
                break
        assert len(worker_pids(bridge.log(), ACCEPTED)) == 2
        assert keys_command(locked.state_dir, "revoke", "leaver").returncode == 0
        revoked = time.monotonic()
        statuses: list[int] = []
        while True:  # for a little over a second, and until both workers have refused it
            sent = time.monotonic() - revoked
            statuses += burst()
            assert set(statuses[-8:]) == {401} or sent < 1.0, f"accepted {sent:.2f}s after"
            if sent > 10 or sent >= 1.0 and len(worker_pids(bridge.log(), REFUSED)) == 2:
                break
            time.sleep(0.05)
    assert len(worker_pids(bridge.log(), REFUSED)) == 2
    assert 200 not in statuses  # in fact at once: every request re-reads the store's version


QUERY_SECRETS = {name: f"q-secret-{name}-{secrets.token_hex(6)}"
                 for name in ("key", "api_key", "api-key", "access_token", "API_KEY")}


def test_credential_query_parameters_never_reach_the_upstream_nor_the_log(
        locked: Locked, standin: StandIn) -> None:
    """Google-style `?key=` and friends are dropped before the request goes upstream;
    the other parameters go on unchanged."""
    alice = locked.keys["alice"]
    query = "&".join(f"{name}={value}" for name, value in QUERY_SECRETS.items())
    ids = [f"query-keys-{uuid.uuid4().hex}" for _ in range(2)]
    headers = {"Authorization": f"Bearer {alice}", "Connection": "close"}
    body = {"model": "llama3.2", "stream": False,
            "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
    answer = requests.post(f"{locked.process.url}/v1/chat/completions?keep=1&{query}&also=2",
                           json=body, headers={**headers, "x-request-id": ids[0]}, timeout=30)
    assert answer.status_code == 200
    listed = requests.get(f"{locked.process.url}/api/tags?{query}",
                          headers={**headers, "x-request-id": ids[1]}, timeout=30)
    assert listed.status_code == 200 and listed.json()["models"]
    assert [request.query for request in standin.requests] == ["keep=1&also=2", ""]
    upstream = " ".join(f"{request.query} {request.headers} {request.body!r}"
                        for request in standin.requests)
    log = logged_access(locked.process, *ids)
    for secret in QUERY_SECRETS.values():
        assert secret not in upstream and secret not in log


def test_a_client_key_in_the_query_string_is_not_accepted(locked: Locked,
                                                          standin: StandIn) -> None:
    alice = locked.keys["alice"]
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    refused = requests.post(f"{locked.process.url}/v1/chat/completions?api_key={alice}",
                            json=body, timeout=30)
    assert refused.status_code == 401
    assert "query string" in refused.json()["error"]["message"]
    assert standin.count() == 0 and alice not in locked.process.log()


@pytest.mark.parametrize("header", ["x-api-key", "api-key", "X-Api-Key"])
def test_client_keys_are_accepted_from_key_headers(locked: Locked, standin: StandIn,
                                                   header: str) -> None:
    """Anthropic-style (`x-api-key`) and Azure-style (`api-key`) clients send their key so;
    the upstream still sees only the bridge's key."""
    alice = locked.keys["alice"]
    body = {"model": "llama3.2", "stream": False,
            "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
    answer = requests.post(locked.process.url + "/v1/chat/completions", json=body,
                           headers={header: alice, "Connection": "close"}, timeout=30)
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
    wrong = requests.post(locked.process.url + "/v1/chat/completions", json=body,
                          headers={header: "sk-bridge-" + "y" * 43}, timeout=30)
    assert wrong.status_code == 401
    (seen,) = upstream_headers(standin)
    assert seen["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "x-api-key" not in seen and "api-key" not in seen
    assert not any(alice in value for value in seen.values())


def test_ready_probes_an_authenticated_upstream_with_the_upstream_key(
        locked: Locked, standin: StandIn, make_bridge) -> None:
    standin.configure(api_key=UPSTREAM_KEY)  # the upstream now refuses requests without it
    ready = requests.get(locked.process.url + "/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    probes = [request for request in standin.requests if request.path == "/"]
    assert probes and all(upstream_headers_of(probe)["authorization"]
                          == f"Bearer {UPSTREAM_KEY}" for probe in probes)
    assert ask(locked.process, locked.keys["alice"]).startswith("Echo:")

    wrong = make_bridge("--enable-shared-mode", "--state-dir", str(locked.state_dir),
                        workers=1, env={"BRIDGE_API_KEY": "sk-not-the-upstream-key"})
    refused = requests.get(wrong.url + "/ready", timeout=10)
    assert refused.status_code == 503
    assert refused.json()["status"] == "upstream refuses the bridge's key (--api-key)"
    assert "sk-not-the-upstream-key" not in refused.text + wrong.log()


def upstream_headers_of(request) -> dict[str, str]:
    return {name.lower(): value for name, value in request.headers.items()}


def logged_access(bridge: Process, *request_ids: str) -> str:
    """The bridge's log once it holds the access lines of `request_ids` (they are written
    when each response closes)."""
    def complete() -> str:
        log = bridge.log()
        return log if all(f"id={rid}" in log for rid in request_ids) else ""

    return wait_for(complete, timeout=5, what=f"access lines of {request_ids}")


def test_an_upstream_error_echoing_the_key_is_redacted(locked: Locked, standin: StandIn) -> None:
    standin.push_fault(Fault(kind="status", status=401,
                             body=f"Incorrect API key provided: {UPSTREAM_KEY}"))
    response = post_chat(locked.process, locked.keys["alice"])
    assert response.status_code == 401
    assert UPSTREAM_KEY not in response.text and REDACTED in response.text


def test_health_does_not_show_the_key(locked: Locked) -> None:
    response = requests.get(locked.process.url + "/health", timeout=10)
    assert response.ok and UPSTREAM_KEY not in response.text


@pytest.mark.skipif(not HAS_CACHE, reason="the response cache has not landed")
def test_per_client_key_cache_keeps_tenants_apart(locked: Locked, standin: StandIn) -> None:
    question = [{"role": "user", "content": f"shared question {uuid.uuid4().hex}"}]
    for name in ("alice", "coder", "alice"):
        with sdk(locked.process, locked.keys[name]) as client:
            client.chat.completions.create(model="qwen2.5", messages=question)
    assert standin.count() == 2  # alice's second ask is her own cache hit; coder's is not


def test_nothing_the_bridge_wrote_holds_a_key(locked: Locked) -> None:
    """Run last in this module: the debug log, the metrics scrape, the cache and the key
    store hold neither the upstream key nor any raw client key."""
    for key in locked.keys.values():  # each key used at least once, whatever ran before
        post_chat(locked.process, key)
    written = {"log": locked.process.log().encode()}
    metrics = requests.get(locked.process.url + "/metrics", timeout=10)
    if metrics.ok:
        written["metrics"] = metrics.content
    for directory in (locked.state_dir, locked.cache_dir):
        for path in directory.rglob("*") if directory.exists() else ():
            if path.is_file():
                written[str(path)] = path.read_bytes()
    assert any(name.endswith("keys.sqlite3") for name in written)
    assert not HAS_CACHE or any(name.startswith(str(locked.cache_dir)) for name in written)
    assert b"bridge.auth" in written["log"]  # debug logging was on
    for secret in [UPSTREAM_KEY, *locked.keys.values()]:
        for name, content in written.items():
            assert secret.encode() not in content, f"a key leaked into {name}"


# --- open shared mode, start-up, settings -------------------------------------------------


def test_open_shared_mode_warns_loudly_then_locks_when_a_key_is_made(
        make_bridge, standin: StandIn, tmp_path: Path) -> None:
    key = "sk-env-" + secrets.token_hex(12)
    bridge = make_bridge(via="gunicorn", listen_host="0.0.0.0", env={
        "BRIDGE_ENABLE_SHARED_MODE": "1", "BRIDGE_API_KEY": key,
        "BRIDGE_STATE_DIR": str(tmp_path / "state"), "BRIDGE_DEBUG": "1"})
    assert bridge.log().count("SHARED MODE IS OPEN TO ANYONE") == 1
    assert bridge.log().count(METRICS_WARNING) == 1  # keys made later show there too
    own = "sk-my-own-key-" + secrets.token_hex(8)
    assert ask(bridge, own)  # no client keys: anyone is served, with the bridge's key
    assert upstream_headers(standin) == [
        {**upstream_headers(standin)[0], "authorization": f"Bearer {key}"}]
    assert own not in str(standin.requests[0].headers)
    create_key(tmp_path / "state", "first")
    time.sleep(1.0)
    assert post_chat(bridge, own).status_code == 401
    assert post_chat(bridge, None).status_code == 401
    assert key not in bridge.log() and own not in bridge.log()


METRICS_WARNING = "/metrics names the client keys of shared mode"


def test_metrics_open_beyond_loopback_is_warned_of_once_at_start(
        make_bridge, standin: StandIn, tmp_path: Path) -> None:
    """Client keys, a non-loopback -l and no --metrics-key: one WARNING line at start says
    that /metrics shows the key names to anyone; with --metrics-key, none."""
    state = tmp_path / "state"
    raw = create_key(state, "team-blue")
    env = {"BRIDGE_API_KEY": UPSTREAM_KEY}
    open_metrics = make_bridge("--enable-shared-mode", "--state-dir", str(state), env=env,
                               listen_host="0.0.0.0", workers=2)
    warned = [line for line in open_metrics.log().splitlines() if METRICS_WARNING in line]
    assert len(warned) == 1 and "WARNING" in warned[0] and "--metrics-key" in warned[0]
    assert "OPEN TO ANYONE" not in open_metrics.log()  # a key exists: not open
    assert post_chat(open_metrics, raw).status_code == 200
    assert "team-blue" in requests.get(open_metrics.url + "/metrics", timeout=10).text
    assert UPSTREAM_KEY not in open_metrics.log()
    keyed = make_bridge("--enable-shared-mode", "--state-dir", str(state), env={
        **env, "BRIDGE_METRICS_KEY": "metrics-" + secrets.token_hex(8)},
        listen_host="0.0.0.0", workers=1)
    assert requests.get(keyed.url + "/metrics", timeout=10).status_code == 401
    assert METRICS_WARNING not in keyed.log()


def run_bridge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge", *args], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", **(env or {})}, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--enable-shared-mode"], {}, "needs the upstream key"),
    (["--enable-shared-mode", "--api-key", "a b"], {}, "(hidden)"),
    (["--enable-shared-mode"], {"BRIDGE_API_KEY": " "}, "must not be empty"),
    (["--enable-shared-mode", "--api-key-file", "/no/such/file"], {}, "cannot read"),
    (["--api-key", "k1", "--api-key-file", "{key_file}"], {}, "not both"),
    (["--enable-shared-mode", "--api-key-file", "{empty_file}"], {}, "content must not be"),
])
def test_bad_shared_mode_settings_exit_2_in_one_line(args: list[str], env: dict[str, str],
                                                    message: str, tmp_path: Path) -> None:
    (tmp_path / "key").write_text("k2\n")
    (tmp_path / "empty").write_text("\n")
    files = {"key_file": tmp_path / "key", "empty_file": tmp_path / "empty"}
    done = run_bridge(*(arg.format(**files) for arg in args), env=env)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "a b" not in done.stderr


def test_the_key_is_never_shown_by_help_or_settings(tmp_path: Path) -> None:
    key = "sk-hidden-" + secrets.token_hex(8)
    assert key not in run_bridge("-h", env={"BRIDGE_API_KEY": key}).stdout
    loaded = bridge_settings.load([], {"BRIDGE_API_KEY": key, "BRIDGE_ENABLE_SHARED_MODE": "1"})
    assert loaded.api_key.reveal() == key
    assert key not in repr(loaded) and key not in str(loaded.api_key)
    (tmp_path / "key").write_text(key + "\n")
    from_file = bridge_settings.load(["--api-key-file", str(tmp_path / "key")], {})
    assert from_file.api_key_file.reveal() == key


def test_an_unusable_state_dir_stops_the_start() -> None:
    done = run_bridge("--enable-shared-mode", "--api-key", "k", "--state-dir",
                      "/proc/no-state-here", "-l", "127.0.0.1:0")
    assert done.returncode == 2
    assert "--state-dir" in done.stderr and "Traceback" not in done.stderr


def shared_stage(state_dir: Path) -> AuthStage:
    return AuthStage(bridge_settings.defaults().replace(
        enable_shared_mode=True, api_key=bridge_settings.Secret("k"),
        state_dir=str(state_dir), cache_per_client_key=True))


def chat_exchange(headers: dict[str, str]) -> Exchange:
    return Exchange(surface="openai", endpoint="chat", method="POST",
                    path="/v1/chat/completions", query="", headers=headers, body=b"{}",
                    request_id="r1", payload={"model": "m"})


def test_per_key_cache_scope_and_client_key_name_are_set_on_the_exchange(tmp_path: Path) -> None:
    stage = shared_stage(tmp_path)
    raw, _ = stage.store.open().create("tenant-a")
    ex = chat_exchange({"authorization": f"Bearer {raw}", "x-api-key": "own"})
    stage.on_request(ex)
    assert (ex.client_key, ex.cache_scope) == ("tenant-a", "tenant-a")
    assert ex.headers == {"authorization": "Bearer k"}


def test_an_unreadable_key_store_refuses_with_503_not_a_crash() -> None:
    stage = shared_stage(Path("/proc/no-state-here"))  # cannot be created
    with pytest.raises(ServiceUnavailable):
        stage.on_request(chat_exchange({"authorization": "Bearer sk-bridge-anything"}))
