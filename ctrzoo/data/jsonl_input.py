"""JSON Lines input: one object per line, read in blocks of whole lines (``ctrzoo.data.reader``) and parsed by
pyarrow with one explicit schema for every block: the column types of the file's first lines, where numbers
read as float64 wherever a number is expected. A line that does not parse against it (broken JSON, not an
object, a value of another type than its column's) is a bad row at its ``file:line``; a blank line too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.json as pj

from ctrzoo.data.blocks import bisect_lines, finish_block
from ctrzoo.data.rawfile import open_raw
from ctrzoo.data.schema import DatasetSchema
from ctrzoo.data.typed import check_types, column_roles, null_tokens, read_columns
from ctrzoo.errors import DataError

if TYPE_CHECKING:
    from ctrzoo.data.inputs import InputPlan

JSON_SAMPLE_BYTES = 1 << 20  # the first lines of a JSON Lines file that its column types are inferred from

_REJECTED = "line the JSON parser rejects (broken JSON, not an object, or a value of another type than its column's)"
_BLOCK = 1 << 22
_WHITESPACE = np.array([9, 10, 13, 32], dtype=np.uint8)


def jsonl_schema(schema: DatasetSchema, files: tuple[Path, ...]) -> pa.Schema:
    """The parse schema of the columns the schema reads, from the first lines of the first file."""
    path = files[0]
    with open_raw(path) as fh:
        sample = fh.read(JSON_SAMPLE_BYTES)
        sample = sample[: sample.rfind(b"\n") + 1] or sample + b"\n"
    table = sample_table(sample, str(path))
    where = f"{path} (its first lines)"
    schema.check_columns(table.column_names, where)
    roles = column_roles(schema)
    fields = [pa.field(c, _widen(table.schema.field(c).type, roles[c])) for c in read_columns(schema)]
    arrow = pa.schema(fields)
    check_types(schema, arrow, where)
    return arrow


def sample_table(sample: bytes, file: str) -> pa.Table:
    """The sample's lines parsed together, or, when some do not parse, those that do (types unified)."""
    try:
        return pj.read_json(pa.BufferReader(sample), read_options=pj.ReadOptions(block_size=_BLOCK))
    except pa.ArrowInvalid:
        pass
    tables = []
    for line in sample.splitlines():  # a bounded sample, read once per prepare
        if line.strip():
            try:
                tables.append(pj.read_json(pa.BufferReader(line + b"\n")))
            except pa.ArrowInvalid:
                continue
    if not tables:
        raise DataError("no line of the first lines is a JSON object", file)
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return tables[0]


def _widen(t: pa.DataType, role: str) -> pa.DataType:
    """A sampled type made to fit every block: null (no value in the sample) by the column's role, integers
    as float64 where a number is expected (``1`` then ``2.5``)."""
    if pa.types.is_null(t):
        return {"number": pa.float64(), "numbers": pa.list_(pa.float64()), "items": pa.list_(pa.string())
                }.get(role, pa.string())
    if role == "number" and pa.types.is_integer(t):
        return pa.float64()
    if role == "numbers" and pa.types.is_list(t) and (pa.types.is_integer(t.value_type) or pa.types.is_null(
            t.value_type)):
        return pa.list_(pa.float64())
    if pa.types.is_list(t) and pa.types.is_null(t.value_type):
        return pa.list_(pa.string())
    return t


def parse_jsonl_chunk(chunk: bytes, n_lines: int, plan: InputPlan, file: str, first_line: int, row_base: int, bad,
                      max_line: int):
    """One block of lines -> a validated ``RawBlock``: one parse when it is clean, else bisected to the lines
    the parser rejects; blank lines are bad rows (``empty line``)."""
    arr = np.frombuffer(chunk, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)
    starts = np.concatenate([[0], ends[:-1] + 1])
    filled = ~np.isin(arr[starts], _WHITESPACE)  # a line starting with "{" (or anything but a space) is not blank
    for i in np.flatnonzero(~filled):  # lines starting with a space or empty: rare, looked at one by one
        filled[i] = bool(chunk[starts[i] : ends[i]].strip())
    blank = np.flatnonzero(~filled)
    good = np.flatnonzero(filled)
    block = max(_BLOCK, 2 * max_line)

    def parse(data: bytes, n: int):
        try:
            table = pj.read_json(pa.BufferReader(data), read_options=pj.ReadOptions(block_size=block),
                                 parse_options=pj.ParseOptions(explicit_schema=plan.arrow, newlines_in_values=False,
                                                               unexpected_field_behavior="ignore"))
        except pa.ArrowInvalid:
            return None
        return (table, np.arange(n), []) if table.num_rows == n else None

    failures: list[tuple[np.ndarray, str]] = [(blank, "empty line")] if blank.size else []
    data = chunk if not blank.size else arr[np.repeat(filled, ends - starts + 1)].tobytes()
    line_ends = np.cumsum(ends[good] - starts[good] + 1)
    tables: list[pa.Table] = []
    kept: list[np.ndarray] = []
    bisect_lines(data, good, line_ends, parse, _REJECTED, tables, kept, failures)
    table = pa.concat_tables(tables) if tables else plan.arrow.empty_table()
    kept_lines = np.concatenate([np.zeros(0, dtype=np.int64), *kept]).astype(np.int64)
    table = null_tokens(table, plan.schema.input.missing)
    return finish_block(table, kept_lines, failures, plan.schema, file, first_line, row_base, bad, len(chunk),
                        empty_reason="empty row")
