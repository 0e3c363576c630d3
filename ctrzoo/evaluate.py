"""Score a prepared split with a bundle: its own shards when the specs match, else the raw rows.

Scoring raw rows through the bundle's own encoder is what lets bundles with different feature specs be
evaluated (and compared) on exactly the same rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import torch

from ctrzoo.bundle import Bundle
from ctrzoo.data.dataset import PreparedDataset
from ctrzoo.data.loader import BatchLoader
from ctrzoo.errors import CtrzooError
from ctrzoo.features import FeatureEncoder
from ctrzoo.train.trainer import evaluate_arrays, predict


def score_split(bundle: Bundle, ds: PreparedDataset, split: str = "test", batch_rows: int = 65536):
    """(labels, probabilities, user ids or None) for every row of ``split``, in file order."""
    model = bundle.build_model()
    if bundle.spec.equals(ds.spec):
        loader = BatchLoader(ds, split, batch_rows, shuffle=False, with_user=ds.has_user_id)
        return predict(model, loader)
    if split != "test":
        raise CtrzooError(
            f"bundle {bundle.path} was trained with another feature spec than {ds.path}; only the raw test "
            "rows can be re-encoded with the bundle's spec (use --split test)"
        )
    return score_raw_file(bundle, model, str(ds.raw_path("test")), ds.meta.get("user_id"), batch_rows)


@torch.inference_mode()
def score_raw_file(bundle: Bundle, model, path: str, user_col: str | None, batch_rows: int = 65536):
    encoder = FeatureEncoder(bundle.spec)
    label_col = bundle.spec.label
    labels, probs, users = [], [], []
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        enc = encoder.encode(batch)
        logits = model(torch.from_numpy(enc.sparse), torch.from_numpy(enc.dense), torch.from_numpy(enc.seq))
        probs.append(torch.sigmoid(logits).numpy())
        labels.append(batch.column(label_col).to_numpy(zero_copy_only=False).astype(np.float32))
        if user_col:
            users.append(batch.column(user_col).cast("string").to_numpy(zero_copy_only=False))
    return np.concatenate(labels), np.concatenate(probs), (np.concatenate(users) if users else None)


def evaluate_bundle(bundle: Bundle, ds: PreparedDataset, split: str = "test") -> dict[str, float]:
    return evaluate_arrays(*score_split(bundle, ds, split))
