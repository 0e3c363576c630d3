"""Synthetic click logs: real raw formats, determinism, truth file and oracle metrics."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ctrzoo.errors import CtrzooError
from ctrzoo.synth import KINDS, generate, load_defaults
from ctrzoo.synth.common import merge_config
from ctrzoo.synth.taobao import TaobaoSynth

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CRITEO_NAMES = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
AVAZU_HEADER = (
    "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,"
    "device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21"
)
TAOBAO_HEADER = (
    "clk,time_stamp,userid,adgroup_id,pid,cate_id,campaign_id,customer,brand,price,cms_segid,cms_group_id,"
    "final_gender_code,age_level,pvalue_level,shopping_level,occupation,new_user_class_level,click_sequence"
)
HEX8 = re.compile(r"^[0-9a-f]{8}$")
INT = re.compile(r"^-?\d+$")
ROWS = 20_000


def read_raw(path: Path, kind: str) -> pd.DataFrame:
    """Read a raw file as strings, empty cells kept as '' (the same reader serves samples and output)."""
    if kind == "criteo":
        return pd.read_csv(path, sep="\t", header=None, names=CRITEO_NAMES, dtype=str, keep_default_na=False)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def with_sample(frame: pd.DataFrame, name: str, kind: str) -> list[pd.DataFrame]:
    """The output plus the real sample rows when they are available, for checks that must hold on both."""
    path = SAMPLES / name
    return [frame, read_raw(path, kind)] if path.is_file() else [frame]


def rank_auc(p: np.ndarray, y: np.ndarray) -> float:
    ranks = pd.Series(p).rank(method="average").to_numpy()
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def check_truth(out: Path, summary: dict, frame: pd.DataFrame, label_col: str) -> None:
    truth = pq.read_table(f"{out}.truth.parquet").to_pandas()
    assert list(truth.columns) == ["p_click", "label"]
    assert truth["p_click"].dtype == np.float64 and truth["label"].dtype == np.int8
    assert len(truth) == len(frame) == summary["rows"]
    assert (truth["label"].to_numpy() == frame[label_col].astype(int).to_numpy()).all()
    p, y = truth["p_click"].to_numpy(), truth["label"].to_numpy()
    assert abs(p.mean() - y.mean()) < 0.015
    assert summary["base_ctr"] == pytest.approx(y.mean())
    assert summary["oracle_auc"] == pytest.approx(rank_auc(p, y), abs=1e-9)
    logloss = -np.mean(np.where(y == 1, np.log(p), np.log1p(-p)))
    assert summary["oracle_logloss"] == pytest.approx(logloss, rel=1e-6)
    saved = json.loads(Path(f"{out}.synth.json").read_text())
    assert saved["oracle_auc"] == summary["oracle_auc"] and saved["kind"] == summary["kind"]


@pytest.fixture(scope="module")
def criteo(tmp_path_factory):
    out = tmp_path_factory.mktemp("criteo") / "train.tsv"
    return out, generate("criteo", ROWS, 7, out)


def test_criteo_format_matches_sample(criteo):
    out, summary = criteo
    frame = read_raw(out, "criteo")
    cfg = load_defaults("criteo")
    for df in with_sample(frame, "criteo_sample.tsv", "criteo"):  # the same checks hold on the real rows
        assert df.shape[1] == 40 and set(df["label"]) <= {"0", "1"}
        for col in CRITEO_NAMES[1:14]:
            assert df[col][df[col] != ""].str.match(INT).all(), col
        for col in CRITEO_NAMES[14:]:
            assert df[col][df[col] != ""].str.match(HEX8).all(), col
    counts = {col: frame[col][frame[col] != ""].astype(int) for col in ("I2", "I5")}
    assert set(counts["I2"][counts["I2"] < 0]) == {-1, -2, -3} and counts["I5"].max() > 1000
    for col, spec in {**cfg["numeric"], **cfg["fields"]}.items():
        assert (frame[col] == "").mean() == pytest.approx(spec.get("missing", 0.0), abs=0.02), col
    assert frame["C3"].nunique() > 1000 and frame["C9"].nunique() <= 3
    assert 0.74 <= summary["oracle_auc"] <= 0.84
    assert summary["base_ctr"] == pytest.approx(0.25, abs=0.02)
    check_truth(out, summary, frame, "label")


def test_deterministic_per_seed_and_gzip(criteo, tmp_path):
    out, summary = criteo
    again = generate("criteo", ROWS, 7, tmp_path / "same.tsv.gz")
    assert gzip.decompress((tmp_path / "same.tsv.gz").read_bytes()) == out.read_bytes()
    assert Path(f"{tmp_path}/same.tsv.gz.truth.parquet").read_bytes() == Path(f"{out}.truth.parquet").read_bytes()
    assert {k: v for k, v in again.items() if k != "files"} == {k: v for k, v in summary.items() if k != "files"}
    generate("criteo", 2000, 7, tmp_path / "again.tsv.gz")
    generate("criteo", 2000, 7, tmp_path / "copy.tsv.gz")
    assert (tmp_path / "again.tsv.gz").read_bytes() == (tmp_path / "copy.tsv.gz").read_bytes()
    other = generate("criteo", ROWS, 8, tmp_path / "other.tsv")
    assert (tmp_path / "other.tsv").read_bytes() != out.read_bytes()
    assert other["oracle_auc"] != summary["oracle_auc"]


def test_avazu_format(tmp_path):
    out = tmp_path / "train.csv"
    summary = generate("avazu", ROWS, 3, out)
    assert out.read_text().split("\n", 1)[0] == AVAZU_HEADER
    frame = read_raw(out, "avazu")
    ids = [int(v) for v in frame["id"]]
    assert all(0 <= v < 2**64 for v in ids) and sum(v >= 2**63 for v in ids) > ROWS // 4
    assert set(frame["click"]) == {"0", "1"}
    assert frame["hour"].str.match(r"^\d{8}$").all() and frame["hour"].iloc[0] == "14102100"
    hours = pd.to_datetime(frame["hour"], format="%y%m%d%H")
    assert hours.is_monotonic_increasing and hours.iloc[-1] < pd.Timestamp("2014-10-31")
    for col in ("site_id", "site_domain", "site_category", "app_id", "app_domain", "app_category", "device_id"):
        assert frame[col].str.match(HEX8).all(), col
    for col in ("C1", "banner_pos", "device_type", "device_conn_type", *(f"C{i}" for i in range(14, 22))):
        assert frame[col].str.match(INT).all(), col
    no_site, no_app = frame["site_id"] == "85f751fd", frame["app_id"] == "ecad2386"
    assert (no_site ^ no_app).all() and 0.3 < no_site.mean() < 0.42
    assert (frame.loc[no_site, "site_category"] == "50e219e0").all()
    assert (frame["device_id"] == "a99f214a").mean() == pytest.approx(0.82, abs=0.02)
    assert frame.groupby("site_id")["site_domain"].nunique().max() == 1  # a site has one domain
    assert 0.74 <= summary["oracle_auc"] <= 0.84
    assert summary["base_ctr"] == pytest.approx(0.17, abs=0.02)
    truth = pq.read_table(f"{out}.truth.parquet")["p_click"].to_numpy()
    by_hour = pd.Series(truth).groupby(hours.dt.hour.to_numpy()).mean()
    assert by_hour.max() - by_hour.min() > 0.02  # hour of day matters
    check_truth(out, summary, frame, "click")


def test_taobao_format_and_interest(tmp_path):
    out = tmp_path / "train.csv"
    summary = generate("taobao", ROWS, 5, out)
    frame = read_raw(out, "taobao")
    assert ",".join(frame.columns) == TAOBAO_HEADER
    for df in with_sample(frame, "taobao_ad_sample.csv", "taobao"):
        assert ",".join(df.columns) == TAOBAO_HEADER
        assert set(df["clk"]) <= {"0", "1"}
        assert df["time_stamp"].str.match(r"^2017-05-\d\d \d\d:\d\d:\d\d$").all()
        assert df["price"].astype(float).gt(0).all()
        assert df["pid"].str.match(r"^\d+_\d+$").all()
        for col in ("userid", "adgroup_id", "cate_id", "campaign_id", "customer"):
            assert df[col].str.match(r"^\d+$").all(), col
        seq = df["click_sequence"][df["click_sequence"] != ""]
        assert seq.str.match(r"^\d+(\^\d+)*$").all()
    assert (frame["pvalue_level"] == "").mean() > 0.3 and (frame["new_user_class_level"] == "").mean() > 0.2
    lengths = frame["click_sequence"].map(lambda s: len(s.split("^")) if s else 0)
    assert lengths.min() == 0 and lengths.max() >= 40 and lengths.nunique() > 30

    # history ids are adgroup ids, mostly of the user's interest categories; later rows extend earlier ones
    synth = TaobaoSynth(merge_config(load_defaults("taobao"), None), 5)
    item_of = {int(tok): i for i, tok in enumerate(synth.fields["adgroup_id"].table[:-1])}
    user_of = {int(tok): i for i, tok in enumerate(synth.fields["userid"].table[:-1])}
    hits = total = 0
    for uid, seq in zip(frame["userid"].to_numpy()[:2000], frame["click_sequence"].to_numpy()[:2000], strict=True):
        user = user_of[int(uid)]
        interests = set(synth.interests[user, : synth.n_interests[user]])
        for tok in filter(None, seq.split("^")):
            hits += synth.item["cate_id"][item_of[int(tok)]] in interests
            total += 1
    assert total > 1000 and hits / total > 0.75
    by_user = frame.groupby("userid")["click_sequence"]
    assert all(later.startswith(earlier) for _, s in by_user for earlier, later in zip(s, s.iloc[1:], strict=False))

    assert summary["base_ctr"] == pytest.approx(0.05, abs=0.01)
    flat = generate("taobao", ROWS, 5, tmp_path / "flat.csv", {"interest_scale": 0.0, "recent_scale": 0.0})
    assert summary["oracle_auc"] > flat["oracle_auc"] + 0.05  # the interest term clearly matters
    check_truth(out, summary, frame, "clk")


def test_errors(tmp_path):
    assert KINDS == ("criteo", "avazu", "taobao")
    with pytest.raises(CtrzooError, match="unknown synthetic data kind"):
        generate("movielens", 10, 0, tmp_path / "x.csv")
    with pytest.raises(CtrzooError, match="'block_size'"):
        generate("criteo", 10, 0, tmp_path / "x.tsv", {"block_size": 10})
    with pytest.raises(CtrzooError, match=r"'fields\.C3\.cardinality'"):
        generate("criteo", 10, 0, tmp_path / "x.tsv", {"fields": {"C3": {"cardinality": 10}}})
    with pytest.raises(CtrzooError, match="unknown field 'C99'"):
        generate("criteo", 10, 0, tmp_path / "x.tsv", {"model": {"pairs": [["C1", "C99"]]}})
    with pytest.raises(CtrzooError, match="rows"):
        generate("avazu", 0, 0, tmp_path / "x.csv")
    with pytest.raises(CtrzooError, match="seed"):
        generate("avazu", 10, -1, tmp_path / "x.csv")
    with pytest.raises(CtrzooError, match="not found"):
        load_defaults("nope")
