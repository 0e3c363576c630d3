"""Canonical raw values: the one place that decides what a raw value means.

Files (pyarrow tables, pandas frames) and service requests (lists of JSON-like dicts) reach the codec
through these functions, so ``"7"``, ``7`` and ``7.0`` are the same category offline and online:

* a category is canonicalized to a string: integers in decimal, integral floats as integers, ``""`` and
  null missing; NaN, infinity and floats past the 64-bit integer range are refused, naming the field;
* a number is a float64, null or ``""`` missing; text that is not a number and non-finite values are refused.

The request front-end types values without arrow where it can (``PLAIN_CATEGORY_TYPES``, ``plain_floats``)
and looks them up in ``vocabulary_lookup`` tables, which hold each value in every raw form the rule maps to it;
the C gathers (``_gather.c``) accept exactly the plain types and pass anything else back. Tests check that
all paths agree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ctrzoo.errors import SpecError

_INT64_LIMIT = 2.0**63  # floats at or past it have no integer form (cast to int64 would overflow)
_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*")  # what ``categorical_strings`` makes of an integer

# Python types whose canonical form needs no arrow: str as is, int in decimal, None missing (bool is its own
# type and not among them: arrow canonicalizes it). The C gathers accept the same types.
PLAIN_CATEGORY_TYPES = frozenset({str, int, type(None)})
PLAIN_NUMBER_TYPES = frozenset({int, float, type(None)})
_EXACT_CATEGORY_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_null)
_NUMBER_TYPES = (pa.types.is_integer, pa.types.is_floating, pa.types.is_null, pa.types.is_boolean)


def as_table(data: Any, columns: Sequence[str]) -> pa.Table:
    """Turn a pyarrow table, a pandas frame or a list of dicts into a table with ``columns``.

    Absent columns become all-null (the spec's missing rule applies); extra columns are ignored.
    """
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    if not isinstance(data, pa.Table):
        if _is_pandas(data):
            data = pa.Table.from_pandas(data, preserve_index=False)
        elif isinstance(data, Sequence) and all(isinstance(r, Mapping) for r in data):
            return _table_from_dicts(data, columns)  # already exactly ``columns``
        else:
            raise SpecError("expected a pyarrow table, a pandas DataFrame or a list of dicts, "
                            f"got {type(data).__name__}")
    n = data.num_rows
    out = {}
    for name in columns:
        out[name] = data.column(name).combine_chunks() if name in data.column_names else pa.nulls(n)
    return pa.table(out) if out else pa.table({"_": pa.nulls(n)})


def column_names(data: Any) -> list[str] | None:
    """The column names of a table or frame; None for rows (a dict without a key is a missing value there)."""
    if isinstance(data, pa.Table | pa.RecordBatch):
        return list(data.column_names)
    if _is_pandas(data):
        return [str(c) for c in data.columns]
    return None


def check_columns(data: Any, expected: Sequence[str], allow_missing: bool = False) -> None:
    """A table lacking the columns a spec reads would be encoded as all-missing, the same for every row:
    an error naming them (with none of them present, always; with some, unless ``allow_missing``)."""
    present = column_names(data)
    if present is None or not expected:
        return
    have = set(present)
    missing = [c for c in expected if c not in have]
    if len(missing) == len(expected):
        raise SpecError(f"the data has none of the columns the feature spec reads: expected {list(expected)}, "
                        f"got {present[:30]}", field=expected[0])
    if missing and not allow_missing:
        raise SpecError(f"columns {missing} are missing from the data (it has {present[:30]}); pass "
                        "allow_missing=True to encode them as missing values", field=missing[0])


def _is_pandas(data: Any) -> bool:
    return type(data).__module__.startswith("pandas") and hasattr(data, "columns")


def _table_from_dicts(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> pa.Table:
    arrays = {}
    for name in columns:
        values = [r.get(name) for r in rows]
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            arrays[name] = _mixed_scalars_as_strings(values, name, exc)
    return pa.table(arrays) if arrays else pa.table({"_": pa.nulls(len(rows))})


def _mixed_scalars_as_strings(values: list, field: str, exc: Exception) -> pa.Array:
    """A column mixing numbers and numeric strings (``8`` and ``"8"``) is read as text, canonically."""
    out = []
    for v in values:  # only reached for mixed-type columns, which arrow cannot type
        if v is None or isinstance(v, str):
            out.append(v)
        elif isinstance(v, float) and not abs(v) < _INT64_LIMIT:  # the rules of a float column, not "nan"
            raise SpecError("NaN, infinite or out-of-range (beyond 64-bit integers) values are not categories",
                            field=field)
        elif isinstance(v, float) and v.is_integer():
            out.append(str(int(v)))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out.append(repr(v))
        else:
            raise SpecError(f"values of mixed or unsupported types ({exc})", field=field) from None
    return pa.array(out, pa.string())


def categorical_strings(arr: pa.Array, field: str) -> pa.Array:
    """Canonical category strings: integers in decimal, integral floats as integers, '' and null missing."""
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_dictionary(t):
        arr = arr.cast(t.value_type)
        t = arr.type
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        arr = arr.cast(pa.string())
    elif pa.types.is_integer(t) or pa.types.is_boolean(t):
        arr = pc.cast(arr, pa.string())
    elif pa.types.is_floating(t):
        _check_finite(arr, field)
        if pc.any(pc.greater_equal(pc.abs(arr), _INT64_LIMIT)).as_py():  # an integral float past int64: no id
            raise SpecError("category values beyond the 64-bit integer range are not allowed", field=field)
        integral = pc.equal(pc.floor(arr), arr)
        as_int = pc.cast(pc.cast(pc.if_else(integral, arr, 0.0), pa.int64()), pa.string())
        arr = pc.if_else(integral, as_int, pc.cast(arr, pa.string()))
    elif not pa.types.is_string(t):
        raise SpecError(f"expected a category (string or integer), got values of type {t}", field=field)
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)


@dataclass
class Codes:
    """A categorical column as ``uniques[indices]``: work per distinct value, then one gather.

    ``indices`` is int64 with -1 for missing; ``uniques`` are canonical strings (null = missing).
    Categories repeat a lot, so canonicalizing, deriving and looking up only the uniques is what keeps
    encoding cheap, and a column that arrives dictionary-encoded is never hashed again.
    """

    indices: np.ndarray
    uniques: pa.Array

    def counts(self) -> tuple[pa.Array, np.ndarray]:
        """(value, count) for every non-missing value present."""
        idx = self.indices[self.indices >= 0]
        counts = np.bincount(idx, minlength=len(self.uniques))
        keep = (counts > 0) & self.uniques.is_valid().to_numpy(zero_copy_only=False)
        return self.uniques.filter(pa.array(keep)), counts[keep].astype(np.int64)


def category_codes(arr: pa.Array, field: str, transform=None) -> Codes:
    """Dictionary-encode (unless already) and canonicalize the uniques; ``transform`` maps uniques too."""
    if isinstance(arr, pa.ChunkedArray):
        arr = (arr.combine_chunks() if not pa.types.is_dictionary(arr.type)
               else arr.unify_dictionaries().combine_chunks())
    if not pa.types.is_dictionary(arr.type):
        t = arr.type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
                or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)):
            raise SpecError(f"expected a category (string or integer), got values of type {t}", field=field)
        arr = pc.dictionary_encode(arr)
    indices = arr.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    uniques = arr.dictionary
    if transform is not None:
        uniques = transform(uniques)
    return Codes(indices, categorical_strings(uniques, field))


def numeric_values(arr: pa.Array, field: str) -> np.ndarray:
    """Float64 values with NaN for missing; text that is not a number is an error naming the field."""
    t = arr.type
    if pa.types.is_null(t):
        return np.full(len(arr), np.nan)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        arr = pc.if_else(pc.equal(arr, ""), pa.scalar(None, t), arr)
        try:
            arr = pc.cast(arr, pa.float64())
        except pa.ArrowInvalid as exc:
            raise SpecError(f"expected a number ({exc})", field=field) from None
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        arr = pc.cast(arr, pa.float64())
    else:
        raise SpecError(f"expected a number, got values of type {t}", field=field)
    _check_finite(arr, field)
    return arr.to_numpy(zero_copy_only=False)


def _check_finite(arr: pa.Array, field: str) -> None:
    if pa.types.is_floating(arr.type) and pc.any(pc.invert(pc.is_finite(arr))).as_py():
        raise SpecError("NaN or infinite values are not allowed", field=field)


def sequence_lists(arr: pa.Array, sep: str, field: str) -> pa.ListArray:
    """Canonical sequences: a list of category strings per row; ``sep``-joined strings are split."""
    t = arr.type
    if pa.types.is_null(t):
        return pa.array([[]] * len(arr), pa.list_(pa.string()))
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        arr = pc.split_pattern(arr.cast(pa.string()), sep)
    elif not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        raise SpecError(f"expected a list of items or a {sep!r}-joined string, got values of type {t}", field=field)
    arr = arr.fill_null(pa.scalar([], arr.type)) if arr.null_count else arr
    if pa.types.is_large_list(arr.type):
        arr = arr.cast(pa.list_(arr.type.value_type))
    items = categorical_strings(pc.list_flatten(arr), field)
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    keep = pc.is_valid(items)
    if not pc.all(keep).as_py():
        row_of_item = np.repeat(np.arange(len(arr)), lengths)
        keep_np = keep.to_numpy(zero_copy_only=False)
        lengths = np.bincount(row_of_item[keep_np], minlength=len(arr)).astype(np.int64)
        items = items.filter(keep)
    offsets = np.zeros(len(arr) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), items)


def vocabulary_lookup(values: pa.Array, first_row: int, missing_row: int) -> dict:
    """A field's one lookup table: every raw form of each vocabulary value -> its row (``first_row + rank``).

    Holds the canonical string, the int of a decimal-integer value (``5`` finds ``"5"``, as canonicalization
    would make it) and maps ``None`` and ``""`` to ``missing_row``, so both the canonical strings of a table
    column and the str/int/None values of a JSON request are looked up in it without conversion."""
    strings = values.to_pylist()
    rows = range(first_row, first_row + len(strings))
    table: dict = {int(v): r for v, r in zip(strings, rows) if _CANONICAL_INT.fullmatch(v)}
    table.update(zip(strings, rows))
    table[None] = table[""] = missing_row
    return table


def canonical_categories(values: list) -> np.ndarray | None:
    """Request values of other types as canonical strings (None = missing), by the offline rules; None when
    the per-column path must decide (mixed types, floats whose precision depends on the column, nesting)."""
    try:
        arr = pa.array(values)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None
    if not any(is_type(arr.type) for is_type in _EXACT_CATEGORY_TYPES):
        return None
    try:
        return categorical_strings(arr, "?").to_numpy(zero_copy_only=False)
    except (SpecError, pa.ArrowException):  # refused: the per-column path refuses it again, naming the field
        return None


def plain_floats(values: list) -> np.ndarray | None:
    """int/float/None values as float64 with NaN for None; None if any value is itself NaN or infinite."""
    try:
        x = np.array(values, dtype=np.float64)  # None -> NaN
    except OverflowError:
        return None
    finite = np.isfinite(x)
    if int(finite.sum()) + values.count(None) != len(values):
        return None
    return x


def arrow_floats(values: list) -> np.ndarray | None:
    """Values of other types (bools, numpy scalars) as float64 by arrow; None when the per-column path must
    decide (text, non-finite values, odd types), which also names the field in its error."""
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


def vector_values(arr: pa.Array, dim: int, sep: str, fill: float, field: str) -> np.ndarray:
    """Dense vectors ``[B, dim]`` float64 from a list column or ``sep``-joined strings; a missing row (null or
    empty) is all ``fill``. Another length, text that is not a number, NaN or infinity: an error naming the
    field and the row."""
    t = arr.type
    n = len(arr)
    if pa.types.is_null(t):
        return np.full((n, dim), fill, dtype=np.float64)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        arr = arr.cast(pa.string())
        arr = pc.split_pattern(pc.if_else(pc.equal(pc.utf8_trim_whitespace(arr), ""), pa.scalar(None, pa.string()),
                                          arr), sep)
        t = arr.type
    if pa.types.is_fixed_size_list(t):
        arr = arr.cast(pa.list_(t.value_type))
    elif pa.types.is_large_list(arr.type):
        arr = arr.cast(pa.list_(arr.type.value_type))
    elif not pa.types.is_list(arr.type):
        raise SpecError(f"expected a list of {dim} numbers or a {sep!r}-joined string, got values of type {t}",
                        field=field)
    present = arr.is_valid().to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    present &= lengths > 0
    wrong = np.flatnonzero(present & (lengths != dim))
    if wrong.size:
        row = int(wrong[0])
        raise SpecError(f"row {row}: a vector of {int(lengths[row])} values, expected {dim}", field=field)
    items = pc.list_flatten(arr.filter(pa.array(present)))
    if pa.types.is_string(items.type) or pa.types.is_large_string(items.type):
        items = pc.utf8_trim_whitespace(items.cast(pa.string()))  # "0.5, 1, -1" as well as "0.5,1,-1"
    values = numeric_values(items, field)
    if np.isnan(values).any():
        raise SpecError("missing values inside a vector are not allowed", field=field)
    out = np.full((n, dim), fill, dtype=np.float64)
    out[present] = values.reshape(-1, dim)
    return out
