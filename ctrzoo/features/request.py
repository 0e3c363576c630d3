"""A ranking request's encoding in a few vectorized calls for all columns together.

A request is ~100 candidate dicts over dozens of features. Encoded column by column, each column pays a
dozen pyarrow calls of fixed overhead (~90 us a column, ~3.5 ms for Criteo's 39), several times the cost
of the model itself. Here all plain vocabulary fields are gathered at once and each field's values are
looked up as the Python objects the JSON parser made, one C hash lookup per field, in a table that maps
straight to global embedding rows: it also holds the integer form of every decimal-integer vocabulary value
(``5`` finds ``"5"``, as canonicalization would make it) and maps ``None`` and ``""`` to missing. Values of
other types (bools, mixes) are canonicalized by arrow first (``categorical_strings``, the same function as
offline); numeric fields become one float array. Only a request whose values cannot be typed exactly that
way (mixed strings and numbers, floats used as categories, text in a numeric field, NaN) goes through the
per-column path, which is also what produces the precise error naming the field. Hashed, derived and
sequence features always take the per-column path. Results are identical to ``FeatureEncoder.encode`` of
the merged rows (tested).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pandas._libs import hashtable

from ctrzoo.features.columns import categorical_strings
from ctrzoo.features.spec import source_of
from ctrzoo.features.transforms import numeric_transform
from ctrzoo.features.vocab import FIRST_ID, MISSING_ID, OOV_ID

if TYPE_CHECKING:
    from ctrzoo.features.encoder import EncodedBatch, FeatureEncoder

_EXACT_CATEGORY_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_null)
_NUMBER_TYPES = (pa.types.is_integer, pa.types.is_floating, pa.types.is_null, pa.types.is_boolean)
_PLAIN_CATEGORY_TYPES = frozenset({str, int, type(None)})  # bool is its own type: it is not among them
_PLAIN_NUMBER_TYPES = frozenset({int, float, type(None)})
_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*")  # what categorical_strings makes of an integer


class RequestEncoder:
    """``encode(context, candidates)`` for one ``FeatureEncoder``; the lookup tables are built once."""

    def __init__(self, encoder: FeatureEncoder):
        self.encoder = encoder
        spec = encoder.spec
        offsets = {f.name: f.offset for f in encoder.layout.sparse}
        self._cats = [(i, c, source_of(c), offsets[c.name]) for i, c in enumerate(spec.categorical)
                      if c.vocab is not None and not c.hash_buckets and not c.derive]
        self._nums = [(j, f, source_of(f)) for j, f in enumerate(spec.numeric) if not f.derive]
        fast = {c.name for _, c, _, _ in self._cats} | {f.name for _, f, _ in self._nums}
        self._rest = {f.name for f in spec.features} - fast
        self._plain: list[tuple[hashtable.PyObjectHashTable, np.ndarray]] | None = None  # per field
        self._num_params = _NumericParams([f for _, f, _ in self._nums])

    def encode(self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]) -> EncodedBatch:
        n = len(candidates)
        out = self.encoder.empty_batch(n)
        slow = set(self._rest)
        cat_rows = [k for k, (_, _, src, _) in enumerate(self._cats) if src not in context]
        num_rows = [k for k, (_, _, src) in enumerate(self._nums) if src not in context]
        columns = _columns(candidates, [self._cats[k][2] for k in cat_rows] + [self._nums[k][2] for k in num_rows])
        if self._cats and not self._categoricals(context, columns[: len(cat_rows)], cat_rows, n, out.sparse):
            slow |= {c.name for _, c, _, _ in self._cats}
        if self._nums and not self._numerics(context, columns[len(cat_rows):], num_rows, n, out.dense):
            slow |= {f.name for _, f, _ in self._nums}
        if slow:
            self.encoder.encode_request_columns(context, candidates, slow, out)
        return out

    # -- categorical ---------------------------------------------------------------------------
    def _categoricals(self, context, columns: list, row_fields: list[int], n: int, sparse: np.ndarray) -> bool:
        """Fill ``sparse`` for the vocabulary fields; False (nothing written) when the values need the slow path."""
        ctx_fields = [k for k, (_, _, src, _) in enumerate(self._cats) if src in context]
        values = list(chain.from_iterable(columns))
        values += [context[self._cats[k][2]] for k in ctx_fields]
        if set(map(type, values)) <= _PLAIN_CATEGORY_TYPES:
            ids = self._plain_ids(values, row_fields, ctx_fields, n)
        else:
            canonical = _canonical_categories(values)
            if canonical is None:
                return False
            ids = self._plain_ids(canonical, row_fields, ctx_fields, n)
        cols = [self._cats[k][0] for k in row_fields]
        if cols:
            sparse[:, cols] = ids[: len(cols) * n].reshape(len(cols), n).T
        for k, v in zip(ctx_fields, ids[len(cols) * n:]):
            sparse[:, self._cats[k][0]] = v
        return True

    def _plain_ids(self, values: list | np.ndarray, row_fields: list[int], ctx_fields: list[int],
                   n: int) -> np.ndarray:
        """Global ids of str/int/None values: one C hash lookup per field, no conversion."""
        tables = self._plain_tables()
        objects = np.empty(len(values), dtype=object)
        objects[:] = values
        ids = np.empty(len(values), dtype=np.int64)
        start = 0
        for k, size in [(k, n) for k in row_fields] + [(k, 1) for k in ctx_fields]:
            table, rows = tables[k]
            found = table.lookup(objects[start:start + size])
            ids[start:start + size] = rows[found]  # found == -1 picks the last entry: this field's OOV row
            start += size
        return ids

    def _plain_tables(self) -> list[tuple[hashtable.PyObjectHashTable, np.ndarray]]:
        """Per vocabulary field: a table of its values (as str, and as int where decimal), None and "" ->
        position, and position -> global row (missing for None and "", OOV appended last)."""
        if self._plain is None:
            plain = []
            for _, c, _, offset in self._cats:
                values = c.vocab.values.to_pylist()
                aliases = [(int(v), i) for i, v in enumerate(values) if _CANONICAL_INT.fullmatch(v)]
                keys = np.empty(len(values) + len(aliases) + 2, dtype=object)
                keys[: len(values)] = values
                keys[len(values): len(values) + len(aliases)] = [a for a, _ in aliases]
                keys[-2:] = [None, ""]
                rows = np.concatenate([offset + FIRST_ID + np.arange(len(values), dtype=np.int64),
                                       offset + FIRST_ID + np.asarray([i for _, i in aliases], dtype=np.int64),
                                       [offset + MISSING_ID] * 2, [offset + OOV_ID]])
                table = hashtable.PyObjectHashTable(max(len(keys), 1))
                table.map_locations(keys)
                plain.append((table, rows))
            self._plain = plain
        return self._plain

    # -- numeric -------------------------------------------------------------------------------
    def _numerics(self, context, columns: list, row_fields: list[int], n: int, dense: np.ndarray) -> bool:
        """Fill ``dense`` for the numeric fields; False (nothing written) when the values need the slow path."""
        ctx_fields = [k for k, (_, _, src) in enumerate(self._nums) if src in context]
        values = list(chain.from_iterable(columns))
        values += [context[self._nums[k][2]] for k in ctx_fields]
        flat = _plain_floats(values) if set(map(type, values)) <= _PLAIN_NUMBER_TYPES else _arrow_floats(values)
        if flat is None:
            return False  # text, NaN, infinity, odd types: parsed or refused (naming the field) per column
        x = np.empty((len(self._nums), n), dtype=np.float64)
        if row_fields:
            x[row_fields] = flat[: len(row_fields) * n].reshape(len(row_fields), n)
        for k, v in zip(ctx_fields, flat[len(row_fields) * n:]):
            x[k] = v
        dense[:, [j for j, _, _ in self._nums]] = self._num_params.finish(x).T
        return True


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


def _canonical_categories(values: list) -> np.ndarray | None:
    """Values of other types as canonical strings (None = missing), by arrow's offline rules; None when
    the per-column path must decide (mixed types, floats whose precision depends on the column, nesting)."""
    try:
        arr = pa.array(values)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None
    if not any(is_type(arr.type) for is_type in _EXACT_CATEGORY_TYPES):
        return None
    return categorical_strings(arr, "?").to_numpy(zero_copy_only=False)


def _plain_floats(values: list) -> np.ndarray | None:
    """int/float/None values as float64 with NaN for None; None if any value is itself NaN or infinite."""
    try:
        x = np.array(values, dtype=np.float64)  # None -> NaN
    except OverflowError:
        return None
    finite = np.isfinite(x)
    if int(finite.sum()) + values.count(None) != len(values):
        return None
    return x


def _arrow_floats(values: list) -> np.ndarray | None:
    try:
        arr = pa.array(values)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None
    if not any(is_type(arr.type) for is_type in _NUMBER_TYPES):
        return None
    arr = pc.cast(arr, pa.float64())
    if pc.any(pc.invert(pc.is_finite(arr))).as_py():
        return None
    return arr.to_numpy(zero_copy_only=False)  # nulls -> NaN: missing


class _NumericParams:
    """Per-field transform, standardization and fill of numeric features, applied to ``[fields, rows]`` at once."""

    def __init__(self, features: list):
        self.groups: dict[str, list[int]] = {}
        for k, f in enumerate(features):
            self.groups.setdefault(f.transform, []).append(k)
        self.transforms = {name: numeric_transform(name) for name in self.groups}
        self.standardized = np.array([bool(f.standardize) for f in features])
        self.mean = np.array([f.mean if f.standardize else 0.0 for f in features], dtype=np.float64)[:, None]
        self.std = np.array([f.std if f.standardize else 1.0 for f in features], dtype=np.float64)[:, None]
        self.fill = np.array([f.fill for f in features], dtype=np.float64)[:, None]

    def finish(self, x: np.ndarray) -> np.ndarray:
        """The same arithmetic as ``FeatureEncoder.finish_numeric`` per field (bit for bit)."""
        for name, rows in self.groups.items():
            if name != "identity":
                x[rows] = self.transforms[name](x[rows])
        if self.standardized.any():
            x = np.where(self.standardized[:, None], (x - self.mean) / self.std, x)
        return np.where(np.isnan(x), self.fill, x)
