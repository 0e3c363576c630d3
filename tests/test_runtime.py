"""Export and runtimes: every backend agrees with torch; broken ONNX files fail clearly."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil

import numpy as np
import pytest

from ctrzoo import runtime
from ctrzoo.bundle import load_bundle
from ctrzoo.cli import main
from ctrzoo.errors import BundleError, CtrzooError
from ctrzoo.export import export_onnx
from ctrzoo.features import random_batch
from ctrzoo.train.run import train_bundle

SMALL = {"emb_dim": 8, "mlp": [32, 16]}
MODELS = {"wide_deep": "criteo", "deepfm": "criteo", "dcn": "criteo", "din": "taobao"}


@pytest.fixture(scope="module")
def bundles(synth_prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("rt")
    out = {}
    for model, kind in MODELS.items():
        hp = dict(SMALL, crosses=[["C1", "C2"]]) if model == "wide_deep" else SMALL
        train_bundle(model, synth_prepared[kind], root / model, overrides={"epochs": 1, "max_steps": 20, "hparams": hp},
                     progress=False, verbose=False)
        export_onnx(root / model)
        out[model] = root / model
    return out


@pytest.mark.parametrize("model", list(MODELS))
def test_onnxruntime_matches_torch(bundles, model):
    ref = runtime.load(bundles[model], "torch")
    ort = runtime.load(bundles[model], "onnxruntime", threads=1)
    for n in (1, 100, 1024):
        x = random_batch(ref.layout, n, seed=n + 1).as_dict()
        np.testing.assert_allclose(ort.predict(x), ref.predict(x), rtol=0, atol=runtime.PARITY_TOLERANCE)
    record = json.loads((bundles[model] / "bundle.json").read_text())["artifacts"]["onnx"]
    assert record["parity_max_abs_diff"] <= runtime.PARITY_TOLERANCE
    # the inference graph: the training-time id dedup (torch.unique) must not be exported
    import onnx

    ops = {n.op_type for n in onnx.load(str(bundles[model] / "model.onnx")).graph.node}
    assert "Unique" not in ops, f"{model}: exported graph has training-only ops: {sorted(ops)}"


@pytest.mark.parametrize("model", list(MODELS))
def test_fused_matches_torch(bundles, model):
    ref = runtime.load(bundles[model], "torch")
    fused = runtime.load(bundles[model], "fused")
    for n in (1, 100, 333):
        x = random_batch(ref.layout, n, seed=n + 2).as_dict()
        np.testing.assert_allclose(fused.predict(x), ref.predict(x), rtol=0, atol=runtime.PARITY_TOLERANCE)


def test_int8_variant_reports_auc_cost(bundles, synth_prepared):
    """Quantized weights are not exact: the test checks they stay close and measures the AUC change."""
    from ctrzoo.data.dataset import PreparedDataset
    from ctrzoo.data.loader import BatchLoader
    from ctrzoo.metrics import auc

    ds = PreparedDataset.open(synth_prepared["criteo"])
    batch = next(iter(BatchLoader(ds, "test", 100_000, shuffle=False)))
    p32 = runtime.load(bundles["deepfm"], "onnxruntime").predict(batch)
    root_level = logging.getLogger().level
    p8 = runtime.load(bundles["deepfm"], "onnxruntime-int8").predict(batch)
    assert logging.getLogger().level == root_level, "quantizing must not change the root logger for good"
    y = batch.label.numpy()
    change = auc(y, p8) - auc(y, p32)
    print(f"int8 AUC change on {y.size} rows: {change:+.5f}")
    assert abs(change) < 0.01 and np.abs(p8 - p32).max() < 0.05


def test_missing_or_corrupt_onnx_fails_clearly(bundles, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(bundles["deepfm"], b)
    (b / "model.onnx").unlink()
    with pytest.raises(BundleError, match="model.onnx: missing; run `ctrzoo export"):
        runtime.load(b, "onnxruntime")
    shutil.copy(bundles["deepfm"] / "model.onnx", b / "model.onnx")
    with open(b / "model.onnx", "r+b") as fh:  # flip bytes in the middle
        fh.seek(200)
        fh.write(b"\x00" * 64)
    with pytest.raises(BundleError, match="checksum differs"):
        runtime.load(b, "onnxruntime")
    meta = json.loads((b / "bundle.json").read_text())
    del meta["artifacts"]
    (b / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(BundleError,
                       match="model.onnx: checksum differs from the one recorded in the bundle's manifest"):
        runtime.load(b, "onnxruntime")  # the manifest still records the exported file
    meta["files"]["model.onnx"] = hashlib.sha256(b"garbage").hexdigest()  # a manifest that agrees with the garbage
    (b / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="onnxruntime cannot load it"):
        runtime.load(b, "onnxruntime")


def test_bad_inputs_and_backends(bundles):
    ref = runtime.load(bundles["deepfm"], "torch")
    x = random_batch(ref.layout, 4).as_dict()
    x["sparse"] = x["sparse"][:, :3]
    with pytest.raises(CtrzooError, match="'sparse' has shape"):
        ref.predict(x)
    with pytest.raises(CtrzooError, match="unknown backend"):
        runtime.load(bundles["deepfm"], "tensorrt")
    assert ref.predict(random_batch(ref.layout, 0).as_dict()).shape == (0,)


def test_cli_export_and_bench(bundles, capsys):
    assert main(["export", "--bundle", str(bundles["dcn"])]) == 0
    assert "max |diff|" in capsys.readouterr().out
    assert main(["bench", "inference", "--bundle", str(bundles["dcn"]), "--backends", "torch", "onnxruntime",
                 "--batch-sizes", "1", "8", "--seconds", "0.05", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {(r["backend"], r["batch"]) for r in rows} == {(b, n) for b in ("torch", "onnxruntime") for n in (1, 8)}
    assert all(r["max_abs_diff"] <= 1e-5 for r in rows)
    assert load_bundle(bundles["dcn"]).meta.artifacts.onnx.file == "model.onnx"


@pytest.mark.parametrize("hparams", [
    {"use_softmax": True},
    {"pooling": "sum", "concat_sum_pool": True},
    {"concat_sum_pool": True, "batch_norm": True, "att_activation": "prelu", "activation": "relu"},
])
def test_fused_din_variants_match_torch(synth_prepared, tmp_path, hparams):
    """FusedDIN (padding removed, split first layer) equals the reference for every DIN configuration,
    including histories that are all padding and batches of one."""
    from ctrzoo.runtime.fused_din import FusedDIN

    train_bundle("din", synth_prepared["taobao"], tmp_path / "din",
                 overrides={"epochs": 1, "max_steps": 10, "hparams": {**SMALL, **hparams}}, progress=False,
                 verbose=False)
    ref = runtime.load(tmp_path / "din", "torch")
    fused = runtime.load(tmp_path / "din", "fused")
    assert isinstance(fused.module.model, FusedDIN)
    for n in (1, 57, 300):
        x = random_batch(ref.layout, n, seed=n).as_dict()
        x["seq"][: n // 3] = 0  # no history at all for some rows
        np.testing.assert_allclose(fused.predict(x), ref.predict(x), rtol=0, atol=runtime.PARITY_TOLERANCE)
