"""`ctrzoo prepare`: sample rows (real and written), bad input, atomic publish, splits, round trips."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sample_rows import CRITEO_HEADER

from ctrzoo.data.dataset import PreparedDataset
from ctrzoo.data.loader import BatchLoader, table_to_batch
from ctrzoo.data.prepare import PrepareOptions, prepare
from ctrzoo.data.reader import BadRows, read_blocks
from ctrzoo.data.splits import SplitConfig
from ctrzoo.errors import DataError, DatasetError
from ctrzoo.features import FeatureSpec
from ctrzoo.synth.taobao import COLUMNS as TAOBAO_HEADER


def _sample_lines(sample_rows: Path) -> list[str]:
    return (sample_rows / "criteo_sample.tsv").read_text().splitlines()


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sample_rows_have_the_real_formats_and_edge_cases(sample_rows):
    """Both sources hold what the README of the real rows says, edge cases included (the written twin too)."""
    tsv = [line.split("\t") for line in _sample_lines(sample_rows)]
    assert len(tsv) == 200 and {len(r) for r in tsv} == {40}
    assert {r[0] for r in tsv} == {"0", "1"}
    ints, cats = [v for r in tsv for v in r[1:14]], [v for r in tsv for v in r[14:]]
    assert "" in ints and any(v.startswith("-") for v in ints)  # missing and negative integers
    assert all(re.fullmatch(r"-?\d+", v) for v in ints if v)
    assert "" in cats and all(re.fullmatch(r"[0-9a-f]{8}", v) for v in cats if v)  # missing and 8-hex hashes
    text = (sample_rows / "criteo_sample.txt").read_text().splitlines()
    assert text[0] == ",".join(CRITEO_HEADER)
    rows = [line.split(",") for line in text[1:]]
    assert any(v.endswith(".0") for r in rows for v in r[1:14])  # integers written as floats
    for a, b in zip(tsv, rows, strict=True):  # the same rows
        assert b[0] == a[0] and b[14:] == a[14:]
        assert [float(v) if v else None for v in b[1:14]] == [float(v) if v else None for v in a[1:14]]
    with open(sample_rows / "taobao_ad_sample.csv", newline="") as f:
        header, *taobao = list(csv.reader(f))
    assert ",".join(header) == TAOBAO_HEADER and len(taobao) == 100 and {len(r) for r in taobao} == {19}
    seqs = [r[-1] for r in taobao]
    assert "" in seqs and any("^" in s for s in seqs)  # empty and ^-joined click sequences
    assert all(re.fullmatch(r"\d+(\^\d+)*", s) for s in seqs if s)
    assert any("" in r[10:18] for r in taobao)  # missing profile fields


def test_criteo_tsv_and_csv_variants_prepare_identically(sample_rows, tmp_path):
    a = prepare("criteo", [sample_rows / "criteo_sample.tsv"], tmp_path / "a")
    b = prepare("criteo", [sample_rows / "criteo_sample.txt"], tmp_path / "b")
    assert sum(s.rows for s in a.splits.values()) == 200
    assert a.bad_rows.total == 0 and b.bad_rows.total == 0
    for split in ("train", "valid", "test"):
        ta = pq.read_table(PreparedDataset.open(tmp_path / "a").shards(split)[0])
        tb = pq.read_table(PreparedDataset.open(tmp_path / "b").shards(split)[0])
        assert ta.equals(tb)


def test_taobao_sample_keeps_user_and_shares_item_table(sample_rows, tmp_path):
    meta = prepare("taobao", [sample_rows / "taobao_ad_sample.csv"], tmp_path / "t")
    ds = PreparedDataset.open(tmp_path / "t")
    assert meta.user_id == "userid"
    layout = ds.spec.compile().layout
    item = layout.sparse[layout.field_index("adgroup_id")]
    batch = next(iter(BatchLoader(ds, "train", batch_size=1000, shuffle=False, with_user=True)))
    hist = batch.seq[:, 0, :]
    nonpad = hist[hist != 0]
    assert nonpad.numel() > 0
    assert ((nonpad >= item.offset) & (nonpad < item.offset + item.size)).all()
    assert batch.user_id is not None and batch.user_id.dtype == object


def test_round_trip_saved_spec_equals_in_memory_for_files_and_dicts(sample_rows, tmp_path):
    prepare("taobao", [sample_rows / "taobao_ad_sample.csv"], tmp_path / "t")
    ds = PreparedDataset.open(tmp_path / "t")
    # In-memory spec: refit from the same training rows, as prepare did, without touching disk.
    from ctrzoo.data.formats import FORMATS
    from ctrzoo.features import SpecFitter

    cfg = SplitConfig()
    fitter = SpecFitter(FORMATS["taobao"].default_spec())
    blocks = list(read_blocks([sample_rows / "taobao_ad_sample.csv"], "taobao", BadRows()))
    for blk in blocks:
        fitter.update(blk.table.filter(cfg.assign(blk.row_index) == 0))
    in_memory = fitter.finalize()
    loaded = FeatureSpec.load(tmp_path / "t")
    assert loaded.equals(in_memory)
    raw = blocks[0].table
    for data in (raw, raw.to_pylist()):
        a, b = in_memory.compile().encode(data), loaded.compile().encode(data)
        for k in ("sparse", "dense", "seq"):
            np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    # and the shards hold exactly what the encoder produces for the raw test rows
    raw_test = pq.read_table(ds.raw_path("test"))
    shard = table_to_batch(pq.read_table(ds.shards("test")[0]))
    enc = loaded.compile().encode(raw_test)
    np.testing.assert_array_equal(shard.sparse.numpy(), enc.sparse)
    np.testing.assert_array_equal(shard.seq.numpy(), enc.seq)
    np.testing.assert_allclose(shard.dense.numpy(), enc.dense)


def test_bad_rows_are_counted_by_reason_with_line_numbers(sample_rows, tmp_path):
    lines = _sample_lines(sample_rows)
    lines[3] = "\t".join(lines[3].split("\t")[:-2])  # truncated line (line 4)
    lines[5] += "\textra"  # extra column (line 6)
    fields = lines[9].split("\t")
    fields[3] = "abc"  # text in an integer field (line 10)
    lines[9] = "\t".join(fields)
    lines[12] = "2" + lines[12][1:]  # label 2 (line 13)
    path = _write(tmp_path / "bad.tsv", lines)
    meta = prepare("criteo", [path], tmp_path / "ds")
    by_reason = meta.bad_rows.by_reason
    assert meta.bad_rows.total == 4
    assert sum(s.rows for s in meta.splits.values()) == 196
    assert by_reason["wrong column count: expected 40, got 38"].first == [f"{path}:4"]
    assert by_reason["wrong column count: expected 40, got 41"].first == [f"{path}:6"]
    assert by_reason["I3 is not an integer"].first == [f"{path}:10"]
    assert by_reason["label (label) is not 0 or 1"].first == [f"{path}:13"]


def test_strict_fails_at_first_bad_row_with_file_and_line(sample_rows, tmp_path):
    lines = _sample_lines(sample_rows)
    lines[41] = "2" + lines[41][1:]
    lines[70] += "\tx"
    path = _write(tmp_path / "bad.tsv", lines)
    with pytest.raises(DataError, match=rf"{path}:42: label \(label\) is not 0 or 1"):
        prepare("criteo", [path], tmp_path / "ds", options=PrepareOptions(strict=True))
    assert not (tmp_path / "ds").exists()
    assert not list(tmp_path.glob(".ds.tmp-*"))


def test_header_mismatch_and_broken_sequence(sample_rows, tmp_path):
    lines = (sample_rows / "taobao_ad_sample.csv").read_text().splitlines()
    broken = lines.copy()
    broken[5] = broken[5].rsplit(",", 1)[0] + ",12^^x"
    meta = prepare("taobao", [_write(tmp_path / "b.csv", broken)], tmp_path / "ds")
    assert meta.bad_rows.by_reason["broken click_sequence (expected ids joined by ^)"].count == 1
    renamed = ["clk,ts" + lines[0][len("clk,time_stamp"):], *lines[1:]]
    with pytest.raises(DataError, match=r"h.csv:1: unexpected header"):
        prepare("taobao", [_write(tmp_path / "h.csv", renamed)], tmp_path / "ds2")


@pytest.mark.parametrize("content", ["", "label,I1\n"])
def test_empty_or_missing_file(tmp_path, content):
    empty = tmp_path / "empty.tsv"
    empty.write_text(content)
    with pytest.raises(DataError, match="empty|no valid data rows|wrong column"):
        prepare("criteo", [empty], tmp_path / "ds")
    with pytest.raises(DataError, match="no such file"):
        prepare("criteo", [tmp_path / "missing.tsv"], tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_crash_mid_prepare_leaves_old_dataset_intact(sample_rows, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    prepare("criteo", [sample_rows / "criteo_sample.tsv"], out)
    before = json.loads((out / "dataset.json").read_text())
    files = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert {"spec.json", "train/part-00000-000.parquet", "raw/test.parquet"} <= {str(p) for p in files}
    import ctrzoo.data.prepare as prep

    calls = {"n": 0}
    real_write = prep._ShardWriter.write

    def crash(self, table):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("simulated crash")
        real_write(self, table)

    monkeypatch.setattr(prep._ShardWriter, "write", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare("criteo", [sample_rows / "criteo_sample.txt"], out)
    assert json.loads((out / "dataset.json").read_text()) == before
    # shards, spec, vocabularies and raw rows too, byte for byte
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == files
    PreparedDataset.open(out)  # still loads
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temp directory left behind


def test_incomplete_directory_never_loads(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "spec.json").write_text("{}")
    with pytest.raises(DatasetError, match="not a complete prepared dataset"):
        PreparedDataset.open(tmp_path / "half")
    with pytest.raises(DataError, match="refusing to replace"):
        prepare("criteo", [tmp_path / "half" / "spec.json"], tmp_path / "half")


def test_splits_random_and_order(sample_rows, tmp_path):
    r1 = prepare("criteo", [sample_rows / "criteo_sample.tsv"], tmp_path / "r1")
    r2 = prepare("criteo", [sample_rows / "criteo_sample.tsv"], tmp_path / "r2",
                 options=PrepareOptions(split=SplitConfig(seed=7)))
    rows = {k: v.rows for k, v in r1.splits.items()}
    assert sum(rows.values()) == 200 and rows["train"] > rows["valid"]
    assert r1.fingerprint == r2.fingerprint  # same raw data
    assert r1.splits != r2.splits or r1.layout != r2.layout
    o = prepare("criteo", [sample_rows / "criteo_sample.tsv"], tmp_path / "o",
                options=PrepareOptions(split=SplitConfig(method="order", ratios=(0.5, 0.25, 0.25))))
    assert {k: v.rows for k, v in o.splits.items()} == {"train": 100, "valid": 50, "test": 50}
    # order split: the test rows are the last 50 lines
    raw = pq.read_table(PreparedDataset.open(tmp_path / "o").raw_path("test"))
    last = [line.split("\t")[14] for line in _sample_lines(sample_rows)[150:]]
    assert raw.column("C1").to_pylist() == last


def test_split_assignment_is_independent_of_blocks():
    cfg = SplitConfig(seed=3)
    idx = np.arange(100_000)
    whole = cfg.assign(idx)
    parts = np.concatenate([cfg.assign(idx[:777]), cfg.assign(idx[777:])])
    np.testing.assert_array_equal(whole, parts)
    frac = np.bincount(whole, minlength=3) / idx.size
    np.testing.assert_allclose(frac, [0.8, 0.1, 0.1], atol=0.01)


def test_small_blocks_give_the_same_dataset(sample_rows, tmp_path):
    prepare("criteo", [sample_rows / "criteo_sample.tsv"], tmp_path / "big")
    prepare("criteo", [sample_rows / "criteo_sample.tsv"], tmp_path / "small",
            options=PrepareOptions(block_bytes=3000))
    a, b = PreparedDataset.open(tmp_path / "big"), PreparedDataset.open(tmp_path / "small")
    assert a.spec.equals(b.spec)
    for split in ("train", "test"):
        ta = pq.read_table(a.shards(split)[0])
        tb = pq.read_table(b.shards(split)[0])
        assert ta.equals(tb)
    assert pq.ParquetFile(b.shards("train")[0]).metadata.num_row_groups > 1


def _dataset_tables(path: Path) -> dict[str, pa.Table]:
    ds = PreparedDataset.open(path)
    return {split: pa.concat_tables([pq.read_table(s) for s in ds.shards(split)])
            for split in ("train", "valid", "test")}


def test_several_files_with_two_workers_equal_one_worker(tmp_path):
    from ctrzoo.synth import generate

    files = []
    for i in range(3):
        generate("criteo", 4000 + 500 * i, 20 + i, tmp_path / f"day_{i}.tsv")
        files.append(tmp_path / f"day_{i}.tsv")
    one = prepare("criteo", files, tmp_path / "w1", options=PrepareOptions(workers=1))
    two = prepare("criteo", files, tmp_path / "w2", options=PrepareOptions(workers=2))
    assert one.fingerprint == two.fingerprint and one.splits == two.splits
    assert PreparedDataset.open(tmp_path / "w1").spec.equals(PreparedDataset.open(tmp_path / "w2").spec)
    a, b = _dataset_tables(tmp_path / "w1"), _dataset_tables(tmp_path / "w2")
    for split in a:
        assert a[split].equals(b[split]), split
    assert pq.read_table(tmp_path / "w1" / "raw" / "test.parquet").equals(
        pq.read_table(tmp_path / "w2" / "raw" / "test.parquet"))
    assert sum(s.rows for s in one.splits.values()) == 4000 + 4500 + 5000


def test_max_vocab_truncates_or_hashes_exploding_fields(tmp_path):
    from ctrzoo.data.formats import FORMATS
    from ctrzoo.features.spec_file import with_overrides
    from ctrzoo.synth import generate

    generate("criteo", 5000, 3, tmp_path / "c.tsv")
    spec = with_overrides(FORMATS["criteo"].default_spec(), min_count=1, max_vocab=50)
    prepare("criteo", [tmp_path / "c.tsv"], tmp_path / "t", spec=spec)
    sizes = PreparedDataset.open(tmp_path / "t").meta.layout.sparse
    assert max(sizes.values()) == 52  # 50 values + missing + OOV
    spec = with_overrides(spec, max_vocab=50, hash_overflow=True)
    prepare("criteo", [tmp_path / "c.tsv"], tmp_path / "h", spec=spec)
    hashed = PreparedDataset.open(tmp_path / "h").spec
    exploded = [c for c in hashed.categorical if c.hash_buckets]
    assert exploded and all(c.hash_buckets == 50 and c.vocab is None for c in exploded)
    small = [c for c in hashed.categorical if not c.hash_buckets]
    assert small and all(len(c.vocab) <= 50 for c in small)
