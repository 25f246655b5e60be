"""The Anthropic Messages API (`POST /v1/messages`), served as Ollama serves it: the
request becomes a native chat request (Ollama's `anthropic.FromMessagesRequest`), the
native answer a message (`ToMessagesResponse`), the native stream Anthropic's events
(`StreamConverter.Process`), and errors Anthropic's `{"type": "error", "error": …}`.

Where Ollama's middleware leaves something out, the provider's API reference decides:
`stop_sequence` is always present (null: Ollama does not say which sequence stopped
it), `tool_choice: {"type": "none"}` sends no tools, and an empty native stream frame
(a keep-alive while hidden reasoning goes on) becomes a `ping` event.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from types import MappingProxyType
from typing import Any, Mapping

from bridge.core.errors import BadRequest
from bridge.core.exchange import Frame, encode_json
from bridge.surfaces.adapter import Call, Surface, Translator, new_id

# HTTP status -> Anthropic error type (anthropic.NewError, and the API reference's 413/504)
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               402: "billing_error", 403: "permission_error", 404: "not_found_error",
               413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
               504: "timeout_error", 529: "overloaded_error"}
TEXT_DELTA = b"content_block_delta"  # the event of most of a stream's frames
NO_THINKING = "does not support thinking"  # the native chat's refusal of `think`
UNTHINKING_MODELS = 1024  # model names remembered as unable to think, per worker
# Ollama's `done_reason` -> Anthropic's `stop_reason`
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}
# Anthropic's usage -> Ollama's counts
USAGE = {"input_tokens": "prompt_eval_count", "output_tokens": "eval_count"}
EFFORTS = frozenset({"low", "medium", "high", "max"})
WEB_SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "web_search",
        "description": "Search the web for current information. Use this to find "
                       "up-to-date information about any topic.",
        "parameters": {"type": "object", "required": ["query"], "properties": {
            "query": {"type": "string",
                      "description": "The search query to look up on the web"}}},
    },
}


def error_type(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error, as a body and as a stream's `error` event."""
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


@dataclass
class MessagesCall(Call):
    estimated_input_tokens: int = 0  # message_start's usage, before the real count


class Anthropic(Surface):
    name = "anthropic"
    routes = (("POST", "/v1/messages"),)
    fields = MappingProxyType({"think": "thinking", "options.num_predict": "max_tokens",
                               "options.stop": "stop_sequences"})

    def __init__(self) -> None:
        # models the native chat refused `think` for, in this worker: asked without it
        self.unthinking: set[str] = set()

    def request(self, payload: dict[str, Any], headers: Mapping[str, str]) -> MessagesCall:
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model is required", param="model")
        max_tokens = payload.get("max_tokens")
        if not _is_int(max_tokens) or max_tokens <= 0:
            raise BadRequest("max_tokens is required and must be positive", param="max_tokens")
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages is required", param="messages")
        stream = payload.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("stream must be a boolean", param="stream")
        native_messages: list[dict[str, Any]] = []
        system = _system(payload.get("system"))
        if system:
            native_messages.append({"role": "system", "content": system})
        for index, message in enumerate(messages):
            native_messages.extend(from_message(message, f"messages[{index}]"))
        native: dict[str, Any] = {"model": model, "messages": native_messages,
                                  "stream": stream, "options": _options(payload, max_tokens)}
        tools = _tools(payload.get("tools"), payload.get("tool_choice"))
        if tools:
            native["tools"] = tools
        think = _think(payload.get("thinking"), payload.get("output_config"))
        if think is not None and (think is False or model not in self.unthinking):
            native["think"] = think
        return MessagesCall(native=native, model=model, stream=stream, ids=[new_id("msg")],
                            estimated_input_tokens=_estimate(system, messages,
                                                             payload.get("tools")))

    def body(self, native: dict[str, Any], call: Call) -> dict[str, Any]:
        message = native.get("message")
        message = message if isinstance(message, dict) else {}
        content: list[dict[str, Any]] = []
        if message.get("thinking"):
            content.append({"type": "thinking", "thinking": message["thinking"]})
        if message.get("content"):
            content.append({"type": "text", "text": message["content"]})
        calls = tool_calls(message)
        content.extend(tool_use(tool_call, call.ids) for tool_call in calls)
        return {"id": call.ids[0], "type": "message", "role": "assistant",
                "model": native.get("model") or call.model, "content": content,
                "stop_reason": stop_reason(native.get("done_reason"), bool(calls)),
                "stop_sequence": None, "usage": usage(native)}

    def translator(self, call: Call) -> Translator:
        assert isinstance(call, MessagesCall)
        return MessagesStream(call)

    def error(self, status: int, message: str, param: str | None = None,
              code: str | None = None) -> dict[str, Any]:
        return error_body(status, message)

    def relaxed(self, call: Call, status: int, message: str) -> dict[str, Any] | None:
        """Without `think`, when the model cannot think: Ollama relaxes the switch on this
        API (`relax_thinking`: Claude Code asks every model for an effort), and refuses
        it with a 400 on its native chat."""
        if status == 400 and NO_THINKING in message and call.native.get("think"):
            if len(self.unthinking) >= UNTHINKING_MODELS:
                self.unthinking.clear()
            self.unthinking.add(call.model)
            return {name: value for name, value in call.native.items() if name != "think"}
        return None


def stop_reason(done_reason: Any, tool_calls: bool) -> str | None:
    """Ollama's `done_reason` as Anthropic's `stop_reason` (anthropic.mapStopReason)."""
    if tool_calls:
        return "tool_use"
    if isinstance(done_reason, str) and done_reason in STOP_REASONS:  # a list would raise
        return STOP_REASONS[done_reason]
    return "stop_sequence" if done_reason else None


def done_reason(reason: Any) -> str:
    """Anthropic's `stop_reason` as Ollama's `done_reason`: a cut answer is "length",
    any other end (a turn, a stop sequence, a tool call, a refusal) "stop"."""
    return "length" if reason == STOP_REASONS["length"] else "stop"


class MessagesStream(Translator):
    """Anthropic's events for a native chat stream (anthropic.StreamConverter.Process):
    `message_start`, a `thinking` block, a `text` block, one `tool_use` block per tool
    call (its input in one `input_json_delta`), then `message_delta` and `message_stop`."""

    def __init__(self, call: MessagesCall):
        self.call = call
        self.started = False
        self.index = 0
        self.thinking_started = self.thinking_done = self.text_started = False
        self.tools_sent: set[str] = set()

    def frame(self, native: dict[str, Any]) -> list[Frame]:
        if self.text_started and not (self.thinking_started and not self.thinking_done):
            text = self.text_delta(native)
            if text is not None:
                return [text]
        out: list[Frame] = []
        if not self.started:
            self.started = True
            out.append(_event("message_start", {"type": "message_start", "message": {
                "id": self.call.ids[0], "type": "message", "role": "assistant",
                "model": self.call.model, "content": [], "stop_reason": None,
                "stop_sequence": None, "usage": {
                    "input_tokens": _int(native.get("prompt_eval_count"))
                    or self.call.estimated_input_tokens, "output_tokens": 0}}}))
        message = native.get("message")
        message = message if isinstance(message, dict) else {}
        thinking, text = message.get("thinking"), message.get("content")
        if thinking and isinstance(thinking, str) and not self.thinking_done:
            if self.text_started:
                out.append(self._stop_block())
                self.text_started = False
            if not self.thinking_started:
                self.thinking_started = True
                out.append(self._start_block({"type": "thinking", "thinking": ""}))
            out.append(self._delta({"type": "thinking_delta", "thinking": thinking}))
        if text and isinstance(text, str):
            self._end_thinking(out)
            if not self.text_started:
                self.text_started = True
                out.append(self._start_block({"type": "text", "text": ""}))
            out.append(self._delta({"type": "text_delta", "text": text}))
        for tool_call in tool_calls(message):
            block = tool_use(tool_call, self.call.ids)
            if block["id"] in self.tools_sent:
                continue
            self._end_thinking(out)
            if self.text_started:
                out.append(self._stop_block())
                self.text_started = False
            arguments = encode_json(block["input"]).decode()
            out.append(self._start_block({**block, "input": {}}))
            out.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
            out.append(self._stop_block())
            self.tools_sent.add(block["id"])
        if native.get("done") is True:
            if self.text_started or (self.thinking_started and not self.thinking_done):
                out.append(self._stop_block())
            out.append(_event("message_delta", {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason(native.get("done_reason"),
                                                     bool(self.tools_sent)),
                          "stop_sequence": None},
                "usage": usage(native)}))
            out.append(_event("message_stop", {"type": "message_stop"}))
        if not out:  # a native frame with nothing to say: the connection is alive
            out.append(_event("ping", {"type": "ping"}))
        return out

    def text_delta(self, native: dict[str, Any]) -> Frame | None:
        """The event of a frame that only adds text to the open text block (most of them),
        made as `frame` makes it, from a template of its bytes; None for any other."""
        message = native.get("message")
        if native.get("done") is True or type(message) is not dict \
                or message.get("thinking") or message.get("tool_calls"):
            return None
        text = message.get("content")
        if type(text) is not str or not text:
            return None
        delta = {"type": "text_delta", "text": text}
        return Frame(b'{"type":"content_block_delta","index":%d,"delta":{"type":"text_delta",'
                     b'"text":%s}}' % (self.index, encode_basestring(text).encode()),
                     {"type": "content_block_delta", "index": self.index, "delta": delta},
                     event=TEXT_DELTA)

    def failed(self, status: int, message: str) -> list[Frame]:
        return [_event("error", error_body(status, message))]

    def _end_thinking(self, out: list[Frame]) -> None:
        if self.thinking_started and not self.thinking_done:
            self.thinking_done = True
            out.append(self._stop_block())

    def _start_block(self, block: dict[str, Any]) -> Frame:
        return _event("content_block_start", {"type": "content_block_start",
                                              "index": self.index, "content_block": block})

    def _delta(self, delta: dict[str, Any]) -> Frame:
        return _event("content_block_delta", {"type": "content_block_delta",
                                              "index": self.index, "delta": delta})

    def _stop_block(self) -> Frame:
        frame = _event("content_block_stop", {"type": "content_block_stop", "index": self.index})
        self.index += 1
        return frame


def _event(name: str, data: dict[str, Any]) -> Frame:
    return Frame.of(data, event=name)


# --- the request ----------------------------------------------------------------------

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any) -> int:
    return value if _is_int(value) else 0


def _number(payload: dict[str, Any], name: str) -> float | int | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{name} must be a number", param=name)
    return value


def _options(payload: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    options: dict[str, Any] = {"num_predict": max_tokens}
    for name in ("temperature", "top_p"):
        value = _number(payload, name)
        if value is not None:
            options[name] = value
    top_k = payload.get("top_k")
    if top_k is not None:
        if not _is_int(top_k):
            raise BadRequest("top_k must be an integer", param="top_k")
        options["top_k"] = top_k
    stop = payload.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(item, str) for item in stop):
            raise BadRequest("stop_sequences must be an array of strings",
                             param="stop_sequences")
        if stop:
            options["stop"] = stop
    return options


def _system(system: Any) -> str:
    """The system prompt: a string, or the text of its text blocks, joined as Ollama does."""
    if system is None or isinstance(system, str):
        return system or ""
    if not isinstance(system, list):
        raise BadRequest("system must be a string or an array of content blocks",
                         param="system")
    return "".join(block["text"] for block in system if isinstance(block, dict)
                   and block.get("type") == "text" and isinstance(block.get("text"), str))


def from_message(message: Any, where: str) -> list[dict[str, Any]]:
    """The native messages of one Anthropic message (anthropic.convertMessage): its tool
    results become `tool` messages, before the rest of a user turn."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise BadRequest(f"{where} must be an object with a role", param=where)
    role = message["role"].lower()
    content = message.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or an array of content blocks",
                         param=f"{where}.content")
    text: list[str] = []
    images: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    thinking = ""
    results: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        at = f"{where}.content[{index}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if isinstance(block.get("text"), str):
                text.append(block["text"])
        elif kind == "image":
            images.append(_image(block.get("source"), at))
        elif kind in ("tool_use", "server_tool_use"):
            tool_calls.append(_native_tool_call(block, at))
        elif kind == "tool_result":
            results.append(_tool_result(block, at))
        elif kind == "thinking":
            if isinstance(block.get("thinking"), str):
                thinking = block["thinking"]
        elif not isinstance(block, dict):
            raise BadRequest(f"{at} must be a content block object", param=at)
        # other blocks (redacted_thinking, documents, …) are left out, as Ollama does
    native: list[dict[str, Any]] = []
    if role == "user":
        native.extend(results)
    if text or images or tool_calls or thinking:
        converted: dict[str, Any] = {"role": role, "content": "".join(text)}
        if images:
            converted["images"] = images
        if tool_calls:
            converted["tool_calls"] = tool_calls
        if thinking:
            converted["thinking"] = thinking
        native.append(converted)
    if role != "user":
        native.extend(results)
    return native


def _image(source: Any, where: str) -> str:
    if not isinstance(source, dict):
        raise BadRequest("invalid image source", param=where)
    if source.get("type") != "base64":
        raise BadRequest(f"invalid image source type: {source.get('type')}. Only base64 "
                         "images are supported.", param=where)
    data = source.get("data")
    try:
        if not isinstance(data, str):
            raise binascii.Error("not a string")
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"invalid base64 image data: {exc}", param=where) from None
    return base64.b64encode(decoded).decode()


def _native_tool_call(block: dict[str, Any], where: str) -> dict[str, Any]:
    for name in ("id", "name"):
        if not isinstance(block.get(name), str) or not block[name]:
            raise BadRequest(f"tool_use block missing required '{name}' field", param=where)
    arguments = block.get("input")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise BadRequest("tool_use input must be an object", param=f"{where}.input")
    return {"id": block["id"], "function": {"name": block["name"], "arguments": arguments}}


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    content = block.get("content")
    text, images = "", []
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for index, item in enumerate(content):
            if not isinstance(item, dict):
                continue
            if item.get("type") == "text" and isinstance(item.get("text"), str):
                parts.append(item["text"])
            elif item.get("type") == "image":
                images.append(_image(item.get("source"), f"{where}.content[{index}]"))
        text = "".join(parts)
    result: dict[str, Any] = {"role": "tool", "content": text}
    if images:
        result["images"] = images
    if isinstance(block.get("tool_use_id"), str) and block["tool_use_id"]:
        result["tool_call_id"] = block["tool_use_id"]
    return result


def _tools(tools: Any, choice: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest("tools must be an array", param="tools")
    if choice is not None and (not isinstance(choice, dict)
                               or not isinstance(choice.get("type"), str)):
        raise BadRequest("tool_choice must be an object with a type", param="tool_choice")
    if isinstance(choice, dict) and choice["type"] == "none":
        return []
    builtin_search = any(isinstance(tool, dict) and str(tool.get("type", "")).startswith(
        "web_search") for tool in tools)
    native = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise BadRequest(f"{where} must be an object with a name", param=where)
        if str(tool.get("type", "")).startswith("web_search"):
            native.append(WEB_SEARCH_TOOL)
            continue
        if builtin_search and tool["name"] == "web_search":
            continue  # the built-in one wins, as in Ollama
        schema = tool.get("input_schema")
        if schema is not None and not isinstance(schema, dict):
            raise BadRequest(f"invalid input_schema for tool {tool['name']!r}: not an object",
                             param=f"{where}.input_schema")
        function: dict[str, Any] = {"name": tool["name"]}
        if isinstance(tool.get("description"), str) and tool["description"]:
            function["description"] = tool["description"]
        function["parameters"] = schema if schema is not None else {"type": "object"}
        native.append({"type": "function", "function": function})
    return native


def _think(thinking: Any, output_config: Any) -> bool | str | None:
    """The native `think`: `thinking.type` enabled/disabled, else `output_config.effort`."""
    if thinking is not None:
        if not isinstance(thinking, dict) or thinking.get("type") not in (
                "enabled", "disabled", "adaptive"):
            raise BadRequest('thinking.type must be "enabled" or "disabled"', param="thinking")
        if thinking["type"] != "adaptive":
            return thinking["type"] == "enabled"
    if isinstance(output_config, dict) and isinstance(output_config.get("effort"), str):
        effort = output_config["effort"].strip().lower()
        effort = "high" if effort == "xhigh" else effort
        if effort in EFFORTS:
            return effort
    return None


def _estimate(system: str, messages: list[Any], tools: Any) -> int:
    """Input tokens as Ollama guesses them for `message_start` (a quarter of the text)."""
    total = len(system)
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += len(str(message.get("role", "")))
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for block in content:
                if isinstance(block, dict):
                    for name in ("text", "thinking"):
                        if isinstance(block.get(name), str):
                            total += len(block[name])
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict):
            total += len(str(tool.get("name", ""))) + len(str(tool.get("description", "")))
            total += len(json.dumps(tool.get("input_schema") or ""))
    return max(total // 4, 1)


# --- the answer -----------------------------------------------------------------------

def tool_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    calls = message.get("tool_calls")
    return [call for call in calls if isinstance(call, dict)] if isinstance(calls, list) else []


def tool_use(tool_call: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    """A native tool call as a `tool_use` block; one without an id gets a fresh one (and
    `ids` gets it)."""
    function = tool_call.get("function")
    function = function if isinstance(function, dict) else {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            arguments = {}
    ident = tool_call.get("id")
    if not isinstance(ident, str) or not ident:
        ident = new_id("toolu")
        ids.append(ident)
    return {"type": "tool_use", "id": ident, "name": str(function.get("name", "")),
            "input": arguments if isinstance(arguments, dict) else {}}


def usage(native: dict[str, Any]) -> dict[str, int]:
    """A native answer's counts as Anthropic's usage."""
    return {name: _int(native.get(count)) for name, count in USAGE.items()}


def counts(usage: Any) -> dict[str, int]:
    """Anthropic's usage as a native answer's counts: the input counts every prompt
    token, those read from or written to Anthropic's prompt cache too."""
    usage = usage if isinstance(usage, dict) else {}
    found = {count: _int(usage.get(name)) for name, count in USAGE.items()}
    found["prompt_eval_count"] += sum(_int(usage.get(name)) for name in (
        "cache_creation_input_tokens", "cache_read_input_tokens"))
    return found
