"""Calibration: is a predicted 3% really a 3% click rate? Mean ratio, ECE and the reliability curve."""

from __future__ import annotations

import numpy as np


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> dict:
    """Equal-mass bins (CTR predictions crowd near 0, so equal-width bins would be mostly empty).

    Returns mean predicted and observed CTR, their ratio, the expected calibration error (row-weighted
    mean |predicted - observed| over bins) and the per-bin curve for a reliability plot.
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    order = np.argsort(p, kind="stable")
    groups = np.array_split(order, min(bins, max(p.size, 1)))
    pred = np.array([p[g].mean() for g in groups if g.size])
    obs = np.array([y[g].mean() for g in groups if g.size])
    size = np.array([g.size for g in groups if g.size])
    ece = float(np.sum(size * np.abs(pred - obs)) / size.sum()) if size.size else float("nan")
    mean_pred, mean_obs = float(p.mean()), float(y.mean())
    return {
        "mean_predicted": mean_pred,
        "observed_ctr": mean_obs,
        "ratio": mean_pred / mean_obs if mean_obs > 0 else float("nan"),
        "ece": ece,
        "curve": {"predicted": pred.tolist(), "observed": obs.tolist(), "rows": size.tolist()},
    }
