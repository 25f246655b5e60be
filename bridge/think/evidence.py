"""Whether a model's streamed output starts inside reasoning, decided from evidence.

Some chat templates write the opening `<think>` into the prompt, so the model's output
starts inside reasoning and shows only `</think>`. A stream of such a model must be held
until `</think>` (or its reasoning would reach the client as answer), while a stream of
any other model must flow as it comes.

A request that switches reasoning off (`think: false`, `reasoning_effort: "none"`,
`reasoning: {"effort": "none"}`, Qwen's `/no_think` in the last user message) is rendered
differently: Ollama runs no reasoning parser then, and the template may write an empty
think block into the prompt (the model answers plainly), the opening tag alone (it starts
inside reasoning anyway), or nothing (the model opens its own blocks). So what outputs
show is learnt twice per model, once for requests with the switch and once for those
without, and a request is decided only by what was learnt for its own kind: the switch
outranks what requests without it showed, and the reverse. The decision, in this order:

1. the model was seen to start inside reasoning (a `</think>` before any `<think>`):
   inside, for good; that is proof, and a proven reasoner must never leak;
2. the model was seen to answer plainly (an answer that ended normally without a
   `</think>`, or with a `<think>` of its own first): plain;
3. the upstream says whether the model can reason (Ollama's `/api/show` lists its
   capabilities, asked once per model): one that cannot is plain; one that can is
   "maybe", whatever its name;
4. an upstream that cannot tell (no `/api/show`): the name decides: one that does not
   match `--think-start-models` is plain, one that does is "maybe";
5. "maybe" is held until the output shows which it is, and remembered.

What is learnt is remembered instance-wide (all workers), in a small JSON file of the
instance's run directory, re-read only when it changes, which a count in shared memory
tells without a system call.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import time
from pathlib import Path
from typing import Any, Callable

from bridge.core import locking
from bridge.core.reasoning import model_starts_inside

log = logging.getLogger("bridge.think")

PLAIN, MAYBE, INSIDE = "plain", "maybe", "inside"
FILE_NAME = "think-models.json"
MAX_MODELS = 1024  # the file stays small whatever names clients send
RETRY_UNKNOWN_SECONDS = 300.0  # an upstream that could not tell is asked again after this
# Where what outputs showed is kept: for requests as they come, and for those that switch
# reasoning off.
STARTS, STARTS_SWITCHED_OFF = "starts", "starts_switched_off"
_NO_THINK, _THINK = "/no_think", "/think"


def normalized_model(model: str) -> str:
    """One name per model: Ollama's `qwen3` and `qwen3:latest` are the same."""
    name = model.strip().lower()
    return name if ":" in name else name + ":latest"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(part["text"] for part in content
                        if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def switched_off(payload: dict[str, Any], native: bool = False) -> bool:
    """Whether the request itself asks the model not to reason (`native`: a request of
    Ollama's own API, which has `think` and ignores the OpenAI fields)."""
    if payload.get("think") is False:
        return True
    if not native:
        # A `reasoning` object wins over `reasoning_effort`, even one without an effort
        # (Ollama's FromChatRequest: then the model's default); a null one does not.
        reasoning = payload.get("reasoning")
        if isinstance(reasoning, dict):
            effort = reasoning.get("effort")
        else:
            effort = payload.get("reasoning_effort")
        if effort == "none":
            return True
    # Qwen3's soft switch: the last of `/think` and `/no_think` in the last user turn wins.
    text = ""
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                text = _text_of(message.get("content"))
                break
    elif isinstance(payload.get("prompt"), str):
        text = payload["prompt"]
    if _NO_THINK not in text:
        return False
    return text.rfind(_NO_THINK) >= text.rfind(_THINK)


_COUNT = struct.Struct("<Q")


class _Changes:
    """How many times a file was changed, counted in shared memory (a file of 8 bytes
    that every process using it maps): read without a system call. None when it cannot
    be mapped (its reader then looks at the file itself)."""

    def __init__(self, path: Path):
        self.path = path
        self._map: mmap.mmap | None = None
        self._failed = False

    def count(self) -> int | None:
        mapped = self._map if self._map is not None else self._open()
        return None if mapped is None else _COUNT.unpack_from(mapped)[0]

    def add_one(self) -> None:
        """Count a change (under the lock its writers share)."""
        mapped = self._map if self._map is not None else self._open()
        if mapped is not None:
            _COUNT.pack_into(mapped, 0, _COUNT.unpack_from(mapped)[0] + 1)

    def _open(self) -> mmap.mmap | None:
        if self._failed:
            return None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < _COUNT.size:
                    os.ftruncate(fd, _COUNT.size)  # zeros: the same for every process
                self._map = mmap.mmap(fd, _COUNT.size)
            finally:
                os.close(fd)
        except (OSError, ValueError):
            self._failed = True
        return self._map


class ModelMemory:
    """What this instance learnt about each model, shared by its workers through one
    small JSON file (written whole, atomically, under a lock; rarely: only when a fact
    changes). Its changes are counted in shared memory (`_Changes`): a worker reads the
    file again only when the count moved, without a `stat` per decision."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._facts: dict[str, dict[str, Any]] = {}
        self._changes = _Changes(path.with_suffix(".changes"))
        self._seen: int | None = None  # the count of changes when the file was read

    def get(self, model: str) -> dict[str, Any]:
        self._refresh()
        return self._facts.get(model, {})

    def _refresh(self) -> None:
        count = self._changes.count()  # before the file: a change after it is seen next
        if count is not None and count == self._seen:
            return  # nobody changed the file since it was read
        self._seen = count
        try:
            st = os.stat(self.path)
        except OSError:
            self._stamp, self._facts = None, {}
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            self._facts = self._read()
            self._stamp = stamp

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def update(self, model: str, **facts: Any) -> None:
        """Merge `facts` into what is known of `model` (other workers' news kept)."""
        try:
            with open(self.path.with_suffix(".lock"), "a") as lock, locking.exclusive(lock):
                # Nothing under the lock yields to gevent (plain file calls); the wait for
                # another worker's turn does, instead of holding this worker's loop.
                data = self._read()
                data[model] = {**data.get(model, {}), **facts}
                while len(data) > MAX_MODELS:
                    del data[next(iter(data))]
                tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(data, sort_keys=True))
                os.replace(tmp, self.path)
                self._changes.add_one()
        except OSError as exc:  # a run directory removed under us: learn nothing
            log.warning("cannot remember what the think filter learnt: %s", exc)


# Asks the upstream for a model's capabilities: a list, or None when it cannot tell.
Capabilities = Callable[[str], "list[str] | None"]


class Evidence:
    """Decides and learns, for one worker, over the instance-wide `ModelMemory`."""

    def __init__(self, memory: ModelMemory, pattern: str):
        self.memory = memory
        self.pattern = pattern

    def start(self, model: str, switched: bool, capabilities: Capabilities | None) -> str:
        """PLAIN, INSIDE or MAYBE for a stream of `model`, for a request that switched
        reasoning off or not (see the module docstring)."""
        key = normalized_model(model)
        known = self.memory.get(key)
        starts = known.get(STARTS_SWITCHED_OFF if switched else STARTS)
        if starts == INSIDE:
            return INSIDE
        if starts == PLAIN:
            return PLAIN
        thinking = self._thinking(key, known, model, capabilities)
        if thinking is None:
            thinking = model_starts_inside(model, self.pattern)
        return MAYBE if thinking else PLAIN

    def _thinking(self, key: str, known: dict[str, Any], model: str,
                  capabilities: Capabilities | None) -> bool | None:
        """Whether the upstream says the model can reason; None when it cannot tell."""
        if "thinking" in known and (known["thinking"] is not None or time.time()
                                    - known.get("asked", 0) < RETRY_UNKNOWN_SECONDS):
            return known["thinking"]
        if capabilities is None:
            return None
        caps = capabilities(model)
        thinking = None if caps is None else "thinking" in caps
        self.memory.update(key, thinking=thinking, asked=round(time.time()))
        return thinking

    def learn(self, model: str, verdict: str | None, switched: bool = False) -> None:
        """Remember what an output showed, for requests that switched reasoning off or
        not (INSIDE wins over PLAIN, for good)."""
        if verdict is None:
            return
        key = normalized_model(model)
        slot = STARTS_SWITCHED_OFF if switched else STARTS
        starts = self.memory.get(key).get(slot)
        if starts != INSIDE and starts != verdict:
            self.memory.update(key, **{slot: verdict})
