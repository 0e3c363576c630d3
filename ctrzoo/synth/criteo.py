"""Synthetic Criteo Kaggle log: ``label``, 13 heavy-tailed integer counts ``I1..I13``, 26 hex categoricals."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ctrzoo.synth.common import Synth, log_bucket

NUM_BUCKETS = 32


class CriteoSynth(Synth):
    """Counts are ``floor(exp(N(mu, sigma)))`` (many 0/1, a tail in the thousands), some negative (I2).

    Each count's log bucket is also an id (``card`` = missing) so counts can enter latent interactions.
    """

    header = None
    delimiter = "\t"

    def __init__(self, cfg: dict, seed: int):
        super().__init__(cfg, seed)
        self.numeric = cfg["numeric"]
        self.build_model()

    def cards(self) -> dict[str, int]:
        return {**super().cards(), **dict.fromkeys(self.numeric, NUM_BUCKETS)}

    def features(self, t: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        n = len(t)
        ids, num = {}, {}
        for name, spec in self.numeric.items():
            x = np.minimum(np.floor(np.exp(rng.normal(spec["mu"], spec["sigma"], n))), 2.0**40)
            negative = float(spec.get("negative", 0.0))
            if negative > 0:  # small negative codes, as in I2: mostly -1, rarely -2 or -3
                neg = rng.random(n) < negative
                x[neg] = -1.0 - (rng.random(int(neg.sum())) ** 4 * 3).astype(np.int64)
            x[rng.random(n) < float(spec["missing"])] = np.nan
            num[name] = x
            ids[name] = np.where(np.isnan(x), NUM_BUCKETS, log_bucket(np.nan_to_num(x), buckets=NUM_BUCKETS))
        for name, field in self.fields.items():
            ids[name] = field.sample(rng, n)
        return {"ids": ids, "num": num}

    def table(self, feats: dict[str, Any], label: np.ndarray) -> pa.Table:
        cols = {"label": pa.array(label)}
        for name, x in feats["num"].items():
            cols[name] = pa.array(np.nan_to_num(x).astype(np.int64), mask=np.isnan(x))
        for name, field in self.fields.items():
            cols[name] = field.format(feats["ids"][name])
        return pa.table(cols)
