"""Score a prepared split with a bundle: its own shards when the specs match, else the raw rows.

Scoring raw rows through the bundle's own encoder is what lets bundles with different feature specs be
evaluated (and compared) on exactly the same rows. A bundle of another dataset kind (a Criteo model on
Avazu data) is refused up front, in one line, instead of failing on a missing column. Scoring runs on
``device`` (``ctrzoo.devices``; default CPU) in fp32; the results come back as NumPy arrays.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctrzoo.bundle import Bundle
from ctrzoo.data.dataset import PreparedDataset, iter_batches, parquet_file
from ctrzoo.data.loader import BatchLoader
from ctrzoo.devices import model_device, resolve_device
from ctrzoo.errors import CtrzooError
from ctrzoo.train.trainer import evaluate_arrays, predict


def score_split(bundle: Bundle, ds: PreparedDataset, split: str = "test", batch_rows: int = 65536,
                device: str = "cpu"):
    """(labels, probabilities, user ids or None) for every row of ``split``, in file order; a multi-task
    bundle's labels and probabilities are ``[N, T]`` (its tasks, ``Bundle.tasks``), else ``[N]``."""
    check_bundle_fits(bundle, ds)
    where = resolve_device(device)
    model = bundle.build_model().to(where)
    label = bundle.spec.label  # the label it learned (``ctrzoo train --label``)
    tasks = bundle.tasks
    if bundle.spec.equals(replace(ds.spec, label=label)):
        # a multi-task bundle reads its tasks' labels (one this dataset lacks: DatasetError listing its labels)
        chosen = list(tasks) if tasks else (label if label in ds.labels else None)
        loader = BatchLoader(ds, split, batch_rows, shuffle=False, with_user=ds.has_user_id,
                             label=chosen, pin_memory=where.type == "cuda")
        return predict(model, loader)
    if split != "test":
        raise CtrzooError(
            f"bundle {bundle.path} was trained with another feature spec than {ds.path}; only the raw test "
            "rows can be re-encoded with the bundle's spec (use --split test)"
        )
    return score_raw_file(bundle, model, str(ds.raw_path("test")), ds.meta.user_id, batch_rows)


def check_bundle_fits(bundle: Bundle, ds: PreparedDataset) -> None:
    """Refuse a bundle trained on another kind of data, or whose raw columns the dataset lacks."""
    trained = bundle.meta.data
    if trained.fingerprint == ds.fingerprint or bundle.spec.equals(ds.spec):
        return
    kind, data_kind = trained.kind, ds.meta.kind
    if kind and data_kind and kind != data_kind:
        raise CtrzooError(f"bundle {bundle.path} was trained on {kind} data, {ds.path} is {data_kind} data "
                          f"(fingerprint {ds.fingerprint}, the bundle's {trained.fingerprint}): "
                          f"evaluate it on data prepared from {kind} logs")
    raw = ds.meta.raw.get("test")
    if raw:
        names = set(parquet_file(ds.path / raw).schema_arrow.names)
        missing = [c for c in [bundle.spec.label, *bundle.spec.raw_columns()] if c not in names]
        if missing:
            raise CtrzooError(f"bundle {bundle.path} reads raw columns {', '.join(missing)} that {ds.path} "
                              f"does not have: it was trained on other data ({trained.fingerprint})")


@torch.inference_mode()
def score_raw_file(bundle: Bundle, model, path: str | Path, user_col: str | None, batch_rows: int = 65536):
    """Encode the raw rows of ``path`` with the bundle's codec and score them on the model's device. The raw
    rows hold each label decided, under its name; a multi-task bundle gets ``[N, T]`` labels and scores."""
    codec = bundle.codec
    device = model_device(model)
    tasks = bundle.tasks
    label_cols = list(tasks) or [bundle.spec.label]
    names = set(parquet_file(path).schema_arrow.names)
    missing = [c for c in label_cols if c not in names]
    if missing:
        raise CtrzooError(f"bundle {bundle.path} learned label(s) {', '.join(missing)} that the raw rows {path} "
                          f"do not have (their columns: {', '.join(sorted(names))})")
    labels, probs, users = [], [], []
    for batch in iter_batches(path, batch_rows):
        enc = codec.encode(batch)
        logits = model(*(torch.from_numpy(a).to(device) for a in (enc.sparse, enc.dense, enc.seq)))
        probs.append(torch.sigmoid(logits).cpu().numpy())
        y = np.stack([batch.column(c).to_numpy(zero_copy_only=False).astype(np.float32) for c in label_cols], 1)
        labels.append(y if tasks else y[:, 0])
        if user_col:
            users.append(batch.column(user_col).cast("string").to_numpy(zero_copy_only=False))
    if not labels:  # an empty split: no rows, not an error here
        shape = (0, len(tasks)) if tasks else (0,)
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32), (np.zeros(0, object) if user_col else None)
    return np.concatenate(labels), np.concatenate(probs), (np.concatenate(users) if users else None)


def evaluate_bundle(bundle: Bundle, ds: PreparedDataset, split: str = "test", device: str = "cpu") -> dict[str, Any]:
    """AUC, logloss (GAUC with users) of ``split``; a multi-task bundle's per task too (``evaluate_arrays``)."""
    return evaluate_arrays(*score_split(bundle, ds, split, device=device), bundle.tasks)
