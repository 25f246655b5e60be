"""The nearest stored question of the same scope: an approximate-nearest-neighbour index.

`VectorIndex` is the only place that knows the ANN library (usearch, HNSW graphs, cosine
metric): swapping the library is one class. `SemanticIndex` keeps, per worker, every
entry's label, scope and exact cache key beside the vectors, and answers "the most
similar question of this scope": a scope with at most `EXACT_LIMIT` entries (most of
them: a conversation's later turns, a tenant's few questions) is compared exactly
against all of its vectors; a larger one asks the graph for the `SEARCH_COUNT` nearest
of all scopes and keeps those of its own (an ANN miss is a plain miss, never a wrong
hit: the scope always matches exactly). Labels grow with age: when the index holds
`max_entries`, the smallest (oldest) go first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from usearch.index import Index

EXACT_LIMIT = 256   # scopes up to this size are compared exactly (a 256 x dims product)
SEARCH_COUNT = 16   # neighbours asked of the graph for a larger scope
CONNECTIVITY = 16   # HNSW: edges per node
EXPANSION_ADD = 32  # HNSW: candidates considered when adding (lower: faster inserts)
EXPANSION_SEARCH = 128  # HNSW: candidates considered when searching (recall)
# Vectors are kept as half floats: half the memory and faster distances, similarities
# within 1e-3 (bench/semantic_bench.py)
STORED_AS = np.float16


class VectorIndex:
    """Unit vectors under integer labels; cosine similarity (usearch, HNSW)."""

    def __init__(self, dims: int):
        self.dims = dims
        self._index = Index(ndim=dims, metric="cos", dtype=STORED_AS,
                            connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD,
                            expansion_search=EXPANSION_SEARCH)

    def __len__(self) -> int:
        return len(self._index)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add(labels, vectors, threads=1)

    def remove(self, label: int) -> None:
        self._index.remove(label)

    def labels(self) -> np.ndarray:
        return np.asarray(self._index.keys, dtype=np.uint64)

    def vectors(self, labels: list[int]) -> np.ndarray:
        return np.asarray(self._index.get(np.asarray(labels, dtype=np.uint64)),
                          dtype=np.float32).reshape(len(labels), self.dims)

    def nearest(self, vector: np.ndarray, count: int) -> list[tuple[int, float]]:
        """Up to `count` (label, cosine similarity), most similar first."""
        matches = self._index.search(vector, count, threads=1)
        return [(int(key), 1.0 - float(distance))
                for key, distance in zip(matches.keys, matches.distances, strict=False)]

    def memory(self) -> int:
        return int(self._index.memory_usage)

    def save(self, path: Path) -> None:
        """Written whole beside, then renamed over `path` (a reader never sees half)."""
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        self._index.save(str(partial))
        os.replace(partial, path)

    @classmethod
    def load(cls, path: Path, dims: int) -> "VectorIndex | None":
        """The index saved at `path`; None when it is missing, unreadable or of other
        dimensions (then it is rebuilt from the stored entries)."""
        if not path.exists():
            return None
        index = cls(dims)
        try:
            index._index.load(str(path))
        except (OSError, RuntimeError, ValueError):
            return None
        if index._index.ndim != dims:
            return None
        return index


@dataclass(frozen=True)
class Found:
    label: int
    key: str           # the exact cache key of the stored answer
    similarity: float


Row = tuple[int, str, str, np.ndarray]  # label, scope, exact key, unit vector


class SemanticIndex:
    """Per worker: the semantic entries (label -> scope, key) and their vectors."""

    def __init__(self, dims: int, max_entries: int, vectors: VectorIndex | None = None):
        self.dims = dims
        self.max_entries = max_entries
        self.vectors = vectors or VectorIndex(dims)
        self._entries: dict[int, tuple[str, str]] = {}  # label -> (scope, key), oldest first
        self._scopes: dict[str, dict[int, None]] = {}   # scope -> its labels

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, rows: list[Row]) -> None:
        """Entries, oldest first; labels already known are skipped."""
        rows = [row for row in rows if row[0] not in self._entries and row[3].size == self.dims]
        if not rows:
            return
        self.vectors.add(np.asarray([row[0] for row in rows], dtype=np.uint64),
                         np.stack([row[3] for row in rows]).astype(np.float32))
        for label, scope, key, _vector in rows:
            self._adopt(label, scope, key)
        while len(self._entries) > self.max_entries:
            self.remove(next(iter(self._entries)))

    def restore(self, entries: list[tuple[int, str, str]]) -> list[int]:
        """After loading a saved index: the stored entries (label, scope, key), oldest
        first, whose vectors it holds are adopted, its other vectors dropped; returns the
        labels of the entries it lacks (to be added with their vectors)."""
        held = {int(label) for label in self.vectors.labels()}
        missing = []
        for label, scope, key in entries:
            if label in held:
                self._adopt(label, scope, key)
            else:
                missing.append(label)
        for label in held.difference(self._entries):
            self.vectors.remove(label)
        return missing

    def _adopt(self, label: int, scope: str, key: str) -> None:
        self._entries[label] = (scope, key)
        self._scopes.setdefault(scope, {})[label] = None

    def remove(self, label: int) -> None:
        entry = self._entries.pop(label, None)
        if entry is None:
            return
        members = self._scopes[entry[0]]
        members.pop(label, None)
        if not members:
            del self._scopes[entry[0]]
        self.vectors.remove(label)

    def nearest(self, scope: str, vector: np.ndarray) -> Found | None:
        """The most similar entry of `scope`, or None when the scope has none."""
        members = self._scopes.get(scope)
        if not members:
            return None
        if len(members) <= EXACT_LIMIT:
            labels = list(members)
            similarities = self.vectors.vectors(labels) @ vector
            best = int(np.argmax(similarities))
            label, similarity = labels[best], float(similarities[best])
        else:
            found = next(((label, similarity) for label, similarity in
                          self.vectors.nearest(vector, min(SEARCH_COUNT, len(self)))
                          if label in members), None)
            if found is None:
                return None
            label, similarity = found
        return Found(label, self._entries[label][1], min(1.0, similarity))
