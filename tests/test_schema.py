"""Dataset schemas: what the YAML says, and every mistake in it failing before any data is read, naming the
YAML key and what was expected."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ctrzoo.data import checks
from ctrzoo.data.prepare import prepare
from ctrzoo.data.presets import PRESETS, load_preset
from ctrzoo.data.schema import DatasetSchema, SchemaError, feature_dict, load_schema
from ctrzoo.data.splits import SplitConfig
from ctrzoo.errors import DataError
from ctrzoo.features.spec import Bucketized, Categorical, DenseVector, MultiValue, Numeric, SequenceFeature

FULL = """
name: shop
input: {format: text, delimiter: ",", header: true, quoting: true, missing: ["", "?", "NULL", "\\\\N"]}
labels:
  - click
  - {name: liked, column: rating, compare: ">= 4"}
  - {name: rich, column: income, positive: " 50000+.", negative: [" - 50000."]}
user_id: user
weight: w
checks:
  hour: {pattern: '^\\d{8}$', reason: hour is not YYMMDDHH}
  price: number
features:
  - {name: user, kind: categorical, hash_buckets: 1024}
  - {name: item, kind: categorical, min_count: 2, max_vocab: 1000, overflow: hash}
  - {name: price, kind: numeric, transform: log1p, standardize: true, clip: [0, 10000]}
  - {name: age_bucket, kind: numeric, source: age, bucketize: 5, clip: [0, 100]}
  - {name: tags, kind: multi_value, sep: "|", max_len: 8, pooling: sum}
  - {name: hist_item, kind: sequence, shares: item, max_len: 20, sep: "^"}
  - {name: emb, kind: dense_vector, dim: 4}
  - {name: ts_hour, kind: categorical, source: ts, derive: hour, time_format: unix_ms}
  - {name: hour_of_day, kind: categorical, source: hour, derive: yymmddhh_hour}
split: {method: time, column: ts, valid_from: 2024-05-01, test_from: "2024-05-08 00:00:00", time_format: unix_ms}
"""


def _full() -> dict:
    return yaml.safe_load(FULL)


def test_a_full_schema_reads_into_frozen_parts_and_back():
    s = DatasetSchema.from_dict(_full(), "shop.yaml")
    assert [lab.name for lab in s.labels] == ["click", "liked", "rich"]
    assert s.labels[1].compare == (">=", 4.0) and s.labels[2].positive == ("50000+.",)
    assert s.input.missing == ("", "?", "NULL", "\\N") and s.input.quoting
    f = {x.name: x for x in s.features}
    assert f["age_bucket"] == Bucketized("age_bucket", source="age", buckets=5, clip=(0.0, 100.0))
    assert f["tags"] == MultiValue("tags", sep="|", max_len=8, pooling="sum")
    assert f["hist_item"] == SequenceFeature("hist_item", shares="item", max_len=20, sep="^")
    assert f["emb"] == DenseVector("emb", dim=4)
    assert f["ts_hour"] == Categorical("ts_hour", source="ts", derive="hour:unix_ms")
    assert f["price"] == Numeric("price", transform="log1p", standardize=True, clip=(0.0, 10000.0))
    assert s.split == SplitConfig("time", column="ts", valid_from=1714521600, test_from=1715126400,
                                  time_format="unix_ms")
    spec = s.feature_spec()
    assert spec.label == "click" and spec.user_id == "user" and spec.features == s.features
    again = DatasetSchema.from_dict(yaml.safe_load(yaml.safe_dump(s.to_dict())))
    assert again == s
    # implied row checks: numbers, the vector, the times (the split's first: every row needs its time)
    kinds = [(c.column, c.kind) for c in s.row_checks()]
    assert kinds[0] == ("ts", "time") and s.row_checks()[0].required
    assert {("price", "number"), ("age", "number"), ("emb", "vector"), ("hour", "pattern")} <= set(kinds)


def test_presets_round_trip_and_are_the_built_in_formats():
    assert sorted(PRESETS) == ["avazu", "criteo", "taobao"]
    for name in PRESETS:
        s = load_preset(name)
        assert s.name == name and DatasetSchema.from_dict(s.to_dict()) == s
        assert s.default_spec() == s.feature_spec()
    assert load_preset("criteo").input.delimiter == ("\t", ",") and load_preset("criteo").input.header == "auto"


def test_feature_dict_writes_only_what_differs():
    assert feature_dict(Categorical("a")) == {"name": "a", "kind": "categorical"}
    assert feature_dict(Bucketized("b", buckets=7)) == {"name": "b", "kind": "numeric", "bucketize": 7}
    assert feature_dict(Categorical("h", source="t", derive="hour:%Y-%m-%d")) == {
        "name": "h", "kind": "categorical", "source": "t", "derive": "hour", "time_format": "%Y-%m-%d"}


def _mutate(path: str, value=None, delete: bool = False):
    """A change to the full schema at a dotted path (``features.5.shares``)."""
    def apply(d: dict) -> dict:
        d = copy.deepcopy(d)
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node = d
        for p in parents:
            node = node[p]
        if delete:
            del node[last]
        else:
            node[last] = value
        return d
    return apply


BAD = [
    (_mutate("colour", "red"), r"^shop.yaml: colour: unknown key \(known: name, input, label, labels"),
    (_mutate("features.1.kind", "embedding"), r"features\[1\]\.kind: expected one of categorical, numeric, "
                                              r"multi_value, sequence, dense_vector, got 'embedding'"),
    (_mutate("features.0.min_cnt", 2), r"features\[0\]\.min_cnt: unknown key for a categorical feature \(known: "),
    (_mutate("features.5.shares", "product"), r"features\[5\]\.shares: 'product' is not a categorical feature "
                                              r"\(no feature has that name; categorical: user, item"),
    (_mutate("features.5.shares", "price"), r"features\[5\]\.shares: 'price' is not a categorical feature "
                                            r"\(features\[2\] is a numeric feature"),
    (_mutate("features.5.shares", delete=True), r"features\[5\]\.shares: missing \(the categorical feature"),
    (_mutate("features.6.dim", delete=True), r"features\[6\]\.dim: missing \(the vector's length\)"),
    (_mutate("features.1.min_count", "two"), r"features\[1\]\.min_count: expected an integer, got a string"),
    (_mutate("features.1.min_count", 0), r"features\[1\]: min_count must be >= 1"),
    (_mutate("features.2.clip", [1]), r"features\[2\]\.clip: expected a list of 2 numbers"),
    (_mutate("features.2.transform", "sqrt"), r"features\[2\]: unknown transform 'sqrt'"),
    (_mutate("features.3.standardize", True), r"features\[3\]\.standardize: not used with bucketize"),
    (_mutate("features.4.pooling", "median"), r"features\[4\]\.pooling: expected one of mean, sum, max"),
    (_mutate("features.7.derive", "minute"), r"features\[7\]\.derive: expected one of yymmddhh_hour, "),
    (_mutate("features.8.time_format", "unix"), r"features\[8\]\.time_format: only with a time derivation"),
    (_mutate("features.1.name", "user"), r"features\[1\]\.name: 'user' is also the name of features\[0\]"),
    (_mutate("features", []), r"features: expected at least one feature"),
    (_mutate("features", delete=True), r"features: missing"),
    (_mutate("labels", delete=True), r"labels: missing \(which column says the row was clicked\?\)"),
    (_mutate("labels.1.compare", "at least 4"), r"labels\[1\]\.compare: expected a comparison such as '>= 4'"),
    (_mutate("labels.1.compare", ">= four"), r"labels\[1\]\.compare: expected a number, got 'four'"),
    (_mutate("labels.1.name", "rich"), r"labels\[2\]\.name: 'rich' is also the name of labels\[1\]"),
    (_mutate("labels.2.positive", delete=True), r"labels\[2\]\.negative: only with positive values"),
    (_mutate("labels.1.name", "price"), r"labels\[1\]\.name: 'price' is a column that features\[2\]\.name reads"),
    (_mutate("labels.1", {"column": "price", "compare": "> 9"}),
     r"labels\[1\]\.name: the label \(0/1\) would replace column 'price', which features\[2\]\.name reads"),
    (_mutate("input.format", "excel"), r"input\.format: expected one of text, parquet, jsonl, got 'excel'"),
    (_mutate("input.delimiter", ";;"), r"input\.delimiter: expected one character"),
    (_mutate("input.header", "yes"), r"input\.header: expected true, false or auto"),
    (_mutate("input.columns", ["click", "rating"]),
     r"labels\[2\]\.column: 'income' is not among the file's columns \(input\.columns has: click, rating\)"),
    (_mutate("checks.price", "float"), r"checks\.price: expected a mapping \(keys pattern, reason\)"),
    (_mutate("checks.hour", {"pattern": "(unclosed"}), r"checks\.hour\.pattern: not a valid regular expression"),
    (_mutate("split.test_from", delete=True), r"split\.test_from: missing \(a time split needs"),
    (_mutate("split.valid_from", "soon"), r"split\.valid_from: expected a time \(unix seconds or an ISO date"),
    (_mutate("split", {"method": "random", "column": "ts"}), r"split\.column: only for a time split"),
    (_mutate("split", {"method": "random", "ratios": [0.5, 0.5]}), r"split: split ratios must be three"),
    (_mutate("weight", 3), r"weight: expected a non-empty string, got an integer"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_a_bad_schema_names_the_key_and_what_was_expected(change, message):
    with pytest.raises(SchemaError, match=message):
        DatasetSchema.from_dict(change(_full()), "shop.yaml")


def test_schema_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: {format: text\nfeatures: [")
    with pytest.raises(SchemaError, match=rf"^{re.escape(str(bad))}:\d+: not valid YAML"):
        load_schema(bad)
    with pytest.raises(SchemaError, match="no such schema file"):
        load_schema(tmp_path / "missing.yaml")
    top = tmp_path / "list.yaml"
    top.write_text("- a\n- b\n")
    with pytest.raises(SchemaError, match=r"list.yaml: expected a mapping \(keys name, input"):
        load_schema(top)


SIMPLE = {"input": {"format": "text"}, "labels": ["click"],
          "features": [{"name": "item", "kind": "categorical"}, {"name": "tags", "kind": "multi_value"}]}


@pytest.fixture
def no_data_read(monkeypatch):
    """Fail the test if any row is validated: a bad schema must fail before that."""
    def refuse(*_a, **_k):
        raise AssertionError("a row was read")
    monkeypatch.setattr(checks, "validate", refuse)
    import ctrzoo.data.blocks as blocks

    monkeypatch.setattr(blocks, "validate", refuse)


@pytest.mark.parametrize("fmt", ["text", "parquet", "jsonl"])
def test_columns_missing_from_the_input_fail_before_any_row_is_read(fmt, tmp_path, no_data_read):
    rows = {"click": ["0", "1"], "item": ["a", "b"], "tag": ["x|y", "z"]}  # "tags" is misspelt in the file
    if fmt == "text":
        path = tmp_path / "rows.csv"
        path.write_text("click,item,tag\n0,a,x|y\n1,b,z\n")
    elif fmt == "parquet":
        path = tmp_path / "parts"
        path.mkdir()
        pq.write_table(pa.table(rows), path / "part-00000.parquet")
    else:
        path = tmp_path / "rows.jsonl"
        path.write_text('{"click": 0, "item": "a", "tag": "x|y"}\n{"click": 1, "item": "b", "tag": "z"}\n')
    schema = DatasetSchema.from_dict({**SIMPLE, "input": {"format": fmt}}, "s.yaml")
    with pytest.raises(SchemaError, match=r"^s.yaml: features\[1\]\.name: 'tags' is not among the file's columns "
                                          r"\(.* has: click, item, tag\)"):
        prepare(schema, [path], tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    renamed = DatasetSchema.from_dict({**SIMPLE, "labels": ["clicked"], "input": {"format": fmt}}, "s.yaml")
    with pytest.raises(SchemaError, match=r"labels\[0\]\.column: 'clicked' is not among the file's columns"):
        prepare(renamed, [path], tmp_path / "ds")


def test_typed_columns_of_the_wrong_shape_fail_before_any_row_is_read(tmp_path, no_data_read):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"click": [0, 1], "item": [["a"], ["b"]], "tags": ["x", "y"]}), path)
    schema = DatasetSchema.from_dict({**SIMPLE, "input": {"format": "parquet"}}, "s.yaml")
    with pytest.raises(SchemaError, match=r"features\[0\]\.name: column 'item' of .* holds list<element: string>; "
                                          "expected single values"):
        prepare(schema, [path], tmp_path / "ds")


def test_a_split_given_by_the_caller_is_checked_against_the_columns_too(tmp_path, no_data_read):
    path = tmp_path / "rows.csv"
    path.write_text("click,item,tags\n0,a,x\n")
    schema = DatasetSchema.from_dict(SIMPLE, "s.yaml")
    from ctrzoo.data.prepare import PrepareOptions

    opts = PrepareOptions(split=SplitConfig("time", column="when", valid_from=0, test_from=1))
    with pytest.raises(SchemaError, match=r"split\.column: 'when' is not among the file's columns"):
        prepare(schema, [path], tmp_path / "ds", options=opts)


def test_unknown_format_and_missing_inputs_are_named(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset kind 'criteo2'; known: \['avazu', 'criteo', 'taobao'\]"):
        prepare("criteo2", [tmp_path], tmp_path / "ds")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_dir" / "_SUCCESS").write_text("")
    with pytest.raises(DataError, match="empty_dir: no data files in the directory"):
        prepare("criteo", [tmp_path / "empty_dir"], tmp_path / "ds")


def test_the_example_schema_in_data_readme_loads():
    readme = (Path(__file__).resolve().parents[1] / "data" / "README.md").read_text()
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    s = DatasetSchema.from_dict(yaml.safe_load(block), "data/README.md")
    assert {type(f) for f in s.features} == {Categorical, Numeric, Bucketized, MultiValue, SequenceFeature,
                                             DenseVector}
    assert [lab.name for lab in s.labels] == ["click", "liked", "rich"] and s.split.method == "time"
    assert s.weight == "w" and s.user_id == "user" and s.input.missing == ("", "?", "NULL", "\\N")
