"""The sequence models (DIEN, BST): their layers by hand, the auxiliary loss, the protocol on layouts with one and
two sequences and a bag, learning, hparams, ONNX parity, the fused BST, and one model end to end."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctrzoo.errors import CtrzooError
from ctrzoo.export import PARITY_TOLERANCE, write_onnx
from ctrzoo.features.layout import SequenceLayout, TableLayout
from ctrzoo.models import CTRModel, build_model, model_hparam_names, resolve_model_name
from ctrzoo.nn import (
    GRU,
    BilinearTargetAttention,
    FeatureEmbedding,
    TransformerLayer,
    next_item_loss,
    sample_other_rows,
)
from ctrzoo.runtime.fused_bst import FusedBST
from ctrzoo.threads import torch_threads

SMALL = {"emb_dim": 4, "mlp": (8,), "att_hidden": (8,), "ffn_dim": 8}
VARIANTS = [
    ("dien", {}),
    ("dien", {"attention": "din", "aux_weight": 0.5}),
    ("bst", {}),
    ("bst", {"pooling": "target", "num_layers": 2}),
    ("bst", {"pooling": "concat", "num_heads": 1}),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(VARIANTS)]


def _layouts() -> dict[str, TableLayout]:
    one = TableLayout.from_sizes({"user": 6, "item": 8, "cat": 4}, dense=("x1", "x2"), seq={"hist": ("item", 4)})
    two = TableLayout.from_sizes({"user": 6, "item": 8, "cat": 4}, dense=("x1",),
                                 seq={"hist": ("item", 4), "cat_hist": ("cat", 4)})
    cat = two.sparse[2]
    bag = SequenceLayout("tags", "cat", 2, 4, kind="multi_value", pooling="sum", offset=cat.offset, size=cat.size)
    return {"one-seq": one, "two-seq+bag": dataclasses.replace(two, seq=(two.seq[0], bag, two.seq[1])),
            "no-seq": TableLayout.from_sizes({"user": 6, "item": 8}, dense=("x1",))}


LAYOUTS = _layouts()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread (two spin-waiting threads on a shared 2-core machine are far slower)."""
    with torch_threads(1):
        yield


def make_batch(layout: TableLayout, n: int = 32, seed: int = 0):
    """Random in-range ids, partly padded slots, and a label that needs the history: whether the candidate item
    (field 1) is in the first slot's history (half of the rows get a candidate copied from their history)."""
    g = torch.Generator().manual_seed(seed)
    local = torch.stack([torch.randint(0, f.size, (n,), generator=g) for f in layout.sparse], dim=1)
    sparse = local + torch.tensor([f.offset for f in layout.sparse])
    dense = torch.randn(n, layout.n_dense, generator=g)
    seq = torch.zeros(n, layout.n_seq, layout.seq_len, dtype=torch.long)
    for k, s in enumerate(layout.seq):
        ids = torch.randint(s.offset, s.offset + s.size, (n, layout.seq_len), generator=g)
        lengths = torch.randint(0, layout.seq_len + 1, (n, 1), generator=g)
        seq[:, k] = torch.where(torch.arange(layout.seq_len) < lengths, ids, torch.zeros_like(ids))
    if layout.n_seq:
        copy = (torch.rand(n, generator=g) < 0.5) & (seq[:, 0, 0] != 0)
        sparse[:, 1] = torch.where(copy, seq[:, 0, 0], sparse[:, 1])
        label = (seq[:, 0] == sparse[:, 1:2]).any(1).float()
    else:
        label = (local[:, 1] % 2 == 0).float()
    return sparse, dense, seq, label


def build(name: str, layout: TableLayout, **extra) -> CTRModel:
    torch.manual_seed(0)
    accepted = set(model_hparam_names(name))
    return build_model(name, layout, **{**{k: v for k, v in SMALL.items() if k in accepted}, **extra})


def perturbed(model: CTRModel) -> CTRModel:
    """Every parameter moved off its init (zero biases and unit norms hide mistakes); padding row kept 0."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        model.embedding.weight[0] = 0
    return model.eval()


# ---------------------------------------------------------------- layers by hand


def _gru_by_hand(cell: GRU, x: torch.Tensor, h: torch.Tensor, a: float | None = None) -> torch.Tensor:
    hid = cell.hidden
    w, b = cell.input_proj.weight, cell.input_proj.bias
    u_, c = cell.hidden_proj.weight, cell.hidden_proj.bias
    gate = [(w[i * hid:(i + 1) * hid], b[i * hid:(i + 1) * hid], u_[i * hid:(i + 1) * hid], c[i * hid:(i + 1) * hid])
            for i in range(3)]
    r = torch.sigmoid(gate[0][0] @ x + gate[0][1] + gate[0][2] @ h + gate[0][3])
    u = torch.sigmoid(gate[1][0] @ x + gate[1][1] + gate[1][2] @ h + gate[1][3])
    n = torch.tanh(gate[2][0] @ x + gate[2][1] + r * (gate[2][2] @ h + gate[2][3]))
    if a is not None:
        u = a * u
    return (1 - u) * h + u * n


def test_gru_step_by_hand_and_against_torch_gru_cell() -> None:
    torch.manual_seed(1)
    cell = GRU(3, 2)
    x, h = torch.randn(3), torch.randn(2)
    got = cell.step(cell.input_proj(x.unsqueeze(0)), h.unsqueeze(0))[0]
    torch.testing.assert_close(got, _gru_by_hand(cell, x, h))
    # torch's GRUCell keeps z = 1 - u of the old state: the same cell with the u rows negated
    ref = torch.nn.GRUCell(3, 2)
    sign = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, 1.0]).unsqueeze(1)
    with torch.no_grad():
        ref.weight_ih.copy_(cell.input_proj.weight * sign)
        ref.bias_ih.copy_(cell.input_proj.bias * sign[:, 0])
        ref.weight_hh.copy_(cell.hidden_proj.weight * sign)
        ref.bias_hh.copy_(cell.hidden_proj.bias * sign[:, 0])
    torch.testing.assert_close(got, ref(x.unsqueeze(0), h.unsqueeze(0))[0])
    # over a sequence: each state is the step of the previous one, from h_0 = 0
    seq = torch.randn(1, 4, 3)
    states = cell(seq)[0]
    h = torch.zeros(2)
    for t in range(4):
        h = _gru_by_hand(cell, seq[0, t], h)
        torch.testing.assert_close(states[t], h)


def test_augru_step_by_hand() -> None:
    torch.manual_seed(2)
    cell = GRU(2, 2)
    x, h = torch.tensor([0.5, -1.0]), torch.tensor([0.3, 0.8])
    xp = cell.input_proj(x.unsqueeze(0))
    for a in (0.0, 0.25, 1.0):
        got = cell.step(xp, h.unsqueeze(0), torch.tensor([a]))[0]
        torch.testing.assert_close(got, _gru_by_hand(cell, x, h, a))
    torch.testing.assert_close(cell.step(xp, h.unsqueeze(0), torch.tensor([0.0]))[0], h)  # a = 0: state kept
    torch.testing.assert_close(cell.step(xp, h.unsqueeze(0), torch.ones(1)), cell.step(xp, h.unsqueeze(0)))
    # right padding with attention 0: the last state is the state after the row's last real item
    seq, att = torch.randn(1, 5, 2), torch.tensor([[0.2, 0.5, 0.3, 0.0, 0.0]])
    states = cell(seq, att)[0]
    torch.testing.assert_close(states[-1], states[2])
    assert not torch.allclose(states[2], states[1])


def test_transformer_layer_by_hand_one_head() -> None:
    torch.manual_seed(3)
    layer = TransformerLayer(2, num_heads=1, ffn_dim=3).eval().requires_grad_(False)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.tensor([[[1.0, -0.5], [0.2, 0.4], [-1.0, 2.0]]])  # [1, 3, 2]
    keep = torch.tensor([[True, False, True]])  # token 1 is padding: no key
    wq, wk, wv = layer.in_proj.weight.split(2)
    bq, bk, bv = layer.in_proj.bias.split(2)

    def norm(v: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
        mu, var = v.mean(), ((v - v.mean()) ** 2).mean()
        return (v - mu) / math.sqrt(var + ln.eps) * ln.weight + ln.bias

    out = []
    for i in range(3):
        q = wq @ x[0, i] + bq
        scores = [float((q @ (wk @ x[0, j] + bk)) / math.sqrt(2)) for j in (0, 2)]  # the real keys only
        w = torch.softmax(torch.tensor(scores), 0)
        attended = w[0] * (wv @ x[0, 0] + bv) + w[1] * (wv @ x[0, 2] + bv)
        s = norm(x[0, i] + layer.out_proj.weight @ attended + layer.out_proj.bias, layer.norm1)
        hidden = layer.ffn_in.weight @ s + layer.ffn_in.bias
        ffn = layer.ffn_out.weight @ torch.where(hidden > 0, hidden, 0.01 * hidden) + layer.ffn_out.bias
        out.append(norm(s + ffn, layer.norm2))
    torch.testing.assert_close(layer(x, keep)[0], torch.stack(out))
    weights, _ = layer.attention(x, keep)
    assert torch.all(weights[..., 1] == 0) and torch.allclose(weights.sum(-1), torch.ones(1, 1, 3))


def test_bilinear_attention_by_hand() -> None:
    torch.manual_seed(4)
    unit = BilinearTargetAttention(2, 3)
    q, keys = torch.randn(1, 2), torch.randn(1, 4, 3)
    mask = torch.tensor([[True, True, True, False]])
    scores = torch.stack([keys[0, t] @ (unit.bilinear.weight @ q[0]) for t in range(3)])
    torch.testing.assert_close(unit(q, keys, mask)[0], torch.cat([torch.softmax(scores, 0), torch.zeros(1)]))
    assert unit(q, keys, torch.zeros_like(mask)).abs().sum() == 0  # no history: no weights (and no NaN)


def test_in_batch_negatives_come_from_other_rows() -> None:
    torch.manual_seed(5)
    ids = torch.tensor([[11, 12, 13, 0], [21, 22, 0, 0], [0, 0, 0, 0], [41, 0, 0, 0]])
    mask = ids != 0
    for _ in range(20):
        neg, usable = sample_other_rows(ids, mask)
        for b in range(4):
            others = set(ids[torch.arange(4) != b][mask[torch.arange(4) != b]].tolist())
            assert set(neg[b].tolist()) <= others
    alone = torch.tensor([[5, 6, 0], [0, 0, 0]])
    neg, usable = sample_other_rows(alone, alone != 0)
    assert not usable[0].any()  # no other row has a history
    neg, usable = sample_other_rows(torch.tensor([[7, 7], [7, 7]]), torch.ones(2, 2, dtype=torch.bool))
    assert not usable.any()  # the only other items are the row's own: not negatives


def test_next_item_loss_by_hand() -> None:
    states = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]])
    items = torch.tensor([[[0.0, 0.0], [2.0, 1.0], [0.5, -1.0]]])
    negatives = torch.tensor([[[5.0, 5.0], [-1.0, 3.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, True, True]])
    usable = torch.tensor([[True, True, False]])
    # pairs t = 0 (next item 1) and t = 1 (next item 2); the second negative is unusable
    expected = (-math.log(torch.sigmoid(torch.tensor(2.0))) - math.log(1 - torch.sigmoid(torch.tensor(-1.0)))
                - math.log(torch.sigmoid(torch.tensor(-1.0)))) / 2
    torch.testing.assert_close(next_item_loss(states, items, negatives, mask, usable), torch.tensor(expected))
    short = torch.tensor([[True, True, False]])  # item 2 is padding: one pair
    expected = (-math.log(torch.sigmoid(torch.tensor(2.0))) - math.log(1 - torch.sigmoid(torch.tensor(-1.0))))
    torch.testing.assert_close(next_item_loss(states, items, negatives, short, usable), torch.tensor(expected))


# ---------------------------------------------------------------- the auxiliary loss


def test_dien_auxiliary_loss_exists_in_training_only_and_trains_the_extractor() -> None:
    layout = LAYOUTS["two-seq+bag"]
    sparse, dense, seq, _ = make_batch(layout)
    model = build("dien", layout).train()
    model(sparse, dense, seq)
    aux = model.auxiliary_loss()
    assert aux is not None and aux.ndim == 0 and aux.item() > 0 and aux.requires_grad
    assert model.auxiliary_loss() is None  # handed out once
    aux.backward()
    for extractor in model.extractors:  # both sequences' extractors get the auxiliary gradient ...
        assert extractor.hidden_proj.weight.grad.abs().sum() > 0
    assert model.head.weight.grad is None  # ... and nothing after them does
    model.eval()
    model(sparse, dense, seq)
    assert model.auxiliary_loss() is None
    # weighted by aux_weight (same negatives: same random stream); 0 turns it off
    losses = {}
    for weight in (1.0, 2.5, 0.0):
        m = build("dien", layout, aux_weight=weight).train()
        torch.manual_seed(7)
        m(sparse, dense, seq)
        losses[weight] = m.auxiliary_loss()
    torch.testing.assert_close(losses[2.5], 2.5 * losses[1.0])
    assert losses[0.0] is None
    # models without one say so
    assert build("bst", layout).auxiliary_loss() is None and build("din", layout).auxiliary_loss() is None


def test_trainer_adds_the_auxiliary_loss(synth_prepared, tmp_path) -> None:
    from ctrzoo.data.dataset import PreparedDataset
    from ctrzoo.train.trainer import TrainConfig, Trainer

    ds = PreparedDataset.open(synth_prepared["taobao"])
    gaps = {}
    for weight in (1.0, 0.0):
        cfg = TrainConfig(model="dien", hparams={"emb_dim": 4, "mlp": [8], "aux_weight": weight}, batch_size=256,
                          bf16=False)
        trainer = Trainer(cfg, ds, tmp_path / str(weight), progress=False)
        trainer.model.train()
        total, data_loss, _ = trainer.loss(next(iter(trainer.batches())))
        gaps[weight] = float((total - data_loss).detach())
    assert gaps[1.0] > 0.1  # ~2 log 2 at the start
    assert gaps[0.0] == 0.0


# ---------------------------------------------------------------- protocol, learning, hparams


def test_registered_with_aliases() -> None:
    assert resolve_model_name("DIEN") == "dien" and resolve_model_name("deep-interest-evolution") == "dien"
    assert resolve_model_name("behavior_sequence_transformer") == "bst"
    assert build_model("deep_interest_evolution", LAYOUTS["one-seq"], **{"emb_dim": 4}).model_name == "dien"


@pytest.mark.parametrize("layout_id", list(LAYOUTS))
@pytest.mark.parametrize(("name", "hparams"), VARIANTS, ids=IDS)
def test_model_follows_the_protocol(name: str, hparams: dict, layout_id: str) -> None:
    layout = LAYOUTS[layout_id]
    model = build(name, layout, **hparams)
    assert isinstance(model, CTRModel) and model.model_name == name
    assert isinstance(model.embedding, FeatureEmbedding)
    sparse, dense, seq, label = make_batch(layout)
    logits = model(sparse, dense, seq)
    assert logits.shape == (32,) and torch.isfinite(logits).all()
    loss = F.binary_cross_entropy_with_logits(logits, label)
    aux = model.auxiliary_loss()
    (loss if aux is None else loss + aux).backward()
    assert torch.count_nonzero(model.embedding.weight.grad) > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    perturbed(model)
    with torch.no_grad():
        full = model(sparse, dense, seq)
        for k in range(layout.n_seq):  # every sequence and bag reaches the score
            other = seq.clone()
            other[:, k] = 0
            assert not torch.allclose(model(sparse, dense, other), full), layout.seq[k].name
        torch.testing.assert_close(model(sparse[:3], dense[:3], seq[:3]), full[:3])  # eval scores are per row
        if name == "bst" and hparams.get("pooling") != "concat" and layout.n_seq:
            # mean/target pooling ignores padding columns (the training-time trim is exact)
            wider = torch.cat([seq, torch.zeros_like(seq)], dim=2)
            wide = dataclasses.replace(layout, seq_len=2 * layout.seq_len)
            torch.manual_seed(0)
            again = build_model(name, wide, **model.hparams)
            state = model.state_dict()
            again.load_state_dict({k: torch.cat([v, v[:layout.seq_len]]) if k.startswith("positions") else v
                                   for k, v in state.items()})
            torch.testing.assert_close(again.eval()(sparse, dense, wider), full)


@pytest.mark.parametrize(("name", "hparams"), VARIANTS, ids=IDS)
def test_model_learns_a_synthetic_task(name: str, hparams: dict) -> None:
    layout = LAYOUTS["two-seq+bag"]
    model = build(name, layout, **hparams)
    sparse, dense, seq, label = make_batch(layout, n=64)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(sparse, dense, seq), label)
        aux = model.auxiliary_loss()
        (loss if aux is None else loss + aux).backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert torch.count_nonzero(model.embedding.weight[0]) == 0  # the padding row never trains


@pytest.mark.parametrize(("name", "hparams"), VARIANTS, ids=IDS)
def test_hparams_round_trip_and_rebuild_the_same_model(name: str, hparams: dict) -> None:
    layout = LAYOUTS["two-seq+bag"]
    model = perturbed(build(name, layout, dropout=0.3, **hparams))
    stored = json.loads(json.dumps(model.hparams))
    assert set(stored) == set(model_hparam_names(name))
    assert stored["dropout"] == 0.3 and all(stored[k] == v for k, v in hparams.items())
    again = build_model(name, layout, **stored)
    again.load_state_dict(model.state_dict())
    sparse, dense, seq, _ = make_batch(layout)
    torch.testing.assert_close(again.eval()(sparse, dense, seq), model(sparse, dense, seq), rtol=0, atol=0)


@pytest.mark.parametrize(("name", "hparams", "message"), [
    ("dien", {"attention": "dot"}, "unknown DIEN attention 'dot'"),
    ("dien", {"aux_weight": -1.0}, "aux_weight must be >= 0"),
    ("bst", {"pooling": "max"}, "unknown BST pooling 'max'; expected one of mean, target, concat"),
    ("bst", {"num_heads": 3}, r"attention heads \(3\) must divide the embedding size \(4\)"),
    ("bst", {"num_layers": 0}, "num_layers must be >= 1"),
])
def test_bad_hparams_name_the_problem(name: str, hparams: dict, message: str) -> None:
    with pytest.raises(CtrzooError, match=message):
        build(name, LAYOUTS["one-seq"], **hparams)


# ---------------------------------------------------------------- ONNX and the fused BST


@pytest.mark.parametrize(("name", "hparams", "layout_id"), [
    ("dien", {}, "two-seq+bag"),
    ("bst", {}, "two-seq+bag"),
    ("bst", {"pooling": "concat", "num_layers": 2}, "one-seq"),
])
def test_onnx_export_matches_torch_without_the_auxiliary_branch(name, hparams, layout_id, tmp_path) -> None:
    import onnx

    layout = LAYOUTS[layout_id]
    model = perturbed(build(name, layout, **hparams))
    assert write_onnx(model, layout, tmp_path / "model.onnx") <= PARITY_TOLERANCE
    ops = {n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node}
    # the auxiliary loss draws negatives (random ops) and takes softplus: neither is in the inference graph
    assert not ops & {"RandomUniform", "RandomUniformLike", "Multinomial", "Softplus", "CumSum", "NonZero"}, ops


@pytest.mark.parametrize("layout_id", ["one-seq", "two-seq+bag"])
@pytest.mark.parametrize("hparams", [{}, {"pooling": "target", "num_layers": 2}, {"pooling": "concat"},
                                     {"num_heads": 1, "ffn_dim": 3}])
def test_fused_bst_matches_the_model(hparams: dict, layout_id: str) -> None:
    layout = LAYOUTS[layout_id]
    model = perturbed(build("bst", layout, **hparams))
    fused = FusedBST(model)
    with torch.inference_mode():
        for n, seed in ((1, 1), (57, 2), (300, 3)):
            sparse, dense, seq, _ = make_batch(layout, n=n, seed=seed)
            seq[: n // 3] = 0  # no history at all for some rows (and for the batch of one)
            torch.testing.assert_close(fused(sparse, dense, seq), model(sparse, dense, seq), rtol=0,
                                       atol=PARITY_TOLERANCE)
        # the workspace is reused across sizes: a smaller batch after a larger one is still exact
        sparse, dense, seq, _ = make_batch(layout, n=5, seed=4)
        torch.testing.assert_close(fused(sparse, dense, seq), model(sparse, dense, seq), rtol=0, atol=PARITY_TOLERANCE)


def test_fused_backend_runs_dien_on_the_real_columns_only() -> None:
    from ctrzoo.runtime.torch_backend import HistoryTrimmed

    layout = LAYOUTS["two-seq+bag"]
    model = perturbed(build("dien", layout))
    sparse, dense, seq, _ = make_batch(layout, n=40)
    seq[:, :, 2:] = 0  # the batch's longest slot: 2 of 4 columns
    seen = []
    handle = model.extractors[0].register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[1]))
    with torch.inference_mode():
        torch.testing.assert_close(HistoryTrimmed(model)(sparse, dense, seq), model(sparse, dense, seq), rtol=0,
                                   atol=PARITY_TOLERANCE)
    handle.remove()
    assert seen == [2, 4]  # the trimmed run took 2 steps, the reference 4


# ---------------------------------------------------------------- end to end


def test_bst_trains_exports_and_serves(synth_prepared, tmp_path) -> None:
    """BST through the real trainer on synthetic taobao rows; ONNX, the fused backend and ``/rank`` agree with the
    offline scores."""
    import pyarrow.parquet as pq

    with warnings.catch_warnings():  # starlette's testclient warns about its httpx dependency
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from ctrzoo import runtime
    from ctrzoo.bundle import load_bundle
    from ctrzoo.data.dataset import PreparedDataset
    from ctrzoo.evaluate import score_split
    from ctrzoo.export import export_onnx
    from ctrzoo.features import random_batch
    from ctrzoo.train.run import train_bundle
    from serving.app import create_app

    out = tmp_path / "bst"
    train_bundle("behavior_sequence_transformer", synth_prepared["taobao"], out, progress=False, verbose=False,
                 overrides={"epochs": 1, "max_steps": 30, "batch_size": 256,
                            "hparams": {"emb_dim": 8, "mlp": [32, 16], "ffn_dim": 16}})
    bundle = load_bundle(out)
    assert bundle.model_name == "bst" and bundle.hparams["ffn_dim"] == 16
    assert export_onnx(out).parity_max_abs_diff <= PARITY_TOLERANCE

    ref, fused = runtime.load(out, "torch"), runtime.load(out, "fused")
    assert isinstance(fused.module.model, FusedBST)
    for n in (1, 100):
        x = random_batch(ref.layout, n, seed=n).as_dict()
        np.testing.assert_allclose(fused.predict(x), ref.predict(x), rtol=0, atol=PARITY_TOLERANCE)

    ds = PreparedDataset.open(synth_prepared["taobao"])
    _, offline, _ = score_split(load_bundle(out), ds, "test")
    raw = pq.read_table(ds.raw_path("test")).slice(0, 50).to_pylist()
    with TestClient(create_app(str(out))) as client:
        r = client.post("/rank", json={"candidates": [{k: v for k, v in row.items() if k != "label"} for row in raw]})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["scores"], offline[:50], rtol=0, atol=1e-6)
        assert client.get("/model").json()["name"] == "bst"
