"""What answer each request gets: routing, request validation with Ollama's error
texts, and the choice of reply (whole body or stream). No sockets and no timing here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import unquote

from . import wire
from .config import SHAPES, THINK_MODES, Fault, StandInConfig

JSON = "application/json"
NATIVE_JSON = "application/json; charset=utf-8"
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
TEXT = "text/plain"

# Per-request overrides, so tests that go through a proxy can still steer the stand-in.
THINK_HEADER = "x-standin-think"
SHAPE_HEADER = "x-standin-shape"


@dataclass
class Call:
    """One request as the routes see it; `headers` has lower-case names."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    config: StandInConfig
    fault: Fault | None = None  # an "inband" fault this request fails with


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    generated: bool = False  # the model worked on it: first_token_delay applies


@dataclass
class StreamReply:
    content_type: str
    frames: Iterator[wire.Frame]


class ApiError(Exception):
    """A request Ollama refuses. `early`: refused by the /v1 middleware before the
    handler runs (bad JSON, no messages, invalid effort), which writes it differently."""

    def __init__(self, status: int, message: str, early: bool = False,
                 stream: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.early = early
        self.stream = stream  # a stream failed before its first byte


def handle(call: Call) -> Reply | StreamReply:
    if call.config.api_key is not None and not authorized(call):
        return unauthorized_reply(call.path, "authorization" in call.headers)
    route = ROUTES.get(call.path)
    if route is None and call.path.startswith("/v1/models/"):
        route = ({"GET"}, _openai_model)
    if route is None:
        return Reply(404, TEXT, b"404 page not found")
    methods, handler = route
    if call.method not in methods and not (call.method == "HEAD" and "GET" in methods):
        return Reply(405, TEXT, b"405 method not allowed")
    try:
        return handler(call)
    except ApiError as exc:
        reply = error_reply(call.path, exc.status, exc.message, early=exc.early)
        if exc.stream and call.path.startswith("/api/"):
            reply.content_type = JSON  # streamResponse sets it before gin's c.JSON
        return reply
    except (TypeError, ValueError, AttributeError) as exc:  # a request shape not foreseen:
        return error_reply(call.path, 500, f"internal error: {exc}")  # Ollama answers 500


def json_body(obj: object, content_type: str) -> bytes:
    """Go's bytes for `obj`: Ollama's json.Encoder writes (`application/json`) end with a
    newline, gin's c.JSON ones (`application/json; charset=utf-8`) do not."""
    return wire.go_json(obj) + (b"\n" if content_type == JSON else b"")


def error_reply(path: str, status: int, message: str, retry_after: float | None = None,
                early: bool = False, code: str | None = None,
                error_type: str | None = None) -> Reply:
    """An error in the shape of the surface `path` belongs to; `early`: a /v1 error of
    the middleware (gin's c.JSON bytes), not of the handler (Ollama's encoder);
    `error_type`: a /v1 error's type, when not the status's."""
    headers = retry_headers(retry_after)
    if path.startswith("/v1/"):
        kind = error_type or {400: "invalid_request_error", 401: "invalid_request_error",
                              404: "not_found_error"}.get(status, "api_error")
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        content_type = NATIVE_JSON if early else JSON
        return Reply(status, content_type, json_body(body, content_type), headers)
    if path.startswith("/api/"):
        return Reply(status, NATIVE_JSON, json_body({"error": message}, NATIVE_JSON), headers)
    return Reply(status, TEXT, message.encode(), headers)


def retry_headers(retry_after: float | None) -> dict[str, str]:
    """The `Retry-After` header of an error that says when to try again, if it does."""
    if retry_after is None:
        return {}
    return {"Retry-After": (str(int(retry_after)) if float(retry_after).is_integer()
                            else str(retry_after))}


def authorized(call: Call) -> bool:
    scheme, _, key = call.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and key.strip() == call.config.api_key


def unauthorized_reply(path: str, key_given: bool) -> Reply:
    """401 of an upstream that wants a bearer key: OpenAI's shape on /v1, Ollama's on /api."""
    if not path.startswith("/v1/"):
        return error_reply(path, 401, "unauthorized")
    message = ("Incorrect API key provided." if key_given else
               "You didn't provide an API key. You need to provide your API key in an "
               "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
    return error_reply(path, 401, message, code="invalid_api_key")


def default_error_message(status: int) -> str:
    if status == 503:
        return "server busy, please try again.  maximum pending requests exceeded"
    if status == 500:
        return "llama runner process has terminated: exit status 2"
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return f"error {status}"


def _json(obj: object, content_type: str = JSON, generated: bool = False) -> Reply:
    return Reply(200, content_type, json_body(obj, content_type), generated=generated)


# ---------------------------------------------------------------- request parsing


def _decode(call: Call, struct: str, empty_message: str) -> dict:
    if not call.body.strip():
        raise ApiError(400, empty_message, early=True)
    try:
        obj = wire.go_decode(call.body)
    except wire.GoJSONError as exc:
        raise ApiError(400, str(exc), early=True) from None
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ApiError(400, f"json: cannot unmarshal {wire.go_kind(obj)} into Go value of "
                            f"type {struct}", early=True)
    return obj


_GO_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "bool": (bool,), "int": (int,), "object": (dict,), "array": (list,),
}


def _field(req: dict, name: str, go_type: str, struct: str, default: object = None) -> object:
    """req[name] if absent/null or of the right JSON type, else Go's unmarshal error."""
    value = req.get(name)
    if value is None:
        return default
    kinds = _GO_TYPES[go_type.split(":")[0]]
    if not isinstance(value, kinds) or (go_type == "int" and isinstance(value, bool)):
        shown = go_type.split(":")[-1]
        raise ApiError(400, f"json: cannot unmarshal {wire.go_kind(value)} into Go struct "
                            f"field {struct.split('.')[-1]}.{name} of type {shown}",
                       early=True)
    return value


# How each endpoint refuses a model name: (status, text) for an empty one, and the
# text of the 404 for an unknown one. Chat's are the defaults.
_REQUIRED = (400, "model is required")
_NO_NAME = (404, "model '' not found")


def _not_found(name: str) -> str:
    return f"model '{name}' not found"


def _not_pulled(name: str) -> str:
    """Embeddings' text, from the scheduler."""
    return f"model {_go_q(name)} not found, try pulling it first"


def _show_not_found(name: str) -> str:
    """/api/show's text: the name as it resolved it."""
    return _not_found(_shortest(name))


def _shortest(name: str) -> str:
    """A name as Ollama displays it (`DisplayShortest`): tag added, default registry and
    namespace cut."""
    name = name.strip()
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name.removeprefix("registry.ollama.ai/library/")


def _model(call: Call, name: str, empty: tuple[int, str] = _REQUIRED,
           unknown: Callable[[str], str] = _not_found) -> str:
    """The model asked for, if it answers: any non-empty name in the "any" catalogue."""
    if not name.strip():
        raise ApiError(*empty)
    if call.config.catalogue != "any" and not listed(call.config, name):
        raise ApiError(404, unknown(name))
    _entitled(call, name)
    return name


def listed(config: StandInConfig, name: str) -> bool:
    return wire.canonical_name(name) in {wire.canonical_name(m) for m in config.models}


def _entitled(call: Call, name: str) -> None:
    """Refuse a model this call's bearer key may not use (`StandInConfig.entitlements`)."""
    entitled = {wire.canonical_name(model): keys
                for model, keys in call.config.entitlements.items()}.get(wire.canonical_name(name))
    if entitled is None:
        return
    scheme, _, key = call.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key.strip() in entitled:
        return
    if call.path.startswith("/v1/"):
        raise ApiError(404, f"The model `{name}` does not exist or you do not have access "
                       "to it.")
    raise ApiError(403, f"access to model '{name}' denied")


THINK_LEVELS = ("low", "medium", "high", "max")
# /v1 reasoning effort -> think (`thinkFromReasoningEffort`): None keeps the model's default.
_EFFORTS: dict[str, object] = {"": None, "none": False, "minimal": "low", "xhigh": "max",
                               "ultra": "max", **{level: level for level in THINK_LEVELS}}


_THINK_CHOICES = '"high", "medium", "low", "max", true, or false'
_EFFORT_CHOICES = '"minimal", "low", "medium", "high", "xhigh", "ultra", "max", or "none"'


def _native_think(req: dict) -> object:
    """The native `think`: None (unasked), a bool or a level (`ThinkValue.UnmarshalJSON`)."""
    think = req.get("think")
    if think is None or isinstance(think, bool) or think in THINK_LEVELS:
        return think
    if isinstance(think, str):
        raise ApiError(400, f"invalid think value: {_go_q(think)} (must be {_THINK_CHOICES})",
                       early=True)
    raise ApiError(400, f"think must be a boolean or string ({_THINK_CHOICES})", early=True)


def _openai_think(req: dict) -> object:
    """/v1's wish, as a native `think`: a `reasoning` object wins over `reasoning_effort`,
    even one without an effort (then the model's default)."""
    struct = "ChatCompletionRequest"
    reasoning = _field(req, "reasoning", "object:openai.Reasoning", struct)
    if reasoning is not None:
        effort = _field(reasoning, "effort", "string", "Reasoning.reasoning", "")
    else:
        effort = _field(req, "reasoning_effort", "string", struct, "")
    if effort not in _EFFORTS:
        raise ApiError(400, f"invalid reasoning value: {_go_q(effort)} (must be "
                            f"{_EFFORT_CHOICES})", early=True)
    return _EFFORTS[effort]


def _go_q(text: str) -> str:
    """Go's %q of a string (JSON's quoting, close enough for error texts)."""
    return json.dumps(text, ensure_ascii=False)


def _think_mode(call: Call, model: str, requested: object) -> str:
    mode = call.headers.get(THINK_HEADER, call.config.think)
    if mode not in THINK_MODES:
        raise ApiError(400, f"X-Standin-Think must be one of {', '.join(THINK_MODES)}")
    try:
        return wire.resolve_think(mode, model, requested)
    except wire.ThinkingUnsupported:
        raise ApiError(400, f'"{model}" does not support thinking') from None


def _shape(call: Call) -> str:
    shape = call.headers.get(SHAPE_HEADER, call.config.shape)
    if shape not in SHAPES:
        raise ApiError(400, f"X-Standin-Shape must be one of {', '.join(SHAPES)}")
    return shape


def _text(content: object) -> str:
    """The text of a message's content: a string or a list of {"type":"text"} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content
                        if isinstance(part, dict) and part.get("type", "text") == "text")
    return ""


def _conversation(messages: list, struct: str) -> tuple[str, list[str]]:
    """(the prompt to answer: the last user message, the text of every message)."""
    for message in messages:
        if not isinstance(message, dict):
            raise ApiError(400, f"json: cannot unmarshal {wire.go_kind(message)} into Go "
                                f"struct field {struct}.messages of type Message")
    texts = [_text(m.get("content")) for m in messages]
    users = [t for m, t in zip(messages, texts, strict=True) if m.get("role") == "user"]
    return (users[-1] if users else texts[-1]), texts


def _no_chat(model: str, what: str) -> None:
    if wire.is_embedding_model(model):
        raise ApiError(400, f'"{model}" does not support {what}')


def _tool_to_call(req: dict, messages: list, model: str, struct: str) -> dict | None:
    """The tool the stand-in calls, if any: with `tools` offered, the first one when the
    last message is the user's (after a `tool` result, or any other last role, the
    answer is text). `tools` to a model without the `tools` capability is Ollama's 400."""
    tools = _field(req, "tools", "array:" + ("[]api.Tool" if struct.startswith("openai")
                                             else "api.Tools"), struct, [])
    if not tools:
        return None
    for tool in tools:
        if not isinstance(tool, dict):
            raise ApiError(400, f"json: cannot unmarshal {wire.go_kind(tool)} into Go struct "
                                f"field {struct.split('.')[-1]}.tools of type api.Tool",
                           early=True)
    if "tools" not in wire.capabilities(model):
        raise ApiError(400, f"{wire.full_name(model)} does not support tools")
    last = messages[-1]
    return tools[0] if str(last.get("role", "")).lower() == "user" else None


def _top_logprobs(req: dict, struct: str, flag: str = "logprobs") -> int | None:
    """None without `logprobs: true`, else how many alternatives per token (0..20);
    `top_logprobs` out of range is Ollama's 400 whether or not logprobs are asked."""
    top = _field(req, "top_logprobs", "int", struct, 0)
    if not 0 <= top <= 20:
        raise ApiError(400, "top_logprobs must be between 0 and 20")
    return top if _field(req, flag, "bool", struct, False) else None


# ---------------------------------------------------------------- /v1


def _openai_limit(req: dict, struct: str) -> int | None:
    """`max_tokens`; Ollama ignores `max_completion_tokens`."""
    limit = _field(req, "max_tokens", "int", struct)
    return None if limit is None or limit < 0 else limit


def _in_band(call: Call, stream: bool) -> tuple[int | None, str]:
    """(frames before the failure, its message) of an "inband" fault; a whole-body
    answer, or a stream failing before its first frame, has no band to fail in: it
    gets Ollama's 500 instead (a JSON error, no 200)."""
    if call.fault is None:
        return None, ""
    message = call.fault.body or default_error_message(500)
    if not stream or call.fault.after_chunks == 0:
        raise ApiError(500, message, stream=stream)
    return call.fault.after_chunks, message


def _include_usage(req: dict, struct: str) -> bool:
    options = _field(req, "stream_options", "object:*openai.StreamOptions", struct) or {}
    return options.get("include_usage") is True


def _openai_chat(call: Call) -> Reply | StreamReply:
    struct = "ChatCompletionRequest"
    req = _decode(call, f"openai.{struct}", "EOF")
    name = _field(req, "model", "string", struct, "")
    messages = _field(req, "messages", "array:[]openai.Message", struct, [])
    if not messages:
        raise ApiError(400, "[] is too short - 'messages'", early=True)
    stream = _field(req, "stream", "bool", struct, False)
    requested = _openai_think(req)
    top_logprobs = _top_logprobs(req, struct)
    model = _model(call, name)
    _no_chat(model, "chat")
    mode = _think_mode(call, model, requested)
    prompt, texts = _conversation(messages, struct)
    tool = _tool_to_call(req, messages, model, f"openai.{struct}")
    gen = wire.generate(prompt, len(messages), mode, _openai_limit(req, struct),
                        wire.count_prompt_tokens(texts), tool, top_logprobs)
    fail_after, _ = _in_band(call, stream)
    if stream:
        frames = wire.openai_chat_frames(gen, model, _shape(call), _include_usage(req, struct),
                                         fail_after)
        return StreamReply(SSE, frames)
    return _json(wire.openai_chat_body(gen, model), generated=True)


def _openai_completion(call: Call) -> Reply | StreamReply:
    struct = "CompletionRequest"
    req = _decode(call, f"openai.{struct}", "EOF")
    name = _field(req, "model", "string", struct, "")
    prompt = _field(req, "prompt", "string", struct, "")
    stream = _field(req, "stream", "bool", struct, False)
    # `logprobs: n` is top_logprobs n to Ollama, but its answer here carries none.
    if (_field(req, "logprobs", "int", struct) or 0) > 20:
        raise ApiError(400, "top_logprobs must be between 0 and 20")
    model = _model(call, name, _NO_NAME)
    _no_chat(model, "generate")
    mode = _think_mode(call, model, None)
    gen = wire.generate(prompt, 1, mode, _openai_limit(req, struct),
                        wire.count_prompt_tokens([prompt]))
    fail_after, _ = _in_band(call, stream)
    if stream:
        return StreamReply(SSE, wire.openai_completion_frames(
            gen, model, _include_usage(req, struct), fail_after))
    return _json(wire.openai_completion_body(gen, model), generated=True)


def _inputs(value: object) -> list[str]:
    """Embedding input: a string, a list of strings, or token arrays (shown as text)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [" ".join(map(str, value))]
    if isinstance(value, list):
        if not all(isinstance(v, (str, list)) for v in value):
            raise ApiError(400, "invalid input type")
        return [v if isinstance(v, str) else " ".join(map(str, v)) for v in value]
    return []


def _openai_embeddings(call: Call) -> Reply:
    struct = "EmbedRequest"
    req = _decode(call, f"openai.{struct}", "EOF")
    name = _field(req, "model", "string", struct, "")
    inputs = _inputs(req.get("input"))
    if not inputs:
        raise ApiError(400, "invalid input", early=True)
    model = _model(call, name, _NO_NAME, _not_pulled)
    as_base64 = req.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(inputs):
        vector = wire.embedding(text)
        data.append({"object": "embedding",
                     "embedding": wire.embedding_base64(vector) if as_base64 else vector,
                     "index": index})
    tokens = wire.count_prompt_tokens(inputs)
    return _json({"object": "list", "data": data, "model": model,
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, generated=True)


def _openai_model_entry(name: str) -> dict:
    return {"id": name, "object": "model", "created": wire.model_created(name),
            "owned_by": "library"}


def _openai_models(call: Call) -> Reply:
    data = [_openai_model_entry(m) for m in call.config.models]
    return _json({"object": "list", "data": data or None})


def _openai_model(call: Call) -> Reply:
    name = unquote(call.path[len("/v1/models/"):])  # gin matches the decoded path
    return _json(_openai_model_entry(_model(call, name, unknown=_show_not_found)))


# ---------------------------------------------------------------- /api


def _native_limit(req: dict, struct: str) -> int | None:
    options = _field(req, "options", "object:map[string]interface {}", struct) or {}
    limit = options.get("num_predict")
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0 \
        else None


def _native_idle(model: str, req: dict, part: dict) -> Reply:
    """Empty messages/prompt: Ollama only loads (or unloads) the model."""
    reason = "unload" if req.get("keep_alive") in (0, "0", "0s") else "load"
    return _json({"model": model, "created_at": wire.rfc3339nano(), **part,
                  "done": True, "done_reason": reason}, NATIVE_JSON)


def _native_chat(call: Call) -> Reply | StreamReply:
    struct = "api.ChatRequest"
    req = _decode(call, struct, "missing request body")
    requested = _native_think(req)
    top_logprobs = _top_logprobs(req, struct)
    model = _model(call, _field(req, "model", "string", struct, ""))
    messages = _field(req, "messages", "array:[]api.Message", struct, [])
    stream = _field(req, "stream", "bool", struct, True)
    if not messages:
        return _native_idle(model, req, {"message": {"role": "assistant", "content": ""}})
    _no_chat(model, "chat")
    mode = _think_mode(call, model, requested)
    prompt, texts = _conversation(messages, "ChatRequest")
    tool = _tool_to_call(req, messages, model, struct)
    gen = wire.generate(prompt, len(messages), mode, _native_limit(req, struct),
                        wire.count_prompt_tokens(texts), tool, top_logprobs)
    fail_after, error = _in_band(call, stream)
    if stream:
        return StreamReply(NDJSON, wire.native_chat_frames(gen, model, fail_after, error))
    return _json(wire.native_chat_body(gen, model), NATIVE_JSON, generated=True)


def _native_generate(call: Call) -> Reply | StreamReply:
    struct = "api.GenerateRequest"
    req = _decode(call, struct, "missing request body")
    requested = _native_think(req)
    top_logprobs = _top_logprobs(req, struct)
    model = _model(call, _field(req, "model", "string", struct, ""), _NO_NAME)
    prompt = _field(req, "prompt", "string", struct, "")
    stream = _field(req, "stream", "bool", struct, True)
    if not prompt:
        return _native_idle(model, req, {"response": ""})
    _no_chat(model, "generate")
    mode = _think_mode(call, model, requested)
    gen = wire.generate(prompt, 1, mode, _native_limit(req, struct),
                        wire.count_prompt_tokens([prompt]), top_logprobs=top_logprobs)
    context = wire.context_ids(prompt, gen.text("content"))
    fail_after, error = _in_band(call, stream)
    if stream:
        return StreamReply(NDJSON, wire.native_generate_frames(gen, model, context,
                                                               fail_after, error))
    return _json(wire.native_generate_body(gen, model, context), NATIVE_JSON, generated=True)


def _native_embed(call: Call) -> Reply:
    struct = "api.EmbedRequest"
    req = _decode(call, struct, "missing request body")
    model = _model(call, _field(req, "model", "string", struct, ""), _NO_NAME, _not_pulled)
    inputs = _inputs(req.get("input"))
    return _json({"model": model, "embeddings": [wire.embedding(t) for t in inputs],
                  "total_duration": 14143917, "load_duration": 1019500,
                  "prompt_eval_count": wire.count_prompt_tokens(inputs)},
                 NATIVE_JSON, generated=True)


def _native_embeddings(call: Call) -> Reply:
    """The pre-/api/embed endpoint: one prompt, one "embedding"."""
    struct = "api.EmbeddingRequest"
    req = _decode(call, struct, "missing request body")
    _model(call, _field(req, "model", "string", struct, ""), unknown=_not_pulled)
    prompt = _field(req, "prompt", "string", struct, "")
    return _json({"embedding": wire.embedding(prompt)}, NATIVE_JSON, generated=True)


def _native_tags(call: Call) -> Reply:
    return _json({"models": [wire.model_info(m) for m in call.config.models]}, NATIVE_JSON)


def _native_show(call: Call) -> Reply:
    struct = "api.ShowRequest"
    req = _decode(call, struct, "missing request body")
    model = _model(call, str(req.get("model") or req.get("name") or ""),
                   unknown=_show_not_found)
    # No `license`: Ollama omits it when empty.
    return _json({"modelfile": f"# Modelfile generated by \"ollama show\"\nFROM {model}\n",
                  "parameters": "temperature 0.6", "template": "{{ .Prompt }}",
                  "details": wire.model_details(model),
                  "model_info": wire.gguf_info(model),
                  "capabilities": wire.capabilities(model), "modified_at": wire.MODIFIED_AT},
                 NATIVE_JSON)


def _native_ps(call: Call) -> Reply:
    loaded = []
    for name in call.config.models[:1]:
        info = wire.model_info(name)
        loaded.append({"name": name, "model": name, "size": info["size"],
                       "digest": info["digest"], "details": wire.model_details(name),
                       "expires_at": "2099-01-01T00:00:00Z", "size_vram": info["size"],
                       "context_length": wire.loaded_context_length(name)})
    return _json({"models": loaded}, NATIVE_JSON)


def _native_pull(call: Call) -> Reply | StreamReply:
    """Pull a model: any name in the "any" catalogue, else a listed one or one of a family
    the stand-in knows (then listed from its `success` on); others fail as a registry
    without the manifest makes Ollama fail: after `pulling manifest` in a stream, 500
    with `stream:false`."""
    struct = "api.PullRequest"
    req = _decode(call, struct, "missing request body")
    name = (_field(req, "model", "string", struct, "")
            or _field(req, "name", "string", struct, "")).strip()
    stream = _field(req, "stream", "bool", struct, True)
    if not name:
        raise ApiError(400, "invalid model name")
    config = call.config
    found = config.catalogue == "any" or listed(config, name) or wire.is_known_family(name)

    def progress() -> Iterator[dict]:
        if not found:
            yield {"status": "pulling manifest"}
            yield {"error": wire.PULL_NOT_FOUND}
            return
        for status in wire.pull_progress(name):
            if status["status"] == "success" and not listed(config, name):
                config.models.append(_shortest(name))
            yield status

    if not stream:  # `waitForStream`: the last status, or the error as a 500
        last = list(progress())[-1]
        return Reply(500 if "error" in last else 200, JSON, wire.go_json(last))
    return StreamReply(NDJSON, _ndjson_frames(progress()))


def _ndjson_frames(objects: Iterator[dict]) -> Iterator[wire.Frame]:
    """NDJSON lines, the last one flagged as the end."""
    line = None
    for obj in objects:
        if line is not None:
            yield line, False
        line = wire.ndjson(obj)
    if line is not None:
        yield line, True


def _native_version(call: Call) -> Reply:
    return _json({"version": wire.OLLAMA_VERSIONS[_shape(call)]}, NATIVE_JSON)


def _root(call: Call) -> Reply:
    return Reply(200, "text/plain; charset=utf-8", b"Ollama is running")


ROUTES: dict[str, tuple[set[str], Callable[[Call], Reply | StreamReply]]] = {
    "/": ({"GET"}, _root),
    "/v1/chat/completions": ({"POST"}, _openai_chat),
    "/v1/completions": ({"POST"}, _openai_completion),
    "/v1/embeddings": ({"POST"}, _openai_embeddings),
    "/v1/models": ({"GET"}, _openai_models),
    "/api/chat": ({"POST"}, _native_chat),
    "/api/generate": ({"POST"}, _native_generate),
    "/api/embed": ({"POST"}, _native_embed),
    "/api/embeddings": ({"POST"}, _native_embeddings),
    "/api/tags": ({"GET"}, _native_tags),
    "/api/show": ({"POST"}, _native_show),
    "/api/ps": ({"GET"}, _native_ps),
    "/api/pull": ({"POST"}, _native_pull),
    "/api/version": ({"GET"}, _native_version),
}
