"""The semantic index in process, on usearch itself: the nearest entry of the same scope
only, exact for small scopes and through the graph for large ones, the bound, and a saved
index brought up to date with the stored entries."""

from __future__ import annotations

import numpy as np

from bridge.semantic_cache.index import EXACT_LIMIT, SemanticIndex, VectorIndex

DIMS = 64


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(DIMS).astype(np.float32)
    return vector / np.linalg.norm(vector)


def near(vector: np.ndarray, seed: int, noise: float = 0.05) -> np.ndarray:
    moved = vector + noise * unit(seed)
    return (moved / np.linalg.norm(moved)).astype(np.float32)


def test_only_entries_of_the_same_scope_are_found():
    index = SemanticIndex(DIMS, 100)
    index.add([(1, "tenant-a", "key-a", unit(1)), (2, "tenant-b", "key-b", unit(2))])
    found = index.nearest("tenant-a", near(unit(1), 9))
    assert found is not None and found.key == "key-a" and found.similarity > 0.95
    # the same question, in a scope holding only another question: that one, far away
    other = index.nearest("tenant-b", near(unit(1), 9))
    assert other is not None and other.key == "key-b" and other.similarity < 0.6
    assert index.nearest("tenant-c", unit(1)) is None


def test_a_large_scope_is_searched_through_the_graph():
    index = SemanticIndex(DIMS, 10_000)
    size = EXACT_LIMIT * 4
    index.add([(label, "faq", f"key-{label}", unit(label)) for label in range(1, size + 1)])
    index.add([(label, "other", f"other-{label}", unit(label - size))
               for label in range(size + 1, size + 50)])  # the same vectors, another scope
    for label in (3, 500, size):
        found = index.nearest("faq", near(unit(label), label + 7))
        assert found is not None and found.key == f"key-{label}"


def test_the_oldest_entries_go_first_beyond_the_bound():
    index = SemanticIndex(DIMS, 3)
    index.add([(label, "s", f"key-{label}", unit(label)) for label in range(1, 6)])
    assert len(index) == 3 and len(index.vectors) == 3
    assert index.nearest("s", unit(1)).key != "key-1"
    assert index.nearest("s", unit(5)).key == "key-5"


def test_a_saved_index_is_brought_up_to_date(tmp_path):
    index = SemanticIndex(DIMS, 100)
    index.add([(label, "s", f"key-{label}", unit(label)) for label in range(1, 4)])
    index.vectors.save(tmp_path / "saved")
    loaded = VectorIndex.load(tmp_path / "saved", DIMS)
    assert loaded is not None and len(loaded) == 3
    again = SemanticIndex(DIMS, 100, loaded)
    # the store now lacks entry 1 (evicted) and holds entry 4 (stored after the save)
    missing = again.restore([(2, "s", "key-2"), (3, "s", "key-3"), (4, "s", "key-4")])
    assert missing == [4]
    again.add([(4, "s", "key-4", unit(4))])
    assert len(again) == len(again.vectors) == 3
    assert again.nearest("s", unit(1)).key != "key-1"
    assert again.nearest("s", unit(4)).key == "key-4"


def test_a_missing_or_foreign_file_is_no_index(tmp_path):
    assert VectorIndex.load(tmp_path / "absent", DIMS) is None
    (tmp_path / "junk").write_bytes(b"not an index")
    assert VectorIndex.load(tmp_path / "junk", DIMS) is None
