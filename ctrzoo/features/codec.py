"""FeatureCodec: a fitted spec compiled once; the one encoder from raw values to tensors, offline and online.

``spec.compile()`` builds it. It owns everything derived from the spec (the tensor layout, per-field lookup
tables and numeric parameters, the input names and dtypes) and has two front-ends over the same tables:

* ``encode(data)``: whole rows (arrow table, pandas frame, list of dicts), column by column (prepare,
  evaluate, comparison);
* ``encode_request(context, candidates)``: a ranking request, context once and broadcast over candidate
  dicts, in a few joint lookups (optionally in C) with the per-column path as fallback (serving).

Example::

    codec = spec.compile()
    batch = codec.encode(frame)                 # EncodedBatch: sparse [B, F], dense [B, D], seq [B, S, L]
    batch = codec.encode_request({"user": 7}, [{"item": "a"}, {"item": "b"}])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ctrzoo.errors import SpecError
from ctrzoo.features.batch import INPUT_DTYPES, INPUT_NAMES, EncodedBatch, empty_batch, random_batch
from ctrzoo.features.columns import category_codes
from ctrzoo.features.compiled import CompiledFeatures, compile_features
from ctrzoo.features.layout import TableLayout
from ctrzoo.features.request import RequestEncoder
from ctrzoo.features.table import TableEncoder

if TYPE_CHECKING:
    from ctrzoo.features.spec import FeatureSpec


class FeatureCodec:
    """Immutable once built; safe to share between threads (lookup tables are built once, under a lock)."""

    input_names = INPUT_NAMES
    input_dtypes = INPUT_DTYPES

    def __init__(self, spec: FeatureSpec):
        if not spec.fitted:
            raise SpecError("the feature spec is not fitted: fit it on training data first")
        self._spec = spec
        self._parts = compile_features(spec)
        self._table = TableEncoder(self._parts)
        self._request = RequestEncoder(self._parts, self._table)

    @property
    def spec(self) -> FeatureSpec:
        return self._spec

    @property
    def layout(self) -> TableLayout:
        return self._parts.layout

    @property
    def parts(self) -> CompiledFeatures:
        """The compiled per-feature records (read-only)."""
        return self._parts

    @property
    def raw_columns(self) -> tuple[str, ...]:
        """Raw columns the codec reads, in first-use order."""
        return self._parts.raw_columns

    @property
    def request_encoder(self) -> RequestEncoder:
        return self._request

    # -- front-ends --------------------------------------------------------------------------------
    def encode(self, data: Any, allow_missing: bool = False) -> EncodedBatch:
        """Whole rows. A table or frame must have every raw column of the spec (``allow_missing``: at least one,
        the rest encoded as missing); in a list of dicts an absent key is a missing value."""
        return self._table.encode(data, allow_missing)

    def encode_request(self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]] | pa.Table
                       ) -> EncodedBatch:
        """Features whose raw column is in ``context`` are encoded once and broadcast to every candidate; the
        result equals encoding each candidate merged with the context. Candidates may be a table (a retrieval
        catalogue's rows), encoded per column."""
        if not isinstance(candidates, list | tuple):
            return self._table.encode_columns(context, candidates)
        return self._request.encode(context, candidates)

    def encode_request_columns(self, context: Mapping[str, Any], candidates: Any) -> EncodedBatch:
        """``encode_request`` by the per-column path only (what the fast path is checked against)."""
        return self._table.encode_columns(context, candidates)

    # -- derived helpers ---------------------------------------------------------------------------
    def empty_batch(self, n: int) -> EncodedBatch:
        return empty_batch(self.layout, n)

    def random_batch(self, n: int, seed: int = 0) -> EncodedBatch:
        """Random ids inside each field's table: for tracing, warming and parity checks."""
        return random_batch(self.layout, n, seed)

    def warm(self) -> FeatureCodec:
        """Build every lookup table now (a service does at load, so no request pays for it)."""
        for c in (*self._parts.categoricals, *(s.shares for s in self._parts.sequences)):
            if c.table is not None:
                c.table.mapping  # noqa: B018 - built on first access
        return self

    def local_ids(self, name: str, values: pa.Array) -> np.ndarray:
        """A categorical feature's local ids of raw values ``[B]``: 0 missing, 1 out of vocabulary, 2.. known."""
        field = self._parts.categorical(name)
        return field.global_ids(category_codes(values, name)) - field.offset

    def id_frequencies(self) -> np.ndarray:
        """Training count per global id ``[num_embeddings]`` (0 for padding, missing, OOV and hashed ids)."""
        freq = np.zeros(self.layout.num_embeddings, dtype=np.int64)
        for c, f in zip(self._spec.categorical, self._parts.categoricals):
            if c.vocab is not None:
                freq[f.offset: f.offset + f.size] = c.vocab.frequencies()
        for b, s in zip(self._spec.lists, self._parts.sequences):  # bags with a table of their own
            if b.kind == "multi_value" and b.vocab is not None and not b.shares:
                freq[s.shares.offset: s.shares.offset + s.shares.size] = b.vocab.frequencies()
        return freq

    def describe(self) -> list[str]:
        """Lines for ``ctrzoo info``: every tensor slot by kind, and the table size."""
        lay, spec = self.layout, self._spec

        def names(features) -> str:
            return f" ({', '.join(f.name for f in features)})" if features else ""

        sizes = ", ".join(f"{f.name}:{f.size}" for f in lay.sparse)
        vectors = ", ".join(f"{v.name}:{v.dim}" for v in lay.vectors)
        bucketized = f" ({len(spec.bucketized)} of them bucketized numbers)" if spec.bucketized else ""
        return [f"  features: {lay.n_sparse} categorical ({sizes}){bucketized}, {len(spec.numeric)} numeric"
                + names(spec.numeric) + f", {len(spec.sequence)} sequence" + names(spec.sequence)
                + f", {len(spec.multi_value)} multi-value" + names(spec.multi_value)
                + f", {len(lay.vectors)} dense vector" + (f" ({vectors})" if vectors else ""),
                f"  embedding rows: {lay.num_embeddings:,d}"]

    def __repr__(self) -> str:
        lay = self.layout
        return (f"FeatureCodec({lay.n_sparse} categorical, {lay.n_dense} numeric, {lay.n_seq} sequence; "
                f"{lay.num_embeddings} rows)")



