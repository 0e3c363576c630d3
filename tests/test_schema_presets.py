"""The built-in formats are presets of the schema mechanism, and give the same datasets as the code before them.

"The same dataset" is checked on digests of everything a prepared dataset holds (``preset_rows.dataset_digest``:
every shard column's values per split, the raw test rows, the fitted spec, the fingerprint, split sizes and bad
rows by reason with their lines), recorded by preparing the same files with the code before presets (commit
15221dc, where ``ctrzoo/data/formats.py`` defined the formats in Python): on rows generated from hashes (the
same bytes everywhere, bad rows of every kind included) and on the real sample rows in ``../shared/data``.
The feature specs are also compared with the Python definitions they replace.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from preset_rows import dataset_digest, write_avazu, write_criteo, write_taobao

from ctrzoo.data.formats import FORMATS
from ctrzoo.data.prepare import PrepareOptions, prepare
from ctrzoo.data.presets import load_preset
from ctrzoo.data.splits import SplitConfig
from ctrzoo.features import Categorical, FeatureSpec, Numeric, SequenceFeature

# name -> (digests: train, valid, test shards, raw test rows, spec; fingerprint), from the code before presets
BEFORE = {
    "criteo_tsv": ("f2e7e8291430ee37 882378c664fac551 a05eecd3117d8721 98cf6ccfb7a70f3b 22f300a2d1d8e5c4",
                   "blake2b:de0e43f1110f3ddb1c48733171624cdf"),
    "criteo_csv": ("4e9cd4bb0548e8c5 1163cfd8f89aaa1e c1a745b0f369fe05 98cf6ccfb7a70f3b f2d0e39183a3f8d7",
                   "blake2b:5bd4703cef932ac1c071b1a55a22c80b"),
    "criteo_gz_two_files": ("b19d036d3f1b34ce 90c377ecb3136689 1cfc1c5432d24771 32b71c5ad33e5040 0e091d471c7b6d36",
                            "blake2b:225e734b904325d61feb784a586bc29c"),
    "avazu": ("fa15591b7206c2b5 c5a91091cdd0a2b2 b4e206792e59f89a 63e10cd91263c265 9bd28c5d300e5122",
              "blake2b:8bb9c03c88dde7a8fcf2b2573d9426f8"),
    "taobao": ("5252a71bed5e0d5f 93179df29fcab0eb 52223c91c62a86b5 38b4b703e71bdee4 873e3cbb0b88ecb7",
               "blake2b:3bba164af9ffcdee4f3a3ea9a6dcaa25"),
    "real_criteo_tsv": ("509b6ffb64921754 7d1cbd545b044757 f884d081590b110d 5ba814c4bce92f6e e47c3a78f80b2179",
                        "blake2b:6b998e1033832e265967a26fefeb35f9"),
    "real_criteo_txt": ("509b6ffb64921754 7d1cbd545b044757 f884d081590b110d 5ba814c4bce92f6e e47c3a78f80b2179",
                        "blake2b:2e9d97fc53cdfcc84c7b3cd84ac04235"),
    "real_taobao": ("2624341585a1dafa 8c05779a427088b2 60de6460f7331e4f c52e75da35aafdf3 85f274377b6a552d",
                    "blake2b:aa8f07b818a82588443eb91c7f91222e"),
}
SPLITS_BEFORE = {
    "criteo_tsv": {"train": [472, 106], "valid": [53, 11], "test": [68, 19]},
    "avazu": {"train": [402, 85], "valid": [41, 9], "test": [54, 12]},
    "taobao": {"train": [238, 35], "valid": [80, 17], "test": [80, 16]},
}
BAD_ROWS_BEFORE = {
    "criteo_tsv": {"I1 is not an integer": [2, ["criteo.tsv:21", "criteo.tsv:61"]],
                   "empty line": [1, ["criteo.tsv:51"]],
                   "label (label) is not 0 or 1": [1, ["criteo.tsv:31"]],
                   "missing label (label)": [1, ["criteo.tsv:41"]],
                   "wrong column count: expected 40, got 38": [1, ["criteo.tsv:4"]],
                   "wrong column count: expected 40, got 41": [1, ["criteo.tsv:11"]]},
    "criteo_csv": {},
    "avazu": {"hour is not YYMMDDHH": [1, ["avazu.csv:8"]], "label (click) is not 0 or 1": [1, ["avazu.csv:14"]],
              "wrong column count: expected 24, got 25": [1, ["avazu.csv:10"]]},
    "taobao": {"broken click_sequence (expected ids joined by ^)": [1, ["taobao.csv:6"]],
               "price is not a number": [1, ["taobao.csv:9"]]},
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, tuple[str, list[Path]]]:
    root = tmp_path_factory.mktemp("preset_rows")
    c, a, t = write_criteo(root), write_avazu(root), write_taobao(root)
    return {"criteo_tsv": ("criteo", [c["tsv"]]), "criteo_csv": ("criteo", [c["csv"]]),
            "criteo_gz_two_files": ("criteo", [c["gz"], c["tsv"]]), "avazu": ("avazu", [a]),
            "taobao": ("taobao", [t])}


def _prepare(name: str, kind: str, files: list[Path], out: Path) -> dict[str, str]:
    opts = PrepareOptions(split=SplitConfig(method="order", ratios=(0.6, 0.2, 0.2))) if name == "taobao" else None
    prepare(kind, files, out, options=opts)
    return dataset_digest(out)


def _check(name: str, digest: dict[str, str]) -> None:
    parts, fingerprint = BEFORE[name]
    got = " ".join(digest[k] for k in ("shards.train", "shards.valid", "shards.test", "raw_test", "spec"))
    assert (got, digest["fingerprint"]) == (parts, fingerprint)
    if name in SPLITS_BEFORE:
        assert json.loads(digest["splits"]) == SPLITS_BEFORE[name]
    if name in BAD_ROWS_BEFORE:
        assert json.loads(digest["bad_rows"]) == BAD_ROWS_BEFORE[name]


@pytest.mark.parametrize("name", ["criteo_tsv", "criteo_csv", "criteo_gz_two_files", "avazu", "taobao"])
def test_presets_give_the_datasets_of_the_code_before_them_on_generated_rows(generated, name, tmp_path):
    kind, files = generated[name]
    _check(name, _prepare(name, kind, files, tmp_path / "ds"))


@pytest.mark.parametrize(("name", "kind", "file"), [("real_criteo_tsv", "criteo", "criteo_sample.tsv"),
                                                    ("real_criteo_txt", "criteo", "criteo_sample.txt"),
                                                    ("real_taobao", "taobao", "taobao_ad_sample.csv")])
def test_presets_give_the_datasets_of_the_code_before_them_on_the_real_rows(shared_data, name, kind, file, tmp_path):
    _check(name, _prepare(name, kind, [shared_data / file], tmp_path / "ds"))


def _criteo_before() -> FeatureSpec:
    feats = [Numeric(f"I{i}", transform="criteo_log", standardize=True) for i in range(1, 14)]
    feats += [Categorical(f"C{i}", min_count=10) for i in range(1, 27)]
    return FeatureSpec(feats, label="label")


def _avazu_before() -> FeatureSpec:
    columns = ["C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain", "app_category",
               "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
               "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21"]
    feats = [Categorical(c, min_count=2) for c in columns]
    feats += [Categorical("hour_of_day", source="hour", derive="yymmddhh_hour"),
              Categorical("weekday", source="hour", derive="yymmddhh_weekday")]
    return FeatureSpec(feats, label="click")


def _taobao_before() -> FeatureSpec:
    columns = ["userid", "adgroup_id", "pid", "cate_id", "campaign_id", "customer", "brand", "cms_segid",
               "cms_group_id", "final_gender_code", "age_level", "pvalue_level", "shopping_level", "occupation",
               "new_user_class_level"]
    feats = [Categorical(c, min_count=2) for c in columns]
    feats.append(Numeric("price", transform="log1p", standardize=True))
    feats.append(SequenceFeature("click_sequence", shares="adgroup_id", max_len=50, sep="^"))
    return FeatureSpec(feats, label="clk", user_id="userid")


@pytest.mark.parametrize(("kind", "before"), [("criteo", _criteo_before), ("avazu", _avazu_before),
                                              ("taobao", _taobao_before)])
def test_preset_specs_are_the_python_definitions_they_replace(kind, before):
    assert FORMATS[kind].default_spec() == before()
    assert load_preset(kind).feature_spec().to_dict() == before().to_dict()


def test_the_old_command_goes_through_the_preset(generated, tmp_path, capsys):
    from ctrzoo.cli import main

    _, files = generated["avazu"]
    assert main(["prepare", "avazu", "--input", str(files[0]), "--out", str(tmp_path / "ds")]) == 0
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    # dataset.json records the preset's schema with the split it was prepared with
    assert meta["kind"] == "avazu" and meta["schema"] == {**load_preset("avazu").to_dict(), "split": meta["split"]}
    assert meta["labels"] == ["click"] and meta["split"] == {"method": "random", "ratios": [0.8, 0.1, 0.1],
                                                              "seed": 2024}
    _check("avazu", dataset_digest(tmp_path / "ds"))
    assert "labels:" not in capsys.readouterr().out  # one 0/1 label: the summary reads as before
