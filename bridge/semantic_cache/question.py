"""What a semantic lookup compares, and what must match exactly.

Only the conversation's last user message is compared (by its embedding). Everything
else that could change the answer must be identical, folded into one *scope* digest:
the exact cache key's canonical request (`bridge.cache.keys`: surface, endpoint, model,
every output-affecting parameter, the system prompt, every earlier turn, the upstream
and the exchange's cache scope) with that last message's text left out. Who may be
served is decided as for exact hits (`bridge.identity.entitlement`).

Never compared (no semantic hit, no semantic entry): a request whose last message is not
the user's (tool results pending), with images or other non-text parts, or whose client
opted out with `X-Semantic-Cache: off`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from bridge.core.exchange import Exchange

# The exact cache key's digest of a request's canonical form (`bridge.cache.keys.request_digest`:
# surface, endpoint, payload, cache scope, upstream), given by the cache stage.
Digest = Callable[[str, str, Any, Any, str], str]

OPT_OUT_HEADER = "x-semantic-cache"  # "off": neither a semantic hit nor a semantic entry
OPT_OUT_VALUES = frozenset({"off", "no", "0", "false", "bypass"})
# The endpoints whose answers can be asked for in other words (not embeddings).
ENDPOINTS = frozenset({("openai", "chat"), ("openai", "completions"), ("ollama", "chat"),
                       ("ollama", "generate")})
_COMPARED = "\0compared"  # stands for the compared text in the scope's canonical form


@dataclass(frozen=True)
class Question:
    """A request's compared text and the digest of everything that must match."""

    text: str
    scope: str


def question_of(ex: Exchange, upstream: str, request_digest: Digest) -> Question | None:
    """The request's `Question` (`upstream`: where its answer comes from, as the cache
    keys it), or None when it may never be a semantic hit."""
    if (ex.surface, ex.endpoint) not in ENDPOINTS or not isinstance(ex.payload, dict):
        return None
    if ex.headers.get(OPT_OUT_HEADER, "").strip().lower() in OPT_OUT_VALUES:
        return None
    payload = ex.payload
    if ex.endpoint == "chat":
        text = _last_user_text(payload.get("messages"))
        if text is None:
            return None
        messages = list(payload["messages"])
        messages[-1] = {**messages[-1], "content": _COMPARED}
        blanked = {**payload, "messages": messages}
    else:
        text = payload.get("prompt")
        if not isinstance(text, str) or payload.get("images"):
            return None
        blanked = {**payload, "prompt": _COMPARED}
    if not text.strip():
        return None
    scope = request_digest(ex.surface, ex.endpoint, blanked, ex.cache_scope, upstream)
    return Question(text=text, scope=scope)


def _last_user_text(messages: Any) -> str | None:
    """The text of the last message when it is the user's and holds text only."""
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    if last.get("role") != "user" or last.get("images"):
        return None
    content = last.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(
            isinstance(part, dict) and part.get("type") == "text"
            and isinstance(part.get("text"), str) for part in content):
        return "\n".join(part["text"] for part in content)
    return None
