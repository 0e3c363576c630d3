"""Synthetic item/user vectors with known structure, for index benchmarks and tests.

``zipf_factorized``: the vectors a matrix factorization of a Zipf click log gives. Users with a few
interest topics click items of those topics, items drawn by a Zipf popularity; the (log-scaled) click
matrix is factorized by a truncated SVD, ``items = V sqrt(S)``, ``users = U sqrt(S)``. Item norms then grow
with popularity, the case where inner-product search differs most from cosine search.

``lognormal_clustered``: directions loosely clustered around many centres times log-normal norms,
independent of direction. With these defaults the Möbius graph is the slower one (about half the QPS of
inner-product HNSW at recall 0.95 on 50k items, and it stops near 0.98); with tight clusters (``spread``
0.5, 200 centres) it is the faster one again: which index wins depends on the data.
"""

from __future__ import annotations

import numpy as np
import torch


def zipf_factorized(n_items: int = 200_000, n_users: int = 100_000, dim: int = 64, clicks: int | None = None,
                    topics: int = 500, interests: int = 3, explore: float = 0.2, zipf: float = 1.0,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(item vectors ``[n_items, dim]``, user vectors ``[n_users, dim]``), float32; ``clicks`` defaults to 25
    per item."""
    rng = np.random.default_rng(seed)
    clicks = clicks or 25 * n_items
    topic = rng.integers(0, topics, n_items)
    weight = np.empty(n_items)
    weight[rng.permutation(n_items)] = 1.0 / np.arange(1, n_items + 1) ** zipf  # popularity by random rank
    order = np.argsort(topic, kind="stable")
    starts = np.searchsorted(topic[order], np.arange(topics + 1))
    cum = np.cumsum(weight[order])
    user_topics = rng.integers(0, topics, (n_users, interests))
    activity = 1.0 / np.arange(1, n_users + 1) ** 0.8
    user = rng.choice(n_users, clicks, p=activity / activity.sum())
    t = np.where(rng.random(clicks) < explore, rng.integers(0, topics, clicks),
                 user_topics[user, rng.integers(0, interests, clicks)])
    empty = starts[t] == starts[t + 1]
    t = np.where(empty, topic[order[0]], t)
    lo = np.where(starts[t] > 0, cum[np.maximum(starts[t] - 1, 0)], 0.0)
    hi = cum[starts[t + 1] - 1]
    pos = np.searchsorted(cum, lo + rng.random(clicks) * (hi - lo), side="right")
    item = order[np.clip(pos, starts[t], starts[t + 1] - 1)]
    key, counts = np.unique(user.astype(np.int64) * n_items + item, return_counts=True)
    rows, cols = key // n_items, key % n_items
    m = torch.sparse_coo_tensor(np.stack([rows, cols]), np.log1p(counts).astype(np.float32), (n_users, n_items),
                                check_invariants=False)
    torch.manual_seed(seed)
    u, s, v = torch.svd_lowrank(m.coalesce(), q=dim, niter=4)
    root = s.sqrt()
    return (v * root).numpy().astype(np.float32), (u * root).numpy().astype(np.float32)


def lognormal_clustered(n_items: int = 200_000, n_users: int = 20_000, dim: int = 64, clusters: int = 1000,
                        spread: float = 2.0, sigma: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(item vectors, query vectors): clustered unit directions, log-normal norms for the items."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def around(n: int) -> np.ndarray:
        x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    items = around(n_items) * rng.lognormal(0.0, sigma, (n_items, 1))
    return items.astype(np.float32), around(n_users).astype(np.float32)
