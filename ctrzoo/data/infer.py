"""``ctrzoo schema infer``: a dataset schema proposed from a bounded sample of someone's logs.

The sample is spread over the file (windows at evenly spaced offsets, so a time-sorted log is not judged by
its first hour; a .gz file is read from its start; Parquet: row groups spread over the files), at most
``sample_rows`` rows. The input's form is
detected (Parquet by its magic bytes or name, JSON Lines by a first ``{``, else delimited text: the delimiter
that splits the lines into the same number of fields outside quotes, a header when the first line's fields are
names), then each column gets a kind from what its values are:

* numbers (>= 98% parse) -> ``numeric`` (``log1p`` when non-negative with the 99th percentile over 20x the
  median), unless they are codes: an id-like name, leading zeros, or few distinct integers -> ``categorical``;
* unix times or date-times -> ``hour`` and ``weekday`` categorical features (and the split, with ``--time``);
* ``|``/``^``/``;``-joined values, or lists -> ``multi_value``, or ``sequence`` when most items are values of
  another categorical column (a click history sharing the item table);
* equal-length lists of numbers -> ``dense_vector``;
* other text -> ``categorical``, hashed when its cardinality looks unbounded; constant or empty columns, and
  columns with a different value in every row (row ids), are left out.

The schema is built through ``DatasetSchema.from_dict``, so what is written always loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from ctrzoo.data.checks import parse_numbers
from ctrzoo.data.inputs import expand_inputs, split_line
from ctrzoo.data.jsonl_input import sample_table
from ctrzoo.data.rawfile import open_raw
from ctrzoo.data.schema import COMPARISONS, DatasetSchema, SchemaError
from ctrzoo.data.splits import iso_time, unix_seconds
from ctrzoo.errors import DataError, SpecError
from ctrzoo.features.transforms import to_timestamp

SAMPLE_BYTES = 32 << 20
WINDOWS = 8  # sample windows over a large uncompressed file
DELIMITERS = (",", "\t", ";", "|")
LIST_SEPARATORS = ("|", "^", ";", ",")
MISSING_TOKENS = ("?", "NULL", "null", "\\N", "NA", "N/A", "NaN", "nan", "None")
_ID_NAME = re.compile(r"(^|_|\b)(id|ids|key|code|zip|zipcode|postcode|hash)$|id$", re.IGNORECASE)
_TIME_NAME = re.compile(r"time|date|(^|_)ts$|timestamp|datetime|(^|_)dt$", re.IGNORECASE)
_UNIX_S = (946_684_800, 2_208_988_800)  # 2000 .. 2040
_UNIX_MS = (946_684_800_000, 2_208_988_800_000)


@dataclass
class ColumnReport:
    """One line of the printed table: the column, what it became, its distinct values and missing share."""

    column: str
    kind: str
    distinct: int
    missing: float
    detail: str = ""


@dataclass
class Inference:
    schema: DatasetSchema
    columns: list[ColumnReport]
    sample_rows: int
    files: list[str] = field(default_factory=list)


def infer_schema(inputs, label: str, positive: str | None = None, user: str | None = None, time: str | None = None,
                 sample_rows: int = 50_000, name: str | None = None, sample_bytes: int = SAMPLE_BYTES) -> Inference:
    """A schema for ``inputs`` whose label is the column ``label`` (0/1, or ``positive``: a value or a comparison
    such as ``>=4``), with ``user`` as the user id and ``time`` splitting by time."""
    files = expand_inputs(inputs)
    fmt = detect_format(files[0])
    input_section: dict[str, Any] = {"format": fmt}
    if fmt == "text":
        table, text_input = _text_sample(files[0], sample_rows, sample_bytes)
        input_section.update(text_input)
    elif fmt == "parquet":
        table = _parquet_sample(files, sample_rows)
    else:
        table = _jsonl_sample(files[0], sample_rows, sample_bytes)
    for role, column in (("--label", label), ("--user", user), ("--time", time)):
        if column is not None and column not in table.column_names:
            raise SchemaError(f"{role} {column!r} is not among the columns of {files[0]} "
                              f"({', '.join(table.column_names)})")
    missing = _missing_tokens(table)
    if missing != [""]:
        input_section["missing"] = missing
    table = _nulls(table, missing)
    n = table.num_rows
    if n == 0:
        raise DataError("no rows in the sample", str(files[0]))
    reports: list[ColumnReport] = []
    features: list[dict[str, Any]] = []  # in column order: lists are placed where their column is, later
    slots: dict[str, int] = {}
    labels = [_label(table.column(label).combine_chunks(), label, positive)]
    reports.append(_report(table, label, "label", labels[0] if isinstance(labels[0], str) else
                           labels[0].get("compare") or f"== {labels[0].get('positive')!r}"))
    split = None
    lists: list[tuple[str, pa.Array, str | None]] = []  # list columns, decided once the categoricals are known
    for column in table.column_names:
        if column == label:
            continue
        col = table.column(column).combine_chunks()
        if column == time:
            fmt_ = _time_format(col)
            if fmt_ is None:
                raise SchemaError(f"--time {column!r}: its values are not times (unix seconds or milliseconds, "
                                  "or dates such as 2024-05-01 13:00:00)")
            split = _time_split(col, column, fmt_)
            features += _time_features(column, fmt_)
            reports.append(_report(table, column, "time", f"split by time ({split['valid_from']}, "
                                   f"{split['test_from']}); hour, weekday"))
            continue
        kind, spec, detail = _column_kind(col, column, n, user == column)
        if kind == "list":
            lists.append((column, col, spec.get("sep")))
            slots[column] = len(features)
            continue
        if kind in ("numeric", "categorical", "dense_vector"):
            features.append({"name": column, "kind": kind, **spec})
        elif kind == "time":
            features += _time_features(column, spec["time_format"])
        reports.append(_report(table, column, kind, detail))
    categorical = {f["name"]: table.column(f["name"]).combine_chunks() for f in features
                   if f["kind"] == "categorical" and "source" not in f and f["name"] in table.column_names}
    for column, col, sep in reversed(lists):  # from the last, so the earlier slots stay where they are
        spec, detail = _list_feature(col, column, sep, categorical)
        features.insert(slots[column], spec)
        reports.append(_report(table, column, spec["kind"], detail))
    order = {c: i for i, c in enumerate(table.column_names)}
    reports.sort(key=lambda r: order[r.column])
    if not features:
        raise SchemaError("no column of the sample could be a feature")
    d: dict[str, Any] = {"name": name or _schema_name(files[0]), "input": input_section, "labels": labels}
    if user:
        d["user_id"] = user
    d["features"] = features
    if split:
        d["split"] = split
    return Inference(DatasetSchema.from_dict(d, "inferred schema"), reports, n, [str(f) for f in files])


def detect_format(path: Path) -> str:
    """parquet, jsonl or text, by name, then by the first bytes."""
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] in (".parquet", ".pq"):
        return "parquet"
    if suffixes and suffixes[-1] in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    with open(path, "rb") as fh:
        if fh.read(4) == b"PAR1":
            return "parquet"
    with open_raw(path) as fh:
        head = fh.read(4096).lstrip()
    return "jsonl" if head.startswith(b"{") else "text"


# -- samples -----------------------------------------------------------------------------------------------
def sample_lines(path: Path, sample_rows: int, budget: int = SAMPLE_BYTES) -> tuple[bytes, list[bytes]]:
    """(first line, a sample of whole lines after it): windows spread over an uncompressed file larger than
    ``budget``, else its start; at most ``sample_rows`` lines."""
    size = path.stat().st_size
    with open_raw(path) as fh:
        head = fh.readline(1 << 20)
        if path.suffix == ".gz" or size <= budget:
            body = fh.read(budget)
            lines = body[: body.rfind(b"\n") + 1].splitlines() if b"\n" in body else body.splitlines()
        else:
            lines = []
            per = budget // WINDOWS
            for k in range(WINDOWS):
                fh.seek(max(len(head), k * size // WINDOWS))
                window = fh.read(per)
                start = 0 if k == 0 else window.find(b"\n") + 1
                lines += window[start : window.rfind(b"\n") + 1].splitlines()
    lines = [x for x in lines if x.strip()]
    if len(lines) > sample_rows:
        lines = [lines[int(i)] for i in np.linspace(0, len(lines) - 1, sample_rows)]
    return head.rstrip(b"\r\n"), lines


def _text_sample(path: Path, sample_rows: int, sample_bytes: int) -> tuple[pa.Table, dict[str, Any]]:
    head, lines = sample_lines(path, sample_rows, sample_bytes)
    text = [head.decode("utf-8", "replace")] + [x.decode("utf-8", "replace") for x in lines[:200]]
    quoting = any('"' in x for x in text)
    delimiter = _delimiter(text, quoting)
    first = split_line(text[0], delimiter, quoting)
    body = lines
    header = _looks_like_header(first, [split_line(x, delimiter, quoting) for x in text[1:]])
    if not header:
        body = [head, *lines]
    columns = [c.strip() for c in first] if header else [f"c{i}" for i in range(len(first))]
    table = pcsv.read_csv(
        pa.py_buffer(b"\n".join(body) + b"\n"),
        read_options=pcsv.ReadOptions(column_names=columns),
        parse_options=pcsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoting else False,
                                        double_quote=quoting, newlines_in_values=False,
                                        invalid_row_handler=lambda _row: "skip"),
        convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in columns},
                                            strings_can_be_null=True, null_values=[""]),
    )
    out: dict[str, Any] = {"delimiter": delimiter, "header": header}
    if quoting:
        out["quoting"] = True
    if not header:
        out["columns"] = columns
    return table, out


def _delimiter(lines: list[str], quoting: bool) -> str:
    """The candidate that splits most lines into the same number (> 1) of fields (outside quotes); of equally
    consistent ones, the one giving more fields (a comma inside tab-separated values splits fewer)."""
    best, best_key = DELIMITERS[0], (0.0, 0)
    for d in DELIMITERS:  # ties: the earlier candidate
        counts = [len(split_line(x, d, quoting)) for x in lines]
        mode = max(set(counts), key=counts.count)
        key = (round(counts.count(mode) / len(counts), 2), mode) if mode > 1 else (0.0, 0)
        if key > best_key:
            best, best_key = d, key
    return best


def _looks_like_header(first: list[str], rows: list[list[str]]) -> bool:
    """A header names columns: no field is a number or empty, they differ, and (with rows to compare) some
    column holds numbers below it or no first-line value reappears in its column."""
    if not first or any(not f.strip() or _is_number(f) for f in first) or len(set(first)) != len(first):
        return False
    if not rows:
        return True
    for j in range(len(first)):
        below = [r[j] for r in rows if j < len(r)]
        if below and sum(_is_number(v) for v in below) >= 0.9 * len(below):
            return True
    return not any(f in {r[j] for r in rows if j < len(r)} for j, f in enumerate(first))


def _parquet_sample(files: tuple[Path, ...], sample_rows: int) -> pa.Table:
    """Row groups spread over the files, until ``sample_rows`` rows."""
    import pyarrow.parquet as pq

    groups = [(f, g) for f in files for g in range(pq.ParquetFile(f).metadata.num_row_groups)]
    if not groups:
        raise DataError("no row groups", str(files[0]))
    picks = [groups[int(i)] for i in np.unique(np.linspace(0, len(groups) - 1, min(len(groups), WINDOWS)))]
    tables, rows = [], 0
    for f, g in picks:
        t = pq.ParquetFile(f).read_row_group(g)
        tables.append(t.slice(0, max(0, sample_rows - rows) if len(picks) == 1 else sample_rows // len(picks)))
        rows += tables[-1].num_rows
    return pa.concat_tables(tables, promote_options="permissive")


def _jsonl_sample(path: Path, sample_rows: int, sample_bytes: int) -> pa.Table:
    head, lines = sample_lines(path, sample_rows, sample_bytes)
    return sample_table(b"\n".join([head, *lines]) + b"\n", str(path))


def _missing_tokens(table: pa.Table) -> list[str]:
    """``""`` and the common missing markers found as whole values in columns that are otherwise numbers."""
    found = [""]
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if not pa.types.is_string(col.type):
            continue
        hits = pc.is_in(col, value_set=pa.array(MISSING_TOKENS)).fill_null(False)
        if not pc.any(hits).as_py():
            continue
        rest = col.filter(pc.invert(hits))
        _, not_number = parse_numbers(rest.filter(rest.is_valid()))
        if len(rest) and not not_number.mean() > 0.02:
            found += [t for t in pc.unique(col.filter(hits)).to_pylist() if t not in found]
    return found


def _nulls(table: pa.Table, tokens: list[str]) -> pa.Table:
    for i, f in enumerate(table.schema):
        if pa.types.is_string(f.type):
            col = table.column(i).combine_chunks()
            table = table.set_column(i, f.name, pc.if_else(pc.is_in(col, value_set=pa.array(tokens)),
                                                           pa.scalar(None, pa.string()), col))
    return table


# -- kinds ---------------------------------------------------------------------------------------------------
def _label(col: pa.Array, column: str, positive: str | None) -> Any:
    if positive is None:
        values, not_number = parse_numbers(col)
        x = values.to_numpy(zero_copy_only=False)
        present = x[~np.isnan(x)]
        if not_number.any() or not np.isin(present, [0, 1]).all():
            shown = pc.unique(col.drop_null()).to_pylist()[:8]
            raise SchemaError(f"--label {column!r} holds {shown}, not only 0 and 1: pass --positive VALUE (the "
                              "value meaning a click) or a comparison such as '>=4'")
        return column
    text = positive.strip()
    if text.startswith(COMPARISONS):
        return {"column": column, "compare": text}
    return {"column": column, "positive": positive}


def _column_kind(col: pa.Array, column: str, n: int, is_user: bool) -> tuple[str, dict[str, Any], str]:
    """(kind, options, detail for the table); kind ``list`` is decided later (bag or sequence), ``skip`` not
    used."""
    t = col.type
    present = col.drop_null()
    distinct = len(pc.unique(present)) if not pa.types.is_list(t) else 0
    if len(present) == 0:
        return "skip", {}, "left out: always missing"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        lengths = pc.list_value_length(present).to_numpy(zero_copy_only=False)
        if (pa.types.is_floating(t.value_type) and lengths.size and (lengths == lengths[0]).all()
                and lengths[0] > 1):
            return "dense_vector", {"dim": int(lengths[0])}, f"{int(lengths[0])} numbers a row"
        return "list", {}, ""
    if distinct <= 1 and not is_user:
        return "skip", {}, "left out: one value only"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "time", {"time_format": "auto"}, "hour, weekday"
    if pa.types.is_boolean(t):
        return "categorical", {}, ""
    values, not_number = parse_numbers(present)
    numeric_share = 1.0 - float(not_number.mean()) if len(present) else 0.0
    if numeric_share >= 0.98:
        x = values.to_numpy(zero_copy_only=False)
        x = x[np.isfinite(x)]
        integral = bool(x.size) and bool(np.all(np.floor(x) == x))
        text = present if pa.types.is_string(t) else None
        leading_zero = text is not None and pc.any(pc.match_substring_regex(text, r"^0\d")).as_py()
        time_fmt = _unix_format(x) if integral and _TIME_NAME.search(column) else None
        if time_fmt:
            return "time", {"time_format": time_fmt}, f"{time_fmt} times: hour, weekday"
        if is_user or _ID_NAME.search(column) or leading_zero or (integral and distinct <= 50):
            return _categorical(present, distinct, n, is_user)
        skewed = x.size and x.min() >= 0 and np.percentile(x, 99) > 20 * max(np.median(x), 1.0)
        opts: dict[str, Any] = {"transform": "log1p", "standardize": True} if skewed else {"standardize": True}
        return "numeric", opts, "log1p, standardized" if skewed else "standardized"
    if pa.types.is_string(t):
        vector = _vector_dim(present)
        if vector:
            return "dense_vector", {"dim": vector, "sep": ","}, f"{vector} numbers a row, ','-joined"
        sep = _list_separator(present, distinct)
        if sep:
            return "list", {"sep": sep}, ""
        if _TIME_NAME.search(column) and _time_format(present) == "auto":
            return "time", {"time_format": "auto"}, "date-times: hour, weekday"
    return _categorical(present, distinct, n, is_user)


def _categorical(values: pa.Array, distinct: int, n: int, is_user: bool) -> tuple[str, dict[str, Any], str]:
    """A category: left out when every row has its own value (a row id), hashed when its values look unbounded
    (>= 1000 distinct, and values seen once make over 30% of the rows: by Good-Turing, the chance that the next
    row brings a value never seen), else a vocabulary (min count 2 on a large sample)."""
    present = len(values)
    if distinct == present and present >= 1000 and not is_user:
        return "skip", {}, "left out: a different value in every row (a row id?)"
    if distinct >= 1000:
        counts = pc.value_counts(values).field("counts").to_numpy(zero_copy_only=False)
        if (counts == 1).sum() > 0.3 * present:
            buckets = int(min(1 << 22, max(1 << 10, 1 << int(np.ceil(np.log2(4 * distinct))))))
            return "categorical", {"hash_buckets": buckets}, f"hashed into {buckets:,d} buckets"
    return "categorical", ({"min_count": 2} if n >= 10_000 else {}), ""


def _unix_format(x: np.ndarray) -> str | None:
    if not x.size:
        return None
    if _UNIX_S[0] <= x.min() and x.max() <= _UNIX_S[1]:
        return "unix"
    if _UNIX_MS[0] <= x.min() and x.max() <= _UNIX_MS[1]:
        return "unix_ms"
    return None


def _time_format(col: pa.Array) -> str | None:
    """How a time column reads: ``unix``, ``unix_ms`` or ``auto`` (date-times); None when it is not one."""
    present = col.drop_null()
    if pa.types.is_timestamp(present.type) or pa.types.is_date(present.type):
        return "auto"
    values, not_number = parse_numbers(present)
    if len(present) and not not_number.any():
        return _unix_format(values.to_numpy(zero_copy_only=False))
    try:
        to_timestamp(present, "auto", "time")
    except SpecError:
        return None
    return "auto"


def _time_features(column: str, fmt: str) -> list[dict[str, Any]]:
    extra = {} if fmt == "auto" else {"time_format": fmt}
    return [{"name": f"{column}_{part}", "kind": "categorical", "source": column, "derive": part, **extra}
            for part in ("hour", "weekday")]


def _time_split(col: pa.Array, column: str, fmt: str) -> dict[str, Any]:
    """The last tenth of the sample's time range in test, the tenth before it in valid (by quantiles)."""
    seconds = unix_seconds(col.drop_null(), fmt, column)
    valid_from, test_from = (int(v) for v in np.quantile(seconds, [0.8, 0.9], method="higher"))
    out = {"method": "time", "column": column, "valid_from": iso_time(valid_from), "test_from": iso_time(test_from)}
    if fmt != "auto":
        out["time_format"] = fmt
    return out


def _vector_dim(present: pa.Array) -> int | None:
    """The length when every value is the same number (> 1) of ``,``-joined numbers."""
    if not pc.all(pc.match_substring(present, ",")).as_py():
        return None
    parts = pc.split_pattern(present, ",")
    lengths = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
    if lengths[0] < 2 or not (lengths == lengths[0]).all():
        return None
    _, not_number = parse_numbers(pc.utf8_trim_whitespace(pc.list_flatten(parts)))
    return None if not_number.any() else int(lengths[0])


def _list_separator(present: pa.Array, distinct: int) -> str | None:
    """A separator that joins short, repeating items in at least a tenth of the values."""
    for sep in LIST_SEPARATORS:
        share = pc.mean(pc.match_substring(present, sep).cast(pa.float64())).as_py() or 0.0
        if share < 0.1:
            continue
        items = pc.utf8_trim_whitespace(pc.list_flatten(pc.split_pattern(present, sep)))
        lengths = pc.utf8_length(items).to_numpy(zero_copy_only=False)
        if lengths.size and np.median(lengths) <= 40 and len(pc.unique(items)) < max(distinct, 2):
            return sep
    return None


def _list_feature(col: pa.Array, column: str, sep: str | None, categorical: dict[str, pa.Array]
                  ) -> tuple[dict[str, Any], str]:
    """A bag of values, or a sequence when most of its items are values of a categorical column."""
    if sep is None:  # a list column
        items = pc.list_flatten(col.drop_null())
    else:
        items = pc.utf8_trim_whitespace(pc.list_flatten(pc.split_pattern(col.drop_null(), sep)))
    items = pc.cast(items, pa.string()) if not pa.types.is_string(items.type) else items
    items = items.filter(pc.not_equal(items, ""))
    lengths = (pc.list_value_length(pc.split_pattern(col.drop_null(), sep)) if sep else
               pc.list_value_length(col.drop_null())).to_numpy(zero_copy_only=False)
    max_len = int(min(200, max(2, np.percentile(lengths, 99) if lengths.size else 2)))
    extra = {"sep": sep} if sep and sep != "|" else {}
    uniques = pc.unique(items)
    best, share = None, 0.0
    for name, values in categorical.items():
        values = pc.cast(values, pa.string()) if not pa.types.is_string(values.type) else values
        hit = pc.mean(pc.is_in(uniques, value_set=pc.unique(values.drop_null())).cast(pa.float64())).as_py() or 0
        if hit > share:
            best, share = name, hit
    if best is not None and share >= 0.5:
        spec = {"name": column, "kind": "sequence", "shares": best, "max_len": max_len,
                **({"sep": sep} if sep and sep != "^" else {})}
        return spec, f"{share:.0%} of its items are {best} values: shares its table"
    spec = {"name": column, "kind": "multi_value", "max_len": max_len, **extra}
    if len(uniques) >= 1000 and len(uniques) > 0.5 * len(items):
        spec["hash_buckets"] = int(min(1 << 22, 1 << int(np.ceil(np.log2(4 * len(uniques))))))
    return spec, f"{len(uniques)} distinct items" + (f", joined by {sep!r}" if sep else "")


def _report(table: pa.Table, column: str, kind: str, detail: str) -> ColumnReport:
    col = table.column(column).combine_chunks()
    n = max(len(col), 1)
    distinct = len(pc.unique(col.drop_null())) if not pa.types.is_list(col.type) else \
        len(pc.unique(pc.list_flatten(col)))
    return ColumnReport(column, kind, distinct, col.null_count / n, detail)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _schema_name(path: Path) -> str:
    stem = path.name.split(".")[0] if path.is_file() else path.name
    return re.sub(r"[^A-Za-z0-9_]+", "_", stem).strip("_") or "custom"


# -- output --------------------------------------------------------------------------------------------------
def format_table(result: Inference) -> str:
    """column, inferred kind, distinct values, missing %, and why."""
    rows = [("column", "kind", "distinct", "missing", "")]
    rows += [(r.column, r.kind, f"{r.distinct:,d}", f"{100 * r.missing:.1f}%", r.detail) for r in result.columns]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]}".rstrip()
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return f"{result.sample_rows:,d} sample rows of {', '.join(result.files[:3])}\n" + "\n".join(lines)


def write_schema(result: Inference, path: str | Path) -> Path:
    """The schema as YAML, with the table as a comment on top."""
    import yaml

    path = Path(path)
    header = "\n".join(f"# {line}".rstrip() for line in ["written by `ctrzoo schema infer`: edit as needed",
                                                           *format_table(result).splitlines()])
    body = yaml.safe_dump(result.schema.to_dict(), sort_keys=False, width=120, default_flow_style=None)
    path.write_text(f"{header}\n{body}")
    return path
