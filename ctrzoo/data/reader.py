"""Streaming reader for raw CTR logs: fixed-size byte blocks, parsed by pyarrow, validated vectorized.

Each block knows the physical line number of every row, so a bad row is reported as ``file:line: reason``
while the common (clean) path does no per-line work in Python at all. Text files are split here; JSON Lines
share the line handling (``ctrzoo.data.jsonl_input`` parses their blocks), Parquet files are read by row
group (``ctrzoo.data.parquet_input``). What a row must hold is the schema's (``ctrzoo.data.checks``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from ctrzoo.data.blocks import BadRows, RawBlock, finish_block, is_utf8, parse_dirty
from ctrzoo.data.inputs import InputPlan, TextLayout, plan_inputs, split_line
from ctrzoo.data.jsonl_input import parse_jsonl_chunk
from ctrzoo.data.parquet_input import read_parquet
from ctrzoo.data.rawfile import GzipDataError, open_raw
from ctrzoo.data.schema import DatasetSchema
from ctrzoo.errors import DataError

__all__ = ["DEFAULT_BLOCK_BYTES", "DEFAULT_MAX_LINE_BYTES", "BadRows", "RawBlock", "read_blocks", "read_file"]

DEFAULT_BLOCK_BYTES = 32 << 20
DEFAULT_MAX_LINE_BYTES = 1 << 20  # a longer line is a bad row, skipped without buffering it
_ARROW_BLOCK_BYTES = 1 << 22  # pyarrow's own block; a line must stay well under it (else "straddling")


def read_blocks(
    paths: Iterable[Path],
    source: str | DatasetSchema | InputPlan,
    bad: BadRows,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    hasher=None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[RawBlock]:
    """Yield validated blocks of every file in order; ``row_index`` counts data rows (lines) across files.

    ``source``: a schema, a built-in format's name, or an ``InputPlan`` already made for ``paths`` (whose
    files are read then). No line can abort the read: a line that is too long, not UTF-8, holds a NUL or a
    bare ``\\r``, or that the parser rejects is a bad row of ``bad`` (in strict mode: a DataError at its
    ``file:line``). A truncated or corrupt .gz file is a DataError naming the last whole line read.
    """
    plan = source if isinstance(source, InputPlan) else plan_inputs(source, paths)
    row_base = 0
    for i in range(len(plan.files)):
        row_base += yield from read_file(plan.only(i), bad, block_bytes, hasher, max_line_bytes, row_base)


def read_file(plan: InputPlan, bad: BadRows, block_bytes: int = DEFAULT_BLOCK_BYTES, hasher=None,
              max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, row_base: int = 0) -> Iterator[RawBlock]:
    """The blocks of a one-file plan; the generator's value is its number of data rows (lines)."""
    path = plan.files[0]
    if plan.format == "parquet":
        return (yield from read_parquet(plan, path, bad, block_bytes, hasher, row_base))
    if plan.format == "jsonl":
        def parse(chunk, n_lines, first_line, base):
            return parse_jsonl_chunk(chunk, n_lines, plan, str(path), first_line, base, bad, max_line_bytes)

        return (yield from _read_lines(path, None, parse, bad, block_bytes, hasher, max_line_bytes, row_base))
    layout = plan.text[0]

    def parse_text(chunk, n_lines, first_line, base):
        return _parse_chunk(chunk, n_lines, layout, plan.schema, str(path), first_line, base, bad, max_line_bytes)

    return (yield from _read_lines(path, layout, parse_text, bad, block_bytes, hasher, max_line_bytes, row_base,
                                   plan.schema.name))


def _read_lines(path: Path, layout: TextLayout | None, parse, bad: BadRows, block_bytes: int, hasher,
                max_line_bytes: int, row_base: int, name: str = "") -> Iterator[RawBlock]:
    """A line-based file (text or JSON Lines) in blocks of whole lines: its header checked (and hashed), each
    block handed to ``parse``; an over-long line is a bad row. Returns the number of data lines."""
    file = str(path)
    with open_raw(path) as fh:
        first_line = 1
        rows_in_file = 0
        try:
            if layout is not None and layout.header:
                header = fh.readline(max_line_bytes + 2)
                if hasher is not None:
                    hasher.update(header)
                _check_header(header, layout, file, name)
                first_line = 2
            for chunk in _chunks(fh, block_bytes, max_line_bytes, hasher):
                if isinstance(chunk, int):
                    bad.report(file, [(np.array([first_line]), f"line longer than {max_line_bytes} bytes")])
                    n_lines = 1
                else:
                    n_lines = chunk.count(b"\n")  # no temporary array: peak RSS stays as it was
                    yield parse(chunk, n_lines, first_line, row_base + rows_in_file)
                first_line += n_lines
                rows_in_file += n_lines
        except GzipDataError as exc:
            last = first_line - 1
            where = f"after line {last} (the last whole line read)" if last else "before the first whole line"
            raise DataError(f"{exc.detail} {where}", file, last or None) from None
        if rows_in_file == 0:
            raise DataError("empty file: no data rows", file)
    return rows_in_file


def _check_header(header: bytes, layout: TextLayout, file: str, name: str) -> None:
    got = header.rstrip(b"\r\n").decode("utf-8", "replace")
    if not got:
        raise DataError("empty file: no header line", file)
    if layout.delimiter.join(layout.columns) == got:
        return
    if tuple(split_line(got, layout.delimiter, True)) != layout.columns:  # a quoted header is the same header
        want = layout.delimiter.join(layout.columns)
        raise DataError(f"unexpected header for {name}: expected {want!r}, got {got[:200]!r}", file, 1)


def _chunks(fh, block_bytes: int, max_line: int, hasher=None) -> Iterator[bytes | int]:
    """Blocks of whole lines, each ending in a newline, no line longer than ``max_line`` bytes.

    A longer line is skipped while it is read (memory stays within ``block_bytes + max_line``) and yielded
    as its length instead, in its place. Checking line lengths costs about one ``rfind`` per ``max_line``
    bytes. ``hasher`` sees every byte (a missing final newline added), as the blocks did before.
    """
    update = hasher.update if hasher is not None else (lambda _data: None)
    carry = b""
    skipping = -1  # >= 0: bytes so far of an over-long line that is being skipped
    while buf := fh.read(block_bytes):
        if skipping >= 0:
            nl = buf.find(b"\n")
            if nl < 0:
                update(buf)
                skipping += len(buf)
                continue
            update(buf[: nl + 1])
            yield skipping + nl
            skipping, buf = -1, buf[nl + 1 :]
        data = carry + buf if carry else buf
        start = pos = 0  # start: first byte not yet yielded; pos: a line start, lines before it checked
        while len(data) - pos > max_line:
            nl = data.rfind(b"\n", pos, pos + max_line + 1)
            if nl >= 0:
                pos = nl + 1
                continue
            if pos > start:
                piece = data[start:pos]
                update(piece)
                yield piece
            nl = data.find(b"\n", pos + max_line)
            if nl < 0:
                update(data[pos:])
                skipping, start = len(data) - pos, len(data)
                break
            update(data[pos : nl + 1])
            yield nl - pos
            start = pos = nl + 1
        cut = data.rfind(b"\n", start)
        if cut >= 0:
            piece = data[start : cut + 1]  # one copy, hashed and yielded (a second slice would double the peak)
            update(piece)
            yield piece
            start = cut + 1
        carry = data[start:]
    if skipping >= 0:
        update(b"\n")
        yield skipping
    elif carry:
        update(carry + b"\n")
        yield carry + b"\n"


def _parse_chunk(chunk: bytes, n_lines: int, layout: TextLayout, schema: DatasetSchema, file: str, first_line: int,
                 row_base: int, bad: BadRows, max_line: int) -> RawBlock:
    """One pyarrow parse on a clean block; a block it cannot account for line by line is taken apart."""
    arrow_block = max(_ARROW_BLOCK_BYTES, 2 * max_line)
    # ~3 ms per 32 MB: pyarrow keeps NULs silently, and on invalid UTF-8 in a wrong-width row it prints an
    # "unraisable" decode error before failing, so such blocks go straight to the slow path.
    clean = b"\0" not in chunk and (chunk.isascii() or is_utf8(chunk, 0, len(chunk)))

    def parse(data: bytes, n: int):
        return _parse_lines(data, n, layout, schema, arrow_block)

    parsed = parse(chunk, n_lines) if clean else None
    if parsed is None:
        empty = pa.table({c: pa.array([], pa.string()) for c in layout.columns})
        parsed = parse_dirty(chunk, parse, "line the CSV parser rejects", empty)
    table, kept, failures = parsed
    del parsed  # the text table is freed once it is validated (peak memory)
    return finish_block(table, kept, failures, schema, file, first_line, row_base, bad, len(chunk))


def _parse_lines(data: bytes, n_lines: int, layout: TextLayout, schema: DatasetSchema, arrow_block: int):
    """``(table, kept line indices, [(line indices, reason)])``, or None if a row cannot be tied to its line.

    pyarrow sees one row per line unless a bare ``\\r`` splits one (it is a line end there), so rows plus
    skipped wrong-width rows equal the lines exactly when every row is where it should be.
    """
    skipped = [0]

    def on_invalid(_row) -> str:
        skipped[0] += 1
        return "skip"

    quoting = schema.input.quoting
    try:
        table = pcsv.read_csv(
            pa.py_buffer(data),
            read_options=pcsv.ReadOptions(column_names=list(layout.columns), use_threads=True,
                                          block_size=arrow_block),
            parse_options=pcsv.ParseOptions(
                delimiter=layout.delimiter,
                quote_char='"' if quoting else False,
                double_quote=quoting,
                escape_char=False,
                newlines_in_values=False,
                ignore_empty_lines=False,
                invalid_row_handler=on_invalid,
            ),
            convert_options=pcsv.ConvertOptions(
                column_types={c: pa.string() for c in layout.columns}, strings_can_be_null=True,
                null_values=list(schema.input.missing), quoted_strings_can_be_null=True,
            ),
        )
    except pa.ArrowInvalid:
        return None
    if table.num_rows + skipped[0] != n_lines:
        return None
    kept, failures = np.arange(n_lines, dtype=np.int64), []
    if skipped[0]:
        kept, failures = _locate_wrong_width(data, layout, quoting)
    if len(kept) != table.num_rows:
        return None
    return table, kept, failures


def _locate_wrong_width(chunk: bytes, layout: TextLayout, quoting: bool) -> tuple[np.ndarray, list]:
    """Only on blocks with wrong-width rows: per-line field counts from byte positions, vectorized (with
    quoting, delimiters between an odd and an even quote of their line are inside a value and not counted)."""
    arr = np.frombuffer(chunk, dtype=np.uint8)
    newlines = np.flatnonzero(arr == 10)
    delims = np.flatnonzero(arr == ord(layout.delimiter))
    if quoting:
        parity = np.cumsum(arr == ord('"'), dtype=np.uint8) & 1  # one byte per byte; wrapping keeps the parity
        at_line_start = np.concatenate([[0], parity[newlines]])[np.searchsorted(newlines, delims)]
        delims = delims[(parity[delims] ^ at_line_start) == 0]
    per_line = np.diff(np.concatenate([[0], np.searchsorted(delims, newlines)])) + 1
    starts = np.concatenate([[0], newlines[:-1] + 1])
    lengths = newlines - starts
    empty = (lengths == 0) | ((lengths == 1) & (arr[np.minimum(starts, len(arr) - 1)] == 13))
    n_columns = len(layout.columns)
    wrong = (per_line != n_columns) & ~empty
    idx = np.flatnonzero(wrong)
    failures = [
        (idx[per_line[idx] == got], f"wrong column count: expected {n_columns}, got {int(got)}")
        for got in np.unique(per_line[idx])
    ]
    return np.flatnonzero(~wrong).astype(np.int64), failures
