"""Row checks of a block of raw rows, vectorized: labels decided, weight and declared checks applied.

``validate(table, schema)`` returns the typed table (each label an int8 0/1 column under its name, numbers as
float64), the mask of rows kept and ``(row mask, reason)`` for the rows rejected, each row counted once, under
the first reason that rejects it (labels, then the weight, then the checks in the schema's order).
"""

from __future__ import annotations

import operator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ctrzoo.data.schema import Check, DatasetSchema, Label
from ctrzoo.errors import SpecError
from ctrzoo.features.transforms import to_timestamp

_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt,
        "<": operator.lt}


class _Rejects:
    """Rows rejected so far and why; a row is counted under the first reason only."""

    def __init__(self, n: int):
        self.mask = np.zeros(n, dtype=bool)
        self.failures: list[tuple[np.ndarray, str]] = []

    def fail(self, mask: np.ndarray, reason: str) -> None:
        new = mask & ~self.mask
        if new.any():
            self.failures.append((new, reason))
            self.mask |= new


def validate(table: pa.Table, schema: DatasetSchema, empty_reason: str | None = "empty line"
             ) -> tuple[pa.Table, np.ndarray, list[tuple[np.ndarray, str]]]:
    """Decide labels, check the weight and the schema's row checks: the typed table, the ok mask, and
    ``(row mask, reason)`` per reason. ``empty_reason``: what a row with every value missing is called."""
    rejects = _Rejects(table.num_rows)
    columns = {name: table.column(name).combine_chunks() for name in table.column_names}
    decided = {}
    for lab in schema.labels:
        values, failures = decide_label(columns[lab.column], lab)
        missing = failures[0][0]  # the first reason is always the missing label
        if empty_reason and missing.any():
            empty = np.logical_and.reduce([_is_null(c) for c in columns.values()])
            rejects.fail(missing & empty, empty_reason)
        for mask, reason in failures:
            rejects.fail(mask, reason)
        decided[lab.name] = pa.array(values)
    columns.update(decided)
    if schema.weight:
        w, not_number = parse_numbers(columns[schema.weight])
        x = w.to_numpy(zero_copy_only=False)
        rejects.fail(np.isnan(x) & ~not_number, f"missing weight ({schema.weight})")
        rejects.fail(not_number, f"weight ({schema.weight}) is not a number")
        with np.errstate(invalid="ignore"):
            rejects.fail(x < 0, f"weight ({schema.weight}) is negative")
        columns[schema.weight] = w
    for check in schema.row_checks():
        columns[check.column] = apply_check(columns[check.column], check, rejects)
    return pa.table(columns), ~rejects.mask, rejects.failures


def decide_label(col: pa.Array, lab: Label) -> tuple[np.ndarray, list[tuple[np.ndarray, str]]]:
    """The 0/1 label of each row (int8 ``[B]``, 0 where undecided) and ``(mask, reason)`` of the rows whose
    label the rule cannot decide: missing first (``missing label (COLUMN)``), then the rule's own reason."""
    if lab.positive:
        text = pc.utf8_trim_whitespace(col if pa.types.is_string(col.type) else pc.cast(col, pa.string()))
        missing = _is_null(text) | pc.equal(text, "").fill_null(False).to_numpy(zero_copy_only=False)
        pos = pc.is_in(text, value_set=pa.array(lab.positive)).to_numpy(zero_copy_only=False) & ~missing
        failures = [(missing, f"missing label ({lab.column})")]
        if lab.negative:
            neg = pc.is_in(text, value_set=pa.array(lab.negative)).to_numpy(zero_copy_only=False)
            failures.append((~missing & ~pos & ~neg, f"label ({lab.column}) is neither {_listed(lab.positive)} "
                             f"nor {_listed(lab.negative)}"))
        return pos.astype(np.int8), failures
    values, not_number = parse_numbers(col)
    x = values.to_numpy(zero_copy_only=False)
    missing = np.isnan(x) & ~not_number
    if lab.compare:
        op, threshold = lab.compare
        with np.errstate(invalid="ignore"):
            out = _OPS[op](x, threshold) & ~np.isnan(x)
        return out.astype(np.int8), [(missing, f"missing label ({lab.column})"),
                                     (not_number, f"label ({lab.column}) is not a number")]
    with np.errstate(invalid="ignore"):
        not_binary = not_number | ~(np.isnan(x) | (x == 0) | (x == 1))
    return np.nan_to_num(x).astype(np.int8), [(missing, f"missing label ({lab.column})"),
                                              (not_binary, f"label ({lab.column}) is not 0 or 1")]


def apply_check(col: pa.Array, check: Check, rejects: _Rejects) -> pa.Array:
    """Reject the rows failing ``check``; the column as the rest of prepare reads it (numbers as float64)."""
    if check.required:
        rejects.fail(_is_null(col) | _blank(col), f"missing {check.column} (the time split's column)")
    if check.kind in ("integer", "number"):
        values, not_number = parse_numbers(col)
        v = values.to_numpy(zero_copy_only=False)
        rejects.fail(not_number, check.why())
        if check.kind == "integer":
            with np.errstate(invalid="ignore"):
                rejects.fail(np.isfinite(v) & (np.floor(v) != v), check.why())
        return values
    if check.kind == "pattern":
        text = col if pa.types.is_string(col.type) else pc.cast(col, pa.string())
        matches = pc.match_substring_regex(text, check.pattern).fill_null(True).to_numpy(zero_copy_only=False)
        rejects.fail(~matches, check.why())
    elif check.kind == "time":
        rejects.fail(_bad_times(col, check.time_format, check.column), check.why())
    elif check.kind == "vector":
        rejects.fail(_bad_vectors(col, check.dim, check.sep), check.why())
    return col


def parse_numbers(col: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Float64 values (null -> NaN) and a mask of values that are not (finite) numbers; one cast when clean."""
    t = col.type
    if pa.types.is_null(t):
        return pa.array(np.full(len(col), np.nan)), np.zeros(len(col), dtype=bool)
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        if pa.types.is_dictionary(t):
            return parse_numbers(col.dictionary_decode())
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            return pa.nulls(len(col), pa.float64()), ~_is_null(col)
        values = pc.cast(col, pa.float64())
        bad = pc.invert(pc.is_finite(values)).fill_null(False).to_numpy(zero_copy_only=False)
        return values, bad
    try:
        values = pc.cast(col, pa.float64())
        not_number = np.zeros(len(col), dtype=bool)
        if pc.any(pc.is_nan(values)).as_py() or pc.any(pc.is_inf(values)).as_py():
            not_number = pc.invert(pc.is_finite(values)).fill_null(False).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        looks = pc.match_substring_regex(col, _NUMBER).fill_null(True)
        not_number = pc.invert(looks).to_numpy(zero_copy_only=False)
        values = pc.cast(pc.if_else(looks, col, pa.scalar(None, col.type)), pa.float64())
        not_number &= ~_is_null(col)
    return values, not_number


def _bad_times(col: pa.Array, fmt: str, column: str) -> np.ndarray:
    """Rows whose (present) time ``to_timestamp`` cannot read: one call on a clean block; on a block with bad
    values, its distinct values are halved until each bad one is found (few calls per bad value)."""
    try:
        to_timestamp(col, fmt, column)
        return np.zeros(len(col), dtype=bool)
    except SpecError:
        pass
    uniques = pc.unique(col.dictionary_decode() if pa.types.is_dictionary(col.type) else col).drop_null()
    bad: list[pa.Array] = []

    def search(part: pa.Array) -> None:
        try:
            to_timestamp(part, fmt, column)
        except SpecError:
            if len(part) == 1:
                bad.append(part)
            else:
                search(part.slice(0, len(part) // 2))
                search(part.slice(len(part) // 2))

    search(uniques)
    values = pa.concat_arrays(bad) if bad else pa.array([], uniques.type)
    return pc.is_in(col, value_set=values).fill_null(False).to_numpy(zero_copy_only=False)


def _bad_vectors(col: pa.Array, dim: int, sep: str) -> np.ndarray:
    """Rows holding something other than ``dim`` finite numbers (a missing or empty value is fine: it is filled),
    by the reading of ``ctrzoo.features.columns.vector_values``."""
    t = col.type
    n = len(col)
    if pa.types.is_null(t):
        return np.zeros(n, dtype=bool)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        blank = pc.equal(pc.utf8_trim_whitespace(col), "")
        col = pc.split_pattern(pc.if_else(blank, pa.scalar(None, col.type), col), sep)
    elif pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
        col = col.cast(pa.list_(t.value_type))
    elif not pa.types.is_list(t):
        return ~_is_null(col)
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    bad = (lengths > 0) & (lengths != dim)
    items = pc.list_flatten(col)
    if pa.types.is_string(items.type) or pa.types.is_large_string(items.type):
        items = pc.utf8_trim_whitespace(items)
    values, not_number = parse_numbers(items)
    item_bad = not_number | np.isnan(values.to_numpy(zero_copy_only=False))
    if item_bad.any():
        rows = np.repeat(np.arange(n), lengths)
        bad |= np.bincount(rows[item_bad], minlength=n) > 0
    return bad


def _is_null(arr: pa.Array) -> np.ndarray:
    return arr.is_null().to_numpy(zero_copy_only=False)


def _blank(arr: pa.Array) -> np.ndarray:
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return np.zeros(len(arr), dtype=bool)
    return pc.equal(pc.utf8_trim_whitespace(arr), "").fill_null(False).to_numpy(zero_copy_only=False)


def _listed(values: tuple[str, ...]) -> str:
    return repr(values[0]) if len(values) == 1 else "/".join(map(repr, values))
