"""Embeddings of compared texts, asked through the upstream the bridge uses.

An Ollama upstream is asked `POST /api/embed {"model", "input"}`, an OpenAI-compatible
one `POST /v1/embeddings {"model", "input"}` (routing's `api` of the exchange's upstream;
without routing, the one the start probe found answering on `-o`). Each call waits at
most `EMBED_TIMEOUT` seconds: a slow or failed call is a plain miss, never an error.
An upstream kind without embeddings (Anthropic's API) has no semantic cache.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from bridge.core.events import emit
from bridge.core.exchange import UpstreamTarget
from bridge.core.upstream import UpstreamClient

log = logging.getLogger("bridge.semantic_cache")

EMBED_TIMEOUT = 2.0  # seconds: longest wait for one embedding (a cold model loads in it)
OLLAMA, OPENAI = "ollama", "openai"
PATHS = {OLLAMA: "/api/embed", OPENAI: "/v1/embeddings"}
PROBE_TEXT = "semantic cache probe"


class Embedder:
    """One embedding model on the upstream(s)."""

    def __init__(self, upstream: UpstreamClient, model: str):
        self.upstream = upstream
        self.model = model
        self.default_api: str | None = None  # what `-o` answers embeddings on

    def probe(self, target: UpstreamTarget | None) -> np.ndarray | None:
        """Whether the model embeds on `target` (None: `-o`, trying both APIs): its
        vector of a fixed text, or None."""
        headers = self.upstream.probe_headers  # the bridge's key in shared mode
        if target is not None:
            return self._call(target.api, target, PROBE_TEXT, headers, count=False)
        for api in (OLLAMA, OPENAI):
            vector = self._call(api, None, PROBE_TEXT, headers, count=False)
            if vector is not None:
                self.default_api = api
                return vector
        return None

    def embed(self, text: str, target: UpstreamTarget | None, headers: dict[str, str]
              ) -> np.ndarray | None:
        """The unit vector of `text`, or None (upstream slow, failing, or without
        embeddings); `headers`: the request's credentials, sent as its call would be."""
        api = target.api if target is not None else self.default_api
        if api not in PATHS:
            return None
        return self._call(api, target, text, headers)

    def _call(self, api: str, target: UpstreamTarget | None, text: str,
              headers: dict[str, str], count: bool = True) -> np.ndarray | None:
        path = PATHS.get(api)
        if path is None:
            return None
        model = target.upstream_model(self.model) if target is not None else self.model
        if target is not None and target.key is not None:  # its own key, or none
            headers = {"authorization": f"Bearer {target.key}"} if target.key else {}
        started = time.monotonic()
        status, data = self.upstream.ask(path, target, headers, EMBED_TIMEOUT,
                                         {"model": model, "input": text}, read=True)
        vector = _vector(api, data) if status == 200 else None
        if count:
            emit("semantic.embedding", outcome="ok" if vector is not None else "failed")
            emit("semantic.embedding_seconds", time.monotonic() - started)
        return vector


def _vector(api: str, data: Any) -> np.ndarray | None:
    """The first embedding of an answer, normalised; None when there is none."""
    try:
        raw = data["embeddings"][0] if api == OLLAMA else data["data"][0]["embedding"]
        vector = np.asarray(raw, dtype=np.float32)
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if vector.ndim != 1 or not vector.size:
        return None
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0.0:
        return None
    return vector / norm
