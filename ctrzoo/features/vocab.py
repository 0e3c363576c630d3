"""Vocabularies: fitted category -> id maps, and the streaming counts they are fitted from.

Ids are local to a field: 0 = missing, 1 = out of vocabulary, 2.. = values by descending training
frequency (ties by value), so frequent values get small ids and the counts double as the id frequencies
that frequency-aware regularization needs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ctrzoo.features.columns import Codes

MISSING_ID = 0
OOV_ID = 1
FIRST_ID = 2


class ValueCounter:
    """Counts values (category strings, or quantized numbers) over many blocks with bounded work: merges are
    vectorized group-bys."""

    def __init__(self, merge_every: int = 4_000_000):
        self._pending: list[pa.Table] = []
        self._pending_len = 0
        self._merged: pa.Table | None = None
        self._merge_every = merge_every

    def update(self, codes: Codes) -> None:
        values, counts = codes.counts()
        self.add_counts(values, counts)

    def add_counts(self, values: pa.Array, counts: np.ndarray) -> None:
        """Merge (value, count) pairs, e.g. one block's or another worker's."""
        if len(values):
            self._pending.append(pa.table({"values": values, "counts": pa.array(counts, pa.int64())}))
            self._pending_len += len(values)
        if self._pending_len >= self._merge_every:
            self._merge()

    def _merge(self) -> None:
        parts = self._pending + ([self._merged] if self._merged is not None else [])
        self._pending, self._pending_len = [], 0
        if parts:
            table = pa.concat_tables(parts)
            self._merged = table.group_by("values").aggregate([("counts", "sum")]).rename_columns(["values", "counts"])

    def result(self) -> tuple[pa.Array, np.ndarray]:
        """All (value, count) pairs, in no particular order."""
        self._merge()
        if self._merged is None:
            return pa.array([], pa.string()), np.zeros(0, dtype=np.int64)
        t = self._merged
        return t.column("values").combine_chunks(), t.column("counts").to_numpy().astype(np.int64)


class Vocabulary:
    """An ordered list of known values with their training counts: plain fitted data (the lookup table built
    from it belongs to the compiled codec, ``ctrzoo.features.compiled.VocabTable``)."""

    __slots__ = ("counts", "values")

    def __init__(self, values: pa.Array, counts: np.ndarray):
        self.values = values.cast(pa.string()) if values.type != pa.string() else values
        self.counts = np.asarray(counts, dtype=np.int64)
        if len(self.values) != len(self.counts):
            raise ValueError("values and counts differ in length")

    @classmethod
    def from_counts(cls, values: pa.Array, counts: np.ndarray, min_count: int,
                    max_size: int | None = None) -> Vocabulary:
        keep = counts >= min_count
        values, counts = values.filter(pa.array(keep)), counts[keep]
        order = pc.sort_indices(
            pa.table({"c": counts, "v": values}), sort_keys=[("c", "descending"), ("v", "ascending")]
        ).to_numpy()
        if max_size is not None:
            order = order[:max_size]
        return cls(values.take(pa.array(order)), counts[order])

    def __len__(self) -> int:
        return len(self.values)

    @property
    def table_size(self) -> int:
        """Embedding rows this field needs: missing, OOV, then one per value."""
        return len(self) + FIRST_ID

    def frequencies(self) -> np.ndarray:
        """Training count per local id (missing and OOV get 0: unknown)."""
        return np.concatenate([np.zeros(FIRST_ID, dtype=np.int64), self.counts])

    def equals(self, other: Vocabulary) -> bool:
        return self.values.equals(other.values) and np.array_equal(self.counts, other.counts)


def hash_lookup(codes: Codes, buckets: int) -> np.ndarray:
    """Local ids for a hashed feature: 0 = missing, ``2 + stable_hash % buckets`` otherwise."""
    uniques = codes.uniques.to_numpy(zero_copy_only=False)
    hashed = pd.util.hash_array(uniques.astype(object), categorize=False) % np.uint64(buckets)
    return per_row(codes, hashed.astype(np.int64) + FIRST_ID, MISSING_ID)


def per_row(codes: Codes, mapped_uniques: np.ndarray, missing: int) -> np.ndarray:
    """Per-row ids from per-unique ids; null uniques and index -1 get ``missing``."""
    mapped = np.where(codes.uniques.is_valid().to_numpy(zero_copy_only=False), mapped_uniques, missing)
    table = np.concatenate([[missing], mapped]).astype(np.int64)
    return table[codes.indices + 1]
