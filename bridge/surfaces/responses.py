"""The OpenAI Responses API (`POST /v1/responses`), translated as Ollama's own middleware
translates it (`openai/responses.go`, `middleware/openai.go`): a Responses request becomes
a native `/api/chat` request, and the native answer becomes the `response` object, or,
streamed, the `response.*` events with their `sequence_number`s.

Where the bridge does more than Ollama, it says so: `previous_response_id` (expanded from
the record of an earlier answer, `expand`), `tool_choice` (`"none"` and a named function
narrow the tools), `text.format` `json_object` (native `format: "json"`), and an answer
cut by its token limit (`done_reason: "length"`), which is `incomplete` with
`incomplete_details.reason: "max_output_tokens"` and ends its stream with
`response.incomplete`, as OpenAI's API does (Ollama calls it `completed`).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from dataclasses import dataclass, field
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from types import MappingProxyType
from typing import Any, Callable, Mapping

from bridge.core.errors import BadRequest
from bridge.core.exchange import Frame, encode_json
from bridge.surfaces.adapter import NAME_DIGITS, Call, Surface, Translator

NAME = "responses"
PREVIOUS = "previous_response_id"
NONCE_DIGITS = 16  # hex digits of the nonce in every id of an answer
TEXT_DELTA = b"response.output_text.delta"

# reasoning.effort -> native `think` (`thinkFromReasoningEffort`)
EFFORTS: dict[str, Any] = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
                           "high": "high", "max": "max", "xhigh": "max", "ultra": "max"}
_IMAGE_PREFIXES = tuple(f"data:image/{kind};base64," for kind in ("jpeg", "jpg", "png", "webp"))

Event = tuple[str, dict]  # (event name, its data)


# ------------------------------------------------------------------ the request


def expect(value: Any, kind: type | tuple[type, ...], param: str, what: str) -> Any:
    """`value` if it is of `kind` (a boolean is no number), else a `BadRequest`."""
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BadRequest(f"'{param}' must be {what}", param=param)
    return value


def optional(request: dict, name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = request.get(name)
    return None if value is None else expect(value, kind, name, what)


def input_items(request: dict) -> list:
    """The request's `input` as a list of items (a string is one user message)."""
    value = request.get("input")
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}] if value else []
    return list(expect(value, list, "input", "a string or an array of input items"))


def expand(request: dict, previous: dict) -> dict:
    """The request with `previous_response_id` replaced by the conversation it names
    (`previous`: the record of that response, its input and output items)."""
    expanded = {name: value for name, value in request.items() if name != PREVIOUS}
    expanded["input"] = [*previous.get("input", []), *previous.get("output", []),
                         *input_items(request)]
    return expanded


def to_chat(request: dict, allow_empty: bool = False) -> dict:
    """The native `/api/chat` request for a Responses request (`FromResponsesRequest`);
    a `BadRequest` naming the field for what cannot be expressed. `allow_empty`: the
    input may be empty (it continues a previous response, added later)."""
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required (a string)", param="model")
    messages: list[dict] = []
    instructions = optional(request, "instructions", str, "a string")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    messages.extend(_messages(input_items(request)))
    if not allow_empty and not any(message["role"] != "system" for message in messages):
        raise BadRequest("'input' is required: a string or a non-empty array of items",
                         param="input")
    chat: dict[str, Any] = {"model": model, "messages": messages}
    chat["stream"] = optional(request, "stream", bool, "a boolean") is True
    options: dict[str, Any] = {"temperature": 1.0}
    temperature = optional(request, "temperature", (int, float), "a number")
    if temperature is not None:
        options["temperature"] = temperature
    top_p = optional(request, "top_p", (int, float), "a number")
    if top_p is not None:
        options["top_p"] = top_p
    limit = optional(request, "max_output_tokens", int, "an integer")
    if limit is not None:
        options["num_predict"] = limit
    chat["options"] = options
    tools = _tools(request)
    if tools:
        chat["tools"] = tools
    fmt = _format(request)
    if fmt is not None:
        chat["format"] = fmt
    think = _think(request)
    if think is not None:
        chat["think"] = think
    return chat


def _think(request: dict) -> Any:
    reasoning = optional(request, "reasoning", dict, "an object")
    return think_of((reasoning or {}).get("effort"), "reasoning.effort")


def think_of(effort: Any, param: str) -> Any:
    """The native `think` of an OpenAI reasoning effort (`thinkFromReasoningEffort`):
    None for none given, a `BadRequest` naming `param` for an unknown one."""
    if effort is None or effort == "":
        return None
    if not isinstance(effort, str) or effort not in EFFORTS:
        raise BadRequest(f"invalid reasoning value: {json.dumps(effort)} (must be \"minimal\", "
                         "\"low\", \"medium\", \"high\", \"xhigh\", \"ultra\", \"max\", or "
                         "\"none\")", param=param)
    return EFFORTS[effort]


def _format(request: dict) -> Any:
    text = optional(request, "text", dict, "an object") or {}
    fmt = text.get("format")
    if fmt is None:
        return None
    expect(fmt, dict, "text.format", "an object")
    if fmt.get("type") == "json_schema":
        return fmt.get("schema")
    if fmt.get("type") == "json_object":
        return "json"
    return None


def _tools(request: dict) -> list[dict]:
    declared = optional(request, "tools", list, "an array of tools") or []
    tools: list[dict] = []
    for index, tool in enumerate(declared):
        tools.extend(_tool(tool, f"tools[{index}]"))
    choice = request.get("tool_choice")
    if choice == "none":
        return []
    if isinstance(choice, dict) and choice.get("type") == "function":
        named = [tool for tool in tools if tool["function"]["name"] == choice.get("name")]
        if not named:
            raise BadRequest(f"tool_choice names the function {choice.get('name')!r}, which "
                             "is not among 'tools'", param="tool_choice")
        return named
    if choice not in (None, "auto", "required") and not isinstance(choice, dict):
        raise BadRequest("'tool_choice' must be \"none\", \"auto\", \"required\" or an "
                         "object", param="tool_choice")
    return tools


def _tool(tool: Any, param: str, prefix: str = "") -> list[dict]:
    """A function tool as native `tools` entries; a namespace's members with qualified
    names (`convertTools`)."""
    expect(tool, dict, param, "an object")
    kind, name = tool.get("type"), tool.get("name")
    if kind == "namespace":
        members = tool.get("tools") or []
        inner = f"{prefix}{name}." if name else prefix
        return [entry for index, member in enumerate(expect(members, list, param, "a list"))
                for entry in _tool(member, f"{param}.tools[{index}]", inner)]
    if kind != "function":
        raise BadRequest(f"tools of type {json.dumps(kind)} are not supported; only "
                         "\"function\" tools are", param=f"{param}.type")
    if not isinstance(name, str) or not name:
        raise BadRequest("a function tool needs a 'name'", param=f"{param}.name")
    if prefix and not name.startswith(prefix):
        name = prefix + name
    function: dict[str, Any] = {"name": name, "description": tool.get("description") or ""}
    if tool.get("parameters") is not None:
        function["parameters"] = expect(tool["parameters"], dict, f"{param}.parameters",
                                         "an object")
    return [{"type": "function", "function": function}]


def _messages(items: list) -> list[dict]:
    """Native messages of input items: tool calls merged into the assistant message
    before them, reasoning into the next assistant message (Ollama's rules)."""
    messages: list[dict] = []
    pending = ""  # reasoning waiting for the next assistant message
    for index, item in enumerate(items):
        param = f"input[{index}]"
        expect(item, dict, param, "an object")
        kind = item.get("type") or ("message" if item.get("role") else "")
        if kind == "reasoning":
            pending = str(item.get("encrypted_content") or "")
        elif kind == "message":
            message = _message(item, param)
            if message["role"] == "assistant" and pending:
                message["thinking"], pending = pending, ""
            if not _merged_before_output(messages, message, items, index):
                messages.append(message)
        elif kind == "function_call":
            call = _tool_call(item, param)
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                target = last
            else:
                target = {"role": "assistant", "content": "", "tool_calls": [call]}
                messages.append(target)
            if pending:
                target["thinking"], pending = pending, ""
        elif kind == "function_call_output":
            messages.append(_tool_result(item, param))
        elif kind == "web_search_call":
            continue  # history of a built-in tool: the assistant message after it holds its result
        elif not kind:
            raise BadRequest(f"{param}: input item missing required 'type' field", param=param)
        else:
            raise BadRequest(f"{param}: unknown input item type: {json.dumps(kind)}",
                             param=f"{param}.type")
    if pending:
        messages.append({"role": "assistant", "content": "", "thinking": pending})
    return messages


def _merged_before_output(messages: list[dict], message: dict, items: list,
                          index: int) -> bool:
    """An assistant message replayed between a function_call and its output joins the
    call's message, so that the tool result follows the call it answers."""
    following = items[index + 1] if index + 1 < len(items) else None
    if message["role"] != "assistant" or not messages or not isinstance(following, dict) \
            or following.get("type") != "function_call_output":
        return False
    last = messages[-1]
    ids = [call.get("id") for call in last.get("tool_calls", [])]
    if last["role"] != "assistant" or following.get("call_id") not in ids:
        return False
    if last["content"] and message["content"]:
        last["content"] += "\n"
    last["content"] += message["content"]
    if message.get("images"):
        last.setdefault("images", []).extend(message["images"])
    if message.get("thinking"):
        last["thinking"] = message["thinking"]
    return True


def _message(item: dict, param: str) -> dict:
    role = item.get("role")
    if not isinstance(role, str) or not role:
        raise BadRequest(f"{param}: a message needs a 'role'", param=f"{param}.role")
    content, images = _content(item.get("content"), f"{param}.content")
    message: dict[str, Any] = {"role": role, "content": content}
    if images:
        message["images"] = images
    return message


def _content(value: Any, param: str) -> tuple[str, list[str]]:
    """(text, base64 images) of a content string or array of content parts."""
    if value is None:
        return "", []
    if isinstance(value, str):
        return value, []
    expect(value, list, param, "a string or an array of content parts")
    text, images = "", []
    for index, part in enumerate(value):
        where = f"{param}[{index}]"
        expect(part, dict, where, "an object")
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            text += expect(part.get("text", ""), str, f"{where}.text", "a string")
        elif kind == "input_image":
            url = part.get("image_url")
            if url:
                images.append(image_data(url, f"{where}.image_url"))
        elif kind == "input_file":
            raise BadRequest("file inputs are not currently supported", param=where)
        else:
            raise BadRequest(f"{where}: unknown content type: {kind}", param=f"{where}.type")
    return text, images


def image_data(url: Any, param: str) -> str:
    """The base64 data of a data-URL image (`decodeImageURL`): Ollama takes no URLs."""
    expect(url, str, param, "a string")
    if url.startswith(("http://", "https://")):
        raise BadRequest("image URLs are not currently supported, please use base64 "
                         "encoded data instead", param=param)
    data = next((url[len(prefix):] for prefix in ("data:;base64,", *_IMAGE_PREFIXES)
                 if url.startswith(prefix)), None)
    if data is None:
        raise BadRequest("invalid image input", param=param)
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("invalid image input", param=param) from None
    return data


def _tool_call(item: dict, param: str) -> dict:
    arguments = item.get("arguments") or "{}"
    try:
        parsed = json.loads(expect(arguments, str, f"{param}.arguments", "a JSON string"))
    except ValueError as exc:
        raise BadRequest(f"failed to parse function call arguments: {exc}",
                         param=f"{param}.arguments") from None
    if not isinstance(parsed, dict):
        raise BadRequest("function call arguments must be a JSON object",
                         param=f"{param}.arguments")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{param}: a function_call needs a 'name'", param=f"{param}.name")
    call: dict[str, Any] = {"function": {"name": name, "arguments": parsed}}
    if item.get("call_id"):
        call = {"id": item["call_id"], **call}
    return call


def _tool_result(item: dict, param: str) -> dict:
    output = item.get("output")
    if isinstance(output, list):
        content, images = _content(output, f"{param}.output")
    else:
        content = expect(output if output is not None else "", str, f"{param}.output",
                          "a string or an array of content parts")
        images = []
    message: dict[str, Any] = {"role": "tool", "content": content}
    if images:
        message["images"] = images
    if item.get("call_id"):
        message["tool_call_id"] = item["call_id"]
    return message


# ------------------------------------------------------------------ the answer


def arguments_json(call: dict) -> str:
    arguments = (call.get("function") or {}).get("arguments")
    if isinstance(arguments, str):
        return arguments
    return encode_json(arguments if arguments is not None else {}).decode()


def _usage(native: dict) -> dict:
    prompt, generated = native.get("prompt_eval_count") or 0, native.get("eval_count") or 0
    return {"input_tokens": prompt, "output_tokens": generated,
            "total_tokens": prompt + generated,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0}}


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str, status: str = "completed") -> dict:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [_text_part(text)]}


def _reasoning_item(item_id: str, thinking: str) -> dict:
    return {"id": item_id, "type": "reasoning",
            "summary": [{"type": "summary_text", "text": thinking}],
            "encrypted_content": thinking}


def _call_item(item_id: str, call: dict, call_id: str, arguments: str) -> dict:
    function = call.get("function") or {}
    return {"id": item_id, "type": "function_call", "status": "completed", "call_id": call_id,
            "name": function.get("name", ""), "arguments": arguments}


class Writer:
    """One response to a Responses request: its ids, and its translation from the native
    answer, whole (`body`) or chunk by chunk (`events`, `ResponsesStreamConverter`).

    Every id it makes holds its `nonce` (random hex; a replay of the answer as sent gets
    a fresh one in its place): the response's `resp_<name><nonce>`, where `name` names
    its record (`bridge.surfaces.stage`; random until set), and its items'
    `<prefix>_<nonce><count>`. `on_final(nonce, output items)` is called once the answer
    is complete."""

    def __init__(self, request: dict, on_final: Callable[[str, list[dict]], None] | None = None,
                 named: Callable[[], str] | None = None):
        self.request = request
        self.on_final = on_final
        self.named = named  # the record's name, once known
        self.nonce = secrets.token_hex(NONCE_DIGITS // 2)
        self.name = secrets.token_hex(NAME_DIGITS // 2)
        self._count = 0
        self.item_id = self.new_id("msg")
        self.created_at = int(time.time())
        self.output: list[dict] | None = None
        # the stream's state
        self._sequence = 0
        self._started = False
        self._index = 0  # output index of the next item
        self._completed: list[dict] = []
        self._text: str | None = None  # None: no message item open
        self._thinking: str | None = None
        self._reasoning_id = ""
        self._calls_sent = False
        self._delta: tuple[int, bytes] | None = None  # (output index, its text deltas' head)

    @property
    def response_id(self) -> str:
        return f"resp_{self.named and self.named() or self.name}{self.nonce}"

    def new_id(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self.nonce}{self._count:08x}"

    # --- the response object

    def _echo(self) -> dict:
        """The request's settings as the response object echoes them."""
        request = self.request
        fmt = (request.get("text") or {}).get("format") if isinstance(
            request.get("text"), dict) else None
        text_format: dict[str, Any] = {"type": "text"}
        if isinstance(fmt, dict):
            text_format = {"type": fmt.get("type")}
            text_format.update({name: fmt[name] for name in ("name", "schema", "strict")
                                if fmt.get(name) not in (None, "")})
        tools = [{"type": tool.get("type"), "name": tool.get("name"),
                  "description": tool.get("description"), "strict": tool.get("strict"),
                  "parameters": tool.get("parameters")}
                 for tool in request.get("tools") or [] if isinstance(tool, dict)]
        reasoning = request.get("reasoning") if isinstance(request.get("reasoning"), dict) \
            else {}
        shown = None
        if reasoning.get("effort") or reasoning.get("summary"):
            shown = {"effort": reasoning.get("effort") or None,
                     "summary": reasoning.get("summary") or None}
        return {"instructions": request.get("instructions") or None, "tools": tools,
                "tool_choice": request.get("tool_choice") or "auto",
                "truncation": request.get("truncation") or "disabled",
                "text": {"format": text_format}, "reasoning": shown}

    def response(self, status: str, output: list, usage: dict | None,
                 **changes: Any) -> dict:
        """The `response` object (`buildResponseObject`)."""
        echo = self._echo()
        request = self.request
        top_p, temperature = request.get("top_p"), request.get("temperature")
        response = {
            "id": self.response_id, "object": "response", "created_at": self.created_at,
            "completed_at": None, "status": status, "incomplete_details": None,
            "model": request.get("model"),
            "previous_response_id": request.get("previous_response_id"),
            "instructions": echo["instructions"], "output": output, "error": None,
            "tools": echo["tools"], "tool_choice": echo["tool_choice"],
            "truncation": echo["truncation"], "parallel_tool_calls": True,
            "text": echo["text"], "top_p": 1.0 if top_p is None else top_p,
            "presence_penalty": 0, "frequency_penalty": 0, "top_logprobs": 0,
            "temperature": 1.0 if temperature is None else temperature,
            "reasoning": echo["reasoning"], "usage": usage,
            "max_output_tokens": request.get("max_output_tokens"), "max_tool_calls": None,
            "store": False, "background": request.get("background") is True,
            "service_tier": "default", "metadata": request.get("metadata") or {},
            "safety_identifier": None, "prompt_cache_key": None,
        }
        response.update(changes)
        return response

    def _final(self, output: list, native: dict) -> dict:
        self.output = output
        if self.on_final is not None:
            self.on_final(self.nonce, output)
        status, details = "completed", None
        if native.get("done_reason") == "length":
            status, details = "incomplete", {"reason": "max_output_tokens"}
        completed_at = int(time.time()) if status == "completed" else None
        return self.response(status, output, _usage(native), completed_at=completed_at,
                             incomplete_details=details)

    def body(self, native: dict) -> dict:
        """The whole answer for a native whole answer (`ToResponse`)."""
        message = native.get("message") or {}
        output: list[dict] = []
        if message.get("thinking"):
            output.append(_reasoning_item(self.new_id("rs"), message["thinking"]))
        calls = message.get("tool_calls") or []
        if calls:
            output.extend(self._call_item(call) for call in calls)
        else:
            output.append(_message_item(self.item_id, message.get("content") or ""))
        return self._final(output, native)

    def _call_item(self, call: dict) -> dict:
        return _call_item(self.new_id("fc"), call, call.get("id") or self.new_id("call"),
                          arguments_json(call))

    # --- the stream

    def _event(self, name: str, data: dict) -> Event:
        data = {"type": name, **data, "sequence_number": self._sequence}
        self._sequence += 1
        return name, data

    def events(self, chunk: dict) -> list[Event]:
        """The events for one native stream chunk (`Process`)."""
        events: list[Event] = []
        if not self._started:
            self._started = True
            events.append(self._event("response.created", {
                "response": self.response("in_progress", [], None)}))
            events.append(self._event("response.in_progress", {
                "response": self.response("in_progress", [], None)}))
        message = chunk.get("message") or {}
        if message.get("thinking"):
            events.extend(self._reason(message["thinking"]))
        calls = message.get("tool_calls") or []
        if calls:
            events.extend(self._close_reasoning())
            events.extend(self._calls(calls))
            self._calls_sent = True
        elif not self._calls_sent and message.get("content"):
            events.extend(self._say(message["content"]))
        if chunk.get("done") is True:
            events.extend(self._complete(chunk))
        return events

    def _reason(self, thinking: str) -> list[Event]:
        events = []
        if self._thinking is None:
            self._thinking, self._reasoning_id = "", self.new_id("rs")
            events.append(self._event("response.output_item.added", {
                "output_index": self._index,
                "item": {"id": self._reasoning_id, "type": "reasoning", "summary": []}}))
        self._thinking += thinking
        events.append(self._event("response.reasoning_summary_text.delta", {
            "item_id": self._reasoning_id, "output_index": self._index, "summary_index": 0,
            "delta": thinking}))
        return events

    def _close_reasoning(self) -> list[Event]:
        if self._thinking is None:
            return []
        item = _reasoning_item(self._reasoning_id, self._thinking)
        self._completed.append(item)
        events = [
            self._event("response.reasoning_summary_text.done", {
                "item_id": self._reasoning_id, "output_index": self._index,
                "summary_index": 0, "text": self._thinking}),
            self._event("response.output_item.done", {"output_index": self._index,
                                                      "item": item})]
        self._thinking = None
        self._index += 1
        return events

    def _calls(self, calls: list[dict]) -> list[Event]:
        events = []
        for call in calls:
            item = self._call_item(call)
            arguments = item["arguments"]
            self._completed.append(item)
            index = self._index
            events += [
                self._event("response.output_item.added", {
                    "output_index": index,
                    "item": {**item, "status": "in_progress", "arguments": ""}}),
                self._event("response.function_call_arguments.delta", {
                    "item_id": item["id"], "output_index": index, "delta": arguments}),
                self._event("response.function_call_arguments.done", {
                    "item_id": item["id"], "output_index": index, "arguments": arguments}),
                self._event("response.output_item.done", {"output_index": index,
                                                          "item": item})]
            self._index += 1
        return events

    def _say(self, text: str) -> list[Event]:
        events = self._close_reasoning()
        if self._text is None:
            self._text = ""
            events.append(self._event("response.output_item.added", {
                "output_index": self._index,
                "item": {"id": self.item_id, "type": "message", "status": "in_progress",
                         "role": "assistant", "content": []}}))
            events.append(self._event("response.content_part.added", {
                "item_id": self.item_id, "output_index": self._index, "content_index": 0,
                "part": _text_part("")}))
        self._text += text
        events.append(self._event(TEXT_DELTA.decode(), {
            "item_id": self.item_id, "output_index": self._index, "content_index": 0,
            "delta": text, "logprobs": []}))
        return events

    def text_delta(self, chunk: dict) -> Frame | None:
        """The event of a chunk that only adds text to the open message (most of them),
        made as `events` makes it, from a template of its bytes; None for any other."""
        message = chunk.get("message")
        if self._text is None or self._calls_sent or chunk.get("done") is True \
                or not isinstance(message, dict) or message.get("thinking") \
                or message.get("tool_calls"):
            return None
        text = message.get("content")
        if not isinstance(text, str) or not text:
            return None
        if self._delta is None or self._delta[0] != self._index:
            self._delta = (self._index, b'{"type":"%s","item_id":%s,"output_index":%d,'
                           b'"content_index":0,"delta":' % (
                               TEXT_DELTA, encode_json(self.item_id), self._index))
        self._text += text
        raw = b'%s%s,"logprobs":[],"sequence_number":%d}' % (
            self._delta[1], encode_basestring(text).encode(), self._sequence)
        self._sequence += 1
        return Frame(raw, event=TEXT_DELTA)

    def _complete(self, chunk: dict) -> list[Event]:
        events = self._close_reasoning()
        output = list(self._completed)
        if self._text is not None and not self._calls_sent:
            text, where = self._text, {"item_id": self.item_id, "output_index": self._index,
                                       "content_index": 0}
            item = _message_item(self.item_id, text)
            output.append(item)
            events += [
                self._event("response.output_text.done", {**where, "text": text,
                                                          "logprobs": []}),
                self._event("response.content_part.done", {**where, "part": _text_part(text)}),
                self._event("response.output_item.done", {"output_index": self._index,
                                                          "item": item})]
        response = self._final(output, chunk)
        name = "response.incomplete" if response["status"] == "incomplete" \
            else "response.completed"
        events.append(self._event(name, {"response": response}))
        return events

    def failed(self, message: str, code: str = "api_error") -> list[Event]:
        """The end of a stream that cannot finish: `response.failed` (after the opening
        events, when none was sent yet)."""
        events = self.events({}) if not self._started else []
        response = self.response("failed", list(self._completed), None,
                                 error={"code": code, "message": message})
        events.append(self._event("response.failed", {"response": response}))
        return events


def _frames(events: list[Event]) -> list[Frame]:
    return [Frame.of(data, event=name) for name, data in events]


# OpenAI's error types by status
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 408: "invalid_request_error",
                409: "invalid_request_error", 413: "invalid_request_error",
                429: "rate_limit_error"}


def error_body(status: int, message: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """An error in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`),
    its type by its HTTP status: what every OpenAI API answers."""
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "api_error"),
                      "param": param, "code": code}}


@dataclass
class ResponsesCall(Call):
    """A Responses request as translated: the client's request, the input items of the
    whole conversation (a `previous_response_id` expanded), and its answer's writer."""

    request: dict[str, Any] = field(default_factory=dict)
    conversation: list = field(default_factory=list)
    writer: Writer | None = None

    def basis(self) -> bytes:
        return json.dumps(self.conversation, separators=(",", ":")).encode()

    def finished(self, nonce: str, output: list[dict]) -> None:
        if self.remember is not None:
            self.remember(nonce, {"input": self.conversation, "output": output})


class _Stream(Translator):
    def __init__(self, writer: Writer):
        self.writer = writer

    def frame(self, native: dict[str, Any]) -> list[Frame]:
        delta = self.writer.text_delta(native)
        return [delta] if delta is not None else _frames(self.writer.events(native))

    def failed(self, status: int, message: str) -> list[Frame]:
        return _frames(self.writer.failed(message, "server_error"))


class Responses(Surface):
    """`POST /v1/responses`."""

    name = NAME
    routes = (("POST", "/v1/responses"),)
    keeps_records = True
    fields = MappingProxyType({"format": "text.format", "think": "reasoning",
                               "options.num_predict": "max_output_tokens"})

    def request(self, payload: dict[str, Any], headers: Mapping[str, str]) -> ResponsesCall:
        previous = self.recall_name(payload)
        native = to_chat(payload, allow_empty=previous is not None)
        call = ResponsesCall(native=native, model=native["model"], stream=native["stream"],
                             request=payload, conversation=input_items(payload))
        call.writer = Writer(payload, call.finished, lambda: call.name)
        call.ids.append(call.writer.nonce)
        return call

    @staticmethod
    def recall_name(payload: dict[str, Any]) -> str | None:
        previous = payload.get("previous_response_id")
        if previous is None:
            return None
        if not isinstance(previous, str) or not previous:
            raise BadRequest("'previous_response_id' must be a response id (a string)",
                             param=PREVIOUS)
        return previous

    def recall(self, call: Call) -> tuple[str, str] | None:
        """The record `call` needs (`previous_response_id`: `resp_<name><nonce>`) and the
        nonce of the answer it names, if any (an id of another form names none kept)."""
        assert isinstance(call, ResponsesCall)
        previous = self.recall_name(call.request)
        if previous is None:
            return None
        digits = previous.removeprefix("resp_")
        if len(digits) != NAME_DIGITS + NONCE_DIGITS or not previous.startswith("resp_"):
            return previous, ""
        return digits[:NAME_DIGITS], digits[NAME_DIGITS:]

    def resume(self, call: Call, record: Any, why: str = "") -> None:
        """Complete `call` with the record it named (None: not found, or `why` not)."""
        assert isinstance(call, ResponsesCall)
        if not isinstance(record, dict):
            raise BadRequest(f"previous response {call.request[PREVIOUS]!r}: {why}" if why
                             else f"previous response {call.request[PREVIOUS]!r} not found: "
                             "the bridge keeps the answers it gave for the cache TTL, "
                             "for the client that asked", param=PREVIOUS)
        expanded = expand(call.request, record)
        call.conversation = expanded["input"]
        call.native = {**to_chat(expanded), "stream": call.native["stream"]}

    def body(self, native: dict[str, Any], call: Call) -> dict[str, Any]:
        assert isinstance(call, ResponsesCall) and call.writer is not None
        return call.writer.body(native)

    def translator(self, call: Call) -> Translator:
        assert isinstance(call, ResponsesCall) and call.writer is not None
        return _Stream(call.writer)

    def error(self, status: int, message: str, param: str | None = None,
              code: str | None = None) -> dict[str, Any]:
        return error_body(status, message, param, code)
