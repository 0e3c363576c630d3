"""A dataset schema: how to read a click log (input, labels, features, user id, weight, split), from YAML.

A schema is frozen data, checked completely when it is loaded, before any data is read: every error names the
YAML key and what was expected (``features[3].shares: 'item' is not a categorical feature``). Checks that need
the input's column names (``labels[0].column: 'rating' is not among the file's columns``) run on the header,
Parquet schema or first JSON lines only, before any row is processed (``ctrzoo.data.inputs``).

The built-in formats (``ctrzoo/presets/*.yaml``) are schemas like any other. ``DatasetSchema.to_dict`` writes a
schema back in the YAML form (``dataset.json`` records the one a dataset was prepared with).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from ctrzoo.data.splits import SplitConfig, iso_time, parse_time
from ctrzoo.errors import CtrzooError, SpecError
from ctrzoo.features.spec import (
    Bucketized,
    Categorical,
    DenseVector,
    Feature,
    FeatureSpec,
    MultiValue,
    Numeric,
    SequenceFeature,
)
from ctrzoo.features.transforms import DERIVATIONS, TIME_PARTS

FORMATS = ("text", "parquet", "jsonl")
COMPARISONS = (">=", "<=", "==", "!=", ">", "<")
CHECKS = ("integer", "number")  # besides {pattern: REGEX, reason: TEXT}
_KINDS: dict[str, type] = {"categorical": Categorical, "numeric": Numeric, "multi_value": MultiValue,
                           "sequence": SequenceFeature, "dense_vector": DenseVector}
_FITTED = {"vocab", "mean", "std", "boundaries"}  # fitted state: never written in a schema
_COMPARE = re.compile(r"^\s*(?:(?P<column>[^<>=!\s]+)\s*)?(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>\S+)\s*$")


class SchemaError(CtrzooError):
    """A dataset schema that cannot be used: names the schema file and the YAML key (``features[3].shares``)."""

    def __init__(self, message: str, key: str | None = None, source: str | None = None):
        self.key, self.source, self.reason = key, source, message
        where = ": ".join(p for p in (source, key) if p)
        super().__init__(f"{where}: {message}" if where else message)


@dataclass(frozen=True)
class InputFormat:
    """How the raw files are read. ``text``: delimited lines (``delimiter`` candidates tried per file: the first
    that splits the first line into the declared ``columns``); ``header`` true, false or ``auto`` (a first line
    equal to the column names is the header); ``quoting``: ``"`` quotes values (doubled inside); ``missing``:
    values that mean missing. ``parquet``: files or directories of part files. ``jsonl``: one object a line."""

    format: Literal["text", "parquet", "jsonl"] = "text"
    delimiter: tuple[str, ...] = (",",)
    header: bool | Literal["auto"] = True
    columns: tuple[str, ...] | None = None
    quoting: bool = False
    missing: tuple[str, ...] = ("",)


@dataclass(frozen=True)
class Label:
    """One label: the 0/1 column ``column`` (no rule), or ``positive`` values (compared as text after stripping
    whitespace; with ``negative``, values in neither list are bad rows, else every other value is 0), or a
    comparison ``compare = (op, number)``. Stored under ``name``; a row whose label is undecided is a bad row."""

    name: str
    column: str
    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()
    compare: tuple[str, float] | None = None

    def describe(self) -> str:
        if self.compare:
            return f"{self.column} {self.compare[0]} {_number_text(self.compare[1])}"
        if self.positive:
            return f"{self.column} in {list(self.positive)}"
        return "0/1" if self.name == self.column else f"{self.column}, 0/1"


@dataclass(frozen=True)
class Check:
    """A row check on a raw column: a row failing it is a bad row counted under ``reason``. ``integer`` and
    ``number`` also type the column as float64; ``pattern`` (RE2) leaves it as text. ``time`` and ``vector``
    are implied by the features that read a column so (a time derivation, a dense vector)."""

    column: str
    kind: Literal["integer", "number", "pattern", "time", "vector"]
    pattern: str | None = None
    reason: str | None = None
    time_format: str = "auto"
    dim: int = 0
    sep: str = ","
    required: bool = False  # a missing value is a bad row too (the time split's column)

    def why(self) -> str:
        if self.reason:
            return self.reason
        return {"integer": f"{self.column} is not an integer", "number": f"{self.column} is not a number",
                "pattern": f"{self.column} does not match {self.pattern!r}",
                "time": f"{self.column} is not a time ({self.time_format})",
                "vector": f"{self.column} is not a vector of {self.dim} numbers"}[self.kind]


@dataclass(frozen=True)
class DatasetSchema:
    """Everything ``prepare`` needs to read someone's logs; ``feature_spec()`` is the unfitted spec it fits."""

    name: str
    input: InputFormat
    labels: tuple[Label, ...]
    features: tuple[Feature, ...]
    user_id: str | None = None
    weight: str | None = None
    checks: tuple[Check, ...] = ()
    split: SplitConfig | None = None  # None: the command line's (random 8:1:1 by default)
    source: str = field(default="", compare=False)  # where it was read from, for messages

    @property
    def label(self) -> Label:
        """The first label: the one stored as ``label`` and trained on by default."""
        return self.labels[0]

    def feature_spec(self) -> FeatureSpec:
        """The unfitted spec of the features (label: the first label's name)."""
        return FeatureSpec(self.features, label=self.label.name, user_id=self.user_id)

    def default_spec(self) -> FeatureSpec:
        """``feature_spec()`` under the name the built-in formats' spec had (``FORMATS[kind].default_spec()``)."""
        return self.feature_spec()

    def with_spec(self, spec: FeatureSpec) -> DatasetSchema:
        """This schema reading ``spec``'s features and user id instead (``prepare --spec``)."""
        schema = replace(self, features=tuple(spec.unfitted().features), user_id=spec.user_id)
        _check_columns_used(schema)
        return schema

    def row_checks(self) -> tuple[Check, ...]:
        """The declared checks, then those the features imply (a number for numeric and bucketized sources, a
        time for time derivations and a time split, a vector for dense vectors), once per column."""
        out = list(self.checks)
        seen = {c.column for c in out}

        def add(check: Check) -> None:
            if check.column not in seen:
                seen.add(check.column)
                out.append(check)

        for f in self.features:
            if isinstance(f, Numeric | Bucketized) and not f.derive:
                add(Check(f.column, "number"))
            elif isinstance(f, DenseVector):
                add(Check(f.column, "vector", dim=f.dim, sep=f.sep))
            elif getattr(f, "derive", None) and f.derive.partition(":")[0] in TIME_PARTS:
                add(Check(f.column, "time", time_format=f.derive.partition(":")[2] or "auto"))
        if self.split is not None and self.split.method == "time":  # first: every row needs its time
            column = self.split.column
            out = [c for c in out if not (c.column == column and c.kind == "time")]
            out.insert(0, Check(column, "time", time_format=self.split.time_format, required=True))
        return tuple(out)

    def column_refs(self) -> Iterator[tuple[str, str]]:
        """``(YAML key, raw column)`` of every column the schema reads."""
        for i, lab in enumerate(self.labels):
            yield f"labels[{i}].column", lab.column
        for i, f in enumerate(self.features):
            yield (f"features[{i}].source" if f.source else f"features[{i}].name"), f.column
        if self.user_id:
            yield "user_id", self.user_id
        if self.weight:
            yield "weight", self.weight
        for c in self.checks:
            yield f"checks.{c.column}", c.column
        if self.split is not None and self.split.method == "time":
            yield "split.column", self.split.column

    def check_columns(self, available: Sequence[str], where: str) -> None:
        """Every column the schema reads must be among ``available`` (the columns of the input ``where``),
        and a label stored under a new name must not shadow one of them."""
        have = set(available)
        for key, column in self.column_refs():
            if column not in have:
                shown = ", ".join(list(available)[:40]) + (", ..." if len(available) > 40 else "")
                raise SchemaError(f"{column!r} is not among the file's columns ({where} has: {shown})", key,
                                  self.source)
        for i, lab in enumerate(self.labels):
            if lab.name != lab.column and lab.name in have:
                raise SchemaError(f"{lab.name!r} is already a column of {where}: give the label another name",
                                  f"labels[{i}].name", self.source)

    # -- YAML ------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Any, source: str = "") -> DatasetSchema:
        """A checked schema from its parsed YAML; ``SchemaError`` names the first key that is wrong."""
        return _Reader(source).schema(d)

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (defaults left out); ``from_dict(to_dict())`` gives this schema back."""
        inp = {"format": self.input.format}
        if self.input.format == "text":
            delim = list(self.input.delimiter)
            inp.update(delimiter=delim[0] if len(delim) == 1 else delim, header=self.input.header)
            if self.input.quoting:
                inp["quoting"] = True
        if self.input.columns is not None:
            inp["columns"] = list(self.input.columns)
        if self.input.missing != InputFormat.missing:
            inp["missing"] = list(self.input.missing)
        out: dict[str, Any] = {"name": self.name, "input": inp, "labels": [_label_dict(lab) for lab in self.labels]}
        if self.user_id:
            out["user_id"] = self.user_id
        if self.weight:
            out["weight"] = self.weight
        if self.checks:
            out["checks"] = {c.column: _check_dict(c) for c in self.checks}
        out["features"] = [feature_dict(f) for f in self.features]
        if self.split is not None:
            out["split"] = _split_dict(self.split)
        return out


def load_schema(path: str | Path) -> DatasetSchema:
    """The schema in a YAML (or JSON) file; errors name the file and the key."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise SchemaError("no such schema file", source=str(p)) from None
    except IsADirectoryError:
        raise SchemaError("a directory, not a schema file", source=str(p)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise SchemaError(f"not valid YAML ({getattr(exc, 'problem', None) or exc})", source=where) from None
    return DatasetSchema.from_dict(data, str(p))


def feature_dict(f: Feature) -> dict[str, Any]:
    """A feature in the schema's YAML form: name, kind, then the options that differ from their defaults."""
    kind = "numeric" if isinstance(f, Bucketized) else f.kind
    out: dict[str, Any] = {"name": f.name, "kind": kind}
    for fl in fields(f):
        if fl.name in _FITTED or fl.name == "name":
            continue
        value = getattr(f, fl.name)
        if value == _default(fl):
            continue
        if fl.name == "buckets":
            out["bucketize"] = value
        elif fl.name == "derive" and ":" in value:
            out["derive"], out["time_format"] = value.split(":", 1)
        else:
            out[fl.name] = list(value) if isinstance(value, tuple) else value
    if isinstance(f, Bucketized) and "bucketize" not in out:
        out["bucketize"] = f.buckets
    return out


# -- reading the YAML ----------------------------------------------------------------------------------------
class _Reader:
    """Turns parsed YAML into a DatasetSchema, failing at the first wrong key (named with its path)."""

    TOP = ("name", "input", "label", "labels", "features", "user_id", "weight", "checks", "split")
    INPUT = ("format", "delimiter", "header", "columns", "quoting", "missing")
    LABEL = ("name", "column", "positive", "negative", "compare")
    SPLIT = ("method", "ratios", "seed", "column", "valid_from", "test_from", "time_format")

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str | None, message: str) -> SchemaError:
        return SchemaError(message, key, self.source)

    def mapping(self, d: Any, key: str | None, known: Sequence[str]) -> Mapping[str, Any]:
        if not isinstance(d, Mapping):
            raise self.fail(key, f"expected a mapping (keys {', '.join(known)}), got {_kind_of(d)}")
        for k in d:
            if k not in known:
                raise self.fail(_join(key, str(k)), f"unknown key (known: {', '.join(known)})")
        return d

    def schema(self, d: Any) -> DatasetSchema:
        d = self.mapping(d, None, self.TOP)
        for required in ("input", "features"):
            if required not in d:
                raise self.fail(required, "missing (a schema needs input, labels and features)")
        if ("label" in d) == ("labels" in d):
            raise self.fail("labels", "give the label(s): 'labels: [...]' (or one 'label: ...'), not both"
                            if "label" in d else "missing (which column says the row was clicked?)")
        name = self.string(d.get("name", "custom"), "name")
        inp = self.input(d["input"])
        raw_labels = [d["label"]] if "label" in d else self.list(d["labels"], "labels")
        if not raw_labels:
            raise self.fail("labels", "expected at least one label")
        label_key = "label" if "label" in d else "labels[{}]"
        labels = tuple(self.label(x, label_key.format(i)) for i, x in enumerate(raw_labels))
        features = self.features(d["features"])
        user_id = self.string(d["user_id"], "user_id") if d.get("user_id") is not None else None
        weight = self.string(d["weight"], "weight") if d.get("weight") is not None else None
        checks = self.checks(d.get("checks") or {})
        split = self.split(d["split"]) if d.get("split") is not None else None
        schema = DatasetSchema(name, inp, labels, features, user_id, weight, checks, split, self.source)
        self.cross_check(schema)
        return schema

    # -- sections --------------------------------------------------------------------------------------
    def input(self, d: Any) -> InputFormat:
        d = self.mapping(d, "input", self.INPUT)
        fmt = d.get("format", "text")
        if fmt not in FORMATS:
            raise self.fail("input.format", f"expected one of {', '.join(FORMATS)}, got {fmt!r}")
        if fmt != "text":
            for k in ("delimiter", "header", "quoting"):
                if k in d:
                    raise self.fail(f"input.{k}", f"only for text input (this input is {fmt})")
        delim = d.get("delimiter", ",")
        delims = tuple(self.delimiter(x, f"input.delimiter[{i}]") for i, x in enumerate(delim)) \
            if isinstance(delim, list) else (self.delimiter(delim, "input.delimiter"),)
        if not delims:
            raise self.fail("input.delimiter", "expected a character or a list of candidate characters")
        header = d.get("header", True)
        if header not in (True, False, "auto"):
            raise self.fail("input.header", f"expected true, false or auto, got {header!r}")
        columns = None
        if d.get("columns") is not None:
            columns = tuple(self.string(c, f"input.columns[{i}]") for i, c in
                            enumerate(self.list(d["columns"], "input.columns")))
            dupes = sorted({c for c in columns if columns.count(c) > 1})
            if dupes:
                raise self.fail("input.columns", f"duplicate column names {dupes}")
            if not columns:
                raise self.fail("input.columns", "expected at least one column name")
        if header == "auto" and columns is None:
            raise self.fail("input.header", "auto needs input.columns (a first line equal to them is the header)")
        if header is False and columns is None and len(delims) > 1:
            raise self.fail("input.delimiter", "several candidates need input.columns to choose between them")
        quoting = d.get("quoting", False)
        if not isinstance(quoting, bool):
            raise self.fail("input.quoting", f"expected true or false, got {quoting!r}")
        missing = d.get("missing", [""])
        missing = tuple(self.scalar_text(v, f"input.missing[{i}]") for i, v in
                        enumerate(self.list(missing, "input.missing")))
        return InputFormat(fmt, delims, header, columns, quoting, missing)

    def delimiter(self, value: Any, key: str) -> str:
        value = {"\\t": "\t", "tab": "\t"}.get(value, value)
        if not isinstance(value, str) or len(value) != 1 or value in "\r\n\"":
            raise self.fail(key, f"expected one character (a quote or line break cannot be one), got {value!r}")
        return value

    def label(self, d: Any, key: str) -> Label:
        if isinstance(d, str):
            m = _COMPARE.match(d)
            if m and m["column"]:
                return Label(m["column"], m["column"], compare=(m["op"], self.number(m["value"], key)))
            return Label(d, d)
        d = self.mapping(d, key, self.LABEL)
        if "column" not in d:
            raise self.fail(f"{key}.column", "missing (the raw column the label is read from)")
        column = self.string(d["column"], f"{key}.column")
        name = self.string(d.get("name", column), f"{key}.name")
        if "positive" in d and "compare" in d:
            raise self.fail(key, "give positive values or a comparison, not both")
        if "negative" in d and "positive" not in d:
            raise self.fail(f"{key}.negative", "only with positive values")
        positive = self.texts(d.get("positive"), f"{key}.positive")
        negative = self.texts(d.get("negative"), f"{key}.negative")
        both = set(positive) & set(negative)
        if both:
            raise self.fail(f"{key}.negative", f"{sorted(both)} are positive values too")
        compare = None
        if "compare" in d:
            m = _COMPARE.match(str(d["compare"]))
            if not m or (m["column"] and m["column"] != column):
                raise self.fail(f"{key}.compare", f"expected a comparison such as '>= 4' ({'|'.join(COMPARISONS)} "
                                f"and a number), got {d['compare']!r}")
            compare = (m["op"], self.number(m["value"], f"{key}.compare"))
        return Label(name, column, positive, negative, compare)

    def features(self, d: Any) -> tuple[Feature, ...]:
        items = self.list(d, "features")
        if not items:
            raise self.fail("features", "expected at least one feature")
        return tuple(self.feature(x, f"features[{i}]") for i, x in enumerate(items))

    def feature(self, d: Any, key: str) -> Feature:
        if not isinstance(d, Mapping):
            raise self.fail(key, f"expected a mapping with name and kind, got {_kind_of(d)}")
        kind = d.get("kind")
        if kind not in _KINDS:
            raise self.fail(f"{key}.kind", f"expected one of {', '.join(_KINDS)}, got {kind!r}")
        if "name" not in d:
            raise self.fail(f"{key}.name", "missing")
        klass = _KINDS[kind]
        options = {k: v for k, v in d.items() if k != "kind"}
        if kind == "numeric" and options.get("bucketize") is not None:
            for k in ("standardize", "fill"):
                if k in options:
                    raise self.fail(f"{key}.{k}", "not used with bucketize (a bucketized number is a categorical "
                                    "field: missing values get their own id)")
            klass = Bucketized
            options["buckets"] = options.pop("bucketize")
        elif kind == "numeric":
            options.pop("bucketize", None)
        if "time_format" in options:
            if kind not in ("categorical", "numeric"):
                raise self.fail(f"{key}.time_format", "only with a time derivation (derive: hour, weekday, ...)")
            fmt = self.string(options.pop("time_format"), f"{key}.time_format")
            part = options.get("derive")
            if isinstance(part, str) and part not in TIME_PARTS and part not in DERIVATIONS:
                raise self.fail(f"{key}.derive", f"expected one of {', '.join([*DERIVATIONS, *TIME_PARTS])}, "
                                f"got {part!r}")
            if part not in TIME_PARTS:
                raise self.fail(f"{key}.time_format", f"only with a time derivation (derive: one of "
                                f"{', '.join(TIME_PARTS)}), here derive is {part!r}")
            options["derive"] = part if fmt == "auto" else f"{part}:{fmt}"
        hints = typing.get_type_hints(klass)
        allowed = [f.name for f in fields(klass) if f.name not in _FITTED]
        shown = [("bucketize" if a == "buckets" else a) for a in allowed]
        shown += ["time_format"] if klass in (Categorical, Numeric) else []
        shown += ["bucketize"] if klass is Numeric else []
        kwargs = {}
        for k, v in options.items():
            if k not in allowed:
                raise self.fail(f"{key}.{k}", f"unknown key for a {kind} feature (known: {', '.join(shown)})")
            yaml_key = f"{key}.{'bucketize' if k == 'buckets' else k}"
            kwargs[k] = self.typed(v, hints[k], yaml_key)
        derive = kwargs.get("derive")
        if derive and derive not in DERIVATIONS and derive.partition(":")[0] not in TIME_PARTS:
            raise self.fail(f"{key}.derive", f"expected one of {', '.join([*DERIVATIONS, *TIME_PARTS])}, "
                            f"got {derive!r}")
        for required in (f.name for f in fields(klass) if _required(f)):
            if required not in kwargs:
                what = {"shares": "the categorical feature whose table it uses", "dim": "the vector's length"}
                raise self.fail(f"{key}.{required}", f"missing ({what.get(required, 'required')})")
        try:
            return klass(**kwargs)
        except (SpecError, TypeError, ValueError) as exc:
            raise self.fail(key, getattr(exc, "reason", None) or str(exc)) from None

    def checks(self, d: Any) -> tuple[Check, ...]:
        if not isinstance(d, Mapping):
            raise self.fail("checks", f"expected a mapping of column -> integer | number | {{pattern, reason}}, "
                            f"got {_kind_of(d)}")
        out = []
        for column, rule in d.items():
            key = f"checks.{column}"
            if rule in CHECKS:
                out.append(Check(str(column), rule))
                continue
            rule = self.mapping(rule, key, ("pattern", "reason"))
            if "pattern" not in rule:
                raise self.fail(key, "expected integer, number or {pattern: REGEX, reason: TEXT}")
            pattern = self.string(rule["pattern"], f"{key}.pattern")
            _check_regex(pattern, f"{key}.pattern", self)
            reason = self.string(rule["reason"], f"{key}.reason") if rule.get("reason") is not None else None
            out.append(Check(str(column), "pattern", pattern=pattern, reason=reason))
        return tuple(out)

    def split(self, d: Any) -> SplitConfig:
        d = self.mapping(d, "split", self.SPLIT)
        method = d.get("method", "time" if "column" in d else "random")
        if method not in ("random", "order", "time"):
            raise self.fail("split.method", f"expected random, order or time, got {method!r}")
        kwargs: dict[str, Any] = {"method": method}
        if "ratios" in d:
            ratios = self.list(d["ratios"], "split.ratios")
            kwargs["ratios"] = tuple(self.number(r, f"split.ratios[{i}]") for i, r in enumerate(ratios))
        if "seed" in d:
            kwargs["seed"] = self.typed(d["seed"], int, "split.seed")
        time_keys = ("column", "valid_from", "test_from", "time_format")
        if method == "time":
            for k in ("column", "valid_from", "test_from"):
                if d.get(k) is None:
                    raise self.fail(f"split.{k}", "missing (a time split needs column, valid_from and test_from)")
            kwargs["column"] = self.string(d["column"], "split.column")
            for k in ("valid_from", "test_from"):
                try:
                    kwargs[k] = parse_time(d[k], f"split.{k}")
                except CtrzooError as exc:
                    raise self.fail(f"split.{k}", str(exc).split(": ", 1)[-1]) from None
            kwargs["time_format"] = self.string(d.get("time_format", "auto"), "split.time_format")
        else:
            for k in time_keys:
                if k in d:
                    raise self.fail(f"split.{k}", f"only for a time split (method: time), this one is {method}")
        try:
            return SplitConfig(**kwargs)
        except CtrzooError as exc:
            raise self.fail("split", str(exc)) from None

    def cross_check(self, s: DatasetSchema) -> None:
        """What no single key shows: names that clash, tables that are shared, columns that are declared."""
        seen: dict[str, int] = {}
        for i, f in enumerate(s.features):
            if f.name in seen:
                raise self.fail(f"features[{i}].name", f"{f.name!r} is also the name of features[{seen[f.name]}]")
            seen[f.name] = i
        categorical = [f.name for f in s.features if isinstance(f, Categorical)]
        for i, f in enumerate(s.features):
            shares = getattr(f, "shares", None)
            if shares is not None and shares not in categorical:
                what = (f"features[{seen[shares]}] is a {feature_dict(s.features[seen[shares]])['kind']} feature"
                        if shares in seen else "no feature has that name")
                raise self.fail(f"features[{i}].shares", f"{shares!r} is not a categorical feature ({what}; "
                                f"categorical: {', '.join(categorical) or 'none'})")
        names: dict[str, int] = {}
        for i, lab in enumerate(s.labels):
            if lab.name in names:
                raise self.fail(f"labels[{i}].name", f"{lab.name!r} is also the name of labels[{names[lab.name]}]")
            names[lab.name] = i
            if lab.name == "label" and i > 0:
                raise self.fail(f"labels[{i}].name", "'label' is the first label's column in the shards; "
                                "choose another name")
        if s.input.columns is not None:
            s.check_columns(s.input.columns, "input.columns")
        _check_columns_used(s)
        try:
            s.feature_spec()
        except SpecError as exc:
            key = f"features[{seen[exc.field]}]" if exc.field in seen else "features"
            raise self.fail(key, exc.reason) from None

    # -- values ----------------------------------------------------------------------------------------
    def list(self, value: Any, key: str) -> list:
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list, got {_kind_of(value)}")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected a non-empty string, got {_kind_of(value)}")
        return value

    def scalar_text(self, value: Any, key: str) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(key, f"expected a value (text or number), got {_kind_of(value)}")
        return str(value)

    def texts(self, value: Any, key: str) -> tuple[str, ...]:
        if value is None:
            return ()
        values = value if isinstance(value, list) else [value]
        if not values:
            raise self.fail(key, "expected at least one value")
        return tuple(self.scalar_text(v, key).strip() for v in values)

    def number(self, value: Any, key: str) -> float:
        if isinstance(value, bool):
            raise self.fail(key, f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise self.fail(key, f"expected a number, got {value!r}") from None

    def typed(self, value: Any, hint: Any, key: str) -> Any:
        """``value`` checked against a feature field's annotation (str, int, float, bool, Literal, Optional,
        tuples of numbers), converted where YAML differs (a list for a tuple)."""
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (typing.Union, _UnionType):
            if value is None and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            return self.typed(value, inner[0], key)
        if origin is Literal:
            if value not in args:
                raise self.fail(key, f"expected one of {', '.join(map(str, args))}, got {value!r}")
            return value
        if origin is tuple:
            if not isinstance(value, list) or (args[-1] is not Ellipsis and len(value) != len(args)):
                n = "numbers" if args[-1] is Ellipsis else f"{len(args)} numbers"
                raise self.fail(key, f"expected a list of {n} (e.g. [0, 100]), got {_kind_of(value)}")
            return tuple(self.number(v, key) for v in value)
        if hint is bool:
            if not isinstance(value, bool):
                raise self.fail(key, f"expected true or false, got {value!r}")
            return value
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(key, f"expected an integer, got {_kind_of(value)}")
            return value
        if hint is float:
            return self.number(value, key)
        if hint is str:
            return self.string(value, key)
        raise self.fail(key, f"cannot read a value of type {hint}")  # pragma: no cover - a new field type


_UnionType = type(int | None)


def _check_columns_used(s: DatasetSchema) -> None:
    """A label stored under its own column's name replaces that column: nothing else may read it; a label
    stored under a new name must not be a column something reads."""
    readers: dict[str, str] = {}
    for key, column in s.column_refs():
        if not key.startswith("labels["):
            readers.setdefault(column, key)
    for i, lab in enumerate(s.labels):
        if lab.name == lab.column and lab.column in readers and (lab.compare or lab.positive):
            raise SchemaError(f"the label (0/1) would replace column {lab.column!r}, which {readers[lab.column]} "
                              "reads: give the label another name", f"labels[{i}].name", s.source)
        if lab.name != lab.column and lab.name in readers:
            raise SchemaError(f"{lab.name!r} is a column that {readers[lab.name]} reads: give the label another "
                              "name", f"labels[{i}].name", s.source)


def _check_regex(pattern: str, key: str, reader: _Reader) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        pc.match_substring_regex(pa.array([""]), pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise reader.fail(key, f"not a valid regular expression (RE2): {exc}") from None


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name != "name"


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _join(key: str | None, sub: str) -> str:
    return f"{key}.{sub}" if key else sub


def _kind_of(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"{value!r}"
    for t, name in ((Mapping, "a mapping"), (list, "a list"), (str, "a string"), (int, "an integer"),
                    (float, "a number")):
        if isinstance(value, t):
            return f"{name} ({value!r})" if t in (str, int, float) else name
    return type(value).__name__


def _number_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _label_dict(lab: Label) -> Any:
    if not lab.positive and not lab.compare and lab.name == lab.column:
        return lab.column
    out: dict[str, Any] = {"column": lab.column}
    if lab.name != lab.column:
        out["name"] = lab.name
    if lab.positive:
        out["positive"] = lab.positive[0] if len(lab.positive) == 1 else list(lab.positive)
    if lab.negative:
        out["negative"] = lab.negative[0] if len(lab.negative) == 1 else list(lab.negative)
    if lab.compare:
        out["compare"] = f"{lab.compare[0]} {_number_text(lab.compare[1])}"
    return out


def _check_dict(c: Check) -> Any:
    if c.kind in CHECKS:
        return c.kind
    return {"pattern": c.pattern, **({"reason": c.reason} if c.reason else {})}


def _split_dict(s: SplitConfig) -> dict[str, Any]:
    if s.method == "time":
        out = {"method": "time", "column": s.column, "valid_from": iso_time(s.valid_from),
               "test_from": iso_time(s.test_from)}
        if s.time_format != "auto":
            out["time_format"] = s.time_format
        return out
    return {"method": s.method, "ratios": list(s.ratios), "seed": s.seed}
