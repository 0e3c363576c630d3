"""The encoded batch: the three named inputs every model, exporter and runtime takes.

* ``sparse`` int64 ``[B, n_sparse]``: one id per categorical field, offset into the shared table;
* ``dense`` float32 ``[B, n_dense]``: transformed numeric features;
* ``seq`` int64 ``[B, n_seq, L]``: behaviour sequences, right-padded with 0 (the padding row).

Their names and dtypes are defined here once: ONNX inputs, TVM buffers and runtime checks read them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctrzoo.features.layout import TableLayout

INPUT_DTYPES: dict[str, type[np.generic]] = {"sparse": np.int64, "dense": np.float32, "seq": np.int64}
INPUT_NAMES: tuple[str, ...] = tuple(INPUT_DTYPES)  # the order of ``forward(sparse, dense, seq)``


@dataclass
class EncodedBatch:
    """``sparse`` int64 [B, n_sparse], ``dense`` float32 [B, n_dense], ``seq`` int64 [B, n_seq, L]."""

    sparse: np.ndarray
    dense: np.ndarray
    seq: np.ndarray

    def __len__(self) -> int:
        return self.sparse.shape[0]

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"sparse": self.sparse, "dense": self.dense, "seq": self.seq}

    @classmethod
    def concat(cls, parts: list[EncodedBatch]) -> EncodedBatch:
        """Row-wise concatenation (parts share one layout)."""
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in INPUT_NAMES))


def empty_batch(layout: TableLayout, n: int) -> EncodedBatch:
    """An uninitialized batch of ``n`` rows (sequences zero: padding) for an encoder to fill."""
    return EncodedBatch(np.empty((n, layout.n_sparse), dtype=np.int64),
                        np.empty((n, layout.n_dense), dtype=np.float32),
                        np.zeros((n, layout.n_seq, layout.seq_len), dtype=np.int64))


def random_batch(layout: TableLayout, n: int, seed: int = 0) -> EncodedBatch:
    """Random inputs with every id inside its field's table and sequences partly padded: for tracing an
    export, warming a runtime and parity checks (no vocabulary needed)."""
    rng = np.random.default_rng(seed)
    sparse = np.stack([f.offset + rng.integers(0, f.size, n) for f in layout.sparse], axis=1).astype(np.int64)
    dense = rng.normal(size=(n, layout.n_dense)).astype(np.float32)
    seq = np.zeros((n, layout.n_seq, layout.seq_len), dtype=np.int64)
    for k, s in enumerate(layout.seq):  # ids of the table the slot uses (a shared field's or a bag's own)
        ids = s.offset + rng.integers(0, s.size, (n, layout.seq_len))
        lengths = rng.integers(0, layout.seq_len + 1, n)
        seq[:, k, :] = np.where(np.arange(layout.seq_len)[None, :] < lengths[:, None], ids, 0)
    return EncodedBatch(sparse.reshape(n, layout.n_sparse), dense, seq)
