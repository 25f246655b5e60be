"""The cache key: which requests are "the same question".

The key is the conversation, not the bytes: canonical JSON (sorted keys, no whitespace,
integral floats written as integers) of the API surface, the endpoint and the request
body minus the fields that do not change the answer, with the reasoning of earlier
assistant turns removed.

Part of the key: the surface (`/v1` or `/api`), the endpoint, the model and every other
body field, the whole message history included (`messages`, `prompt`, `system`,
`suffix`, `context`, `images`, `tools`, `tool_choice`, `format`, `response_format`,
`options`, `temperature`, `top_p`, `seed`, `n`, `stop`, `max_tokens`, `think`, `logprobs`,
`input`, …). An unknown field counts as changing the answer. So are the request's wishes
about reasoning (`think`, `reasoning_effort`, `reasoning`): an entry holds the reasoning
the upstream sent, and the think filter, outside the cache, delivers it or removes it
per request, so asking for reasoning or not never changes what another client is served.

In shared mode with `--cache-per-client-key`, the exchange's `cache_scope` (the client
key's name) is part of the key too: one cache per client key. So is the upstream the
answer came from (`-o`, or the one a routing stage chose): another server's answers are
never served.

Not part of the key: `stream`, `stream_options`, `user`, `request_fingerprint`,
`keep_alive`, `store`, `metadata`, `service_tier`; key order and whitespace; the
reasoning of earlier assistant messages that is not sent upstream, removed by the same
rule as the think filter's (`bridge.core.reasoning.forwarded_history`: `<think>…</think>`
blocks, text before a `</think>` that comes before any `<think>`, and the reasoning
fields of assistant messages before the last user message; those after it, which a tool
loop sends back, are part of the key). Headers
(Authorization included) are not part of the key: who may be served a stored answer
is decided by `bridge.identity.entitlement`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from bridge.core.reasoning import forwarded_history

# Body fields that never change the answer.
IGNORED_FIELDS = frozenset({
    "stream", "stream_options", "user", "request_fingerprint", "keep_alive", "store",
    "metadata", "service_tier",
})
SEPARATOR = "\t"  # between the model and the digest: purge by model is a key-range delete


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {name: _canonical(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


def canonical_request(surface: str, endpoint: str, payload: dict[str, Any],
                      scope: str | None = None, upstream: str | None = None) -> dict[str, Any]:
    """What identifies the question (see the module docstring)."""
    body = {name: value for name, value in payload.items() if name not in IGNORED_FIELDS}
    if isinstance(body.get("messages"), list):
        body["messages"] = forwarded_history(body["messages"])
    canonical = {"surface": surface, "endpoint": endpoint, "request": _canonical(body)}
    if scope is not None:
        canonical["scope"] = scope
    if upstream is not None:
        canonical["upstream"] = upstream.rstrip("/")
    return canonical


def model_prefix(model: str) -> str:
    """The common start of the keys of every entry of `model`. Lone surrogates (which
    SQLite cannot store as text) are written as their escapes, the same way every time."""
    if not model.isascii():
        model = model.encode("utf-8", "backslashreplace").decode("utf-8")
    return f"{model}{SEPARATOR}"


def request_digest(surface: str, endpoint: str, payload: dict[str, Any],
                   scope: str | None = None, upstream: str | None = None) -> str:
    """The sha256 of the canonical request (`canonical_request`)."""
    text = json.dumps(canonical_request(surface, endpoint, payload, scope, upstream),
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def cache_key(surface: str, endpoint: str, payload: dict[str, Any],
              scope: str | None = None, upstream: str | None = None) -> str:
    """`<model>\\t<sha256 of the canonical request>`."""
    return model_prefix(str(payload.get("model", ""))) + request_digest(
        surface, endpoint, payload, scope, upstream)


def key_model(key: str) -> str:
    return key.rpartition(SEPARATOR)[0]
