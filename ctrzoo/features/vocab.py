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

MISSING_ID = 0
OOV_ID = 1
FIRST_ID = 2


class ValueCounter:
    """Counts category strings over many blocks with bounded work: merges are vectorized group-bys."""

    def __init__(self, merge_every: int = 4_000_000):
        self._pending: list[pa.StructArray] = []
        self._pending_len = 0
        self._merged: pa.Table | None = None
        self._merge_every = merge_every

    def update(self, strings: pa.Array) -> None:
        vc = pc.value_counts(strings.drop_null()) if strings.null_count else pc.value_counts(strings)
        if len(vc):
            self._pending.append(vc)
            self._pending_len += len(vc)
        if self._pending_len >= self._merge_every:
            self._merge()

    def add_counts(self, values: pa.Array, counts: np.ndarray) -> None:
        """Merge counts computed elsewhere (e.g. another worker's)."""
        self._pending.append(pa.StructArray.from_arrays([values, pa.array(counts, pa.int64())], ["values", "counts"]))
        self._pending_len += len(values)

    def _merge(self) -> None:
        parts = [pa.table({"values": s.field("values"), "counts": s.field("counts")}) for s in self._pending]
        if self._merged is not None:
            parts.append(self._merged)
        self._pending, self._pending_len = [], 0
        if not parts:
            return
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
    """An ordered list of known values with their training counts; lookups are vectorized."""

    def __init__(self, values: pa.Array, counts: np.ndarray):
        self.values = values.cast(pa.string()) if values.type != pa.string() else values
        self.counts = np.asarray(counts, dtype=np.int64)
        if len(self.values) != len(self.counts):
            raise ValueError("values and counts differ in length")
        self._index: pd.Index | None = None

    @classmethod
    def from_counts(cls, values: pa.Array, counts: np.ndarray, min_count: int, max_size: int | None = None) -> Vocabulary:
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

    def lookup(self, strings: pa.Array) -> np.ndarray:
        """Local ids (int64) for canonical category strings; null -> 0, unknown -> 1."""
        if self._index is None:
            self._index = pd.Index(self.values.to_numpy(zero_copy_only=False), dtype=object)
        return _map_through_dictionary(strings, self._index.get_indexer, offset=FIRST_ID, unknown=OOV_ID)

    def frequencies(self) -> np.ndarray:
        """Training count per local id (missing and OOV get 0: unknown)."""
        return np.concatenate([np.zeros(FIRST_ID, dtype=np.int64), self.counts])

    def equals(self, other: Vocabulary) -> bool:
        return self.values.equals(other.values) and np.array_equal(self.counts, other.counts)


def hash_lookup(strings: pa.Array, buckets: int) -> np.ndarray:
    """Local ids for a hashed feature: 0 = missing, ``2 + stable_hash % buckets`` otherwise."""

    def bucket_of(uniques: np.ndarray) -> np.ndarray:
        return (pd.util.hash_array(uniques, categorize=False) % np.uint64(buckets)).astype(np.int64)

    return _map_through_dictionary(strings, bucket_of, offset=FIRST_ID, unknown=None)


def _map_through_dictionary(strings: pa.Array, map_uniques, offset: int, unknown: int | None) -> np.ndarray:
    """Map each distinct value once (cheap when values repeat, as categories do), then gather."""
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    encoded = pc.dictionary_encode(strings)
    uniques = encoded.dictionary.to_numpy(zero_copy_only=False)
    mapped = np.asarray(map_uniques(uniques), dtype=np.int64)
    if unknown is not None:
        mapped = np.where(mapped < 0, unknown - offset, mapped)
    table = np.concatenate([[MISSING_ID], mapped + offset]).astype(np.int64)
    idx = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
    return table[idx]
