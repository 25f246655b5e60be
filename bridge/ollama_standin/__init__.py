"""A stand-in for Ollama: a real HTTP server speaking Ollama's exact wire format
(OpenAI-compatible /v1 and native /api), with deterministic answers, configurable
reasoning output, delays and injected faults. Used by the tests, the benchmarks and
the bundled demo; run it alone with `python -m bridge.ollama_standin`.

In a test::

    with StandIn(StandInConfig(shape="legacy")) as upstream:
        upstream.push_fault(Fault("status", status=503, retry_after=1))
        ...  # point the bridge at upstream.url
        assert upstream.count("/v1/chat/completions") == 2

Answers are deterministic: "Echo: <last user message>" ("Echo (N messages): ..." for
a history), with reasoning "Okay, the user asks about <first words>. ..." emitted as
the think mode says, one token per stream chunk. The default ("auto") is today's
Ollama: models with the `thinking` capability (deepseek-r1, qwen3 hybrids, qwq,
gpt-oss) reason in `reasoning` / `thinking` unasked, raw tags land in `content` only
with thinking off (`think:false`, `reasoning_effort:"none"`), and the other models
never reason. Forced modes give other upstreams' shapes (raw tags, no opening tag,
`reasoning_content`); shape "nulls" sends null fields before values.

Tool calls: a request that offers `tools` (chat, /v1 and /api) and whose last message
is the user's gets a call of the first tool instead of the answer text (after the
reasoning, if any): one argument, the tool's first required parameter (else its first
declared one), valued from the prompt by its JSON-schema type (a string is the prompt
itself, an `enum` its first value, a number the prompt's word count); no parameters,
`{}`. After a `tool` result (or any last role but `user`) the answer is text. Calls come
whole, in Ollama's shapes: native `message.tool_calls[]` = `{"id":"call_…","function":
{"index":0,"name":…,"arguments":{…}}}`, /v1 `{"id","index","type":"function","function":
{"name","arguments":"<JSON>"}}` with `finish_reason:"tool_calls"`. `tools` to a model
without the `tools` capability is Ollama's 400 (`registry.ollama.ai/library/m:latest
does not support tools`).

Logprobs (`logprobs: true`, `top_logprobs` 0..20, else Ollama's 400): one entry per
emitted token, reasoning tokens included, as Ollama sends them (`token`, `logprob`,
`bytes`, and `top_logprobs` with the chosen token first), on the token's own chunk or
all together in a whole body, so the entries' tokens join to the streamed text.
/v1/completions takes `logprobs: n` but, as Ollama's converter, answers without them;
tool calls carry none.

Listings as today's Ollama: `/api/tags` entries with `capabilities` and
`details.context_length`, `/api/ps` with `context_length`; `/api/pull` streams its
progress (`pulling manifest`, `pulling <digest>` with total/completed, `verifying sha256
digest`, `writing manifest`, `success`) for any name in the "any" catalogue, a listed one
or one of a known family (then listed), and fails as Ollama does for others.

Faults: HTTP statuses, refused/reset connections, streams cut mid-way ("cut") or
failed in band as Ollama does ("inband"; before the first frame, a 500), slow headers,
hangs. `catalogue="any"` answers every model name (the demo); `api_key` makes it an
upstream wanting a key.

Kinds (`kind`, see `kinds`): "ollama" (every route above), "openai" (an OpenAI-only API:
the /v1 chat, completions, embeddings and models routes, OpenAI's 404 and 401 shapes for
the rest; with think "reasoning_content", DeepSeek's API) or "anthropic" (Claude's API:
/v1/messages and Anthropic's /v1/models, `x-api-key` and `anthropic-version` wanted,
every error in Anthropic's shape): fake upstreams for the tests of translation.

Per-request headers (handy through a proxy): X-Standin-Think, X-Standin-Shape,
X-Standin-First-Token-Delay, X-Standin-Token-Delay.

Control endpoints, neither recorded nor counted: GET /_standin/stats
(?requests=0 leaves out the recorded requests), GET|POST /_standin/config,
POST /_standin/faults ({fault fields..., "times": n}), POST /_standin/reset.
"""

from .cli import main
from .config import Fault, StandInConfig
from .server import RecordedRequest, StandIn

__all__ = ["Fault", "RecordedRequest", "StandIn", "StandInConfig", "main"]
