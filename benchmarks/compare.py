"""DeLong's paired test on 10M scored rows vs scikit-learn's roc_auc_score on the same arrays.

    python benchmarks/compare.py [--rows 10000000]

The baseline computes only the two AUCs; DeLong computes both AUCs, their covariance, the CI and p.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    from sklearn.metrics import roc_auc_score

    from ctrzoo.compare.stats import delong_test

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    y = (rng.random(a.rows) < 0.2).astype(np.float32)
    s1 = (rng.normal(size=a.rows) + y).astype(np.float32)
    s2 = (s1 + rng.normal(scale=0.5, size=a.rows) + 0.05 * y).astype(np.float32)

    t0 = time.perf_counter()
    base = (roc_auc_score(y, s1), roc_auc_score(y, s2))
    t_base = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = delong_test(y, s1, s2)
    t_delong = time.perf_counter() - t0
    assert abs(res["auc_a"] - base[0]) < 1e-9 and abs(res["auc_b"] - base[1]) < 1e-9
    print(f"rows: {a.rows:,d}")
    print(f"sklearn roc_auc_score x2:        {t_base:6.2f} s")
    print(f"ctrzoo delong_test (AUCs+var+p): {t_delong:6.2f} s  ({t_delong / t_base:.2f}x the baseline's time)")
    print(f"diff {res['diff']:+.5f}  95% CI [{res['ci_low']:+.5f}, {res['ci_high']:+.5f}]  p {res['p_value']:.3g}")
    print(f"goal: DeLong on {a.rows:,d} rows under 30 s -> {'met' if t_delong < 30 else 'NOT met'}")


if __name__ == "__main__":
    main()
