"""The input files of a schema, resolved before any row is processed: which files (directories expanded into
their part files), how each one is read, and the schema's columns checked against each file's own (its header
line, its Parquet schema, or the first lines of JSON), so a wrong column name fails before any data is read.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa

from ctrzoo.data.jsonl_input import jsonl_schema
from ctrzoo.data.parquet_input import parquet_schema
from ctrzoo.data.presets import resolve_schema
from ctrzoo.data.rawfile import open_raw
from ctrzoo.data.schema import DatasetSchema
from ctrzoo.errors import DataError

FIRST_LINE_BYTES = 1 << 20  # the longest header line (and first line) read to resolve a text file's layout


@dataclass(frozen=True)
class TextLayout:
    """How one text file is split: its delimiter, whether its first line is a header, its column names."""

    delimiter: str
    header: bool
    columns: tuple[str, ...]


@dataclass(frozen=True)
class InputPlan:
    """A schema's resolved inputs: ``files`` in order; ``text``: one layout per file (text input); ``arrow``:
    the columns read and their types (Parquet: unified over the part files; JSON Lines: the parse schema)."""

    schema: DatasetSchema
    files: tuple[Path, ...]
    text: tuple[TextLayout, ...] = ()
    arrow: pa.Schema | None = None

    @property
    def format(self) -> str:
        return self.schema.input.format

    def only(self, i: int) -> InputPlan:
        """The plan of file ``i`` alone (one unit of work of ``prepare``)."""
        return replace(self, files=(self.files[i],), text=self.text[i : i + 1])


def plan_inputs(source: str | DatasetSchema, inputs) -> InputPlan:
    """Resolve ``inputs`` (files or directories) for the schema ``source`` (or a built-in format's name)."""
    schema = resolve_schema(source)
    files = expand_inputs(inputs)
    fmt = schema.input.format
    if fmt == "text":
        layouts: list[TextLayout] = []
        for path in files:
            layouts.append(text_layout(schema, path, layouts[0] if layouts else None))
        return InputPlan(schema, files, tuple(layouts))
    if fmt == "parquet":
        return InputPlan(schema, files, arrow=parquet_schema(schema, files))
    return InputPlan(schema, files, arrow=jsonl_schema(schema, files))


def expand_inputs(inputs) -> tuple[Path, ...]:
    """Input paths as files: a directory stands for its files (recursively, in name order), without the
    hidden and ``_``-prefixed ones Spark and Hive write beside the data (``_SUCCESS``, ``.crc``) and empty
    part files. A missing path, or a file given by name that is empty, is a DataError naming it."""
    out: list[Path] = []
    for p in map(Path, inputs):
        if not p.exists():
            raise DataError("no such file", str(p))
        if p.is_dir():
            parts = sorted(f for f in p.rglob("*") if f.is_file() and f.stat().st_size > 0
                           and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts))
            if not parts:
                raise DataError("no data files in the directory (hidden and _-prefixed files are skipped)", str(p))
            out += parts
            continue
        if not p.is_file():
            raise DataError("not a regular file", str(p))
        if p.stat().st_size == 0:
            raise DataError("empty file: no data rows", str(p))
        out.append(p)
    if not out:
        raise DataError("no input files given")
    return tuple(out)


def first_line(path: Path) -> bytes:
    """The first line of a (possibly gzipped) file, without its line end; at most ``FIRST_LINE_BYTES``."""
    with open_raw(path) as fh:
        return fh.readline(FIRST_LINE_BYTES).rstrip(b"\r\n")


def split_line(line: str, delimiter: str, quoting: bool) -> list[str]:
    """One line's fields (quote-aware when the input quotes values): for the first line of a file only."""
    if not quoting:
        return line.split(delimiter)
    return next(csv.reader([line], delimiter=delimiter, quotechar='"', doublequote=True), [""])


def text_layout(schema: DatasetSchema, path: Path, first: TextLayout | None = None) -> TextLayout:
    """How ``path`` is split (see ``InputFormat``); ``first``: the first file's layout, whose header the
    other files must repeat when the column names come from it."""
    inp = schema.input
    line = first_line(path).decode("utf-8", "replace")
    declared = inp.columns
    delimiter = inp.delimiter[0]
    if len(inp.delimiter) > 1:
        want = len(declared) if declared else None
        for d in inp.delimiter:
            fields = split_line(line, d, inp.quoting)
            if (want and len(fields) == want) or (not want and d in line):
                delimiter = d
                break
    fields = split_line(line, delimiter, inp.quoting)
    header = inp.header is True or (inp.header == "auto" and tuple(fields) == declared)
    if declared:
        if first is None:
            schema.check_columns(declared, str(path))
        return TextLayout(delimiter, header, declared)
    if not header:
        columns = tuple(f"c{i}" for i in range(len(fields)))
        layout = TextLayout(delimiter, False, first.columns if first else columns)
    else:
        if not line:
            raise DataError("empty file: no header line", str(path))
        columns = tuple(f.strip() for f in fields)
        bad = sorted({c for c in columns if not c or columns.count(c) > 1})
        if bad:
            raise DataError(f"the header has empty or repeated column names {bad}", str(path), 1)
        if first is not None and columns != first.columns:
            raise DataError(f"unexpected header: expected the first file's {delimiter.join(first.columns)[:200]!r}, "
                            f"got {line[:200]!r}", str(path), 1)
        layout = TextLayout(delimiter, True, columns)
    if first is None:
        schema.check_columns(layout.columns, str(path))
    return layout


