"""Typed metadata (ctrzoo.metadata): what is written reads back to the same JSON, files of earlier versions read
and rewrite unchanged, and a bad value is an error naming the file and the key."""

from __future__ import annotations

import copy
import json

import pytest

from ctrzoo.errors import BundleError, DatasetError
from ctrzoo.metadata import (
    DatasetMeta,
    ModelBundleMeta,
    RetrievalBundleMeta,
    TvmBuildKey,
    TvmLibrary,
    TvmManifest,
)
from ctrzoo.retrieval.errors import RetrievalError

# the keys of the files as ctrzoo wrote them before the metadata was typed (issue 15 keeps them)
DATASET_KEYS = ["format_version", "kind", "created", "ctrzoo_version", "inputs", "fingerprint", "split", "splits",
                "user_id", "labels", "label_rules", "schema", "raw", "bad_rows", "warnings", "layout", "workers",
                "seconds"]
BUNDLE_KEYS = ["version", "format_version", "ctrzoo_version", "model", "data", "train", "metrics", "history",
               "train_seconds", "files"]
SMALL = {"emb_dim": 4, "mlp": [8]}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A prepared dataset and an exported model bundle, written by this version."""
    from ctrzoo.data.prepare import prepare
    from ctrzoo.export import export_onnx
    from ctrzoo.synth import generate
    from ctrzoo.train.run import train_bundle

    root = tmp_path_factory.mktemp("meta")
    generate("criteo", 3000, 4, root / "c.tsv")
    prepare("criteo", [root / "c.tsv"], root / "data")
    train_bundle("deepfm", root / "data", root / "bundle", overrides={"epochs": 1, "max_steps": 3, "hparams": SMALL},
                 progress=False, verbose=False)
    plain = json.loads((root / "bundle" / "bundle.json").read_text())
    export_onnx(root / "bundle")
    return root, plain


def _json(path):
    return json.loads(path.read_text())


def test_written_files_keep_their_keys_and_read_back_to_the_same_json(written):
    root, plain = written
    data = _json(root / "data" / "dataset.json")
    assert list(data) == DATASET_KEYS
    meta = DatasetMeta.from_json(data, root / "data" / "dataset.json")
    assert meta.to_json() == data and meta.splits["train"].rows > 0 and meta.bad_rows.total == 0
    assert sorted(plain) == sorted(BUNDLE_KEYS)  # as training wrote it (no "kind": a ranking bundle)
    exported = _json(root / "bundle" / "bundle.json")
    assert sorted(exported) == sorted([*BUNDLE_KEYS, "artifacts"])
    bundle = ModelBundleMeta.from_json(exported, root / "bundle" / "bundle.json")
    assert bundle.to_json() == exported
    assert bundle.kind == "model" and bundle.model.name == "deepfm" and bundle.model.hparams["emb_dim"] == 4
    assert bundle.artifacts.onnx.file == "model.onnx" and bundle.files["model.onnx"] == bundle.artifacts.onnx.sha256
    assert bundle.data.fingerprint == meta.fingerprint


def test_files_of_earlier_versions_read_and_rewrite_unchanged(written):
    root, plain = written
    # a format-1 bundle: no version stamp, no manifest, no export record; a key of some other version
    old = {k: v for k, v in plain.items() if k not in ("version", "files")}
    old["format_version"], old["note"] = 1, {"kept": True}
    meta = ModelBundleMeta.from_json(copy.deepcopy(old), "old/bundle.json")
    assert meta.version == "0" and meta.files is None and meta.artifacts.onnx is None
    assert meta.extra == {"note": {"kept": True}} and meta.to_json() == old
    # a dataset.json from before warnings and workers were recorded, with an unknown nested key
    data = _json(root / "data" / "dataset.json")
    for key in ("warnings", "workers"):
        del data[key]
    data["splits"]["train"]["note"] = "x"
    ds = DatasetMeta.from_json(copy.deepcopy(data), "old/dataset.json")
    assert ds.warnings == [] and ds.workers == 1 and ds.splits["train"].extra == {"note": "x"}
    assert ds.to_json() == data
    # a retrieval bundle from before retrieval bundles had a manifest
    retrieval = {"format_version": 1, "kind": "retrieval", "version": "v1", "ctrzoo_version": "0.1.0",
                 "model": {"name": "two_tower", "hparams": {"out_dim": 8}},
                 "towers": {"item_id": "i", "item": ["i"], "user": ["u"], "history_attributes": []},
                 "catalogue": {"file": "catalogue.parquet", "id_column": "i", "items": 3, "columns": []},
                 "data": {"path": "/d", "kind": "taobao", "fingerprint": "blake2b:0"}, "train": {"epochs": 1},
                 "clicks": {"train": 2}, "catalogue_build": {},
                 "metrics": {"valid": {}, "test": {"recall@10": 0.5}, "test_popularity_baseline": {"recall@10": 0.1}},
                 "history": [], "train_seconds": 1.0}
    r = RetrievalBundleMeta.from_json(copy.deepcopy(retrieval), "r/bundle.json")
    assert r.files is None and r.catalogue.id_column == "i" and r.metrics.test_popularity_baseline["recall@10"] == 0.1
    assert r.to_json() == retrieval


@pytest.mark.parametrize("cls,change,error,message", [
    (ModelBundleMeta, {"model": {"name": 3}}, BundleError, r"b/bundle.json: key 'model.name': expected a string, got "
                                                           r"an integer"),
    (ModelBundleMeta, {"model": {"name": "deepfm", "hparams": [1]}}, BundleError,
     r"key 'model.hparams': expected an object, got a list"),
    (ModelBundleMeta, {"files": {"weights.pt": 5}}, BundleError, r"key 'files.weights.pt': expected a string"),
    (ModelBundleMeta, {"artifacts": {"onnx": {"file": "model.onnx"}}}, BundleError,
     r"key 'artifacts.onnx.sha256' is missing"),
    (ModelBundleMeta, {"format_version": 42}, BundleError, r"b/bundle.json: bundle format version 42, this ctrzoo "
                                                           r"reads 1, 2$"),
    (ModelBundleMeta, {"kind": "retrieval"}, BundleError, r"a retrieval bundle, not a model bundle"),
    (RetrievalBundleMeta, {"catalogue": {"file": "c", "id_column": "i", "items": "3", "columns": []}}, RetrievalError,
     r"key 'catalogue.items': expected an integer, got a string"),
    (DatasetMeta, {"splits": {"train": {"rows": 1.5, "positives": 0, "shards": []}}}, DatasetError,
     r"d/dataset.json: key 'splits.train.rows': expected an integer, got a number"),
    (DatasetMeta, {"inputs": [{"path": "a", "bytes": 1}, {"path": None, "bytes": 1}]}, DatasetError,
     r"key 'inputs\[1\].path': expected a string, got null"),
    (DatasetMeta, {"format_version": 2}, DatasetError, r"dataset format version 2, this ctrzoo reads 1: prepare the "
                                                       r"data again"),
])
def test_a_bad_value_is_an_error_naming_the_file_and_the_key(cls, change, error, message):
    base = {
        ModelBundleMeta: {"format_version": 2, "model": {"name": "deepfm", "hparams": {}}},
        RetrievalBundleMeta: {"format_version": 1, "kind": "retrieval", "model": {"name": "two_tower"}, "towers": {},
                              "catalogue": {"file": "c", "id_column": "i", "items": 3, "columns": []}},
        DatasetMeta: {"format_version": 1, "kind": "criteo", "fingerprint": "f", "splits": {}},
    }[cls]
    path = "d/dataset.json" if cls is DatasetMeta else "b/bundle.json"
    cls.from_json(base, path)  # the base itself is fine
    with pytest.raises(error, match=message):
        cls.from_json({**base, **change}, path)
    with pytest.raises(error, match="must be a JSON object"):
        cls.from_json([base], path)


def test_tvm_manifest_is_the_build_key_plus_how_the_build_went():
    key = TvmBuildKey(onnx_sha256="a" * 64, tvm_version="0.27", target={"kind": "llvm"}, buckets=[1, 8],
                      database_sha256=None)
    manifest = TvmManifest.built(key, num_cores=4, library=TvmLibrary(file="model.so", sha256="b" * 64,
                                                                      build_seconds=1.5),
                                 database_records=0, built_from="untuned", tuning=None)
    data = manifest.to_json()
    assert list(data) == ["format", "onnx_sha256", "tvm_version", "target", "buckets", "database_sha256", "num_cores",
                          "library", "database_records", "built_from", "tuning"]  # the keys it always had
    again = TvmManifest.from_json(json.loads(json.dumps(data)), "tvm/manifest.json")
    assert again == manifest and again.build_key == key and key.differences(again.build_key) == []
    other = TvmBuildKey(**{**key.to_json(), "buckets": [1, 16], "tvm_version": "0.28"})
    assert key.differences(other) == ["tvm_version", "buckets"]
    with pytest.raises(BundleError, match=r"tvm/manifest.json: tvm manifest format version 2"):
        TvmManifest.from_json({**data, "format": 2}, "tvm/manifest.json")
    with pytest.raises(BundleError, match=r"key 'library.sha256' is missing"):
        TvmManifest.from_json({**data, "library": {"file": "model.so", "build_seconds": 1.0}}, "tvm/manifest.json")


def test_a_bundle_json_with_a_bad_value_is_refused_when_loading(written, tmp_path):
    import shutil

    from ctrzoo.bundle import load_bundle
    from ctrzoo.data.dataset import PreparedDataset

    root, _ = written
    b = tmp_path / "b"
    shutil.copytree(root / "bundle", b)
    meta = _json(b / "bundle.json")
    meta["model"]["hparams"] = "emb_dim=4"
    (b / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=rf"{b / 'bundle.json'}: key 'model.hparams': expected an object"):
        load_bundle(b)
    d = tmp_path / "d"
    shutil.copytree(root / "data", d)
    data = _json(d / "dataset.json")
    data["splits"]["valid"]["shards"] = "valid/part-00000.parquet"
    (d / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=rf"{d / 'dataset.json'}: key 'splits.valid.shards': expected a list"):
        PreparedDataset.open(d)
