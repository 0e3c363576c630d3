"""``ctrzoo schema infer``: a schema proposed from a sample, that loads and prepares without edits."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctrzoo.cli import main
from ctrzoo.data.infer import infer_schema, sample_lines
from ctrzoo.data.prepare import prepare
from ctrzoo.data.schema import SchemaError, load_schema
from ctrzoo.features.spec import Categorical, DenseVector, MultiValue, Numeric, SequenceFeature

T0 = int(datetime(2023, 3, 1, tzinfo=UTC).timestamp())


def _h(*parts) -> int:
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def log_rows(n: int = 600) -> list[dict]:
    """Columns of every shape a click log has, with what infer should make of each in ``EXPECTED``."""
    rows = []
    for i in range(n):
        r = lambda *k, i=i: _h("log", i, *k)  # noqa: E731
        rows.append({
            "click": r("c") % 5 == 0,
            "user_id": 1000 + r("u") % 300,  # integers with an id name: a category
            "item": f"it{r('i') % 40}",
            "price": round(float(np.exp((r("p") % 1000) / 100)), 2),  # heavy-tailed: log1p
            "score": None if r("s") % 17 == 0 else round((r("s2") % 1000) / 1000, 3),
            "visits": r("v") % 5000,  # many distinct integers, no id name: a number
            "level": r("l") % 6,  # few distinct integers: a category
            "zip": f"{r('z') % 3000:05d}",  # leading zeros: a code
            "tags": "|".join(f"t{r('t', k) % 9}" for k in range(1 + r("nt") % 3)),
            "hist": "^".join(f"it{r('h', k) % 40}" for k in range(r("nh") % 5)),
            "emb": ",".join(f"{((r('e', k) % 200) - 100) / 100:.2f}" for k in range(4)),
            "event_time": T0 + i * 97,  # sorted by time, as logs are
            "country": "DE",  # one value: left out
        })
    return rows


EXPECTED = {"user_id": Categorical, "item": Categorical, "price": Numeric, "score": Numeric, "visits": Numeric,
            "level": Categorical, "zip": Categorical, "tags": MultiValue, "hist": SequenceFeature,
            "emb": DenseVector}


def write_csv(rows: list[dict], path: Path, header: bool = True, delimiter: str = ",") -> Path:
    def cell(v) -> str:
        v = "" if v is None else ("1" if v is True else "0" if v is False else str(v))
        return f'"{v}"' if delimiter in v else v
    lines = [delimiter.join(rows[0])] if header else []
    lines += [delimiter.join(cell(v) for v in row.values()) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _kinds(schema) -> dict[str, type]:
    return {f.name: type(f) for f in schema.features}


def _check_generated(result, time_feature: str = "event_time_hour") -> None:
    s = result.schema
    kinds = _kinds(s)
    for column, kind in EXPECTED.items():
        assert kinds.get(column) is kind, (column, kinds.get(column))
    f = {x.name: x for x in s.features}
    assert f["price"].transform == "log1p" and f["score"].transform == "identity" and f["price"].standardize
    assert f["tags"].sep == "|" and f["hist"].shares == "item" and f["hist"].sep == "^"
    assert f["emb"].dim == 4
    assert f[time_feature].derive in ("hour:unix", "hour") and "country" not in kinds and "click" not in kinds
    report = {r.column: r for r in result.columns}
    assert report["country"].kind == "skip" and report["click"].kind == "label"
    assert report["score"].missing == pytest.approx(sum(r["score"] is None for r in log_rows()) / 600, abs=0.02)


def test_infer_on_generated_text_proposes_each_kind_and_the_schema_prepares(tmp_path):
    rows = log_rows()
    path = write_csv(rows, tmp_path / "log.csv")
    result = infer_schema([path], "click", user="user_id", time="event_time")
    _check_generated(result)
    s = result.schema
    assert s.input.format == "text" and s.input.delimiter == (",",) and s.input.header is True and s.input.quoting
    assert s.user_id == "user_id" and s.labels[0].column == "click" and not s.labels[0].compare
    # the time split of a sorted log: the last tenth is test, the tenth before valid (the sample covers the file)
    times = sorted(r["event_time"] for r in rows)
    assert abs(s.split.test_from - times[540]) <= 97 * 3 and abs(s.split.valid_from - times[480]) <= 97 * 3
    meta = prepare(s, [path], tmp_path / "ds")
    assert meta.bad_rows.total == 0
    assert [meta.splits[k].rows for k in ("train", "valid", "test")] == pytest.approx([480, 60, 60], abs=4)


def test_a_sorted_log_larger_than_the_budget_is_sampled_over_its_whole_length(tmp_path):
    rows = log_rows(3000)
    path = write_csv(rows, tmp_path / "big.csv")
    head, lines = sample_lines(path, 10_000, budget=path.stat().st_size // 10)
    assert head.startswith(b"click,") and len(lines) < 1000
    firsts = [int(line.split(b",")[-2]) for line in lines]
    assert min(firsts) == rows[0]["event_time"] and max(firsts) > rows[2600]["event_time"]
    result = infer_schema([path], "click", time="event_time", sample_bytes=path.stat().st_size // 10)
    times = sorted(r["event_time"] for r in rows)
    assert abs(result.schema.split.test_from - times[2700]) < 97 * 150  # not the end of the first 10%


def test_infer_on_headerless_tsv_parquet_and_json_lines(tmp_path):
    rows = log_rows()
    tsv = write_csv(rows, tmp_path / "log.tsv", header=False, delimiter="\t")
    result = infer_schema([tsv], "c0", sample_rows=1000)
    s = result.schema
    assert s.input.header is False and s.input.delimiter == ("\t",) and s.input.columns[:2] == ("c0", "c1")
    assert isinstance({f.name: f for f in s.features}["c8"], MultiValue)  # tags
    assert prepare(s, [tsv], tmp_path / "tsv").bad_rows.total == 0
    typed = [{**r, "tags": r["tags"].split("|"), "emb": [float(x) for x in r["emb"].split(",")]} for r in rows]
    parts = tmp_path / "parts"
    parts.mkdir()
    table = pa.table({c: [r[c] for r in typed] for c in typed[0]})
    pq.write_table(table.slice(0, 300), parts / "part-0.parquet", row_group_size=100)
    pq.write_table(table.slice(300), parts / "part-1.parquet", row_group_size=100)
    result = infer_schema([parts], "click", user="user_id", time="event_time")
    assert result.schema.input.format == "parquet"
    _check_generated(result)
    assert prepare(result.schema, [parts], tmp_path / "pq").bad_rows.total == 0
    jsonl = tmp_path / "log.ndjson"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in typed))
    result = infer_schema([jsonl], "click", user="user_id", time="event_time")
    assert result.schema.input.format == "jsonl"
    _check_generated(result)
    assert prepare(result.schema, [jsonl], tmp_path / "js").bad_rows.total == 0


def test_missing_markers_and_label_rules(tmp_path):
    rows = log_rows(200)
    for k in range(0, 200, 9):
        rows[k]["visits"] = "?"
    for r in rows:
        r["grade"] = ["A", "B", "C"][_h("g", r["user_id"], r["event_time"]) % 3]
    path = write_csv(rows, tmp_path / "log.csv")
    s = infer_schema([path], "grade", positive="A").schema
    assert s.input.missing == ("", "?") and s.labels[0].positive == ("A",)
    assert isinstance({f.name: f for f in s.features}["visits"], Numeric)
    assert prepare(s, [path], tmp_path / "ds").bad_rows.total == 0
    assert infer_schema([path], "level", positive=">=3").schema.labels[0].compare == (">=", 3.0)
    with pytest.raises(SchemaError, match=r"--label 'grade' holds \[.*\], not only 0 and 1: pass --positive"):
        infer_schema([path], "grade")
    with pytest.raises(SchemaError, match=r"--user 'uid' is not among the columns of .*log.csv"):
        infer_schema([path], "click", user="uid")


def test_infer_on_the_movielens_rows_prepares_without_edits(shared_data, tmp_path, capsys):
    """The README's example: genres multi-valued, label rating >= 4, split by timestamp."""
    out = tmp_path / "movielens.yaml"
    assert main(["schema", "infer", "--input", str(shared_data / "movielens_sample.txt"), "--label", "rating",
                 "--positive", ">=4", "--user", "user_id", "--time", "timestamp", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "genres      multi_value" in table and "rating      label" in table and "missing" in table
    s = load_schema(out)
    f = {x.name: x for x in s.features}
    assert isinstance(f["genres"], MultiValue) and f["genres"].sep == "|"
    assert s.labels[0].compare == (">=", 4.0) and s.user_id == "user_id" and s.input.quoting
    assert s.split.method == "time" and s.split.column == "timestamp"
    assert f["timestamp_hour"].derive == "hour:unix" and "title" in f
    data = tmp_path / "movielens"
    assert main(["prepare", "--schema", str(out), "--input", str(shared_data / "movielens_sample.txt"),
                 "--out", str(data)]) == 0
    meta = json.loads((data / "dataset.json").read_text())
    assert meta["bad_rows"]["total"] == 0 and all(v["rows"] > 0 for v in meta["splits"].values())
    assert sum(v["rows"] for v in meta["splits"].values()) == 200


def test_row_ids_are_left_out_and_unbounded_ids_hashed(tmp_path):
    lines = ["click,request_id,session,country"]
    # sessions: the first 600 rows in pairs, then new ones only (unbounded); countries: two, always repeating
    lines += [f"{int(_h('c', i) % 3 == 0)},req-{i},s{i // 2 if i < 600 else i},{['DE', 'FR'][i % 2]}"
              for i in range(2400)]
    path = tmp_path / "ids.csv"
    path.write_text("\n".join(lines) + "\n")
    result = infer_schema([path], "click")
    report = {r.column: r for r in result.columns}
    assert report["request_id"].kind == "skip" and "a different value in every row" in report["request_id"].detail
    f = {x.name: x for x in result.schema.features}
    assert "request_id" not in f and f["session"].hash_buckets == 16384  # >= 4x the 2,100 sessions seen
    assert report["session"].detail == "hashed into 16,384 buckets"
    assert f["country"].hash_buckets is None and f["country"].min_count == 1
