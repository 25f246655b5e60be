"""The stand-in's settings and the faults it can be told to inject."""

from __future__ import annotations

from dataclasses import dataclass, field

# /v1 stream shapes: Ollama v0.32.6+ ("new"), v0.32.5 and older ("legacy"), and the new
# shape with every delta key present, null until it has a value ("nulls", as vLLM does).
SHAPES = ("new", "legacy", "nulls")
# "auto": as today's Ollama (reasoning in a field for thinking-capable models, raw text
# with thinking off); the others force one shape whatever the model and request say,
# as other upstreams (vLLM, llama.cpp, older Ollama, the DeepSeek API) send it.
THINK_MODES = ("auto", "none", "tags", "tags-no-open", "field", "reasoning_content")
# "inband": an error after `after_chunks` frames, sent the way Ollama sends it (see
# wire._fail_in_band; with 0 frames, or on a whole body, Ollama's 500 instead); "cut":
# the connection dropped after `after_chunks` frames.
FAULT_KINDS = ("status", "refuse", "reset", "cut", "inband", "slow_headers", "hang")
# "strict": only the listed models answer (404 for others); "any": every name answers,
# unknown ones as a plain chat model (the demo's catalogue).
CATALOGUES = ("strict", "any")
# Which API the stand-in is (see `kinds`): Ollama, an OpenAI-only API or Claude's API.
KINDS = ("ollama", "openai", "anthropic")

DEFAULT_MODELS = (
    "llama3.2:latest",
    "qwen3:latest",
    "deepseek-r1:7b",
    "deepseek-coder:latest",
    "qwen2.5:latest",
    "all-minilm:latest",
    "gpt-oss:20b",
)


@dataclass
class StandInConfig:
    """How the stand-in answers; mutable while it runs (read afresh by every request)."""

    kind: str = "ollama"
    shape: str = "new"
    think: str = "auto"
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    catalogue: str = "strict"
    # when set, every request needs `Authorization: Bearer <it>` (`x-api-key: <it>` of
    # the "anthropic" kind)
    api_key: str | None = None
    # model -> the bearer keys that may use it (as per-key entitlements of a cloud API or
    # an auth proxy): others get 403 on /api and OpenAI's 404 on /v1, /api/show and
    # /v1/models/<model> included. Models not listed answer everyone.
    entitlements: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, KINDS)
        check_choice("shape", self.shape, SHAPES)
        check_choice("think", self.think, THINK_MODES)
        check_choice("catalogue", self.catalogue, CATALOGUES)
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ValueError(f"api_key must be a non-empty string or null, got {self.api_key!r}")
        if not isinstance(self.entitlements, dict) or not all(
                isinstance(keys, list) and all(isinstance(key, str) for key in keys)
                for keys in self.entitlements.values()):
            raise ValueError("entitlements must map model names to lists of keys, got "
                             f"{self.entitlements!r}")
        check_delay("first_token_delay", self.first_token_delay)
        check_delay("token_delay", self.token_delay)
        if isinstance(self.models, str) or not all(isinstance(m, str) for m in self.models):
            raise ValueError(f"models must be a list of strings, got {self.models!r}")
        self.models = list(self.models)


@dataclass
class Fault:
    """One misbehaviour for the next matching request(s); see StandIn.push_fault."""

    kind: str
    status: int = 500
    retry_after: float | None = None
    body: str | None = None
    after_chunks: int = 2
    delay: float = 0.0
    path: str | None = None

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, FAULT_KINDS)
        if not isinstance(self.status, int) or not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {self.status!r}")
        if not isinstance(self.after_chunks, int) or self.after_chunks < 0:
            raise ValueError(f"after_chunks must be an int >= 0, got {self.after_chunks!r}")
        check_delay("delay", self.delay)

    def matches(self, path: str) -> bool:
        return self.path is None or path.startswith(self.path)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def check_delay(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
