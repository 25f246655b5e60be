"""Embeddings of compared texts, asked through the upstream the request goes to.

Each upstream is asked as its kind embeds (`bridge.surfaces`' adapters: an Ollama's
`POST /api/embed`, an OpenAI-compatible API's `POST /v1/embeddings`), with the request's
credentials as its call would carry them (`UpstreamClient.ask`: a routed upstream's own
key, the kind's header). Each call waits at most `--semantic-cache-timeout` (2 s): a slow or
failed call is a plain miss, never an error. An upstream kind without embeddings
(Anthropic's API) has no semantic cache.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from bridge.core.events import emit
from bridge.core.exchange import UpstreamTarget
from bridge.core.upstream import UpstreamClient
from bridge.surfaces import crossing
from bridge.surfaces.adapter import EMBED, Unsupported

PROBE_TEXT = "semantic cache probe"


class Embedder:
    """One embedding model on the upstream(s)."""

    def __init__(self, upstream: UpstreamClient, model: str, timeout: float):
        self.upstream = upstream
        self.model = model
        self.timeout = timeout  # seconds: the longest wait for one embedding

    def probe(self, target: UpstreamTarget | None) -> np.ndarray | None:
        """The model's vector of a fixed text on `target` (None: `-o`), with the bridge's
        own credentials; None when it does not answer with one."""
        return self._call(target, PROBE_TEXT, dict(self.upstream.probe_headers), count=False)

    def embed(self, text: str, target: UpstreamTarget | None, headers: dict[str, str]
              ) -> np.ndarray | None:
        """The unit vector of `text`, or None (upstream slow, failing, or without
        embeddings); `headers`: the request's credentials."""
        return self._call(target, text, headers)

    def path(self, target: UpstreamTarget | None) -> str | None:
        """Where `target` (None: `-o`) embeds; None when its kind has no embeddings."""
        try:
            return crossing.kind_of(self.upstream.kind_of(target)).outbound(EMBED, {}).path
        except Unsupported:
            return None

    def _call(self, target: UpstreamTarget | None, text: str, headers: dict[str, str],
              count: bool = True) -> np.ndarray | None:
        kind = crossing.kind_of(self.upstream.kind_of(target))
        model = target.upstream_model(self.model) if target is not None else self.model
        try:
            outbound = kind.outbound(EMBED, {"model": model, "input": text})
        except Unsupported:  # Anthropic's API
            return None
        started = time.monotonic()
        status, data = self.upstream.ask(outbound.path, target, headers, self.timeout,
                                         outbound.body, read=True)
        vector = _vector(kind.whole(EMBED, data, {})) if status == 200 else None
        if count:
            emit("semantic.embedding", outcome="ok" if vector is not None else "failed")
            emit("semantic.embedding_seconds", time.monotonic() - started)
        return vector


def _vector(canonical: dict[str, Any]) -> np.ndarray | None:
    """The first embedding of a canonical answer (/api/embed's), normalised; None when
    there is none."""
    try:
        raw = canonical["embeddings"][0]
        vector = np.asarray(raw, dtype=np.float32)
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if vector.ndim != 1 or not vector.size:
        return None
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or norm == 0.0:
        return None
    return vector / norm
