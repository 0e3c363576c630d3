"""The one runtime interface: ``predict(batch) -> np.ndarray`` of click probabilities, shape ``[B]``; for a
multi-task bundle ``[B, T]``, column ``t`` the probability of ``bundle.tasks[t]``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ctrzoo.bundle import Bundle
from ctrzoo.errors import CtrzooError
from ctrzoo.features import INPUT_DTYPES, INPUT_NAMES, EncodedBatch, TableLayout, random_batch


def as_arrays(batch: Any, layout: TableLayout) -> dict[str, np.ndarray]:
    """EncodedBatch, a loader Batch (torch) or a dict of arrays -> checked numpy arrays of the layout."""
    if isinstance(batch, EncodedBatch):
        arrays = batch.as_dict()
    elif isinstance(batch, dict):
        arrays = batch
    elif all(hasattr(batch, k) for k in INPUT_NAMES):
        arrays = {k: getattr(batch, k) for k in INPUT_NAMES}
    else:
        raise CtrzooError(f"predict() takes an EncodedBatch or a dict with {INPUT_NAMES}, got {type(batch).__name__}")
    out = {}
    for k, dtype in INPUT_DTYPES.items():
        v = arrays.get(k)
        if v is None and k == "seq" and layout.n_seq == 0:
            v = np.zeros((len(out["sparse"]), 0, 0), dtype=np.int64)
        if v is None:
            raise CtrzooError(f"predict(): missing input {k!r}")
        v = v.numpy() if hasattr(v, "numpy") else np.asarray(v)
        out[k] = np.ascontiguousarray(v, dtype=dtype)
    n = out["sparse"].shape[0]
    want = {"sparse": (n, layout.n_sparse), "dense": (n, layout.n_dense), "seq": (n, layout.n_seq, layout.seq_len)}
    for k, shape in want.items():
        if out[k].shape != shape and not (k == "seq" and layout.n_seq == 0 and out[k].size == 0):
            raise CtrzooError(f"predict(): input {k!r} has shape {out[k].shape}, the bundle expects {shape}")
    return out


SINGLE_TASK_ONLY = ("fused", "tvm")  # backends whose graphs end in one score per row


def supports(bundle: Bundle, backend: str) -> bool:
    """Whether ``backend`` can serve ``bundle``: every backend serves a single-task model; ``fused`` and ``tvm``
    no multi-task one. A default choice of backends skips the others (``ctrzoo bench inference``)."""
    return not (bundle.tasks and backend in SINGLE_TASK_ONLY)


def require_single_task(bundle: Bundle, backend: str) -> None:
    """A CtrzooError naming ``backend`` and the model when ``bundle`` is multi-task (``[B, T]`` scores)."""
    if bundle.tasks:
        raise CtrzooError(f"the {backend} backend supports single-task models only; use onnxruntime (or torch): "
                          f"{bundle.path} is model {bundle.model_name!r} with tasks {', '.join(bundle.tasks)}")


class Predictor(ABC):
    """A loaded model behind one method; backends differ only in how they compute it.

    ``predict`` gives ``[B]`` for a single-task bundle and ``[B, T]`` (``T = len(tasks)``) for a multi-task one."""

    backend: str = "?"

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.layout = bundle.codec.layout
        self.tasks = bundle.tasks

    def predict(self, batch: Any) -> np.ndarray:
        arrays = as_arrays(batch, self.layout)
        if arrays["sparse"].shape[0] == 0:
            return np.zeros((0, len(self.tasks)) if self.tasks else 0, dtype=np.float32)
        return self._predict(arrays)

    @abstractmethod
    def _predict(self, arrays: dict[str, np.ndarray]) -> np.ndarray: ...

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 100)) -> None:
        for n in batch_sizes:
            self._predict(random_batch(self.layout, n, seed=n).as_dict())
