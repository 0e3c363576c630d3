"""Trainer and bundles: every model learns (synthetic and sample rows), resume is exact, reloads score alike."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ctrzoo.bundle import load_bundle
from ctrzoo.cli import main
from ctrzoo.data.dataset import PreparedDataset
from ctrzoo.data.loader import BatchLoader
from ctrzoo.data.prepare import PrepareOptions, prepare
from ctrzoo.errors import BundleError, CtrzooError
from ctrzoo.metrics import auc
from ctrzoo.models import list_models, model_hparam_names
from ctrzoo.train.run import train_bundle
from ctrzoo.train.trainer import TrainConfig, Trainer, predict

SMALL = {"emb_dim": 8, "mlp": [64, 32]}


@pytest.mark.parametrize("model", ["wide_deep", "deepfm", "dcn", "din"])
@pytest.mark.parametrize("kind", ["criteo", "taobao"])
def test_every_model_learns_on_synthetic_data(synth_prepared, tmp_path, model, kind):
    ds = PreparedDataset.open(synth_prepared[kind])
    cfg = TrainConfig(model=model, hparams=SMALL, epochs=3, batch_size=512, seed=1, patience=5)
    trainer = Trainer(cfg, ds, tmp_path / "work", progress=False)
    best = trainer.fit()
    losses = [h["train_logloss"] for h in trainer.history]
    assert losses[-1] < losses[0], losses
    if kind == "criteo":  # CTR 0.25 and a real signal (oracle AUC ~0.8); taobao's 5% CTR is too noisy at 20k rows
        assert best["valid_auc"] > 0.6


@pytest.mark.parametrize("model", list_models())
def test_every_model_trains_on_sample_rows(sample_rows, two_label_prepared, tmp_path, model):
    if "tasks" in model_hparam_names(model):  # a multi-task model needs two labels: the two-label log
        ds = PreparedDataset.open(two_label_prepared)
    else:
        kind, file = ("taobao", "taobao_ad_sample.csv") if model == "din" else ("criteo", "criteo_sample.tsv")
        prepare(kind, [sample_rows / file], tmp_path / "ds")
        ds = PreparedDataset.open(tmp_path / "ds")
    hparams = {k: v for k, v in SMALL.items() if k in model_hparam_names(model)}  # lr has no emb_dim, fm no mlp
    cfg = TrainConfig(model=model, hparams=hparams, epochs=4, batch_size=32, lr=3e-3, patience=10)
    trainer = Trainer(cfg, ds, tmp_path / "work", progress=False)
    trainer.fit()
    losses = [h["train_logloss"] for h in trainer.history]
    assert losses[-1] < losses[0], losses


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("model,reg", [("deepfm", "mba"), ("din", "none")])
def test_resume_after_kill_gives_the_same_weights(synth_prepared, tmp_path, model, reg):
    ds = PreparedDataset.open(synth_prepared["taobao"])
    cfg = TrainConfig(model=model, hparams={**SMALL, "dropout": 0.1}, epochs=2, batch_size=1024, seed=3,
                      checkpoint_every=4, regularization=reg, reg_lambda=0.01, patience=5)
    straight = Trainer(cfg, ds, tmp_path / "a", progress=False)
    straight.fit()

    def kill_at(step: int):
        def hook(global_step: int) -> None:
            if global_step == step:
                raise KeyboardInterrupt("killed")
        return hook

    steps_per_epoch = len(straight.train_loader)
    first = Trainer(cfg, ds, tmp_path / "b", progress=False)
    with pytest.raises(KeyboardInterrupt):
        first.fit(on_step=kill_at(steps_per_epoch + 6))  # killed in epoch 2, 2 steps after a checkpoint
    resumed = Trainer(cfg, ds, tmp_path / "b", progress=False)
    resumed.fit(resume=True)
    a, b = _state(straight.model), _state(resumed.model)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert [h["train_logloss"] for h in straight.history] == [h["train_logloss"] for h in resumed.history]


def test_fresh_run_refuses_a_stale_checkpoint_and_resume_checks_settings(synth_prepared, tmp_path):
    ds = PreparedDataset.open(synth_prepared["criteo"])
    cfg = TrainConfig(model="deepfm", hparams=SMALL, epochs=1, batch_size=4096, max_steps=2)
    Trainer(cfg, ds, tmp_path / "w", progress=False).fit()
    with pytest.raises(CtrzooError, match="pass --resume"):
        Trainer(cfg, ds, tmp_path / "w", progress=False).fit()
    other = TrainConfig(model="deepfm", hparams=SMALL, epochs=1, batch_size=2048, max_steps=2)
    with pytest.raises(CtrzooError, match="other settings.*batch_size"):
        Trainer(other, ds, tmp_path / "w", progress=False).fit(resume=True)


def test_bundle_reloads_to_identical_scores_and_evaluate_matches(synth_prepared, tmp_path, capsys):
    out = tmp_path / "bundle"
    meta = train_bundle("din", synth_prepared["taobao"], out, overrides={"epochs": 1, "hparams": SMALL},
                        progress=False, verbose=False)
    bundle = load_bundle(out)
    assert bundle.model_name == "din" and bundle.meta.data.fingerprint.startswith("blake2b:")
    ds = PreparedDataset.open(synth_prepared["taobao"])
    loader = BatchLoader(ds, "test", 4096, shuffle=False, with_user=True)
    labels, probs, _ = predict(bundle.build_model(), loader)
    # the reloaded weights score the test split exactly as the trained model did before saving
    assert auc(labels, probs) == meta.metrics.test["auc"]
    assert main(["evaluate", "--bundle", str(out), "--data", str(synth_prepared["taobao"]), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["auc"] == pytest.approx(meta.metrics.test["auc"], abs=1e-12)
    assert "gauc" in printed and printed["gauc_users"] > 0
    assert not (tmp_path / "bundle.work").exists()
    np.testing.assert_array_equal(labels.size, printed["rows"])


def test_bad_bundles_fail_clearly(synth_prepared, tmp_path):
    out = tmp_path / "b"
    train_bundle("deepfm", synth_prepared["criteo"], out, overrides={"epochs": 1, "max_steps": 1, "hparams": SMALL},
                 progress=False, verbose=False)
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(BundleError,
                       match="weights.pt: checksum differs from the one recorded in the bundle's manifest"):
        load_bundle(broken)
    with pytest.raises(BundleError, match="cannot read weights"):  # without the manifest check: torch.load's error
        load_bundle(broken, verify=False).build_model()
    (broken / "weights.pt").unlink()
    with pytest.raises(BundleError, match="missing weights"):
        load_bundle(broken)
    meta = json.loads((out / "bundle.json").read_text())
    meta["format_version"] = 42
    (broken / "weights.pt").write_bytes((out / "weights.pt").read_bytes())
    (broken / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="format version 42"):
        load_bundle(broken)
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)


def test_config_errors_name_the_key(synth_prepared, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochz: 3\n")
    assert main(["train", "--model", "deepfm", "--data", str(synth_prepared["criteo"]), "--out",
                 str(tmp_path / "b"), "--config", str(cfg)]) == 2
    cfg.write_text("models:\n  deepfm: {emb_dimm: 3}\n")
    with pytest.raises(CtrzooError, match="emb_dimm"):
        train_bundle("deepfm", synth_prepared["criteo"], tmp_path / "b", config_file=str(cfg), progress=False)
    cfg.write_text("train: [1, 2\n")
    with pytest.raises(CtrzooError, match=r"c.yaml:\d+: not valid YAML"):
        train_bundle("deepfm", synth_prepared["criteo"], tmp_path / "b", config_file=str(cfg), progress=False)


def test_no_valid_rows_trains_without_early_stopping(tmp_path):
    from ctrzoo.data.splits import SplitConfig
    from ctrzoo.synth import generate

    raw = tmp_path / "criteo.tsv"
    generate("criteo", 6_000, 5, raw)
    prepare("criteo", [raw], tmp_path / "ds", options=PrepareOptions(split=SplitConfig("order", (0.9, 0.0, 0.1))))
    ds = PreparedDataset.open(tmp_path / "ds")
    assert ds.rows("valid") == 0
    cfg = TrainConfig(model="deepfm", hparams=SMALL, epochs=2, batch_size=512, patience=1)
    trainer = Trainer(cfg, ds, tmp_path / "work", progress=False)
    best = trainer.fit()
    assert [h["epoch"] for h in trainer.history] == [1, 2] and best["epoch"] == 2
    assert not any(k.startswith("valid_") for k in best)
    meta = train_bundle("deepfm", tmp_path / "ds", tmp_path / "bundle", overrides={"epochs": 1, "hparams": SMALL},
                        progress=False, verbose=True)
    assert meta.metrics.test["rows"] == ds.rows("test")


def test_bf16_defaults_to_what_the_cpu_does_natively_and_scores_in_fp32(synth_prepared, tmp_path):
    from ctrzoo.train.trainer import bf16_native

    assert TrainConfig().bf16 is bf16_native()
    assert TrainConfig(bf16=False).bf16 is False
    ds = PreparedDataset.open(synth_prepared["criteo"])
    cfg = TrainConfig(model="deepfm", hparams=SMALL, epochs=1, batch_size=1024, bf16=True, max_steps=3)
    trainer = Trainer(cfg, ds, tmp_path / "w", progress=False)
    best = trainer.fit()
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    labels, probs, _ = predict(trainer.model, BatchLoader(ds, "valid", 4096, shuffle=False))
    assert auc(labels, probs) == best["valid_auc"]  # validation scored in fp32
