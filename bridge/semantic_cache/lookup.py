"""The semantic tier as the cache stage uses it: after an exact miss, the nearest stored
question of the same scope; after a stored answer, a semantic entry pointing at its key.

At start each worker probes the embedding model on the upstream(s): missing (or on an
upstream kind without embeddings) is one WARNING per instance and the tier stays off.
It then loads its index: the one saved beside the disk tier at the last stop, brought up
to date with the stored entries, or rebuilt from them when it is missing or unreadable.
The vectors it lacks are added by a background greenlet, `BUILD_BATCH` at a time (a
100k-entry graph takes minutes to build: done at start, it would keep the worker from
serving past gunicorn's timeout); meanwhile the tier serves what it holds. That
greenlet then adds what other workers (and, with Redis, other instances) store.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import gevent
import numpy as np

from bridge.core import instance
from bridge.core.events import emit
from bridge.core.exchange import Exchange, UpstreamTarget
from bridge.core.redaction import CREDENTIAL_HEADERS
from bridge.core.redis_link import link_for
from bridge.core.settings import Settings
from bridge.core.upstream import UpstreamClient
from bridge.semantic_cache.embedding import Embedder
from bridge.semantic_cache.index import Found, SemanticIndex, VectorIndex
from bridge.semantic_cache.question import Digest, Question, question_of
from bridge.semantic_cache.store import BATCH, RedisStore, SqliteStore, Store

log = logging.getLogger("bridge.semantic_cache")

INDEX_FILE = "semantic.usearch"
POLL_SECONDS = 0.25  # how often a worker reads the entries others stored
BUILD_BATCH = 64  # vectors added to the graph between two turns of the event loop
BUILD_PAUSE = 0.005  # seconds between batches: a timer, so the loop polls sockets (sleep(0)
# only runs callbacks: requests would wait for the whole build)
_WARNED = "semantic-cache.warned"  # in the instance's run directory: one warning per instance


@dataclass
class Asked:
    """A request's question and its embedding: what is stored if it is answered."""

    question: Question
    vector: np.ndarray


class SemanticCache:
    def __init__(self, settings: Settings, upstream: UpstreamClient,
                 targets: Sequence[UpstreamTarget], digest: Digest):
        """`targets`: the routed upstreams (none: -o alone); `digest`: the exact cache
        key's digest of a request (`bridge.cache.keys`), which the scope digest is."""
        self.settings = settings
        self.targets = targets
        self.digest = digest
        self.threshold = settings.semantic_cache_threshold
        self.embedder = Embedder(upstream, settings.semantic_cache_model,
                                 settings.semantic_cache_timeout / 1000)
        self.index: SemanticIndex | None = None  # None: the tier is off
        self.store: Store | None = None
        self._cursor: Any = None
        self._backlog: list = []  # stored entries not in the index yet, oldest first
        self._poller: gevent.Greenlet | None = None

    # --- start and stop -----------------------------------------------------------------

    def start(self) -> None:
        dims = self._probe()
        if dims is None:
            return
        model, bound = self.settings.semantic_cache_model, self.settings.semantic_cache_max_entries
        link = link_for(self.settings)
        if link is not None:
            self.store = RedisStore(link, model, dims, bound)
        else:
            self.store = SqliteStore(self.settings.cache_dir, model, dims, bound)
        self.index = self._load(dims)
        emit("semantic.entries", len(self.index))
        log.info("semantic cache: on (%s, %d dimensions, %d entries, %d to index, threshold "
                 "%.3f)", model, dims, len(self.index), len(self._backlog), self.threshold)

    def _probe(self) -> int | None:
        """The model's dimensions on the upstreams that embed with it (requests routed to
        the others are plain misses, said in one WARNING per instance); None, with one
        WARNING, when none does."""
        targets: list[UpstreamTarget | None] = [*self.targets] or [None]
        model = self.settings.semantic_cache_model
        dims: dict[int, list[str]] = {}
        without: list[str] = []
        for target in targets:
            where = target.name if target is not None else self.settings.ollama
            vector = self.embedder.probe(target)  # None too where its kind does not embed
            if vector is None:
                kind = self.embedder.upstream.kind_of(target)
                path = self.embedder.path(target) or f"the {kind} API has none"
                without.append(f"{where} ({path})")
            else:
                dims.setdefault(vector.size, []).append(where)
        if not dims:
            self._warn("semantic cache off: embedding model %r does not answer on %s; pull "
                       "it or fix --semantic-cache-model", model, ", ".join(without))
            return None
        if len(dims) > 1:
            self._warn("semantic cache off: %r has other dimensions on other upstreams (%s)",
                       model, dims)
            return None
        if without:
            self._warn("semantic cache: embedding model %r does not answer on %s: requests "
                       "routed there are never semantic hits", model, ", ".join(without))
        return next(iter(dims))

    @staticmethod
    def _warn(message: str, *args: Any) -> None:
        try:
            os.close(os.open(instance.directory() / _WARNED,
                             os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # another worker said it
        except OSError:
            pass  # no run directory to mark: say it anyway
        log.warning(message, *args)

    def _index_path(self) -> Path:
        return Path(self.settings.cache_dir) / INDEX_FILE

    def _load(self, dims: int) -> SemanticIndex:
        """The saved index with the stored entries it holds, or an empty one; the entries
        it lacks are left in the backlog (added in the background)."""
        assert self.store is not None
        bound = self.settings.semantic_cache_max_entries
        rows, self._cursor = self._read_all(self.store.first)
        saved = VectorIndex.load(self._index_path(), dims)
        if saved is None:
            self._backlog = rows
            return SemanticIndex(dims, bound)
        index = SemanticIndex(dims, bound, saved)
        missing = set(index.restore([(label, scope, key) for label, scope, key, _ in rows]))
        self._backlog = [row for row in rows if row[0] in missing]
        return index

    def _read_all(self, cursor: Any) -> tuple[list, Any]:
        assert self.store is not None
        rows: list = []
        while True:
            batch, after = self.store.read(cursor, BATCH)
            rows.extend(batch)
            if after == cursor:
                return rows, cursor
            cursor = after

    def begin_background(self) -> None:
        if self.index is not None:
            self._poller = gevent.spawn(self._poll)

    def _poll(self) -> None:
        self._index_backlog()
        while True:
            gevent.sleep(POLL_SECONDS)
            self.catch_up()

    def _index_backlog(self) -> None:
        """Add the stored entries the index lacked at start, a batch per loop turn."""
        backlog, self._backlog = self._backlog, []
        for start in range(0, len(backlog), BUILD_BATCH):
            if self.index is None:
                return
            self.index.add(backlog[start:start + BUILD_BATCH])
            gevent.sleep(BUILD_PAUSE)
        if self.index is not None and backlog:
            emit("semantic.entries", len(self.index))
            log.info("semantic cache: %d entries indexed", len(self.index))

    def catch_up(self) -> None:
        """Add what other workers and instances stored since the last read."""
        if self.index is None or self.store is None:
            return
        rows, self._cursor = self._read_all(self._cursor)
        if rows:
            self.index.add(rows)
            emit("semantic.entries", len(self.index))

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.kill(block=False)
        if self.index is not None:
            try:
                self.index.vectors.save(self._index_path())
            except (OSError, RuntimeError) as exc:
                log.warning("semantic cache: index not saved (%s): rebuilt at the next start",
                            exc)
        if self.store is not None:
            self.store.close()

    # --- requests -----------------------------------------------------------------------

    def ask(self, ex: Exchange, upstream: str) -> Asked | None:
        """The request's question and embedding, when it may be a semantic hit (None when
        the tier is off, the request may never be one, or the embedding failed)."""
        if self.index is None:
            return None
        question = question_of(ex, upstream, self.digest)
        if question is None:
            return None
        route = ex.route
        credentials = {name: ex.headers[name] for name in CREDENTIAL_HEADERS
                       if name in ex.headers}
        vector = self.embedder.embed(question.text, route.current if route else None,
                                     credentials)
        if vector is None or vector.size != self.index.dims:
            return None
        return Asked(question, vector)

    def nearest(self, asked: Asked) -> Found | None:
        """The stored question of the same scope at least `threshold` similar."""
        if self.index is None:
            return None
        self.catch_up()
        found = self.index.nearest(asked.question.scope, asked.vector)
        if found is None:
            return None
        emit("semantic.similarity", found.similarity)
        return found if found.similarity >= self.threshold else None

    def forget(self, found: Found) -> None:
        """An entry whose answer left the cache (expired, evicted, purged)."""
        if self.index is not None:
            self.index.remove(found.label)

    def remember(self, asked: Asked, key: str) -> None:
        """The answer stored under `key` answers `asked` and what is like it."""
        if self.index is None or self.store is None:
            return
        label = self.store.add(asked.question.scope, key, asked.vector)
        if label is not None:
            self.index.add([(label, asked.question.scope, key, asked.vector)])
            emit("semantic.entries", len(self.index))
