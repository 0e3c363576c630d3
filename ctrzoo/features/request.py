"""The request front-end of the codec: a ranking request's encoding in a few vectorized calls.

A request is ~100 candidate dicts over dozens of features. Encoded column by column, each column pays a
dozen pyarrow calls of fixed overhead (~90 us a column, ~3.5 ms for Criteo's 39), several times the cost
of the model itself. Here all plain vocabulary fields are gathered at once and each field's values are
looked up as the Python objects the JSON parser made, one C hash lookup per field, in the field's one
``VocabTable`` (shared with the table front-end), which maps straight to global embedding rows and holds
every raw form of a value (``columns.vocabulary_lookup``). Values of other types (bools, mixes) are
canonicalized by arrow first (``columns.canonical_categories``, the offline rule); numeric fields become one
float array. Only a request whose values cannot be typed exactly that
way (mixed strings and numbers, floats used as categories, text in a numeric field, NaN) goes through the
per-column path, which is also what produces the precise error naming the field. Hashed, derived and
sequence features always take the per-column path. Results are identical to the table front-end's encoding
of the merged rows (tested).

The per-value work of the candidates' plain fields (read from the row dict, type-check, look up) runs in C
when the package was built with its extension (``_gather.c``: a 100-candidate Criteo request encodes in
~0.26 ms instead of ~0.55); the Python steps below are the fallback and give the same results (tested both ways).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain, repeat
from operator import itemgetter
from typing import Any

import numpy as np

from ctrzoo.features.batch import EncodedBatch, empty_batch
from ctrzoo.features.columns import (
    PLAIN_CATEGORY_TYPES,
    PLAIN_NUMBER_TYPES,
    arrow_floats,
    canonical_categories,
    plain_floats,
)
from ctrzoo.features.compiled import CompiledFeatures
from ctrzoo.features.table import TableEncoder

try:
    from ctrzoo.features import _gather as native
except ImportError:  # built without a C compiler: the Python steps do the same
    native = None


class RequestEncoder:
    """``encode(context, candidates)`` over a codec's compiled features, reading its ``VocabTable``s."""

    def __init__(self, parts: CompiledFeatures, table: TableEncoder):
        self.parts, self.table = parts, table
        self._cats = [c for c in parts.categoricals if c.plain]
        self._nums = [f for f in parts.numerics if f.derive is None and f.clip is None]
        fast = {c.name for c in self._cats} | {f.name for f in self._nums}
        every = (*parts.categoricals, *parts.buckets, *parts.numerics, *parts.sequences, *parts.vectors)
        self._rest = {f.name for f in every} - fast
        self.use_native = native is not None  # tests switch it off to check the Python steps
        # row-field selections -> argument tuples for the C gathers
        self._id_gather_args: dict[tuple[int, ...], tuple] = {}
        self._float_gather_keys: dict[tuple[int, ...], tuple[str, ...]] = {}

    def encode(self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]) -> EncodedBatch:
        n = len(candidates)
        out = empty_batch(self.parts.layout, n)
        slow = set(self._rest)
        cat_rows = [k for k, c in enumerate(self._cats) if c.source not in context]
        num_rows = [k for k, f in enumerate(self._nums) if f.source not in context]
        cats_done = not self._cats
        nums_done = not self._nums
        if self.use_native and type(candidates) is list:
            cats_done = cats_done or self._native_categoricals(context, candidates, cat_rows, n, out.sparse)
            nums_done = nums_done or self._native_numerics(context, candidates, num_rows, n, out.dense)
        if not cats_done:
            columns = _columns(candidates, [self._cats[k].source for k in cat_rows])
            if not self._categoricals(context, columns, cat_rows, n, out.sparse):
                slow |= {c.name for c in self._cats}
        if not nums_done:
            columns = _columns(candidates, [self._nums[k].source for k in num_rows])
            if not self._numerics(context, columns, num_rows, n, out.dense):
                slow |= {f.name for f in self._nums}
        if slow:
            self.table.encode_columns(context, candidates, slow, out)
        return out

    # -- categorical ---------------------------------------------------------------------------
    def _categoricals(self, context, columns: list, row_fields: list[int], n: int, sparse: np.ndarray) -> bool:
        """Fill ``sparse`` for the vocabulary fields; False (nothing written) when the values need the slow path."""
        ctx_fields = [k for k, c in enumerate(self._cats) if c.source in context]
        values = list(chain.from_iterable(columns))
        values += [context[self._cats[k].source] for k in ctx_fields]
        if set(map(type, values)) <= PLAIN_CATEGORY_TYPES:
            ids = self._plain_ids(values, row_fields, ctx_fields, n)
        else:
            canonical = canonical_categories(values)
            if canonical is None:
                return False
            ids = self._plain_ids(canonical, row_fields, ctx_fields, n)
        self._write_ids(sparse, ids[: len(row_fields) * n].reshape(len(row_fields), n), row_fields,
                        ctx_fields, ids[len(row_fields) * n:])
        return True

    def _native_categoricals(self, context, candidates: list, row_fields: list[int], n: int,
                             sparse: np.ndarray) -> bool:
        """``_categoricals`` with the candidates' values gathered and looked up in C, straight into ``sparse``;
        False when a value needs the Python steps (which then redo the whole group)."""
        ctx_fields = [k for k, c in enumerate(self._cats) if c.source in context]
        ctx_values = [context[self._cats[k].source] for k in ctx_fields]
        if not set(map(type, ctx_values)) <= PLAIN_CATEGORY_TYPES:
            return False
        if row_fields and not native.gather_ids(candidates, *self._native_args(tuple(row_fields)), sparse):
            return False
        for k, v in zip(ctx_fields, ctx_values):
            table = self._cats[k].table
            sparse[:, self._cats[k].column] = table.mapping.get(v, table.oov_row)
        return True

    def _native_args(self, row_fields: tuple[int, ...]) -> tuple:
        """(source names, lookup dicts, OOV rows, batch columns) of these vocabulary fields, for ``gather_ids``."""
        args = self._id_gather_args.get(row_fields)
        if args is None:
            fields = [self._cats[k] for k in row_fields]
            args = (tuple(c.source for c in fields), tuple(c.table.mapping for c in fields),
                    tuple(c.table.oov_row for c in fields), tuple(c.column for c in fields))
            self._id_gather_args[row_fields] = args
        return args

    def _write_ids(self, sparse: np.ndarray, row_ids: np.ndarray, row_fields: list[int], ctx_fields: list[int],
                   ctx_ids) -> None:
        """Row fields' ids (``[fields, rows]``) into their columns; each context field's id broadcast to all rows."""
        cols = [self._cats[k].column for k in row_fields]
        if cols:
            sparse[:, cols] = row_ids.T
        for k, v in zip(ctx_fields, ctx_ids):
            sparse[:, self._cats[k].column] = v

    def _plain_ids(self, values: list | np.ndarray, row_fields: list[int], ctx_fields: list[int],
                   n: int) -> np.ndarray:
        """Global ids of str/int/None values: one dict lookup per value, no conversion."""
        ids = np.empty(len(values), dtype=np.int64)
        start = 0
        for k, size in [(k, n) for k in row_fields] + [(k, 1) for k in ctx_fields]:
            table = self._cats[k].table
            ids[start:start + size] = list(map(table.mapping.get, values[start:start + size],
                                               repeat(table.oov_row, size)))
            start += size
        return ids

    # -- numeric -------------------------------------------------------------------------------
    def _numerics(self, context, columns: list, row_fields: list[int], n: int, dense: np.ndarray) -> bool:
        """Fill ``dense`` for the numeric fields; False (nothing written) when the values need the slow path."""
        ctx_fields = [k for k, f in enumerate(self._nums) if f.source in context]
        values = list(chain.from_iterable(columns))
        values += [context[self._nums[k].source] for k in ctx_fields]
        flat = plain_floats(values) if set(map(type, values)) <= PLAIN_NUMBER_TYPES else arrow_floats(values)
        if flat is None:
            return False  # text, NaN, infinity, odd types: parsed or refused (naming the field) per column
        self._write_floats(dense, flat[: len(row_fields) * n].reshape(len(row_fields), n), row_fields,
                           ctx_fields, flat[len(row_fields) * n:])
        return True

    def _native_numerics(self, context, candidates: list, row_fields: list[int], n: int, dense: np.ndarray) -> bool:
        """``_numerics`` with the candidates' values gathered in C; False when a value needs the Python steps."""
        ctx_fields = [k for k, f in enumerate(self._nums) if f.source in context]
        ctx_values = [context[self._nums[k].source] for k in ctx_fields]
        if not set(map(type, ctx_values)) <= PLAIN_NUMBER_TYPES:
            return False
        ctx = plain_floats(ctx_values)
        if ctx is None:
            return False
        rows = np.empty((len(row_fields), n), dtype=np.float64)
        if row_fields:
            keys = self._float_gather_keys.get(tuple(row_fields))
            if keys is None:
                keys = self._float_gather_keys[tuple(row_fields)] = tuple(self._nums[k].source for k in row_fields)
            if not native.gather_floats(candidates, keys, rows):
                return False
        self._write_floats(dense, rows, row_fields, ctx_fields, ctx)
        return True

    def _write_floats(self, dense: np.ndarray, row_values: np.ndarray, row_fields: list[int], ctx_fields: list[int],
                      ctx_values) -> None:
        """Raw numerics (row fields ``[fields, rows]``, context fields one value each) transformed into ``dense``."""
        x = np.empty((len(self._nums), row_values.shape[1]), dtype=np.float64)
        if row_fields:
            x[row_fields] = row_values
        for k, v in zip(ctx_fields, ctx_values):
            x[k] = v
        params = self.parts.numeric_params
        fields = [f.column for f in self._nums]
        if len(fields) == len(self.parts.numerics):  # every numeric field (the usual case)
            fields = None
        dense[:, [f.column for f in self._nums]] = params.finish(params.transform(x, fields), fields).T


def _columns(rows: Sequence[Mapping[str, Any]], sources: list[str]) -> list[tuple]:
    """The values of ``sources`` as one tuple per source (None where a row lacks it): one C-level
    ``itemgetter`` call per row and a ``zip`` transpose, instead of a ``dict.get`` per value."""
    if not rows or not sources:
        return [(None,) * len(rows) for _ in sources]
    getter = itemgetter(*sources)
    try:
        table = list(map(getter, rows))
    except KeyError:  # some row lacks a feature (missing): per value, with the default
        return [tuple(r.get(s) for r in rows) for s in sources]
    if len(sources) == 1:
        return [tuple(table)]
    return list(zip(*table))
