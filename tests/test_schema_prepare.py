"""``prepare`` through a dataset schema: every input format, label rule, the time split, sample weights and
every feature kind, with bad rows counted by reason at their ``file:line`` (Parquet: ``file:row``)."""

from __future__ import annotations

import csv as csv_module
import gzip
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import yaml

from ctrzoo.cli import main
from ctrzoo.data.dataset import PreparedDataset
from ctrzoo.data.loader import BatchLoader, table_to_batch
from ctrzoo.data.prepare import PrepareOptions, prepare
from ctrzoo.data.schema import DatasetSchema
from ctrzoo.errors import DataError, DatasetError
from ctrzoo.features.vocab import FIRST_ID

N = 400
T0 = int(datetime(2024, 4, 20, tzinfo=UTC).timestamp())
VALID_FROM, TEST_FROM = "2024-05-06", "2024-05-12"
ITEMS = [f"i{k}" for k in range(25)]

SCHEMA = f"""
name: shop
input: {{format: text, delimiter: ",", header: true, quoting: true, missing: ["", "?", "NULL"]}}
labels:
  - click
  - {{name: liked, column: rating, compare: ">= 4"}}
  - {{name: rich, column: income, positive: "50000+.", negative: "- 50000."}}
user_id: user
weight: w
features:
  - {{name: user, kind: categorical, hash_buckets: 64}}
  - {{name: item, kind: categorical, min_count: 2}}
  - {{name: price, kind: numeric, transform: log1p, standardize: true, clip: [0, 500]}}
  - {{name: age_bucket, kind: numeric, source: age, bucketize: 4}}
  - {{name: tags, kind: multi_value, sep: "|", max_len: 3}}
  - {{name: hist, kind: sequence, shares: item, max_len: 4, sep: "^"}}
  - {{name: emb, kind: dense_vector, dim: 3}}
  - {{name: ts_hour, kind: categorical, source: ts, derive: hour, time_format: unix_ms}}
  - {{name: ts_weekday, kind: categorical, source: ts, derive: weekday, time_format: unix_ms}}
split: {{method: time, column: ts, valid_from: {VALID_FROM}, test_from: "{TEST_FROM}", time_format: unix_ms}}
"""


def _h(*parts) -> int:
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def shop_rows(n: int = N) -> list[dict]:
    """Typed rows (lists as lists, numbers as numbers, None missing): the same values in every format."""
    rows = []
    for i in range(n):
        r = lambda *k, i=i: _h("shop", i, *k)  # noqa: E731
        rows.append({
            "click": int(r("c") % 4 == 0),
            "rating": 1 + r("r") % 5,
            "income": " 50000+. " if r("inc") % 3 == 0 else " - 50000.",
            "user": f"u{r('u') % 30}",
            "item": ITEMS[r("i") % len(ITEMS)],
            "title": f"Thing {r('t') % 9}, model {r('t2') % 3}",  # a comma inside a quoted value; never read
            "price": None if r("p") % 11 == 0 else round((r("pv") % 90000) / 100, 2),
            "age": 15 + r("a") % 60,
            "tags": [f"t{r('tag', k) % 7}" for k in range(r("nt") % 4)],
            "hist": [ITEMS[r("h", k) % len(ITEMS)] for k in range(r("nh") % 6)],
            "emb": [round(((r("e", k) % 2001) - 1000) / 1000, 3) for k in range(3)] if r("ev") % 5 else None,
            "ts": (T0 + r("ts") % (25 * 86400)) * 1000 + r("ms") % 1000,
            "w": [0.5, 1.0, 2.0][r("w") % 3],
        })
    return rows


COLUMNS = list(shop_rows(1)[0])


def _text(v, sep: str = ",") -> str:
    if v is None:
        return ""
    if isinstance(v, list):
        return sep.join(map(str, v))
    return str(v)


def write_csv(rows: list[dict], path: Path, header: bool = True, delimiter: str = ",") -> Path:
    lines = [delimiter.join(COLUMNS)] if header else []
    for row in rows:
        cells = []
        for c in COLUMNS:
            v = _text(row[c], {"tags": "|", "hist": "^"}.get(c, ","))
            cells.append(f'"{v}"' if ("," in v and delimiter == ",") else v)
        lines.append(delimiter.join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def arrow_table(rows: list[dict]) -> pa.Table:
    return pa.table({c: [r[c] for r in rows] for c in COLUMNS})


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def schema(**changes) -> DatasetSchema:
    d = yaml.safe_load(SCHEMA)
    for key, value in changes.items():
        d[key] = value
    return DatasetSchema.from_dict(d, "shop.yaml")


def _tables(path: Path) -> dict[str, pa.Table]:
    ds = PreparedDataset.open(path)
    return {s: pa.concat_tables([pq.read_table(x) for x in ds.shards(s)]) for s in ("train", "valid", "test")}


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> dict:
    """The shop rows as CSV, prepared once (the reference the other formats are compared with)."""
    root = tmp_path_factory.mktemp("shop")
    rows = shop_rows()
    csv = write_csv(rows, root / "shop.csv")
    meta = prepare(schema(), [csv], root / "ds")
    return {"root": root, "rows": rows, "csv": csv, "meta": meta, "ds": root / "ds"}


def test_several_labels_are_stored_and_each_can_be_chosen(shop):
    meta, rows = shop["meta"], shop["rows"]
    assert meta.labels == ["click", "liked", "rich"] and meta.bad_rows.total == 0
    assert meta.label_rules == {"click": "0/1", "liked": "rating >= 4", "rich": "income in ['50000+.']"}
    ds = PreparedDataset.open(shop["ds"])
    test = _tables(shop["ds"])["test"]
    assert test.column_names[:5] == ["label", "label.liked", "label.rich", "weight", "user_id"]
    raw = pq.read_table(ds.raw_path("test"))
    by_user_ts = {(r["user"], r["ts"]): r for r in rows}
    src = [by_user_ts[(u, int(t))] for u, t in zip(raw.column("user").to_pylist(), raw.column("ts").to_pylist())]
    assert test.column("label").to_pylist() == [r["click"] for r in src]
    assert test.column("label.liked").to_pylist() == [int(r["rating"] >= 4) for r in src]
    assert test.column("label.rich").to_pylist() == [int(r["income"].strip() == "50000+.") for r in src]
    assert test.column("weight").to_pylist() == [r["w"] for r in src]
    for name, column in (("click", "label"), ("liked", "label.liked"), (None, "label")):
        batch = next(iter(BatchLoader(ds, "test", batch_size=10_000, shuffle=False, label=name, with_weight=True)))
        np.testing.assert_array_equal(batch.label.numpy(), test.column(column).to_numpy())
        np.testing.assert_array_equal(batch.weight.numpy(), test.column("weight").to_numpy())
    assert next(iter(BatchLoader(ds, "test", batch_size=8, shuffle=False))).weight is None  # not asked for
    splits = meta.splits["train"]
    liked = sum(int(r["rating"] >= 4) for r in rows if (r["ts"] // 1000) < T0 + 16 * 86400)
    assert splits.label_positives["liked"] == liked and set(splits.label_positives) == {"liked", "rich"}
    with pytest.raises(DatasetError, match=r"no label 'bought'; its labels are click, liked, rich"):
        BatchLoader(ds, "test", label="bought")


def test_the_time_split_puts_each_row_by_its_time(shop):
    rows, meta = shop["rows"], shop["meta"]
    edges = [int(datetime.fromisoformat(d).replace(tzinfo=UTC).timestamp()) for d in (VALID_FROM, TEST_FROM)]
    want = np.bincount(np.searchsorted(edges, [r["ts"] // 1000 for r in rows], side="right"), minlength=3)
    assert [meta.splits[s].rows for s in ("train", "valid", "test")] == want.tolist()
    raw_ts = pq.read_table(PreparedDataset.open(shop["ds"]).raw_path("test")).column("ts").to_pylist()
    assert min(int(t) // 1000 for t in raw_ts) >= edges[1]
    assert meta.split == {"method": "time", "column": "ts", "valid_from": "2024-05-06 00:00:00",
                          "test_from": "2024-05-12 00:00:00", "time_format": "unix_ms"}


def test_every_feature_kind_is_encoded_as_the_codec_encodes_the_raw_rows(shop):
    ds = PreparedDataset.open(shop["ds"])
    raw = pq.read_table(ds.raw_path("test"))
    shard = table_to_batch(_tables(shop["ds"])["test"])
    enc = ds.codec.encode(raw)
    np.testing.assert_array_equal(shard.sparse.numpy(), enc.sparse)
    np.testing.assert_array_equal(shard.seq.numpy(), enc.seq)
    np.testing.assert_allclose(shard.dense.numpy(), enc.dense, rtol=1e-6)
    layout, spec = ds.codec.layout, ds.spec
    # dense: price (clipped to 500, log1p, standardized), then the vector's 3 components as they were
    by_user_ts = {(r["user"], r["ts"]): r for r in shop["rows"]}
    src = [by_user_ts[(u, int(t))] for u, t in zip(raw.column("user").to_pylist(), raw.column("ts").to_pylist())]
    emb = np.array([r["emb"] or [0.0, 0.0, 0.0] for r in src], dtype=np.float32)
    np.testing.assert_allclose(shard.dense.numpy()[:, 1:4], emb, atol=1e-6)
    price = spec["price"]
    clipped = np.log1p(np.clip([r["price"] if r["price"] is not None else np.nan for r in src], 0, 500))
    expect = np.where(np.isnan(clipped), 0.0, (clipped - price.mean) / price.std)
    np.testing.assert_allclose(shard.dense.numpy()[:, 0], expect, atol=1e-5)
    # bucketized age: ids grow with the age (quantile ranges of the training rows)
    age = np.array([r["age"] for r in src])
    ids = shard.sparse.numpy()[:, layout.field_index("age_bucket")]
    order = np.argsort(age, kind="stable")
    assert (np.diff(ids[order]) >= 0).all() and len(np.unique(ids)) >= 3
    # the hashed user: ids inside its 64 buckets (after missing and OOV), no vocabulary
    user = layout.sparse[layout.field_index("user")]
    uid = shard.sparse.numpy()[:, layout.field_index("user")]
    assert user.size == 64 + FIRST_ID and spec["user"].vocab is None
    assert ((uid >= user.offset + FIRST_ID) & (uid < user.offset + user.size)).all()
    # the history looks its items up in item's table; the tags bag in its own
    item = layout.sparse[layout.field_index("item")]
    hist = shard.seq.numpy()[:, [s.name for s in layout.seq].index("hist")]
    assert ((hist == 0) | ((hist >= item.offset) & (hist < item.offset + item.size))).all() and (hist > 0).any()
    # the hour of day, from unix milliseconds
    hour_vocab = spec["ts_hour"].vocab.values.to_pylist()
    hours = [datetime.fromtimestamp(r["ts"] // 1000, UTC).hour for r in src]
    local = shard.sparse.numpy()[:, layout.field_index("ts_hour")] - layout.sparse[layout.field_index("ts_hour")].offset
    assert [hour_vocab[i - FIRST_ID] for i in local] == [str(h) for h in hours]


@pytest.mark.parametrize("fmt", ["parquet_file", "parquet_dir", "jsonl", "tsv_no_header", "csv_gz"])
def test_every_input_format_gives_the_dataset_of_the_csv(shop, fmt, tmp_path):
    rows = shop["rows"]
    if fmt == "parquet_file":
        pq.write_table(arrow_table(rows), tmp_path / "shop.parquet", row_group_size=64)
        inputs, s = [tmp_path / "shop.parquet"], schema(input={"format": "parquet"})
    elif fmt == "parquet_dir":
        out = tmp_path / "export"  # part files in partition directories, read in path order
        for day, part in (("dt=2024-01-01", rows[:150]), ("dt=2024-01-02", rows[150:])):
            (out / day).mkdir(parents=True)
            pq.write_table(arrow_table(part), out / day / "part-00000.snappy.parquet", row_group_size=70)
            (out / day / ".part-00000.snappy.parquet.crc").write_text("crc")
        (out / "_SUCCESS").write_text("")
        inputs, s = [out], schema(input={"format": "parquet"})
    elif fmt == "jsonl":
        inputs, s = [write_jsonl(rows, tmp_path / "shop.jsonl")], schema(input={"format": "jsonl"})
    elif fmt == "tsv_no_header":
        inputs = [write_csv(rows, tmp_path / "shop.tsv", header=False, delimiter="\t")]
        s = schema(input={"format": "text", "delimiter": "\t", "header": False, "columns": COLUMNS})
    else:
        csv = write_csv(rows, tmp_path / "plain.csv")
        (tmp_path / "shop.csv.gz").write_bytes(gzip.compress(csv.read_bytes()))
        inputs, s = [tmp_path / "shop.csv.gz"], schema()
    meta = prepare(s, inputs, tmp_path / "ds")
    assert meta.bad_rows.total == 0
    assert PreparedDataset.open(tmp_path / "ds").spec.equals(PreparedDataset.open(shop["ds"]).spec)
    ref, got = _tables(shop["ds"]), _tables(tmp_path / "ds")
    for split in ref:
        assert got[split].equals(ref[split]), split
    if fmt == "parquet_dir":
        assert [Path(i.path).parent.name for i in meta.inputs] == ["dt=2024-01-01", "dt=2024-01-02"]


def test_headerless_text_gets_c0_c1_names(tmp_path):
    path = tmp_path / "plain.txt"
    path.write_text("1\ta\tx|y\n0\tb\t\n1\ta\ty\n0\tc\tx\n" * 5)
    s = DatasetSchema.from_dict({"input": {"format": "text", "delimiter": "\t", "header": False},
                                 "labels": ["c0"], "features": [{"name": "c1", "kind": "categorical"},
                                                                {"name": "c2", "kind": "multi_value"}]})
    meta = prepare(s, [path], tmp_path / "ds")
    assert sum(v.rows for v in meta.splits.values()) == 20 and meta.bad_rows.total == 0
    assert PreparedDataset.open(tmp_path / "ds").spec["c1"].vocab.values.to_pylist() == ["a", "b", "c"]


def test_a_parquet_directory_with_two_workers_equals_one(shop, tmp_path):
    rows = shop["rows"]
    for k in range(3):
        (tmp_path / "parts").mkdir(exist_ok=True)
        pq.write_table(arrow_table(rows[k * 150:(k + 1) * 150]), tmp_path / "parts" / f"part-{k:05d}.parquet")
    s = schema(input={"format": "parquet"}, split={"method": "random"})
    one = prepare(s, [tmp_path / "parts"], tmp_path / "w1")
    two = prepare(s, [tmp_path / "parts"], tmp_path / "w2", options=PrepareOptions(workers=2))
    assert one.fingerprint == two.fingerprint and one.splits == two.splits
    a, b = _tables(tmp_path / "w1"), _tables(tmp_path / "w2")
    assert all(a[k].equals(b[k]) for k in a)


def _bad(meta) -> dict[str, tuple[int, list[str]]]:
    return {reason: (info.count, [x.rsplit("/", 1)[-1] for x in info.first])
            for reason, info in meta.bad_rows.by_reason.items()}


def _put(lines: list[str], line: int, column: str, value: str) -> None:
    """Set one value of a CSV line (1-based; the header is line 1)."""
    row = next(csv_module.reader([lines[line - 1]]))
    row[COLUMNS.index(column)] = value
    lines[line - 1] = ",".join(f'"{v}"' if "," in v else v for v in row)


def test_bad_text_rows_are_counted_by_reason_at_their_lines(shop, tmp_path):
    lines = shop["csv"].read_text().splitlines()

    def put(line: int, column: str, value: str) -> None:
        _put(lines, line, column, value)

    put(3, "rating", "")
    put(4, "rating", "five")
    put(5, "income", "unknown")
    put(6, "price", "cheap")
    put(7, "emb", "1,2")
    put(8, "ts", "yesterday")
    put(9, "ts", "")
    put(10, "w", "-1")
    put(11, "click", "2")
    lines[11] = lines[11] + ",extra"
    put(13, "price", "NULL")  # a missing token: fine
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    meta = prepare(schema(), [path], tmp_path / "ds")
    assert _bad(meta) == {
        "missing label (rating)": (1, ["bad.csv:3"]),
        "label (rating) is not a number": (1, ["bad.csv:4"]),
        "label (income) is neither '50000+.' nor '- 50000.'": (1, ["bad.csv:5"]),
        "price is not a number": (1, ["bad.csv:6"]),
        "emb is not a vector of 3 numbers": (1, ["bad.csv:7"]),
        "ts is not a time (unix_ms)": (1, ["bad.csv:8"]),
        "missing ts (the time split's column)": (1, ["bad.csv:9"]),
        "weight (w) is negative": (1, ["bad.csv:10"]),
        "label (click) is not 0 or 1": (1, ["bad.csv:11"]),
        f"wrong column count: expected {len(COLUMNS)}, got {len(COLUMNS) + 1}": (1, ["bad.csv:12"]),
    }
    assert sum(v.rows for v in meta.splits.values()) == N - 10


def test_bad_rows_of_typed_inputs_name_the_row_or_line(shop, tmp_path):
    rows = [dict(r) for r in shop["rows"][:60]]
    rows[4]["price"] = float("nan")
    rows[9]["emb"] = [1.0, 2.0]
    rows[20]["rating"] = None
    pq.write_table(arrow_table(rows), tmp_path / "bad.parquet", row_group_size=16)
    meta = prepare(schema(input={"format": "parquet"}, split={"method": "random"}), [tmp_path / "bad.parquet"],
                   tmp_path / "pq")
    assert _bad(meta) == {"price is not a number": (1, ["bad.parquet:5"]),
                          "emb is not a vector of 3 numbers": (1, ["bad.parquet:10"]),
                          "missing label (rating)": (1, ["bad.parquet:21"])}
    path = write_jsonl(shop["rows"][:60], tmp_path / "bad.jsonl")
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:-5]  # broken JSON
    lines[6] = "   "
    lines[8] = '["not", "an", "object"]'
    lines[11] = lines[11].replace('"user": "', '"user": 7, "x": "')  # another type than the column's (string)
    path.write_text("\n".join(lines) + "\n")
    meta = prepare(schema(input={"format": "jsonl"}, split={"method": "random"}), [path], tmp_path / "js")
    rejected = "line the JSON parser rejects (broken JSON, not an object, or a value of another type than its column's)"
    assert _bad(meta) == {rejected: (3, ["bad.jsonl:3", "bad.jsonl:9", "bad.jsonl:12"]),
                          "empty line": (1, ["bad.jsonl:7"])}
    assert sum(v.rows for v in meta.splits.values()) == 56


def test_strict_stops_at_the_first_bad_row(shop, tmp_path):
    lines = shop["csv"].read_text().splitlines()
    _put(lines, 41, "rating", "five")
    _put(lines, 31, "ts", "")
    path = tmp_path / "s.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"^{path}:31: missing ts \(the time split's column\)$"):
        prepare(schema(), [path], tmp_path / "ds", options=PrepareOptions(strict=True))
    assert not (tmp_path / "ds").exists()


def test_sample_weights_weigh_the_training_loss(shop, tmp_path):
    from ctrzoo.train.trainer import TrainConfig, Trainer

    ds = PreparedDataset.open(shop["ds"])
    trainer = Trainer(TrainConfig(model="lr", batch_size=64, bf16=False, seed=1), ds, tmp_path / "work",
                      progress=False)
    batch = next(iter(trainer.train_loader))
    assert batch.weight is not None and set(batch.weight.unique().tolist()) <= {0.5, 1.0, 2.0}
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.normal_(0, 0.3)
        _, loss, _ = trainer.loss(batch)
        logits = trainer.model(batch.sparse, batch.dense, batch.seq)
    each = F.binary_cross_entropy_with_logits(logits, batch.label, reduction="none")
    assert float(loss) == pytest.approx(float((batch.weight * each).mean()), rel=1e-5)
    assert float(loss) != pytest.approx(float(each.mean()), rel=1e-3)


def test_train_and_evaluate_the_label_chosen(shop, tmp_path, capsys):
    from ctrzoo.bundle import load_bundle
    from ctrzoo.evaluate import evaluate_bundle

    out = tmp_path / "liked"
    code = main(["train", "--model", "lr", "--data", str(shop["ds"]), "--out", str(out), "--label", "liked",
                 "--epochs", "1", "--max-steps", "3", "--batch-size", "64"])
    assert code == 0
    bundle = load_bundle(out)
    assert bundle.spec.label == "liked" and bundle.meta.train["label"] == "liked"
    ds = PreparedDataset.open(shop["ds"])
    m = evaluate_bundle(bundle, ds, "test")
    liked = _tables(shop["ds"])["test"].column("label.liked").to_numpy()
    from ctrzoo.evaluate import score_split

    y, _, _ = score_split(bundle, ds, "test")
    np.testing.assert_array_equal(y, liked)
    assert m["rows"] == len(liked)
    assert main(["train", "--model", "lr", "--data", str(shop["ds"]), "--out", str(tmp_path / "x"),
                 "--label", "bought", "--max-steps", "1"]) == 2
    assert "no label 'bought'; its labels are click, liked, rich" in capsys.readouterr().err


def test_prepare_cli_with_a_schema_file(shop, tmp_path, capsys):
    path = tmp_path / "shop.yaml"
    path.write_text(SCHEMA)
    assert main(["prepare", "--schema", str(path), "--input", str(shop["csv"]), "--out", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    assert "labels: click (0/1), liked (rating >= 4), rich (income in ['50000+.'])" in out
    assert "1 multi-value (tags), 1 dense vector (emb:3)" in out and "sample weight: w" in out
    a, b = _tables(tmp_path / "ds"), _tables(shop["ds"])
    assert all(a[k].equals(b[k]) for k in a)
    # the command line's split replaces the schema's
    assert main(["prepare", "--schema", str(path), "--input", str(shop["csv"]), "--out", str(tmp_path / "r"),
                 "--split", "random", "--seed", "3"]) == 0
    assert json.loads((tmp_path / "r" / "dataset.json").read_text())["split"] == {
        "method": "random", "ratios": [0.8, 0.1, 0.1], "seed": 3}
    assert main(["prepare", "criteo", "--schema", str(path), "--input", "x", "--out", "y"]) == 2
    assert "not both" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(SCHEMA.replace("shares: item", "shares: items"))
    assert main(["prepare", "--schema", str(bad), "--input", str(shop["csv"]), "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: features[5].shares: 'items' is not a categorical feature" in err and not (tmp_path / "z").exists()
    assert main(["schema", "check", str(path), "--input", str(shop["csv"])]) == 0
    assert main(["schema", "show", "--preset", "avazu"]) == 0
    assert "hour: {pattern: '^\\d{8}$', reason: hour is not YYMMDDHH}" in capsys.readouterr().out
