"""Parquet input: single files or directories of part files (as Spark and Hive write them), read with
``pyarrow.dataset`` one row group at a time (validated in slices of about ``block_bytes``), never a file whole,
and only the columns the schema reads. A bad row is named ``file:N``, N its 1-based row in the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ctrzoo.data.blocks import RawBlock
from ctrzoo.data.checks import validate
from ctrzoo.data.schema import DatasetSchema
from ctrzoo.data.typed import check_types, column_roles, null_tokens, read_columns
from ctrzoo.errors import DataError

if TYPE_CHECKING:
    from ctrzoo.data.inputs import InputPlan

_HASH_CHUNK = 1 << 24


def parquet_schema(schema: DatasetSchema, files: tuple[Path, ...]) -> pa.Schema:
    """The columns the schema reads, with their types unified over the files (footers only; each file must
    have every column)."""
    columns = read_columns(schema)
    parts = []
    for path in files:
        try:
            file_schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"not a readable Parquet file ({_short(exc)})", str(path)) from None
        schema.check_columns(file_schema.names, str(path))
        parts.append(pa.schema([file_schema.field(c) for c in columns]))
    try:
        unified = pa.unify_schemas(parts, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"the Parquet files disagree on column types ({_short(exc)})", str(files[0])) from None
    check_types(schema, unified, str(files[0]))
    roles = column_roles(schema)
    # single text values (categories, ids, labels by value) are read as the dictionaries Parquet stores them
    # in: no string is materialized, and the encoder works on the distinct values only
    return pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), pa.string()))
                      if roles[f.name] == "value" and pa.types.is_string(f.type) else f for f in unified])


def read_parquet(plan: InputPlan, path: Path, bad, block_bytes: int, hasher, row_base: int) -> Iterator:
    """Validated blocks of one Parquet file; returns the number of rows read (the generator's value)."""
    file = str(path)
    if hasher is not None:
        with open(path, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                hasher.update(chunk)
    try:
        dictionaries = [f.name for f in plan.arrow if pa.types.is_dictionary(f.type)]
        fmt = pads.ParquetFileFormat(read_options=pads.ParquetReadOptions(dictionary_columns=dictionaries))
        fragment = next(iter(pads.dataset(file, format=fmt).get_fragments()))
        meta = fragment.metadata
        sizes = [meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)]
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"damaged Parquet file ({_short(exc)})", file) from None
    row = 0
    for ids in _runs(sizes, block_bytes):
        try:
            table = fragment.subset(row_group_ids=ids).to_table(columns=plan.arrow.names).cast(plan.arrow)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"damaged Parquet file, row group {ids[0]} (after row {row}) ({_short(exc)})",
                            file) from None
        # a large row group is validated and handed on in slices of about ``block_bytes`` (zero-copy)
        step = max(1024, int(block_bytes * table.num_rows // max(table.nbytes, 1)))
        for start in range(0, table.num_rows, step):
            part = table.slice(start, step)
            n = part.num_rows
            part, ok, failures = validate(null_tokens(part, plan.schema.input.missing), plan.schema,
                                          empty_reason=None)
            numbers = row + np.arange(n, dtype=np.int64)
            bad.report(file, [(numbers[mask] + 1, reason) for mask, reason in failures])
            yield RawBlock(part.filter(pa.array(ok)), file, numbers[ok] + 1, row_base + numbers[ok], part.nbytes)
            row += n
        del table
    return row


def _runs(sizes: list[int], block_bytes: int) -> list[list[int]]:
    """Consecutive row groups read together, up to about ``block_bytes`` (uncompressed) a run: small row groups
    (streaming writers make them) do not each pay a block's fixed cost; a large one is a run of its own."""
    runs: list[list[int]] = []
    total = 0
    for g, size in enumerate(sizes):
        if runs and total + size <= block_bytes:
            runs[-1].append(g)
            total += size
        else:
            runs.append([g])
            total = size
    return runs


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return text if len(text) <= 200 else text[:197] + "..."
