"""Streaming reader for raw CTR logs: fixed-size byte blocks, parsed by pyarrow, validated vectorized.

Each block knows the physical line number of every row, so a bad row is reported as ``file:line: reason``
while the common (clean) path does no per-line work in Python at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from ctrzoo.data.formats import RawFormat, open_raw, resolve_format
from ctrzoo.errors import DataError

DEFAULT_BLOCK_BYTES = 32 << 20
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


@dataclass
class RawBlock:
    """Valid rows of one block: typed raw columns, physical line numbers and global data-row indices."""

    table: pa.Table
    file: str
    lines: np.ndarray
    row_index: np.ndarray
    nbytes: int


@dataclass
class BadRows:
    """Bad rows counted by reason, with the first few locations of each; ``strict`` raises instead."""

    strict: bool = False
    keep_first: int = 5
    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, list[str]] = field(default_factory=dict)

    def report(self, file: str, failures: list[tuple[np.ndarray, str]]) -> None:
        """Record ``(line numbers, reason)`` pairs; in strict mode raise at the earliest line instead."""
        failures = [(lines, reason) for lines, reason in failures if lines.size]
        if self.strict and failures:
            line, reason = min((int(lines.min()), reason) for lines, reason in failures)
            raise DataError(reason, file, line)
        for lines, reason in failures:
            self.add(file, lines, reason)

    def merge(self, other: BadRows) -> None:
        """Fold in another file's (or worker's) counts; first locations stay in file order."""
        for reason, count in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + count
            room = self.keep_first - len(self.first.setdefault(reason, []))
            self.first[reason] += other.first[reason][: max(room, 0)]

    def add(self, file: str, lines: np.ndarray, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + int(lines.size)
        slots = self.keep_first - len(self.first.setdefault(reason, []))
        self.first[reason] += [f"{file}:{int(x)}" for x in np.sort(lines)[: max(slots, 0)]]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict:
        return {"total": self.total, "by_reason": {r: {"count": c, "first": self.first[r]} for r, c in self.counts.items()}}


def check_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Resolve input paths, failing early and clearly on missing or empty files."""
    out = []
    for p in map(Path, paths):
        if not p.exists():
            raise DataError("no such file", str(p))
        if not p.is_file():
            raise DataError("not a regular file", str(p))
        if p.stat().st_size == 0:
            raise DataError("empty file: no data rows", str(p))
        out.append(p)
    if not out:
        raise DataError("no input files given")
    return out


def read_blocks(
    paths: Iterable[Path],
    kind: str,
    bad: BadRows,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    hasher=None,
) -> Iterator[RawBlock]:
    """Yield validated blocks of every file in order; ``row_index`` counts data lines across files."""
    row_base = 0
    for path in paths:
        fmt = resolve_format(kind, path)
        with open_raw(path) as fh:
            first_line = 1
            if fmt.has_header:
                header = fh.readline()
                if hasher is not None:
                    hasher.update(header)
                _check_header(header, fmt, str(path))
                first_line = 2
            rows_in_file = 0
            for chunk in _chunks(fh, block_bytes):
                if hasher is not None:
                    hasher.update(chunk)
                block = _parse_chunk(chunk, fmt, str(path), first_line, row_base, bad)
                n_lines = chunk.count(b"\n")
                first_line += n_lines
                row_base += n_lines
                rows_in_file += n_lines
                yield block
            if rows_in_file == 0:
                raise DataError("empty file: no data rows", str(path))


def _check_header(header: bytes, fmt: RawFormat, file: str) -> None:
    got = header.rstrip(b"\r\n").decode("utf-8", "replace")
    want = fmt.delimiter.join(fmt.columns)
    if not got:
        raise DataError("empty file: no header line", file)
    if got != want:
        raise DataError(f"unexpected header for {fmt.name}: expected {want!r}, got {got[:200]!r}", file, 1)


def _chunks(fh, block_bytes: int) -> Iterator[bytes]:
    """Blocks of whole lines, each ending in a newline."""
    carry = b""
    while True:
        buf = fh.read(block_bytes)
        if not buf:
            if carry:
                yield carry if carry.endswith(b"\n") else carry + b"\n"
            return
        data = carry + buf if carry else buf
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            continue
        carry = data[cut + 1 :]
        yield data[: cut + 1]


def _parse_chunk(chunk: bytes, fmt: RawFormat, file: str, first_line: int, row_base: int, bad: BadRows) -> RawBlock:
    n_lines = chunk.count(b"\n")
    skipped = [0]

    def on_invalid(_row) -> str:
        skipped[0] += 1
        return "skip"

    try:
        table = pcsv.read_csv(
            pa.py_buffer(chunk),
            read_options=pcsv.ReadOptions(column_names=list(fmt.columns), use_threads=True, block_size=1 << 22),
            parse_options=pcsv.ParseOptions(
                delimiter=fmt.delimiter,
                quote_char=False,
                double_quote=False,
                escape_char=False,
                newlines_in_values=False,
                ignore_empty_lines=False,
                invalid_row_handler=on_invalid,
            ),
            convert_options=pcsv.ConvertOptions(
                column_types={c: pa.string() for c in fmt.columns}, strings_can_be_null=True, null_values=[""]
            ),
        )
    except pa.ArrowInvalid as exc:
        raise DataError(f"cannot parse the block starting here: {exc}", file, first_line) from None
    kept = np.arange(n_lines, dtype=np.int64)
    failures: list[tuple[np.ndarray, str]] = []
    if skipped[0]:
        kept, failures = _locate_wrong_width(chunk, fmt, first_line)
    if len(kept) != table.num_rows:
        raise DataError(f"internal: parsed {table.num_rows} rows but located {len(kept)}", file, first_line)
    lines = first_line + kept
    table, ok, type_failures = _validate(table, fmt)
    bad.report(file, failures + [(lines[mask], reason) for mask, reason in type_failures])
    return RawBlock(table.filter(pa.array(ok)), file, lines[ok], row_base + kept[ok], len(chunk))


def _locate_wrong_width(chunk: bytes, fmt: RawFormat, first_line: int) -> tuple[np.ndarray, list]:
    """Only on blocks with wrong-width rows: per-line field counts from byte positions, vectorized."""
    arr = np.frombuffer(chunk, dtype=np.uint8)
    newlines = np.flatnonzero(arr == 10)
    delims = np.flatnonzero(arr == ord(fmt.delimiter))
    per_line = np.diff(np.concatenate([[0], np.searchsorted(delims, newlines)])) + 1
    starts = np.concatenate([[0], newlines[:-1] + 1])
    lengths = newlines - starts
    empty = (lengths == 0) | ((lengths == 1) & (arr[np.minimum(starts, len(arr) - 1)] == 13))
    wrong = (per_line != len(fmt.columns)) & ~empty
    idx = np.flatnonzero(wrong)
    failures = [
        (first_line + idx[per_line[idx] == got], f"wrong column count: expected {len(fmt.columns)}, got {int(got)}")
        for got in np.unique(per_line[idx])
    ]
    return np.flatnonzero(~wrong).astype(np.int64), failures


def _validate(table: pa.Table, fmt: RawFormat) -> tuple[pa.Table, np.ndarray, list[tuple[np.ndarray, str]]]:
    """Type-check label, numeric and pattern fields: the typed table, the ok mask, (row mask, reason)s."""
    n = table.num_rows
    reject = np.zeros(n, dtype=bool)
    failures: list[tuple[np.ndarray, str]] = []

    def fail(mask: np.ndarray, reason: str) -> None:
        new = mask & ~reject
        if new.any():
            failures.append((new, reason))
            reject[:] |= new

    columns = {name: table.column(name).combine_chunks() for name in table.column_names}
    label, not_number = _parse_numbers(columns[fmt.label])
    lab = label.to_numpy(zero_copy_only=False)
    missing = np.isnan(lab) & ~not_number
    if missing.any():
        empty = np.logical_and.reduce([_is_null(c) for c in columns.values()])
        fail(missing & empty, "empty line")
    fail(missing, f"missing label ({fmt.label})")
    fail(not_number | ~(np.isnan(lab) | (lab == 0) | (lab == 1)), f"label ({fmt.label}) is not 0 or 1")
    columns[fmt.label] = pa.array(np.nan_to_num(lab).astype(np.int8))
    for name in fmt.integer_fields + fmt.float_fields:
        values, not_number = _parse_numbers(columns[name])
        v = values.to_numpy(zero_copy_only=False)
        fail(not_number, f"{name} is not {'an integer' if name in fmt.integer_fields else 'a number'}")
        if name in fmt.integer_fields:
            with np.errstate(invalid="ignore"):
                fail(np.isfinite(v) & (np.floor(v) != v), f"{name} is not an integer")
        columns[name] = values
    for name, (pattern, reason) in fmt.patterns.items():
        col = columns[name]
        matches = pc.match_substring_regex(col, pattern).fill_null(True).to_numpy(zero_copy_only=False)
        fail(~matches, reason)
    return pa.table(columns), ~reject, failures


def _is_null(arr: pa.Array) -> np.ndarray:
    return arr.is_null().to_numpy(zero_copy_only=False)


def _parse_numbers(col: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Float64 values (null -> NaN) and a mask of texts that are not numbers; fast path is one cast."""
    try:
        values = pc.cast(col, pa.float64())
        not_number = np.zeros(len(col), dtype=bool)
        if pc.any(pc.is_nan(values)).as_py() or pc.any(pc.is_inf(values)).as_py():
            not_number = pc.invert(pc.is_finite(values)).fill_null(False).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        looks = pc.match_substring_regex(col, _NUMBER).fill_null(True)
        not_number = pc.invert(looks).to_numpy(zero_copy_only=False)
        values = pc.cast(pc.if_else(looks, col, pa.scalar(None, pa.string())), pa.float64())
        not_number &= ~_is_null(col)
    return values, not_number


