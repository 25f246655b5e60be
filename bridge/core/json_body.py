"""The one checked parser of the JSON bodies clients send: every body the bridge reads
(model requests, `/api/show`'s model name, a script's rewritten body) goes through it, so
that whatever a client sends is a 400 naming what is wrong, never a `RecursionError`
deep inside a later step."""

from __future__ import annotations

import json
import re
from typing import Any

from bridge.core.errors import BadRequest

# Deepest nesting of arrays and objects accepted in a body. Real requests (tool schemas
# included) stay far below; the bound keeps every later step (cache keys, JSON encoding,
# Lua) clear of Python's recursion limit, whatever a client sends.
MAX_DEPTH = 128
# Only bodies that could hold a lone surrogate are searched for one: a `\uD8xx`-`\uDFxx`
# escape, or the raw UTF-8 bytes of a surrogate (which `json.loads` lets through).
_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json(body: bytes) -> Any:
    """The JSON value of a client's body, or a `BadRequest` naming what is wrong with it:
    empty, not JSON (`NaN` and `Infinity` included, as Ollama's parser refuses them),
    nested deeper than `MAX_DEPTH`, or a string holding a lone surrogate (text that no
    UTF-8 encoder, nor the cache, nor the upstream can take)."""
    if not body.strip():
        raise BadRequest("request body is empty; expected a JSON object")
    try:  # as `json.loads` decodes bytes, with one decoder made once (not one per call)
        payload = _decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except RecursionError:
        raise BadRequest(f"request body is nested too deeply (more than {MAX_DEPTH} levels "
                         "of arrays and objects)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    surrogates = (b"\\u" in body or b"\xed" in body) and _SURROGATE_HINT.search(body) is not None
    if surrogates or body.count(b"[") + body.count(b"{") > MAX_DEPTH:
        problem = _structure_problem(payload, surrogates)
        if problem:
            raise BadRequest(problem)
    return payload


def parse_object(body: bytes) -> dict:
    """A client's body that must be a JSON object (a model request), checked as
    `parse_json` checks it."""
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    return payload


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_decode = json.JSONDecoder(parse_constant=_no_constant).decode


def _structure_problem(payload: Any, surrogates: bool) -> str | None:
    """What makes a parsed body unusable, naming where it is; None when it is fine. An
    iterative walk: the body may be nested just below the recursion limit."""
    stack: list[tuple[Any, str, int]] = [(payload, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                return (f"request body is nested too deeply at {path or 'the top'} (more than "
                        f"{MAX_DEPTH} levels of arrays and objects)")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    if surrogates and _LONE_SURROGATE.search(key):
                        return _surrogate_message(f"a key in {path or 'the body'}")
                    where = f"{path}.{_shown(key)}" if path else _shown(key)
                else:
                    where = f"{path}[{key}]"
                stack.append((item, where, depth + 1))
        elif surrogates and isinstance(value, str) and _LONE_SURROGATE.search(value):
            return _surrogate_message(f"`{path}`")
    return None


def _shown(key: str) -> str:
    return key[:40].encode("utf-8", "backslashreplace").decode("ascii", "replace")


def _surrogate_message(where: str) -> str:
    return (f"{where} holds a lone UTF-16 surrogate (e.g. \\ud800 without its pair), "
            "which is not valid Unicode")
