"""Parquet input: single files or directories of part files (as Spark and Hive write them), read with
``pyarrow.dataset`` one row group at a time (in batches of about ``block_bytes``), never a file whole, and only
the columns the schema reads. A bad row is named ``file:N``, N its 1-based row in the file.
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
from ctrzoo.data.typed import check_types, null_tokens, read_columns
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
    return unified


def read_parquet(plan: InputPlan, path: Path, bad, block_bytes: int, hasher, row_base: int) -> Iterator:
    """Validated blocks of one Parquet file; returns the number of rows read (the generator's value)."""
    file = str(path)
    if hasher is not None:
        with open(path, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                hasher.update(chunk)
    try:
        fragment = next(iter(pads.dataset(file, format="parquet").get_fragments()))
        meta = fragment.metadata
        row_bytes = max(1, sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
                        // max(meta.num_rows, 1))
        batches = fragment.to_batches(columns=plan.arrow.names, batch_size=max(1024, block_bytes // row_bytes))
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"damaged Parquet file ({_short(exc)})", file) from None
    row = 0
    while True:
        try:
            batch = next(batches, None)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"damaged Parquet file after row {row} ({_short(exc)})", file) from None
        if batch is None:
            break
        table = pa.Table.from_batches([batch]).cast(plan.arrow)
        n = table.num_rows
        table, ok, failures = validate(null_tokens(table, plan.schema.input.missing), plan.schema, empty_reason=None)
        numbers = row + np.arange(n, dtype=np.int64)
        bad.report(file, [(numbers[mask] + 1, reason) for mask, reason in failures])
        yield RawBlock(table.filter(pa.array(ok)), file, numbers[ok] + 1, row_base + numbers[ok], table.nbytes)
        row += n
    return row


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return text if len(text) <= 200 else text[:197] + "..."
