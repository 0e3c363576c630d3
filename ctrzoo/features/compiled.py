"""What a fitted spec compiles to: per-field lookup tables and parameters, read by both front-ends.

``compile_features(spec)`` turns each feature into a small frozen record (its column in the tensor layout,
its raw column, its offset in the shared table) and builds, per vocabulary field, the one ``VocabTable``
that the table encoder (``features/table.py``), the request encoder (``features/request.py``) and its C
gathers all look values up in. Nothing here refers back to a codec, so the front-ends that hold these
records form no reference cycle (a cycle would outlive a service's model reload).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ctrzoo.errors import SpecError
from ctrzoo.features.columns import (
    Codes,
    category_codes,
    numeric_values,
    sequence_lists,
    vector_values,
    vocabulary_lookup,
)
from ctrzoo.features.layout import FieldLayout, SequenceLayout, TableLayout, VectorLayout
from ctrzoo.features.transforms import derive, numeric_transform
from ctrzoo.features.vocab import FIRST_ID, MISSING_ID, OOV_ID, Vocabulary, hash_lookup, per_row

if TYPE_CHECKING:
    from ctrzoo.features.spec import FeatureSpec


def raw_category_codes(table: pa.Table, column: str, name: str, derivation: str | None) -> Codes:
    """A categorical feature's canonical codes from its raw column (derived first when it says so)."""
    transform = (lambda uniques: derive(derivation, uniques, name)) if derivation else None
    return category_codes(table.column(column), name, transform)


def raw_numbers(table: pa.Table, column: str, name: str, derivation: str | None, transform: str,
                clip: tuple[float, float] | None = None) -> np.ndarray:
    """A numeric feature's float64 values ``[B]``, clipped (raw) and transformed, NaN where missing
    (standardized and filled later)."""
    raw = numeric_values(derive(derivation, table.column(column).combine_chunks(), name), name)
    if clip is not None:
        raw = np.clip(raw, clip[0], clip[1])  # NaN stays NaN
    return numeric_transform(transform)(raw)


class VocabTable:
    """One vocabulary field's lookup table: raw value -> global embedding row (``columns.vocabulary_lookup``).

    Built once, on first use (a training run that only needs the layout never builds it); the service builds
    every table at load (``FeatureCodec.warm``) so no request pays for it.
    """

    __slots__ = ("_lock", "_mapping", "_values", "first_row", "missing_row", "oov_row")

    def __init__(self, vocab: Vocabulary, offset: int):
        self._values = vocab.values
        self.missing_row, self.oov_row, self.first_row = offset + MISSING_ID, offset + OOV_ID, offset + FIRST_ID
        self._mapping: dict | None = None
        self._lock = threading.Lock()

    @property
    def mapping(self) -> dict:
        if self._mapping is None:
            with self._lock:
                if self._mapping is None:
                    self._mapping = vocabulary_lookup(self._values, self.first_row, self.missing_row)
        return self._mapping

    def rows(self, codes: Codes) -> np.ndarray:
        """Global rows of a column's codes ``[B]``: one dict lookup per distinct value, then one gather."""
        uniques = codes.uniques.to_numpy(zero_copy_only=False)  # canonical strings, None = missing
        mapped = np.fromiter(map(self.mapping.get, uniques, repeat(self.oov_row)),
                             dtype=np.int64, count=len(uniques))
        return per_row(codes, mapped, self.missing_row)


@dataclass(frozen=True)
class CategoricalField:
    """A categorical feature compiled: ``column`` in ``sparse``, its rows ``[offset, offset + size)``.
    (A multi-value bag's own table is one too, with ``column`` None: it has no column in ``sparse``.)"""

    column: int | None
    name: str
    source: str
    derive: str | None
    offset: int
    size: int
    hash_buckets: int | None
    table: VocabTable | None  # None when hashed

    @property
    def plain(self) -> bool:
        """A vocabulary looked up as the raw value is: the request fast path (and the C gathers) take it."""
        return self.table is not None and self.derive is None

    def codes(self, table: pa.Table) -> Codes:
        return raw_category_codes(table, self.source, self.name, self.derive)

    def global_ids(self, codes: Codes) -> np.ndarray:
        """Rows in the shared table ``[B]``: missing -> ``offset``, unknown -> ``offset + 1``."""
        if self.table is None:
            return hash_lookup(codes, self.hash_buckets) + self.offset
        return self.table.rows(codes)


@dataclass(frozen=True)
class NumericField:
    column: int
    name: str
    source: str
    derive: str | None
    transform: str
    clip: tuple[float, float] | None = None

    def values(self, table: pa.Table) -> np.ndarray:
        return raw_numbers(table, self.source, self.name, self.derive, self.transform, self.clip)


@dataclass(frozen=True, eq=False)
class BucketField:
    """A bucketized number compiled: ``column`` in ``sparse``, rows ``[offset, offset + size)``."""

    column: int
    name: str
    source: str
    derive: str | None
    transform: str
    clip: tuple[float, float] | None
    offset: int
    size: int
    boundaries: np.ndarray  # float64, ascending

    def global_ids(self, table: pa.Table) -> np.ndarray:
        """``[B]``: missing -> ``offset``, else ``offset + 2 + number of boundaries <= value``."""
        x = raw_numbers(table, self.source, self.name, self.derive, self.transform, self.clip)
        bucket = np.searchsorted(self.boundaries, x, side="right")
        return np.where(np.isnan(x), self.offset + MISSING_ID, self.offset + FIRST_ID + bucket).astype(np.int64)


class NumericParams:
    """Every numeric feature's transform, standardization and fill, applied to ``[fields, rows]`` at once."""

    def __init__(self, features: list):
        self.names = [f.transform for f in features]
        self.groups = self._groups(range(len(features)))
        self.transforms = {name: numeric_transform(name) for name in self.groups}
        self.standardized = np.array([bool(f.standardize) for f in features], dtype=bool)
        self.mean = np.array([f.mean if f.standardize else 0.0 for f in features], dtype=np.float64)[:, None]
        self.std = np.array([f.std if f.standardize else 1.0 for f in features], dtype=np.float64)[:, None]
        self.fill = np.array([f.fill for f in features], dtype=np.float64)[:, None]

    def _groups(self, fields) -> dict[str, list[int]]:
        """Positions in ``fields`` by transform name: one vectorized call per transform."""
        groups: dict[str, list[int]] = {}
        for k, j in enumerate(fields):
            groups.setdefault(self.names[j], []).append(k)
        return groups

    def transform(self, x: np.ndarray, fields: list[int] | None = None) -> np.ndarray:
        """Raw values ``[len(fields), rows]`` (all numeric fields when None) -> transformed, in place."""
        for name, rows in (self.groups if fields is None else self._groups(fields)).items():
            if name != "identity":
                x[rows] = self.transforms[name](x[rows])
        return x

    def finish(self, x: np.ndarray, fields: list[int] | None = None) -> np.ndarray:
        """Transformed values ``[len(fields), rows]`` (NaN missing) -> standardized where fitted so, filled."""
        sel = slice(None) if fields is None else fields
        standardized = self.standardized[sel]
        if standardized.any():
            x = np.where(standardized[:, None], (x - self.mean[sel]) / self.std[sel], x)
        return np.where(np.isnan(x), self.fill[sel], x)


@dataclass(frozen=True)
class SequenceField:
    """A sequence or multi-value bag compiled: ``column`` (slot) in ``seq``, ids from the table of ``shares``
    (a categorical feature's, or a bag's own). Sequences keep their most recent (last) items, bags their
    first ones."""

    column: int
    name: str
    source: str
    sep: str
    max_len: int
    too_long: str
    shares: CategoricalField
    keep_last: bool = True

    def lists(self, table: pa.Table) -> pa.ListArray:
        return sequence_lists(table.column(self.source).combine_chunks(), self.sep, self.name)

    def ids(self, lists: pa.ListArray) -> np.ndarray:
        """``[B, max_len]`` global ids, the most recent kept, right-padded with 0."""
        n, L = len(lists), self.max_len
        offsets = lists.offsets.to_numpy().astype(np.int64)
        offsets -= offsets[0]
        lengths = np.diff(offsets)
        if self.too_long == "error" and lengths.size and lengths.max() > L:
            row = int(np.argmax(lengths > L))
            raise SpecError(f"row {row}: sequence of length {int(lengths[row])} exceeds max_len {L}", field=self.name)
        flat = self.shares.global_ids(category_codes(lists.flatten(), self.name))
        kept = np.minimum(lengths, L)
        starts = offsets[:-1] + lengths - kept if self.keep_last else offsets[:-1]
        cols = np.arange(L)
        mask = cols[None, :] < kept[:, None]
        if flat.size == 0:
            return np.zeros((n, L), dtype=np.int64)
        pos = np.minimum(starts[:, None] + cols[None, :], flat.size - 1)
        return np.where(mask, flat[pos], 0)


@dataclass(frozen=True)
class VectorField:
    """A dense vector compiled: columns ``[start, start + dim)`` of ``dense``."""

    name: str
    source: str
    start: int
    dim: int
    sep: str
    fill: float

    def values(self, table: pa.Table) -> np.ndarray:
        """``[B, dim]`` float64, ``fill`` for missing rows."""
        return vector_values(table.column(self.source).combine_chunks(), self.dim, self.sep, self.fill, self.name)


@dataclass(frozen=True)
class CompiledFeatures:
    """Everything a fitted spec derives, once: the layout and one record per feature, in layout order."""

    layout: TableLayout
    raw_columns: tuple[str, ...]
    categoricals: tuple[CategoricalField, ...]
    buckets: tuple[BucketField, ...]
    numerics: tuple[NumericField, ...]
    numeric_params: NumericParams
    sequences: tuple[SequenceField, ...]  # sequences and bags: the slots of ``seq``
    vectors: tuple[VectorField, ...] = ()

    def categorical(self, name: str) -> CategoricalField:
        for c in self.categoricals:
            if c.name == name:
                return c
        raise SpecError("no such categorical feature", field=name)


def compile_features(spec: FeatureSpec) -> CompiledFeatures:
    """The records of a fitted spec; the shared table is row 0 (padding), then each categorical's rows."""
    cats, buckets, sparse_layout, offset = [], [], [], 1
    for i, c in enumerate(spec.sparse_fields):
        size = c.table_size
        if c.kind == "bucketized":
            buckets.append(BucketField(i, c.name, c.column, c.derive, c.transform, c.clip, offset, size,
                                       np.asarray(c.boundaries, dtype=np.float64)))
        else:
            table = None if c.hash_buckets else VocabTable(c.vocab, offset)
            cats.append(CategoricalField(i, c.name, c.column, c.derive, offset, size, c.hash_buckets, table))
        sparse_layout.append(FieldLayout(c.name, offset, size))
        offset += size
    by_name = {c.name: c for c in cats}
    nums = tuple(NumericField(j, f.name, f.column, f.derive, f.transform, f.clip) for j, f in enumerate(spec.numeric))
    seqs, seq_layouts = [], []
    for k, s in enumerate(spec.lists):
        if s.kind == "sequence" or s.shares:
            ids, keep_last = by_name[s.shares], s.kind == "sequence"
        else:  # a bag with its own table, after every categorical's
            size = s.table_size
            ids = CategoricalField(None, s.name, s.column, None, offset, size, s.hash_buckets,
                                   None if s.hash_buckets else VocabTable(s.vocab, offset))
            keep_last = False
            offset += size
        too_long = getattr(s, "too_long", "keep_last")
        seqs.append(SequenceField(k, s.name, s.column, s.sep, s.max_len, too_long, ids, keep_last))
        seq_layouts.append(SequenceLayout(s.name, s.shares, ids.column, s.max_len, s.kind, s.pooling, ids.offset,
                                          ids.size))
    vectors, start = [], len(nums)
    for v in spec.dense_vector:
        vectors.append(VectorField(v.name, v.column, start, v.dim, v.sep, v.fill))
        start += v.dim
    layout = TableLayout(
        tuple(sparse_layout),
        tuple(f.name for f in nums) + tuple(f"{v.name}[{i}]" for v in vectors for i in range(v.dim)),
        tuple(seq_layouts),
        max((s.max_len for s in seqs), default=0),
        offset,
        tuple(VectorLayout(v.name, v.start, v.dim) for v in vectors),
    )
    return CompiledFeatures(layout, spec.raw_columns(), tuple(cats), tuple(buckets), nums,
                            NumericParams(list(spec.numeric)), tuple(seqs), tuple(vectors))
