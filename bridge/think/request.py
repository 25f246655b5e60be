"""What a request says about reasoning: whether its client asks for it, and the history
it sends upstream.

A client asks for reasoning as Ollama's APIs let it: native `think` true or a level,
`/v1` `reasoning_effort` other than `none` or a `reasoning` object. It then gets the
reasoning in its surface's own field, whatever the server's `--keep-reasoning` says; a
request that switches reasoning off (`bridge.think.evidence.switched_off`) gets none; a
request silent about it gets the server's default.
"""

from __future__ import annotations

from typing import Any

from bridge.core.reasoning import forwarded_history
from bridge.think.evidence import switched_off

# Ollama's `think` levels (`api.ThinkValue`); `reasoning_effort` values are checked by
# the upstream (an invalid one is its 400).
THINK_LEVELS = frozenset({"low", "medium", "high", "max"})


def reasoning_wish(payload: dict[str, Any], native: bool = False) -> bool | None:
    """True when the request asks for reasoning, False when it switches it off, None
    when it says nothing of it (`native`: a request of Ollama's own API, where only
    `think` says it)."""
    if switched_off(payload, native):
        return False
    think = payload.get("think")
    if think is True or (isinstance(think, str) and think in THINK_LEVELS):
        return True
    if native:
        return None
    if isinstance(payload.get("reasoning"), dict):  # an effort of "none" is switched off
        return True
    effort = payload.get("reasoning_effort")
    if isinstance(effort, str) and effort:  # "" leaves the model's default
        return True
    return None


def clean_history(payload: dict[str, Any]) -> bool:
    """The history of `payload` as it goes upstream (`forwarded_history`), in place:
    reasoning tags out of earlier assistant messages, their reasoning fields kept after
    the last user message only. DeepSeek advises not to feed older reasoning back (its
    API refuses `reasoning_content` of earlier turns), Ollama's templates drop it, and
    a clean history makes identical conversations identical for the cache. Returns
    whether anything changed."""
    messages = payload.get("messages")
    if not isinstance(messages, list):  # the upstream says 400
        return False
    forwarded = forwarded_history(messages)
    if forwarded is messages or all(new is old for new, old in
                                    zip(forwarded, messages, strict=True)):
        return False
    payload["messages"] = forwarded
    return True
