"""Recall measures: of an index against exact search, and of a model on held-out clicks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ctrzoo.retrieval.index import VectorIndex, build_index


def overlap_recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the exact top-k (``truth [q, k]``, -1 = none) that the index returned (``found [q, k']``).

    The recall@k of approximate-nearest-neighbour benchmarks: 1.0 means the exact answer, ties aside.
    """
    valid = truth >= 0
    if not valid.any():
        return 1.0
    hit = (truth[:, :, None] == found[:, None, :]).any(axis=2) & valid
    return float(hit.sum() / valid.sum())


def exact_top(item_vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product (a flat index): the ground truth."""
    return build_index(item_vectors, "flat-ip").search(queries, k)


def click_recall(index: VectorIndex, user_vectors: np.ndarray, targets: np.ndarray, ks: Sequence[int],
                 value: int | None = None) -> dict[str, float]:
    """recall@K on held-out clicks: share of (user, clicked item) rows whose item is in the user's top K.

    ``targets`` are catalogue positions of the clicked items; rows with target -1 (item not in the
    catalogue) should be filtered out by the caller.
    """
    if len(targets) == 0:
        return {f"recall@{k}": float("nan") for k in ks}
    _, pos = index.search(user_vectors, max(ks), value)
    hits = pos == targets[:, None]
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), np.iinfo(np.int64).max)
    return {f"recall@{k}": float((first < k).mean()) for k in ks}


def popularity_recall(train_counts: np.ndarray, targets: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """The same recall for "the K most clicked items of the training split, for everyone": a floor."""
    if len(targets) == 0:
        return {f"recall@{k}": float("nan") for k in ks}
    rank = np.empty(len(train_counts), dtype=np.int64)
    rank[np.argsort(-train_counts, kind="stable")] = np.arange(len(train_counts))
    r = rank[targets]
    return {f"recall@{k}": float((r < k).mean()) for k in ks}
