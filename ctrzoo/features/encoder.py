"""One vectorized encoder from raw values to the fixed tensor layout, used offline and online alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ctrzoo.errors import SpecError
from ctrzoo.features.columns import (
    Codes,
    as_table,
    category_codes,
    check_columns,
    numeric_values,
    sequence_lists,
)
from ctrzoo.features.spec import Categorical, FeatureSpec, Numeric, SequenceFeature, source_of
from ctrzoo.features.transforms import derive, numeric_transform
from ctrzoo.features.vocab import ValueCounter, Vocabulary, hash_lookup


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


def _category_codes(table: pa.Table, f: Categorical) -> Codes:
    derivation = (lambda uniques: derive(f.derive, uniques, f.name)) if f.derive else None
    return category_codes(table.column(source_of(f)), f.name, derivation)


def _numeric_column(table: pa.Table, f: Numeric) -> np.ndarray:
    """Transformed values, NaN where missing (filled later, after standardization)."""
    raw = numeric_values(derive(f.derive, table.column(source_of(f)).combine_chunks(), f.name), f.name)
    return numeric_transform(f.transform)(raw)


def _sequence_column(table: pa.Table, f: SequenceFeature) -> pa.ListArray:
    return sequence_lists(table.column(source_of(f)).combine_chunks(), f.sep, f.name)


class SpecFitter:
    """Accumulates vocabulary counts and numeric statistics over training blocks, then fits the spec.

    Sequence items count towards the vocabulary of the field they share, so history ids that never
    appear as candidates are still known.
    """

    def __init__(self, spec: FeatureSpec):
        self.spec = spec.unfitted()
        self._counters = {c.name: ValueCounter() for c in self.spec.categorical if not c.hash_buckets}
        self._moments = {n.name: np.zeros(3) for n in self.spec.numeric}  # count, sum, sum of squares
        self.rows = 0

    def update(self, data: Any) -> None:
        table = as_table(data, self.spec.raw_columns())
        self.rows += table.num_rows
        for c in self.spec.categorical:
            if c.name in self._counters:
                self._counters[c.name].update(_category_codes(table, c))
        for s in self.spec.sequence:
            if s.shares in self._counters:
                self._counters[s.shares].update(category_codes(pc.list_flatten(_sequence_column(table, s)), s.name))
        for n in self.spec.numeric:
            x = _numeric_column(table, n)
            x = x[~np.isnan(x)]
            self._moments[n.name] += (x.size, x.sum(), np.square(x).sum())

    def merge(self, other: SpecFitter) -> None:
        """Fold another fitter's counts in (per-file or per-worker counting)."""
        self.rows += other.rows
        for name, counter in other._counters.items():
            values, counts = counter.result()
            self._counters[name].add_counts(values, counts)
        for name, m in other._moments.items():
            self._moments[name] += m

    def finalize(self) -> FeatureSpec:
        spec = self.spec.unfitted()
        for c in spec.categorical:
            if c.name in self._counters:
                values, counts = self._counters[c.name].result()
                frequent = int((counts >= c.min_count).sum())
                if c.max_vocab is not None and c.overflow == "hash" and frequent > c.max_vocab:
                    c.hash_buckets = c.max_vocab  # cardinality exploded: hash instead of a vocabulary
                    continue
                c.vocab = Vocabulary.from_counts(values, counts, c.min_count, c.max_vocab)
        for n in spec.numeric:
            count, total, squares = self._moments[n.name]
            if n.standardize:
                mean = total / count if count else 0.0
                var = squares / count - mean * mean if count else 1.0
                # Rounded to float32 (the model's input precision): summation order then no longer shows,
                # so any block size or worker count fits the same statistics.
                n.mean = float(np.float32(mean))
                n.std = float(np.float32(np.sqrt(max(var, 0.0)))) or 1.0
        return spec


class FeatureEncoder:
    """Raw values -> ``EncodedBatch``; one implementation for prepare (files) and serving (dicts)."""

    def __init__(self, spec: FeatureSpec):
        if not spec.fitted:
            raise SpecError("the feature spec is not fitted: fit it on training data first")
        self.spec = spec
        self.layout = spec.layout()
        self._offsets = {f.name: f.offset for f in self.layout.sparse}
        self._by_name = {c.name: c for c in spec.categorical}
        self._request = None  # RequestEncoder, built on the first request
        self._width_cache: tuple[int, int, int] | None = None

    def encode(self, data: Any, allow_missing: bool = False) -> EncodedBatch:
        """A table or frame must have every raw column of the spec (``allow_missing``: at least one, the rest
        encoded as missing); in a list of dicts an absent key is a missing value."""
        columns = self.spec.raw_columns()
        check_columns(data, columns, allow_missing)
        table = as_table(data, columns)
        return self._encode(table, None, table.num_rows)

    def encode_request(self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]) -> EncodedBatch:
        """Features whose raw column is in ``context`` are encoded once and broadcast to every candidate.

        This is the ranking request's shape: user, device, time and behaviour sequence once, then the
        candidate items; the result equals encoding each candidate merged with the context. Plain
        vocabulary and numeric features take ``RequestEncoder``'s path (a few vectorized calls for all
        columns together); the rest, and any request that path cannot type exactly, the per-column one.
        """
        if not isinstance(candidates, list | tuple):  # a table (e.g. a retrieval catalogue's rows): per column
            return self.encode_request_columns(context, candidates)
        return self.request_encoder.encode(context, candidates)

    @property
    def request_encoder(self):
        """The ``RequestEncoder`` of this encoder (its lookup tables are built on first use)."""
        if self._request is None:
            from ctrzoo.features.request import RequestEncoder

            self._request = RequestEncoder(self)
        return self._request

    def encode_request_columns(self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]],
                               only: set[str] | None = None, out: EncodedBatch | None = None) -> EncodedBatch:
        """The per-column path of ``encode_request``, for the features in ``only`` (all when None), into ``out``."""
        features = [f for f in self.spec.features if only is None or f.name in only]
        columns = list(dict.fromkeys(source_of(f) for f in features))
        shared = [c for c in columns if c in context]
        ctx = as_table([context], shared) if shared else None
        rows = as_table(candidates, [c for c in columns if c not in context])
        return self._encode(rows, ctx, len(candidates), only, out)

    def empty_batch(self, n: int) -> EncodedBatch:
        c, d, s = self._widths()
        return EncodedBatch(np.empty((n, c), dtype=np.int64), np.empty((n, d), dtype=np.float32),
                            np.zeros((n, s, self.layout.seq_len), dtype=np.int64))

    def _widths(self) -> tuple[int, int, int]:
        """Numbers of categorical, numeric and sequence features (once: the spec's views rebuild lists)."""
        if self._width_cache is None:
            self._width_cache = len(self.spec.categorical), len(self.spec.numeric), len(self.spec.sequence)
        return self._width_cache

    def _encode(self, rows: pa.Table, shared: pa.Table | None, n: int, only: set[str] | None = None,
                out: EncodedBatch | None = None) -> EncodedBatch:
        def pick(f) -> pa.Table:
            use_shared = shared is not None and source_of(f) in shared.column_names
            return shared if use_shared else rows

        def fill(out: np.ndarray, values: np.ndarray) -> None:
            out[...] = values  # a 1-row context value broadcasts over all n rows here

        def wanted(f) -> bool:
            return only is None or f.name in only

        out = out if out is not None else self.empty_batch(n)
        for i, c in enumerate(self.spec.categorical):
            if wanted(c):
                fill(out.sparse[:, i], self._global_ids(c, _category_codes(pick(c), c)))
        for j, f in enumerate(self.spec.numeric):
            if wanted(f):
                fill(out.dense[:, j], self.finish_numeric(f, _numeric_column(pick(f), f)))
        for k, s in enumerate(self.spec.sequence):
            if wanted(s):
                fill(out.seq[:, k, : s.max_len], self._sequence_ids(s, _sequence_column(pick(s), s)))
        return out

    @staticmethod
    def finish_numeric(f: Numeric, x: np.ndarray) -> np.ndarray:
        """Transformed values (NaN = missing) -> standardized (when fitted so), missing filled."""
        if f.standardize:
            x = (x - f.mean) / f.std
        return np.where(np.isnan(x), f.fill, x)

    def _global_ids(self, c: Categorical, codes: Codes) -> np.ndarray:
        local = hash_lookup(codes, c.hash_buckets) if c.hash_buckets else c.vocab.lookup(codes)
        return local + self._offsets[c.name]

    def _sequence_ids(self, s: SequenceFeature, lists: pa.ListArray) -> np.ndarray:
        """[B, max_len] global ids, most recent last kept, right-padded with 0."""
        n, L = len(lists), s.max_len
        offsets = lists.offsets.to_numpy().astype(np.int64)
        offsets -= offsets[0]
        lengths = np.diff(offsets)
        if s.too_long == "error" and lengths.size and lengths.max() > L:
            row = int(np.argmax(lengths > L))
            raise SpecError(f"row {row}: sequence of length {int(lengths[row])} exceeds max_len {L}", field=s.name)
        flat = self._global_ids(self._by_name[s.shares], category_codes(lists.flatten(), s.name))
        kept = np.minimum(lengths, L)
        starts = offsets[:-1] + lengths - kept
        cols = np.arange(L)
        mask = cols[None, :] < kept[:, None]
        if flat.size == 0:
            return np.zeros((n, L), dtype=np.int64)
        pos = np.minimum(starts[:, None] + cols[None, :], flat.size - 1)
        return np.where(mask, flat[pos], 0)
