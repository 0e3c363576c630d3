"""The table front-end of the codec: raw columns (arrow tables, pandas frames, lists of dicts) -> a batch.

Column by column with vectorized pyarrow/numpy calls; used by prepare and evaluate for files, by the request
encoder for what its fast path does not take (derived, hashed and sequence features, odd value types), and
for tables of candidates (a retrieval catalogue's rows).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from ctrzoo.features.batch import EncodedBatch, empty_batch
from ctrzoo.features.columns import as_table, check_columns
from ctrzoo.features.compiled import CompiledFeatures


class TableEncoder:
    """``encode(data)`` of whole rows and ``encode_columns(context, candidates)`` of a ranking request."""

    def __init__(self, parts: CompiledFeatures):
        self.parts = parts

    def encode(self, data: Any, allow_missing: bool = False) -> EncodedBatch:
        """A table or frame must have every raw column of the spec (``allow_missing``: at least one, the rest
        encoded as missing); in a list of dicts an absent key is a missing value."""
        columns = self.parts.raw_columns
        check_columns(data, columns, allow_missing)
        table = as_table(data, columns)
        return self._encode(table, None, table.num_rows)

    def encode_columns(self, context: Mapping[str, Any], candidates: Any, only: set[str] | None = None,
                       out: EncodedBatch | None = None) -> EncodedBatch:
        """Context values encoded once and broadcast over the candidates (rows or a table), for the features
        in ``only`` (all when None), into ``out`` (a new batch when None)."""
        p = self.parts
        features = [f for f in (*p.categoricals, *p.buckets, *p.numerics, *p.sequences, *p.vectors)
                    if only is None or f.name in only]
        columns = list(dict.fromkeys(f.source for f in features))
        shared = [c for c in columns if c in context]
        ctx = as_table([context], shared) if shared else None
        rows = as_table(candidates, [c for c in columns if c not in context])
        return self._encode(rows, ctx, len(candidates), only, out)

    def _encode(self, rows: pa.Table, shared: pa.Table | None, n: int, only: set[str] | None = None,
                out: EncodedBatch | None = None) -> EncodedBatch:
        def pick(f) -> pa.Table:
            return shared if shared is not None and f.source in shared.column_names else rows

        def wanted(f) -> bool:
            return only is None or f.name in only

        p = self.parts
        out = out if out is not None else empty_batch(p.layout, n)
        # a 1-row context value broadcasts over all n rows in these assignments
        for c in p.categoricals:
            if wanted(c):
                out.sparse[:, c.column] = c.global_ids(c.codes(pick(c)))
        for b in p.buckets:
            if wanted(b):
                out.sparse[:, b.column] = b.global_ids(pick(b))
        for f in p.numerics:
            if wanted(f):
                out.dense[:, f.column] = p.numeric_params.finish(f.values(pick(f))[None, :], [f.column])[0]
        for s in p.sequences:
            if wanted(s):
                out.seq[:, s.column, : s.max_len] = s.ids(s.lists(pick(s)))
        for v in p.vectors:
            if wanted(v):
                out.dense[:, v.start: v.start + v.dim] = v.values(pick(v))
        return out
