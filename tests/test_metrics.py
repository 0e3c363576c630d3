"""Metrics and significance tests against references and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ctrzoo.compare.calibration import calibration
from ctrzoo.compare.stats import delong_components, delong_test, holm, paired_bootstrap_mean, paired_bootstrap_weighted
from ctrzoo.metrics import auc, gauc, logloss, rela_impr


def _data(n: int, seed: int, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    a = rng.normal(size=n) + 0.8 * y
    b = a + rng.normal(scale=0.7, size=n) + 0.2 * y
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    return y.astype(np.float32), a, b


@pytest.mark.parametrize("ties", [False, True])
def test_auc_matches_sklearn_with_and_without_ties(ties):
    y, a, _ = _data(5000, 1, ties)
    assert auc(y, a) == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert np.isnan(auc(np.zeros(5), np.arange(5)))


def _brute_force_delong(y, a, b):
    """The O(m n) definition: psi kernel per (positive, negative) pair."""
    def comps(s):
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)
    (aa, v10a, v01a), (ab, v10b, v01b) = comps(a), comps(b)
    m, n = v10a.size, v01a.size
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    S = s10 / m + s01 / n
    return ab - aa, S[0, 0] + S[1, 1] - 2 * S[0, 1], (v10a, v01a)


@pytest.mark.parametrize("ties", [False, True])
def test_delong_variance_matches_brute_force(ties):
    y, a, b = _data(400, 2, ties)
    res = delong_test(y, a, b)
    diff, var, (v10, v01) = _brute_force_delong(y, a, b)
    assert res["diff"] == pytest.approx(diff, abs=1e-12)
    assert res["var"] == pytest.approx(var, abs=1e-9)
    _, fv10, fv01 = delong_components(y, a)
    np.testing.assert_allclose(fv10, v10, atol=1e-12)
    np.testing.assert_allclose(fv01, v01, atol=1e-12)
    assert res["auc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)


def test_delong_identical_and_clearly_different():
    y, a, _ = _data(20000, 3)
    same = delong_test(y, a, a.copy())
    assert same["diff"] == 0 and same["p_value"] == 1.0
    rng = np.random.default_rng(0)
    noise = rng.random(y.size)
    better = delong_test(y, noise, a)
    assert better["p_value"] < 1e-6 and better["ci_low"] > 0


def test_gauc_by_hand_and_skips_one_class_users():
    y = np.array([1, 0, 0, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.1, 0.5, 0.2, 0.8, 0.7, 0.3, 0.4])
    u = np.array(["a", "a", "a", "b", "b", "b", "c", "c"])
    value, info = gauc(y, s, u)
    auc_a, auc_b = 1.0, 0.5  # a: 0.9 > 0.1, 0.5; b: positives 0.2 and 0.8 vs negative 0.7
    assert value == pytest.approx((3 * auc_a + 3 * auc_b) / 6)
    assert info == {"users": 2, "users_skipped": 1, "rows": 6}


def test_logloss_rela_impr_calibration():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.8, 0.2, 0.6, 0.4])
    assert logloss(y, p) == pytest.approx(-np.mean(np.log([0.8, 0.8, 0.6, 0.6])))
    assert rela_impr(0.75, 0.7) == pytest.approx(0.25 / 0.2 - 1)
    rng = np.random.default_rng(0)
    probs = rng.random(100_000) * 0.2
    labels = rng.random(probs.size) < probs
    cal = calibration(labels, probs)
    assert cal["ece"] < 0.01 and cal["ratio"] == pytest.approx(1.0, abs=0.03)
    off = calibration(labels, probs * 2)
    assert off["ratio"] == pytest.approx(2.0, abs=0.1) and off["ece"] > 0.05


def test_bootstrap_is_seeded_and_zero_for_identical():
    d = np.random.default_rng(1).normal(size=2000)
    assert paired_bootstrap_mean(d, 200, seed=7) == paired_bootstrap_mean(d, 200, seed=7)
    assert paired_bootstrap_mean(d, 200, seed=7) != paired_bootstrap_mean(d, 200, seed=8)
    zero = paired_bootstrap_mean(np.zeros(100), 100)
    assert zero["diff"] == 0 and zero["p_value"] == 1.0
    shifted = paired_bootstrap_mean(d + 1.0, 200)
    assert shifted["p_value"] <= 1 / 200 and shifted["ci_low"] > 0.9
    w = np.ones(50)
    same = paired_bootstrap_weighted(np.full(50, 0.7), np.full(50, 0.7), w, 100)
    assert same["diff"] == 0 and same["p_value"] == 1.0


def test_holm():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
