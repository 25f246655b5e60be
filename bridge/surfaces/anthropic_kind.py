"""An upstream that speaks Claude's Messages API only (`api = "anthropic"`): the canonical
chat goes to `POST /v1/messages` (with `x-api-key` and `anthropic-version`), its answer
and its stream of events come back as Ollama's native chat; the model list and a
model's description come from `/v1/models`. It has no embeddings.

What the Messages API cannot take:

- refused (`Unsupported`): a JSON `format` (no JSON output mode), `logprobs` and
  `top_logprobs`, images in a format other than JPEG, PNG, GIF or WebP, a tool result
  that answers no tool call before it, a user message with nothing in it (the API
  refuses it, and left out the assistant's turn before it would be continued);
- dropped, harmless: `seed` (Anthropic samples without one, answers vary anyway), the
  runtime options (`num_ctx`, `num_gpu`, `num_thread`, `num_batch`, `keep_alive`,
  `use_mmap`…), and the options that only tune a sampler that is not ours
  (`repeat_penalty`, `repeat_last_n`, `presence_penalty`, `frequency_penalty`, `min_p`,
  `typical_p`, `tfs_z`, `mirostat`, `mirostat_tau`, `mirostat_eta`,
  `penalize_newline`): the answer stays an answer to the request; the thinking of
  earlier assistant turns (Anthropic needs its signature, which the canonical form does
  not keep), and, while Claude thinks, `temperature`, `top_p` and `top_k` (which the
  API refuses with thinking on); `think` itself on a request that gives tool results
  (the API wants that thinking's signature again);
- moved: every system message goes to `system`, in order; consecutive messages of one
  role are merged into one (the API wants turns to alternate), a tool's results going
  first in a user turn.

`max_tokens` is required by Anthropic: without `num_predict` (or with Ollama's -1/-2,
no limit) it is `DEFAULT_MAX_TOKENS`. `think` turns on extended thinking with a budget
per level (`BUDGETS`; `true` the medium one), and `max_tokens` grows by the budget when
it is not above it (the client's limit then bounds the answer after the thinking).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from bridge.core.errors import error_text
from bridge.core.exchange import Frame
from bridge.core.streaming import event_data, ollama_time
from bridge.surfaces.adapter import (
    CHAT,
    EMBED,
    MODELS,
    SHOW,
    Kind,
    Outbound,
    Reader,
    Unsupported,
    answered_call,
)
from bridge.surfaces.anthropic import counts, done_reason, from_message, tool_calls, tool_use
from bridge.surfaces.media import media_type

VERSION = {"anthropic-version": "2023-06-01"}
DEFAULT_MAX_TOKENS = 4096
# thinking tokens per level: the most, with the default answer after it, stays within the
# smallest output limit of the models that think (32000 tokens, Claude Opus 4)
BUDGETS = {"low": 1024, "medium": 4096, "high": 16384, "max": 24576}
BUDGET_OF_TRUE = BUDGETS["medium"]
MODEL_PAGE = 1000  # the most models one page of /v1/models lists
SAMPLING = ("temperature", "top_p", "top_k")
# Claude models before extended thinking (Claude 3.7 Sonnet and every model since have it)
UNTHINKING = ("claude-3-opus", "claude-3-sonnet", "claude-3-haiku", "claude-3-5-")


class AnthropicKind(Kind):
    name = "anthropic"
    probe = "/v1/models"
    headers = VERSION

    def credentials(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    def outbound(self, family: str, native: dict[str, Any]) -> Outbound:
        if family == CHAT:
            body = messages_request(native)
            return Outbound("POST", "/v1/messages", body, VERSION)
        if family == MODELS:
            return Outbound("GET", f"/v1/models?limit={MODEL_PAGE}", headers=VERSION)
        if family == SHOW:
            name = str(native.get("model") or native.get("name") or "")
            return Outbound("GET", f"/v1/models/{quote(name, safe='')}", headers=VERSION)
        if family == EMBED:
            raise Unsupported("input", "Anthropic's API has no embeddings")
        raise ValueError(f"no such family: {family}")

    def whole(self, family: str, body: Any, native: dict[str, Any]) -> dict[str, Any]:
        body = _object(body)
        if family == CHAT:
            return chat_answer(body, native)
        if family == MODELS:
            return {"models": [model_entry(model) for model in body.get("data") or ()
                               if isinstance(model, dict) and isinstance(model.get("id"), str)]}
        if family == SHOW:
            return model_description(body)
        raise ValueError(f"no such family: {family}")

    def reader(self, family: str, native: dict[str, Any]) -> Reader:
        return MessagesReader(str(native.get("model", "")))

    def error(self, body: Any) -> str:
        return error_text(body)  # {"type": "error", "error": {"type", "message"}}


# --- the request ----------------------------------------------------------------------

def messages_request(native: dict[str, Any]) -> dict[str, Any]:
    """The Messages API request for a canonical chat request."""
    if native.get("format"):
        raise Unsupported("format", "Anthropic's Messages API has no JSON output mode")
    for name in ("logprobs", "top_logprobs"):
        if native.get(name):
            raise Unsupported(name, "Anthropic's Messages API gives no log probabilities")
    system, messages = _messages(native.get("messages"))
    options = _object(native.get("options"))
    limit = options.get("num_predict")
    max_tokens = int(limit) if _number(limit) and limit >= 1 else DEFAULT_MAX_TOKENS
    body: dict[str, Any] = {"model": native.get("model"), "max_tokens": max_tokens}
    if system:
        body["system"] = system
    body["messages"] = messages
    tools = [_tool(tool) for tool in native.get("tools") or () if isinstance(tool, dict)]
    if tools:
        body["tools"] = tools
    budget = _budget(native.get("think"))
    if budget and not _answers_tools(messages):
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if max_tokens <= budget:
            body["max_tokens"] = budget + max_tokens
    else:
        body.update((name, options[name]) for name in SAMPLING if _number(options.get(name)))
    stop = options.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if isinstance(stop, list) and stop:
        body["stop_sequences"] = [item for item in stop if isinstance(item, str)]
    if native.get("stream") is not False:
        body["stream"] = True
    return body


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _budget(think: Any) -> int:
    if think is True:
        return BUDGET_OF_TRUE
    return BUDGETS.get(think, 0) if isinstance(think, str) else 0


def _answers_tools(turns: list[dict[str, Any]]) -> bool:
    """Whether the last turn gives tool results: the API then wants the assistant's
    turn before them to start with its signed thinking, which the canonical form does
    not keep, so Claude answers them without thinking."""
    return bool(turns) and turns[-1]["role"] == "user" and any(
        block["type"] == "tool_result" for block in turns[-1]["content"])


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = _object(tool.get("function"))
    converted: dict[str, Any] = {"name": function.get("name", "")}
    if function.get("description"):
        converted["description"] = function["description"]
    converted["input_schema"] = function.get("parameters") or {"type": "object"}
    return converted


def _messages(messages: Any) -> tuple[str, list[dict[str, Any]]]:
    """The system prompt and the turns of canonical messages: system messages joined,
    the rest as content blocks, consecutive ones of one role in one turn."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (id, name) of the last tool uses unanswered
    for index, message in enumerate(messages if isinstance(messages, list) else ()):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            continue
        role, text = message.get("role"), message.get("content")
        text = text if isinstance(text, str) else ""
        if role == "system":
            if text:
                system.append(text)
            continue
        if role == "tool":
            role, blocks = "user", [_tool_result(message, text, pending, where)]
        elif role in ("user", "assistant"):
            blocks = _blocks(message, text, where)
            if role == "assistant":
                pending = [(block["id"], block["name"]) for block in blocks
                           if block["type"] == "tool_use"]
        else:
            raise Unsupported(f"{where}.role", f"Anthropic's Messages API has no role {role!r}")
        if not blocks and role == "user":  # left out, the turn before would be continued
            raise Unsupported(f"{where}.content", "Anthropic's Messages API refuses an empty "
                              "message")
        if not blocks:
            continue  # a turn of thinking only, or empty: Anthropic refuses empty turns
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:  # a user turn starts with its tool results (the API's rule)
        turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return "\n\n".join(system), turns


def _blocks(message: dict[str, Any], text: str, where: str) -> list[dict[str, Any]]:
    blocks = _images(message, where)
    if text:
        blocks.append({"type": "text", "text": text})
    ids: list[str] = []
    blocks.extend(tool_use(call, ids) for call in tool_calls(message))
    return blocks


def _images(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks = []
    for index, data in enumerate(message.get("images") or ()):
        kind = media_type(data) if isinstance(data, str) else None
        if kind is None:
            raise Unsupported(f"{where}.images[{index}]",
                              "Anthropic takes JPEG, PNG, GIF or WebP images (base64)")
        blocks.append({"type": "image", "source": {"type": "base64", "media_type": kind,
                                                   "data": data}})
    return blocks


def _tool_result(message: dict[str, Any], text: str, pending: list[tuple[str, str]],
                 where: str) -> dict[str, Any]:
    """A tool message as a `tool_result` block for the tool call it answers
    (`answered_call`), else the one its own `tool_call_id` names."""
    ident = answered_call(message, pending) or message.get("tool_call_id")
    if not isinstance(ident, str) or not ident:
        raise Unsupported(where, "Anthropic needs a tool result to answer a tool call "
                                 "of the assistant's turn before it")
    images = _images(message, where)
    content: Any = [*images, {"type": "text", "text": text}] if images and text else \
        images or text
    return {"type": "tool_result", "tool_use_id": ident, "content": content}


# --- the answers ----------------------------------------------------------------------

def chat_answer(message: dict[str, Any], native: dict[str, Any]) -> dict[str, Any]:
    """The canonical whole chat answer for a Messages API answer."""
    converted = next(iter(from_message({**message, "role": "assistant"}, "content")), {})
    reply: dict[str, Any] = {"role": "assistant", "content": converted.get("content", "")}
    for name in ("thinking", "tool_calls"):
        if converted.get(name):
            reply[name] = converted[name]
    return {"model": message.get("model") or native.get("model", ""),
            "created_at": ollama_time(), "message": reply, "done": True,
            "done_reason": done_reason(message.get("stop_reason")),
            **counts(message.get("usage"))}


def model_entry(model: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic model object (`{"type": "model", "id", "display_name",
    "created_at"}`) as an entry of /api/tags."""
    return {"name": model["id"], "model": model["id"],
            "modified_at": model.get("created_at") or ollama_time(), "size": 0, "digest": "",
            "details": _details(), "capabilities": capabilities(model["id"])}


def model_description(model: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic model object as a minimal /api/show body."""
    name = str(model.get("id") or "")
    return {"modelfile": "", "parameters": "", "template": "", "details": _details(),
            "model_info": {}, "capabilities": capabilities(name),
            "modified_at": model.get("created_at") or ollama_time()}


def _details() -> dict[str, Any]:
    return {"parent_model": "", "format": "", "family": "claude", "families": ["claude"],
            "parameter_size": "", "quantization_level": ""}


def capabilities(model: str) -> list[str]:
    """What a Claude model can do, as /api/show says it: every one completes, calls tools
    and reads images; all but the oldest think (the API does not say which)."""
    found = ["completion", "tools", "vision"]
    return found if model.startswith(UNTHINKING) else [*found, "thinking"]


class MessagesReader(Reader):
    """The canonical frames of a Messages API stream (`message_start`, then per content
    block `content_block_start`, `content_block_delta`s and `content_block_stop`, then
    `message_delta` and `message_stop`; `ping`s and `error`): text and thinking deltas
    as they arrive, a tool call whole at its block's stop, the counts at the end."""

    def __init__(self, model: str):
        self.model = model
        self.input = 0  # input tokens, from message_start
        self.usage: dict[str, Any] = {}
        self.stop: Any = None
        self.tools: dict[Any, dict[str, Any]] = {}  # open tool_use blocks by index
        self.done = False

    def frame(self, frame: Frame) -> list[dict[str, Any]]:
        name, data = event_data(frame)
        data = _object(data)
        kind = data.get("type") or name
        if kind == "content_block_delta":  # most events, most of them text
            delta = _object(data.get("delta"))
            text = delta.get("text") if delta.get("type") == "text_delta" else None
            if text:
                return [{"model": self.model, "created_at": ollama_time(),
                         "message": {"role": "assistant", "content": text}, "done": False}]
            return self._delta(data.get("index"), delta)
        if kind == "message_start":
            message = _object(data.get("message"))
            self.model = message.get("model") or self.model
            self.usage = dict(_object(message.get("usage")))
        elif kind == "content_block_start":
            block = _object(data.get("content_block"))
            if block.get("type") == "tool_use":
                self.tools[data.get("index")] = {**block, "json": []}
            elif block.get("type") == "text" and block.get("text"):
                return [self._say(content=block["text"])]
        elif kind == "content_block_stop":
            block = self.tools.pop(data.get("index"), None)
            if block is not None:
                return [self._say(tool_calls=[_tool_call(block)])]
        elif kind == "message_delta":
            self.stop = _object(data.get("delta")).get("stop_reason")
            self.usage.update({name: value for name, value in _object(data.get("usage")).items()
                               if value is not None})
        elif kind == "message_stop":
            return self._end()
        elif kind == "error":
            return [{"error": error_text(data) or "the upstream's stream failed"}]
        return []  # ping, and what the canonical form has no room for

    def end(self) -> list[dict[str, Any]]:
        return self._end() if self.stop is not None else []

    def _delta(self, index: Any, delta: dict[str, Any]) -> list[dict[str, Any]]:
        kind = delta.get("type")  # a text delta with text: `frame`'s own
        if kind == "thinking_delta" and delta.get("thinking"):
            return [self._say(thinking=delta["thinking"])]
        if kind == "input_json_delta" and index in self.tools:
            self.tools[index]["json"].append(str(delta.get("partial_json") or ""))
        return []  # signatures, citations

    def _say(self, content: str = "", **more: Any) -> dict[str, Any]:
        message = {"role": "assistant", "content": content}
        if more:
            message.update(more)
        return {"model": self.model, "created_at": ollama_time(), "message": message,
                "done": False}

    def _end(self) -> list[dict[str, Any]]:
        if self.done:
            return []
        self.done = True
        last = self._say()
        last.update(done=True, done_reason=done_reason(self.stop), **counts(self.usage))
        return [last]


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    """A streamed tool_use block, its input's pieces joined, as a native tool call."""
    pieces = "".join(block["json"])
    try:
        arguments = json.loads(pieces) if pieces else block.get("input") or {}
    except ValueError:
        arguments = {}
    return {"id": block.get("id", ""), "function": {"name": block.get("name", ""),
                                                    "arguments": arguments}}
