"""The fuzz corpus as a test: a few thousand malformed requests (nested, lone surrogates,
wrong types for every field, huge numbers, NaN, empty, non-object JSON, odd content types,
random bytes, malformed chunking) on every model endpoint and `/api/show`, and odd
queries of `/metrics`, sent concurrently to bridges with the cache on and in shared mode:
one with the configured upstream, one routing to two (`--upstreams`). None may get a 5xx
from the bridge, nor leave a traceback in its log. Generated from a fixed seed: a
failure replays the same way."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
from helpers import http_request, keys_command, raw_http

from bridge.serve.processes import start_bridge

SEED = 20261203
RANDOM_FIELD_CASES = 1000  # per variant of the bridge: the suite stays fast
CONCURRENCY = 8
UPSTREAM_KEY = "sk-upstream-fuzz-0123456789"

BASES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "qwen2.5", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "qwen2.5", "prompt": "hi"},
    "/v1/embeddings": {"model": "all-minilm", "input": "hi"},
    "/api/chat": {"model": "qwen2.5", "stream": False,
                  "messages": [{"role": "user", "content": "hi"}]},
    "/api/generate": {"model": "qwen2.5", "prompt": "hi", "stream": False},
    "/api/embed": {"model": "all-minilm", "input": "hi"},
    "/api/show": {"model": "qwen2.5"},  # parsed by the bridge only when it routes
}
# GET requests with queries a library behind a route may choke on.
QUERIES = [("/metrics", "name[]=x"), ("/metrics", "name[]="), ("/metrics", "name[]=x&name[]=y"),
           ("/metrics", "name[]=bridge_requests_total"), ("/metrics", "name=x"),
           ("/metrics", "name[]=%ff%fe"), ("/metrics", "name[]=" + "x" * 5000),
           ("/metrics", "%"), ("/metrics", "&&==&"), ("/health", "name[]=x"),
           ("/ready", "x=%00"), ("/v1/models", "name[]=x"), ("/api/tags", "a=1&a=2")]
# Every field a client may send, top-level or one level down ("messages.0.content").
FIELDS = [
    "model", "messages", "prompt", "input", "stream", "options", "temperature", "top_p",
    "max_tokens", "max_completion_tokens", "tools", "tool_choice", "stop", "seed", "n",
    "stream_options", "response_format", "format", "think", "keep_alive", "suffix",
    "images", "logprobs", "top_logprobs", "user", "reasoning_effort", "truncate",
    "dimensions", "encoding_format", "system", "template", "raw", "context",
    "messages.0", "messages.0.content", "messages.0.role", "messages.0.images",
    "messages.0.tool_calls", "messages.0.thinking", "options.temperature", "options.num_ctx",
    "stream_options.include_usage", "tools.0", "tools.0.function",
]
# Values as JSON text, so that what `json.dumps` cannot write (NaN, 1e999, a 5,000-digit
# number, a lone surrogate escape, 200 levels) can be put anywhere.
VALUES = [
    "null", "true", "false", "0", "-1", "-0", "1.5", "1e308", "1e999", "-1e999", "NaN",
    "Infinity", "-Infinity", "1" * 50, "1" * 5000, "0.0000000000000000000001", '""', '"x"',
    '"\\u0000"', '"\\ud800"', '"\\udfff x"', '"\\ud83d\\ude00"', '"\\n\\t\\r"', "[]", "{}",
    "[null]", '{"a":null}', "[[[[[]]]]]", "[" * 200 + "]" * 200, '{"a":' * 200 + "1" + "}" * 200,
    '"' + "\u00e9" * 100 + '"', '"' + "x" * 2000 + '"', '{"role":"user"}',
    '[{"role":"user","content":null}]', '[{"role":"tool"}]', '[{"content":"hi"}]',
    '[{"role":"user","content":[{"type":"text","text":"hi"}]}]',
    '[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:,"}}]}]',
    "[1,2,3]", '["a","b"]', '{"type":"json_object"}', '{"type":"json_schema"}',
    '{"include_usage":"yes"}', '[{"type":"function"}]',
    '[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]',
    '"auto"', '"none"', '"required"', '{"num_ctx":-5}', '{"temperature":"hot"}', '"json"',
    '{"type":"object","properties":{"a":{"type":"string"}}}', '"-1"', '"5m"', "-5",
    '[{"function":{"name":"f","arguments":"{"}}]', '[{"function":{"arguments":{}}}]',
]
CONTENT_TYPES = ["text/plain", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x", "application/json; charset=latin-1",
                 "application/json; charset=utf-16", "", "application/xml", "*/*"]
NON_OBJECTS = [b"1", b"-1.5", b'"text"', b"[]", b"[1,2]", b"null", b"true", b'""',
               b"[{}]", b'"\\ud800"']
CHUNKED = [b"zz\r\n{}\r\n0\r\n\r\n", b"2\r\n{}\r\n0\r\nTrailer: x\r\n\r\n",
           b"2\r\n{}XX0\r\n\r\n", b"2;bad ext\r\n{}\r\n0\r\n\r\n", b"-1\r\n{}\r\n0\r\n\r\n",
           b"1\r\n{}\r\n0\r\n\r\n", b"2\r\n{}\r\n", b"\r\n\r\n", b"0x2\r\n{}\r\n0\r\n\r\n",
           b"2\r\n{}\r\n0\r\nX-Bad\x00: y\r\n\r\n", b"2\n{}\n0\n\n",
           b"2 \r\n{}\r\n0\r\n\r\n", b"3\r\n{}\r\n0\r\n\r\n",
           b"1" + b"0" * 19 + b"\r\n{}"]


@dataclass(frozen=True)
class Case:
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    raw: bool = False  # sent as raw bytes on a socket (`body` is the whole request)
    method: str = "POST"

    def describe(self) -> str:
        return f"{self.method} {self.path} {self.headers} {self.body[:120]!r}"


def with_value(base: dict, field: str, value: str) -> bytes:
    """`base` as JSON with `field` (a dotted path) set to the JSON text `value`."""
    marker = "\u2063MARK\u2063"
    body = json.loads(json.dumps(base))
    parts = field.split(".")
    target: Any = body
    for part, following in zip(parts[:-1], parts[1:], strict=True):  # to the parent
        key: Any = int(part) if isinstance(target, list) else part
        if isinstance(target, list):
            target.extend({} for _ in range(key + 1 - len(target)))
        current = target[key] if isinstance(target, list) else target.get(key)
        if not isinstance(current, (dict, list)):
            current = target[key] = [] if following.isdigit() else {}
        target = current
    if isinstance(target, list):
        index = int(parts[-1])
        target.extend({} for _ in range(index + 1 - len(target)))
        target[index] = marker
    else:
        target[parts[-1]] = marker
    return json.dumps(body, ensure_ascii=False).replace(f'"{marker}"', value).encode()


def nested(depth: int, opener: bytes) -> bytes:
    closer = b"]" if opener == b"[" else b"}"
    if opener == b"{":
        return b'{"a":' * depth + b"1" + closer * depth
    return opener * depth + closer * depth


def corpus(seed: int = SEED) -> list[Case]:
    rng = random.Random(seed)
    cases: list[Case] = []
    paths = list(BASES)
    for path in paths:
        base = BASES[path]
        for depth in (1, 50, 127, 129, 1000, 10_000, 100_000):
            for opener in (b"[", b"{"):
                cases.append(Case(path, nested(depth, opener)))
                cases.append(Case(path, with_value(base, "model", "1").replace(
                    b'"model":1', b'"model":"qwen2.5","x":' + nested(depth, opener))))
        cases += [Case(path, body) for body in NON_OBJECTS]
        cases += [Case(path, body) for body in (b"", b" ", b"\r\n\t ")]
        cases += [Case(path, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))))
                  for _ in range(20)]
        good = json.dumps(base).encode()
        cases += [Case(path, good, (("Content-Type", kind),)) for kind in CONTENT_TYPES]
        cases += [Case(path, good.replace(b'"hi"', b'"hi\\ud800"'), ()),
                  Case(path, good.replace(b'"qwen2.5"', b'"\\udbff"')),
                  Case(path, good.replace(b'"hi"', b'"\xed\xb0\x80"')),
                  Case(path, good[:-1] + b',"\\ud800":1}'),
                  Case(path, good[: len(good) // 2]),
                  Case(path, good + b"garbage"),
                  Case(path, good.replace(b"{", b'{"model":"x",', 1))]  # a duplicate key
        for chunks in CHUNKED:
            cases.append(Case(path, http_request(path, chunks, chunked=True), raw=True))
        for value in (b"\xff", b"\xc3\xa9t\xc3\xa9", b"a\xc3"):  # header bytes, UTF-8 or not
            request = http_request(path, good).replace(b"\r\n\r\n", b"\r\nX-Utf: " + value
                                                       + b"\r\n\r\n", 1)
            cases.append(Case(path, request, raw=True))
    for _ in range(RANDOM_FIELD_CASES):
        path = rng.choice(paths)
        body = with_value(BASES[path], rng.choice(FIELDS), rng.choice(VALUES))
        cases.append(Case(path, body))
    for path, query in QUERIES:
        for accept in ("", "application/openmetrics-text", "text/plain; escaping=bogus"):
            cases.append(Case(f"{path}?{query}", b"", (("Accept", accept),) if accept else (),
                              method="GET"))
    return cases


def with_client_key(cases: list[Case], key: str, rng: random.Random) -> list[Case]:
    """Most requests carry the client key; some none, some a wrong one."""
    keyed = []
    for case in cases:
        roll = rng.random()
        if case.raw:
            keyed.append(case)
            continue
        if roll < 0.9:
            auth = (("Authorization", f"Bearer {key}"),)
        elif roll < 0.95:
            auth = (("Authorization", "Bearer sk-bridge-wrong"),)
        else:
            auth = ()
        keyed.append(Case(case.path, case.body, case.headers + auth, method=case.method))
    return keyed


def plain(standin: Any, directory: Path) -> tuple[list[str], str | None]:
    """The configured upstream (-o) only."""
    return [], standin.url


def routed(standin: Any, directory: Path) -> tuple[list[str], str | None]:
    """Routing on (`--upstreams`): two upstreams serving every model (both the stand-in),
    no -o: bodies are parsed for their model (`/api/show` too), streams fail over."""
    file = directory / "upstreams.toml"
    file.write_text("".join(f'[[upstream]]\nname = "{name}"\nurl = "{standin.url}"\n'
                            f'models = ["*"]\napi_key_env = "BRIDGE_API_KEY"\n\n'
                            for name in ("one", "two")))
    return ["--upstreams", str(file)], None


PASS_THROUGH_LUA = """
function HandleServerRequest(request)
    request.headers["x-fuzzed"] = "1"
    return true, request
end
function HandleServerResponse(response)
    response.headers["x-fuzzed"] = "1"
    return response
end
"""


def lua(standin: Any, directory: Path) -> tuple[list[str], str | None]:
    """Routing and the Lua hooks on: every request and response also crosses the Lua
    runtime (headers, bodies) with a script that passes them on."""
    script = directory / "fuzz.lua"
    script.write_text(PASS_THROUGH_LUA)
    flags, upstream = routed(standin, directory)
    return [*flags, "--enable-luajit", "--luajit-script", str(script)], upstream


# Each variant: the flags it adds to every feature on, and its -o.
VARIANTS: dict[str, Callable[[Any, Path], tuple[list[str], str | None]]] = {
    "plain": plain, "routed": routed, "lua": lua}


@pytest.fixture(scope="module", params=list(VARIANTS))
def fuzzed(request, standin_server, tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    created = keys_command(state, "create", "fuzzer")
    key = next(word for word in created.stdout.split() if word.startswith("sk-bridge-"))
    flags, upstream = VARIANTS[request.param](standin_server, tmp_path_factory.mktemp("cfg"))
    with start_bridge("--enable-cache", "--cache-dir", str(tmp_path_factory.mktemp("cache")),
                      "--enable-shared-mode", "--state-dir", str(state),
                      "--body-read-timeout", "1000", *flags, upstream=upstream,
                      env={"BRIDGE_API_KEY": UPSTREAM_KEY},
                      log_dir=tmp_path_factory.mktemp("fuzz")) as process:
        yield process, key


def send(session: requests.Session, url: str, case: Case) -> tuple[int, bytes]:
    if case.raw:
        return raw_http(url, case.body, timeout=30)
    headers = {"Content-Type": "application/json", **dict(case.headers)}
    try:
        response = session.request(case.method, url + case.path, data=case.body or None,
                                   headers=headers, timeout=30)
    except requests.ConnectionError:
        # A kept-alive connection the bridge closed (idle, or after a body it could not
        # read) just as the session reused it: HTTP's idle race, which clients meet with
        # one retry on a new connection. A bridge that cuts this request too fails below.
        try:
            response = requests.request(case.method, url + case.path,
                                        data=case.body or None, headers=headers, timeout=30)
        except requests.ConnectionError:
            return 0, b""
    return response.status_code, response.content


def test_no_malformed_request_gets_a_5xx_or_leaves_a_traceback(fuzzed, standin):
    bridge, key = fuzzed
    cases = with_client_key(corpus(), key, random.Random(SEED))
    assert len(cases) >= 1500
    sessions = [requests.Session() for _ in range(CONCURRENCY)]

    def run(index: int) -> tuple[Case, int, bytes]:
        case = cases[index]
        status, body = send(sessions[index % CONCURRENCY], bridge.url, case)
        return case, status, body

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(run, range(len(cases))))
    for session in sessions:
        session.close()
    failures = [f"{status} {case.describe()} -> {body[:200]!r}"
                for case, status, body in results if status >= 500 or status == 0]
    assert not failures, f"{len(failures)} bad answers:\n" + "\n".join(failures[:20])
    statuses = {status for _, status, _ in results}
    assert 200 in statuses and 400 in statuses and 401 in statuses  # all kinds were tried
    log = bridge.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000:][:6000]
    assert UPSTREAM_KEY not in log and key not in log
