"""Multi-task models (MMoE, PLE, ESMM): their layers against hand computations, training on two labels,
per-task evaluation and comparison, and the refusals that keep a wrong label from passing silently."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ctrzoo.cli import main
from ctrzoo.compare.run import compare
from ctrzoo.data.dataset import PreparedDataset
from ctrzoo.data.loader import BatchLoader
from ctrzoo.errors import CtrzooError
from ctrzoo.evaluate import evaluate_bundle
from ctrzoo.features.layout import TableLayout
from ctrzoo.models import build_model
from ctrzoo.nn.multitask import CustomizedGateControl, MixtureOfExperts, TaskTowers, product_logit
from ctrzoo.train.run import train_bundle
from ctrzoo.train.trainer import TrainConfig, Trainer

MULTI_TASK = ["mmoe", "ple", "esmm"]
SMALL = {"emb_dim": 8, "expert_mlp": [32, 16], "tower_mlp": [16]}


def _small(name: str) -> dict:
    return {k: v for k, v in SMALL.items() if not (name == "esmm" and k == "expert_mlp")}


def test_mmoe_layer_is_the_gated_sum_of_its_experts():
    torch.manual_seed(0)
    layer = MixtureOfExperts(in_dim=5, num_tasks=3, num_experts=4, expert_mlp=[6]).eval()
    x = torch.randn(7, 5)
    gates = layer.gate_weights(x)
    assert gates.shape == (7, 3, 4)
    torch.testing.assert_close(gates.sum(-1), torch.ones(7, 3))  # each task's gate is a distribution
    logits = x @ layer.gates.weight.T + layer.gates.bias  # [7, 12]: task t's gate is columns 4t..4t+3
    experts = [torch.relu(x @ e.layers[0].weight.T + e.layers[0].bias) for e in layer.experts]
    for t in range(3):
        w = torch.softmax(logits[:, 4 * t: 4 * t + 4], dim=1)
        want = sum(w[:, e: e + 1] * experts[e] for e in range(4))
        torch.testing.assert_close(layer(x)[:, t], want)


def test_cgc_level_mixes_own_and_shared_experts_per_task():
    torch.manual_seed(1)
    level = CustomizedGateControl(in_dim=4, num_tasks=2, shared_experts=2, task_experts=1, expert_mlp=[3]).eval()
    inputs = torch.randn(5, 3, 4)  # task 0's input, task 1's, the shared one
    out = level(inputs)
    assert out.shape == (5, 3, 3)
    run = lambda e, x: e(x)  # noqa: E731
    shared = [run(e, inputs[:, 2]) for e in level.shared_experts]
    own = [[run(e, inputs[:, t]) for e in level.task_experts[t]] for t in range(2)]
    for t in range(2):
        w = torch.softmax(level.task_gates[t](inputs[:, t]), dim=1)
        assert w.shape == (5, 3)  # 1 own + 2 shared experts
        torch.testing.assert_close(w.sum(1), torch.ones(5))
        experts = own[t] + shared
        torch.testing.assert_close(out[:, t], sum(w[:, i: i + 1] * experts[i] for i in range(3)))
    w = torch.softmax(level.shared_gate(inputs[:, 2]), dim=1)  # the shared gate sees every expert
    every = own[0] + own[1] + shared
    torch.testing.assert_close(out[:, 2], sum(w[:, i: i + 1] * every[i] for i in range(4)))
    last = CustomizedGateControl(4, 2, 2, 1, [3], shared_gate=False)
    assert last(inputs).shape == (5, 2, 3)


def test_task_towers_read_their_own_slot():
    torch.manual_seed(2)
    towers = TaskTowers(in_dim=3, num_tasks=2, tower_mlp=[4]).eval()
    x = torch.randn(6, 2, 3)
    out = towers(x)
    assert out.shape == (6, 2)
    moved = x.clone()
    moved[:, 1] += 1.0
    torch.testing.assert_close(towers(moved)[:, 0], out[:, 0])  # task 0 does not read task 1's slot
    assert not torch.allclose(towers(moved)[:, 1], out[:, 1])


def test_product_logit_is_the_logit_of_the_product_even_at_extremes():
    a = torch.tensor([-60.0, -3.0, 0.0, 2.5, 20.0, 60.0], dtype=torch.float64)
    b = torch.tensor([1.0, 4.0, -1.0, 0.3, 25.0, 60.0], dtype=torch.float64)
    want = torch.sigmoid(a) * torch.sigmoid(b)
    torch.testing.assert_close(torch.sigmoid(product_logit(a, b)), want, rtol=1e-10, atol=1e-300)
    assert torch.isfinite(product_logit(a.float(), b.float())).all()


@pytest.fixture(scope="module")
def layout() -> TableLayout:
    return TableLayout.from_sizes({"user": 6, "item": 8, "cat": 4}, dense=("x1", "x2"), seq={"hist": ("item", 5)})


def _batch(layout: TableLayout, n: int = 9):
    g = torch.Generator().manual_seed(0)
    sparse = torch.stack([torch.randint(0, f.size, (n,), generator=g) for f in layout.sparse], 1)
    return sparse, torch.randn(n, layout.n_dense, generator=g), torch.randint(0, 8, (n, 1, 5), generator=g)


def test_esmm_second_output_is_pctr_times_pcvr(layout):
    torch.manual_seed(3)
    model = build_model("esmm", layout, **_small("esmm")).eval()
    x = _batch(layout)
    with torch.no_grad():
        out = torch.sigmoid(model(*x))
        ctr, cvr = model.tower_logits(*x)
    torch.testing.assert_close(out[:, 0], torch.sigmoid(ctr))
    torch.testing.assert_close(out[:, 1], torch.sigmoid(ctr) * torch.sigmoid(cvr))
    assert bool((out[:, 1] <= out[:, 0]).all())  # pCTCVR never exceeds pCTR


@pytest.mark.parametrize("name", MULTI_TASK)
def test_multitask_models_return_one_logit_per_task(layout, name):
    model = build_model(name, layout, tasks=["a", "b"], **_small(name))
    assert model.tasks == ("a", "b") and model(*_batch(layout)).shape == (9, 2)
    if name != "esmm":
        assert build_model(name, layout, tasks=["a", "b", "c"], **_small(name))(*_batch(layout)).shape == (9, 3)


@pytest.mark.parametrize("tasks,match", [(["a"], "needs at least two labels"), (["a", "a"], "distinct")])
def test_multitask_models_refuse_bad_task_lists(layout, tasks, match):
    with pytest.raises(CtrzooError, match=match):
        build_model("mmoe", layout, tasks=tasks)
    with pytest.raises(CtrzooError, match="exactly 2 tasks"):
        build_model("esmm", layout, tasks=["a", "b", "c"])


def test_loader_reads_several_labels_as_columns(two_label_prepared):
    ds = PreparedDataset.open(two_label_prepared)
    both = next(iter(BatchLoader(ds, "train", 512, shuffle=False, label=["click", "converted"])))
    click = next(iter(BatchLoader(ds, "train", 512, shuffle=False)))
    conv = next(iter(BatchLoader(ds, "train", 512, shuffle=False, label="converted")))
    assert both.label.shape == (512, 2)
    torch.testing.assert_close(both.label[:, 0], click.label)
    torch.testing.assert_close(both.label[:, 1], conv.label)
    assert bool((both.label[:, 1] <= both.label[:, 0]).all())  # conversions only after clicks
    with pytest.raises(CtrzooError, match="no label 'bought'; its labels are click, converted"):
        BatchLoader(ds, "train", 512, label=["click", "bought"])


@pytest.mark.parametrize("name", MULTI_TASK)
def test_multitask_models_learn_both_labels(two_label_prepared, tmp_path, name):
    ds = PreparedDataset.open(two_label_prepared)
    cfg = TrainConfig(model=name, hparams=_small(name), epochs=4, batch_size=256, seed=1, patience=5, lr=3e-3)
    trainer = Trainer(cfg, ds, tmp_path / "work", progress=False)
    assert trainer.tasks == ("click", "converted")  # the dataset's labels, when the hparams name none
    best = trainer.fit()
    losses = [h["train_logloss"] for h in trainer.history]
    assert losses[-1] < losses[0], losses
    assert set(best["valid_tasks"]) == {"click", "converted"}
    assert best["valid_auc"] == best["valid_tasks"]["click"]["auc"]  # the top level is the first task's
    assert best["valid_mean_auc"] == pytest.approx(np.mean([m["auc"] for m in best["valid_tasks"].values()]))
    for m in best["valid_tasks"].values():  # the generator's signal is learned for both (oracle ~0.78 / ~0.84)
        assert m["auc"] > 0.62, best["valid_tasks"]


def test_multitask_training_refusals(two_label_prepared, synth_prepared, tmp_path):
    ds = PreparedDataset.open(two_label_prepared)
    with pytest.raises(CtrzooError, match="--label 'converted': mmoe is a multi-task model"):
        Trainer(TrainConfig(model="mmoe", label="converted"), ds, tmp_path / "a", progress=False)
    with pytest.raises(CtrzooError, match="no label 'bought'"):
        Trainer(TrainConfig(model="mmoe", hparams={"tasks": ["click", "bought"]}), ds, tmp_path / "b",
                progress=False)
    one_label = PreparedDataset.open(synth_prepared["criteo"])
    with pytest.raises(CtrzooError, match="needs at least two labels"):
        Trainer(TrainConfig(model="ple"), one_label, tmp_path / "c", progress=False)


@pytest.fixture(scope="module")
def bundles(two_label_prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("mt_bundles")
    out = {}
    for name, hp in [("mmoe", _small("mmoe")), ("esmm", _small("esmm")), ("deepfm", {"emb_dim": 8, "mlp": [32]})]:
        train_bundle(name, two_label_prepared, root / name, progress=False, verbose=False,
                     overrides={"epochs": 2, "batch_size": 256, "hparams": hp})
        out[name] = root / name
    train_bundle("deepfm", two_label_prepared, root / "deepfm_cvr", progress=False, verbose=False,
                 overrides={"epochs": 2, "batch_size": 256, "hparams": {"emb_dim": 8, "mlp": [32]},
                            "label": "converted"})
    out["deepfm_cvr"] = root / "deepfm_cvr"
    return out


def test_bundle_test_metrics_and_evaluate_report_each_task(bundles, two_label_prepared, capsys):
    from ctrzoo.bundle import load_bundle

    b = load_bundle(bundles["esmm"])
    test = b.meta.metrics.test
    assert set(test["tasks"]) == {"click", "converted"} and test["auc"] == test["tasks"]["click"]["auc"]
    m = evaluate_bundle(b, PreparedDataset.open(two_label_prepared))
    for task in ("click", "converted"):  # evaluating the saved bundle reproduces training's test metrics
        assert m["tasks"][task]["auc"] == pytest.approx(test["tasks"][task]["auc"], abs=1e-6)
    main(["evaluate", "--bundle", str(bundles["esmm"]), "--data", str(two_label_prepared), "--json"])
    out = capsys.readouterr().out
    assert "task click: AUC" in out and "task converted: AUC" in out
    assert json.loads(out.strip().splitlines()[-1])["tasks"]["converted"]["rows"] == m["rows"]


def test_compare_reports_every_task_with_the_models_that_score_it(bundles, two_label_prepared, tmp_path):
    rep = compare([bundles["deepfm"], bundles["mmoe"], bundles["esmm"], bundles["deepfm_cvr"]],
                  two_label_prepared, n_boot=50)
    assert rep["data"]["label"] == "click" and rep["baseline"] == "deepfm"
    assert set(rep["models"]) == {"deepfm", "mmoe", "esmm"}  # the conversion model does not score clicks
    conv = rep["tasks"]["converted"]
    assert set(conv["models"]) == {"mmoe", "esmm", "deepfm_cvr"} and conv["baseline"] == "mmoe"
    ds = PreparedDataset.open(two_label_prepared)
    from ctrzoo.bundle import load_bundle

    alone = evaluate_bundle(load_bundle(bundles["deepfm_cvr"]), ds)
    assert conv["models"]["deepfm_cvr"]["auc"] == pytest.approx(alone["auc"], abs=1e-9)
    main(["compare", str(bundles["esmm"]), str(bundles["mmoe"]), "--data", str(two_label_prepared),
          "--report", str(tmp_path / "rep"), "--bootstrap", "20"])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Task `converted`" in md and "mmoe vs esmm" in md
    assert "Task <code>converted</code>" in (tmp_path / "rep" / "report.html").read_text()
