"""The input files of a schema, resolved before any row is processed: which files (directories expanded into
their part files), how each one is read, and the schema's columns checked against each file's own (its header
line, its Parquet schema, or the first lines of JSON), so a wrong column name fails before any data is read.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ctrzoo.data.presets import resolve_schema
from ctrzoo.data.rawfile import open_raw
from ctrzoo.data.schema import DatasetSchema, SchemaError
from ctrzoo.errors import DataError
from ctrzoo.features.spec import Bucketized, DenseVector, MultiValue, Numeric, SequenceFeature

FIRST_LINE_BYTES = 1 << 20  # the longest header line (and first line) read to resolve a text file's layout
JSON_SAMPLE_BYTES = 1 << 20  # the first lines of a JSON Lines file that its column types are inferred from


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
        from ctrzoo.data.parquet_input import parquet_schema

        return InputPlan(schema, files, arrow=parquet_schema(schema, files))
    from ctrzoo.data.jsonl_input import jsonl_schema

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


def column_roles(schema: DatasetSchema) -> dict[str, str]:
    """What each column the schema reads holds: ``number``, ``numbers`` (a vector), ``items`` (a bag or
    sequence) or ``value``; the types of columns read from JSON without a sample value follow it."""
    roles: dict[str, str] = {}
    for _, column in schema.column_refs():
        roles.setdefault(column, "value")
    for lab in schema.labels:
        if lab.compare or not lab.positive:
            roles[lab.column] = "number"
    if schema.weight:
        roles[schema.weight] = "number"
    for f in schema.features:
        if isinstance(f, Numeric | Bucketized) and not f.derive:
            roles[f.column] = "number"
        elif isinstance(f, DenseVector):
            roles[f.column] = "numbers"
        elif isinstance(f, MultiValue | SequenceFeature):
            roles[f.column] = "items"
    for c in schema.checks:
        if c.kind in ("integer", "number"):
            roles[c.column] = "number"
    return roles



def read_columns(schema: DatasetSchema) -> list[str]:
    """The raw columns the schema reads, once each, in the order it names them (Parquet and JSON Lines read
    only these)."""
    return list(dict.fromkeys(column for _, column in schema.column_refs()))


_SCALAR = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_floating,
           pa.types.is_boolean, pa.types.is_null, pa.types.is_dictionary, pa.types.is_timestamp, pa.types.is_date)
_LIST = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)


def check_types(schema: DatasetSchema, arrow: pa.Schema, where: str) -> None:
    """Typed inputs (Parquet, JSON): each column must hold what its readers take, a list only where a list is
    read (a bag, a sequence, a vector), scalars elsewhere; else a SchemaError naming the key and the type."""
    roles = column_roles(schema)
    keys = {}
    for key, column in schema.column_refs():
        keys.setdefault(column, key)
    for column, role in roles.items():
        t = arrow.field(column).type
        ok = any(is_type(t) for is_type in _SCALAR)
        if role in ("items", "numbers"):
            ok = ok or (any(is_list(t) for is_list in _LIST) and any(f(t.value_type) for f in _SCALAR[:6]))
        if not ok:
            expected = "a list or a joined string" if role in ("items", "numbers") else "single values"
            raise SchemaError(f"column {column!r} of {where} holds {t}; expected {expected}", keys[column],
                              schema.source)


def null_tokens(table: pa.Table, tokens: tuple[str, ...]) -> pa.Table:
    """Typed inputs: text values listed as missing (``input.missing``) become nulls."""
    if not tokens:
        return table
    value_set = pa.array(list(tokens), pa.string())
    for i, f in enumerate(table.schema):
        t = f.type
        if pa.types.is_dictionary(t) and pa.types.is_string(t.value_type):
            col = table.column(i).combine_chunks().dictionary_decode()
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            col = table.column(i).combine_chunks().cast(pa.string())
        else:
            continue
        hit = pc.is_in(col, value_set=value_set)
        if pc.any(hit).as_py():
            col = pc.if_else(hit, pa.scalar(None, pa.string()), col)
        table = table.set_column(i, f.name, col)
    return table
