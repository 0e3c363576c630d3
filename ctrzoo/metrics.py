"""Offline CTR metrics, vectorized: AUC (ties averaged), logloss, GAUC, RelaImpr."""

from __future__ import annotations

import numpy as np
import pandas as pd

_EPS = 1e-7


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (what the Mann-Whitney form of AUC needs)."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return (upper - (counts - 1) / 2.0)[inverse]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve in O(n log n); NaN when only one class is present."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def per_user_auc(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> dict[str, np.ndarray]:
    """AUC of every user with both classes: ``user`` codes (from ``pd.factorize``), ``auc``, ``rows``.

    One lexsort by (user, score) and bincounts: tie-aware ranks within each user, no loop over users.
    Also returns ``skipped``: the number of users with a single class.
    """
    y = np.asarray(labels).astype(np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    codes = pd.factorize(np.asarray(users))[0]
    order = np.lexsort((s, codes))
    u, s, y = codes[order], s[order], y[order]
    n_users = int(u.max()) + 1 if u.size else 0
    size = np.bincount(u, minlength=n_users)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    pos_in_user = np.arange(u.size) - start[u] + 1.0
    new_tie = np.ones(u.size, dtype=bool)
    new_tie[1:] = (u[1:] != u[:-1]) | (s[1:] != s[:-1])
    tie = np.cumsum(new_tie) - 1
    rank = (np.bincount(tie, weights=pos_in_user) / np.bincount(tie))[tie]
    P = np.bincount(u, weights=y, minlength=n_users)
    N = size - P
    R = np.bincount(u, weights=rank * y, minlength=n_users)
    ok = (P > 0) & (N > 0)
    auc_u = (R[ok] - P[ok] * (P[ok] + 1) / 2.0) / (P[ok] * N[ok])
    return {"user": np.flatnonzero(ok), "auc": auc_u, "rows": size[ok], "skipped": int((~ok).sum())}


def gauc(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> tuple[float, dict]:
    """Impression-weighted mean of per-user AUC (DIN paper); users with one class only are skipped.

    Returns the GAUC and counts: users used, users skipped, rows in the used users.
    """
    pu = per_user_auc(labels, scores, users)
    w = pu["rows"]
    value = float(np.sum(pu["auc"] * w) / np.sum(w)) if w.size else float("nan")
    return value, {"users": int(w.size), "users_skipped": pu["skipped"], "rows": int(w.sum())}


def rela_impr(auc_model: float, auc_base: float) -> float:
    """RelaImpr (DIN paper): relative AUC lift over random guessing, ``(AUC_m - 0.5)/(AUC_b - 0.5) - 1``."""
    return (auc_model - 0.5) / (auc_base - 0.5) - 1.0
