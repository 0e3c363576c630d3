"""Synthetic conversions: a second label that only follows a click, its oracle, and the two-label schema."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctrzoo.cli import main
from ctrzoo.data.dataset import PreparedDataset
from ctrzoo.data.prepare import PrepareOptions, prepare
from ctrzoo.data.presets import load_preset
from ctrzoo.data.schema import load_schema
from ctrzoo.data.splits import SplitConfig
from ctrzoo.errors import CtrzooError
from ctrzoo.synth import KINDS, generate, load_defaults

CLICK = {"criteo": "label", "avazu": "click", "taobao": "clk"}
FILE = {"criteo": "train.tsv", "avazu": "train.csv", "taobao": "train.csv"}
ROWS = 20_000  # for rates: enough clicks that 4 binomial std devs stay small (taobao: ~1000 clicks)
SMALL, SEED = 3_000, 11
# The generator's outputs for (SMALL, SEED) before conversions existed: sha256 of the raw file and of the
# truth's p_click (float64) then label (int8) bytes. With conversions off they must never change.
BEFORE = {
    "criteo": ("7fd7d246c3d6248598b6b822a4ee65c248749b159a1be4226b22900d0bb024af",
               "6ba4579722edf57b62dd1aac70aa4f34cf1b1b55fd9988b1921ddb347a67f94f"),
    "avazu": ("2fe23c41133d2bc89774a6269ede4ed29e19c469f934c0c8c9d7f7edb5670110",
              "24748d090aee114f2392ac7a0ea4eab75f4a992a9fc6401f01c4aefc5171ec63"),
    "taobao": ("9782269192731d36da0c0196402859dc9543ef7e17db213072f687ae027689ec",
               "920bb904cbc822232bde26e777e0b36739d9e215fa24b261891768e18afcec8b"),
}
TRUTH_COLUMNS = ["p_click", "label", "p_cvr", "p_conversion", "converted"]


def read_raw(path: Path, kind: str) -> pd.DataFrame:
    """The raw file as strings; criteo has no header, so its columns are the preset's (+ converted if there)."""
    if kind == "criteo":
        frame = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False)
        frame.columns = [*load_preset("criteo").input.columns, "converted"][: frame.shape[1]]
        return frame
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def rank_auc(p: np.ndarray, y: np.ndarray) -> float:
    ranks = pd.Series(p).rank(method="average").to_numpy()
    n_pos = int(y.sum())
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(y) - n_pos)))


def truth_hash(path: str) -> str:
    t = pq.read_table(path)
    return hashlib.sha256(t["p_click"].to_numpy().tobytes() + t["label"].to_numpy().tobytes()).hexdigest()


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


@pytest.fixture(scope="module", params=KINDS)
def made(request, tmp_path_factory):
    """ROWS rows with conversions: (kind, path, summary, raw frame, truth frame)."""
    kind = request.param
    out = tmp_path_factory.mktemp(f"conv_{kind}") / FILE[kind]
    summary = generate(kind, ROWS, 21, out, conversions=True)
    return kind, out, summary, read_raw(out, kind), pq.read_table(f"{out}.truth.parquet").to_pandas()


@pytest.fixture(scope="module", params=KINDS)
def small(request, tmp_path_factory):
    """SMALL rows of the same seed without and with conversions: (kind, plain path, converted path)."""
    kind = request.param
    root = tmp_path_factory.mktemp(f"small_{kind}")
    plain, conv = root / "plain" / FILE[kind], root / "conv" / FILE[kind]
    generate(kind, SMALL, SEED, plain)
    generate(kind, SMALL, SEED, conv, conversions=True)
    return kind, plain, conv


def test_conversions_only_follow_clicks(made):
    kind, out, _, frame, truth = made
    assert frame.columns[-1] == "converted" and frame.shape == (ROWS, len(load_preset(kind).input.columns) + 1)
    if kind != "criteo":
        assert out.read_text().split("\n", 1)[0].endswith(",converted")
    click, converted = frame[CLICK[kind]].astype(int).to_numpy(), frame["converted"].astype(int).to_numpy()
    assert set(np.unique(converted)) == {0, 1}
    assert not (converted & (1 - click)).any()  # never converted without a click
    assert ((click == 1) & (converted == 0)).sum() > converted.sum() > 0
    assert list(truth.columns) == TRUTH_COLUMNS
    assert truth["converted"].dtype == np.int8 and truth["p_cvr"].dtype == np.float64
    assert (truth["label"].to_numpy() == click).all() and (truth["converted"].to_numpy() == converted).all()
    np.testing.assert_array_equal(truth["p_conversion"], truth["p_click"] * truth["p_cvr"])
    assert ((truth["p_cvr"] > 0) & (truth["p_cvr"] < 1)).all()


def test_rate_among_clicks_hits_target(made):
    kind, _, summary, _, truth = made
    target = load_defaults(kind)["conversion"]["target_cvr"]
    clicks, conversions = int(truth["label"].sum()), int(truth["converted"].sum())
    rate = conversions / clicks
    # given the clicks, conversions are Bernoulli(p_cvr) with mean ~target: 4 binomial std devs
    assert abs(rate - target) < 4 * math.sqrt(target * (1 - target) / clicks), (rate, clicks)
    # the calibration itself (no binomial noise): p_cvr's mean over clicks, weighted by p_click, on these rows
    weighted = float((truth["p_click"] * truth["p_cvr"]).sum() / truth["p_click"].sum())
    assert weighted == pytest.approx(target, abs=0.01)
    conv = summary["conversion"]
    assert conv["rate"] == conversions / ROWS and conv["rate_among_clicks"] == rate
    assert conv["rho"] == 0.5 and conv["target_cvr"] == target


def test_conversion_oracle_matches_truth(made):
    _, out, summary, _, truth = made
    p, y = truth["p_conversion"].to_numpy(), truth["converted"].to_numpy()
    conv = summary["conversion"]
    assert conv["oracle_auc"] == pytest.approx(rank_auc(p, y), abs=1e-9)
    assert conv["oracle_logloss"] == pytest.approx(-np.mean(np.where(y == 1, np.log(p), np.log1p(-p))), rel=1e-6)
    assert conv["oracle_auc"] > summary["oracle_auc"]  # p_click * p_cvr: two sources of signal on a rare label
    saved = json.loads(Path(f"{out}.synth.json").read_text())
    assert saved["conversion"] == conv and saved["files"]["schema"] == f"{out.name}.schema.yaml"
    assert saved["config"]["conversion"] == {"rho": 0.5, "target_cvr": conv["target_cvr"]}


def test_without_conversions_the_files_are_unchanged(small):
    kind, plain, conv = small
    assert hashlib.sha256(plain.read_bytes()).hexdigest() == BEFORE[kind][0]
    assert truth_hash(f"{plain}.truth.parquet") == BEFORE[kind][1]
    assert pq.read_schema(f"{plain}.truth.parquet").names == ["p_click", "label"]
    assert not Path(f"{plain}.schema.yaml").exists()
    summary = json.loads(Path(f"{plain}.synth.json").read_text())
    assert "conversion" not in summary and "conversion" not in summary["config"]
    # with conversions: the same bytes once the last column is cut off, the same click truth
    delim = b"\t" if kind == "criteo" else b","
    lines = conv.read_bytes().split(b"\n")
    assert all(line.rpartition(delim)[2] in (b"0", b"1", b"converted") for line in lines[:-1])
    assert b"\n".join(line.rpartition(delim)[0] for line in lines[:-1]) + b"\n" == plain.read_bytes()
    assert truth_hash(f"{conv}.truth.parquet") == BEFORE[kind][1]


def test_schema_prepares_two_labels(small, tmp_path):
    kind, _, conv = small
    schema = load_schema(f"{conv}.schema.yaml")
    preset = load_preset(kind)
    assert schema.name == kind and schema.input.columns == (*preset.input.columns, "converted")
    assert [lab.name for lab in schema.labels] == [CLICK[kind], "converted"]
    assert schema.features == preset.features
    prepare(schema, [conv], tmp_path / "ds", options=PrepareOptions(split=SplitConfig("order"), progress=False))
    ds = PreparedDataset.open(tmp_path / "ds")
    assert ds.labels == [CLICK[kind], "converted"] and ds.label_column("converted") == "label.converted"
    # an order split keeps the file's row order: train, valid, test shards end to end are the file
    shards = pa.concat_tables(pq.read_table(s, columns=["label", "label.converted"])
                              for split in ("train", "valid", "test") for s in ds.shards(split))
    frame = read_raw(conv, kind)
    assert shards.num_rows == SMALL
    np.testing.assert_array_equal(shards["label"].to_numpy(), frame[CLICK[kind]].astype(np.int8))
    np.testing.assert_array_equal(shards["label.converted"].to_numpy(), frame["converted"].astype(np.int8))
    assert shards["label.converted"].to_numpy().sum() > 0


@pytest.mark.parametrize("rho", [1.0, -1.0])
def test_rho_bounds_mix_only_the_click_logit(rho, tmp_path):
    """rho = +-1: the conversion logit is +-(click logit - global bias) + cvr_bias, exactly."""
    summary = generate("avazu", 2_000, 4, tmp_path / "a.csv", {"conversion": {"rho": rho}}, conversions=True)
    t = pq.read_table(tmp_path / "a.csv.truth.parquet").to_pandas()
    z_click = logit(t["p_click"].to_numpy()) - summary["global_bias"]
    expected = summary["conversion"]["cvr_bias"] + rho * z_click
    np.testing.assert_allclose(logit(t["p_cvr"].to_numpy()), expected, atol=1e-6)
    assert summary["conversion"]["rho"] == rho


def test_cli_conversions(tmp_path, capsys):
    out = tmp_path / "t.csv"
    assert main(["synth", "taobao", "--rows", "1000", "--seed", "2", "--out", str(out), "--conversions"]) == 0
    printed = capsys.readouterr().out
    assert "conversions: rate" in printed and f"{out}.schema.yaml" in printed
    assert out.read_text().split("\n", 1)[0].endswith(",click_sequence,converted")
    assert load_schema(f"{out}.schema.yaml").labels[1].name == "converted"


@pytest.mark.parametrize(("section", "key"), [
    ({"rho": 1.5}, "conversion.rho"),
    ({"rho": -1.01}, "conversion.rho"),
    ({"rho": "high"}, "conversion.rho"),
    ({"target_cvr": 0.0}, "conversion.target_cvr"),
    ({"target_cvr": 1.0}, "conversion.target_cvr"),
    ({"target_cvr": True}, "conversion.target_cvr"),
    ({"target_cvr": float("nan")}, "conversion.target_cvr"),
    ({"rh": 0.5}, "conversion.rh"),
])
def test_bad_conversion_config(section, key, tmp_path):
    with pytest.raises(CtrzooError, match=f"'{key}'"):
        generate("criteo", 10, 0, tmp_path / "x.tsv", {"conversion": section}, conversions=True)
    with pytest.raises(CtrzooError, match="'conversion'"):
        generate("criteo", 10, 0, tmp_path / "x.tsv", {"conversion": 0.1})
