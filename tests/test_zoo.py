"""The feature-interaction models of the zoo: protocol, learning, hparams, aliases, ONNX parity, end to end."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctrzoo.errors import CtrzooError
from ctrzoo.export import PARITY_TOLERANCE
from ctrzoo.features.layout import TableLayout
from ctrzoo.models import (
    CTRModel,
    build_model,
    list_aliases,
    list_models,
    model_hparam_names,
    register_model,
    resolve_model_name,
)
from ctrzoo.models.deepfm import DeepFM
from ctrzoo.nn import FeatureEmbedding, split_sparse_params
from ctrzoo.threads import torch_threads

B = 32
ZOO = ["lr", "fm", "dcnv2", "xdeepfm", "autoint", "fibinet", "finalmlp", "masknet", "dlrm"]
# small sizes for every model (each gets the ones it accepts)
SMALL = {"emb_dim": 4, "mlp": (16, 8), "mlp2": (8,), "cin": (4, 4), "attention_dim": 8, "attention_layers": 2,
         "block_dim": 8, "num_blocks": 2, "bottom_mlp": (8,), "fs_hidden": (8,)}
VARIANTS = [
    ("lr", {}),
    ("fm", {}),
    ("dcnv2", {}),
    ("dcnv2", {"structure": "stacked", "low_rank": 3, "num_experts": 2}),
    ("xdeepfm", {}),
    ("xdeepfm", {"split_half": False, "cin": (3, 2)}),
    ("autoint", {}),
    ("autoint", {"use_mlp": True, "residual": False, "num_heads": 1}),
    ("fibinet", {}),
    ("fibinet", {"bilinear_type": "field_all"}),
    ("fibinet", {"bilinear_type": "field_each", "reduction_ratio": 2.0}),
    ("finalmlp", {}),
    ("finalmlp", {"fs1_context": ["user"], "fs2_context": ["item", "cat"], "num_heads": 4, "mlp2": (12, 8)}),
    ("finalmlp", {"feature_gating": False, "num_heads": 1}),
    ("masknet", {}),
    ("masknet", {"mode": "serial", "mlp": (), "reduction_ratio": 2.0}),
    ("dlrm", {}),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(VARIANTS)]


def _layouts() -> dict[str, TableLayout]:
    return {
        "dense+seq": TableLayout.from_sizes({"user": 6, "item": 8, "cat": 4}, dense=("x1", "x2"),
                                            seq={"hist": ("item", 5)}),
        "no-dense+seq": TableLayout.from_sizes({"user": 6, "item": 8, "cat": 4}, seq={"hist": ("item", 5)}),
        "no-seq": TableLayout.from_sizes({"user": 6, "item": 8, "cat": 4}, dense=("x1",)),
    }


LAYOUTS = _layouts()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and two threads spin-waiting on a shared 2-core machine
    made these tests ~50x slower."""
    with torch_threads(1):
        yield


def make_batch(layout: TableLayout, n: int = B, seed: int = 0):
    """A random encoded batch (partly padded sequences) and a label a model can learn: the item id's parity,
    flipped where the first dense feature is large."""
    g = torch.Generator().manual_seed(seed)
    local = torch.stack([torch.randint(0, f.size, (n,), generator=g) for f in layout.sparse], dim=1)
    sparse = local + torch.tensor([f.offset for f in layout.sparse])
    dense = torch.randn(n, layout.n_dense, generator=g)
    seq = torch.zeros(n, layout.n_seq, layout.seq_len, dtype=torch.long)
    for k, s in enumerate(layout.seq):
        table = layout.sparse[s.shares_index]
        ids = torch.randint(table.offset, table.offset + table.size, (n, layout.seq_len), generator=g)
        lengths = torch.randint(0, layout.seq_len + 1, (n, 1), generator=g)
        seq[:, k] = torch.where(torch.arange(layout.seq_len) < lengths, ids, torch.zeros_like(ids))
    label = (local[:, 1] % 2 == 0).float()
    if layout.n_dense:
        label = (label.bool() ^ (dense[:, 0] > 1.0)).float()
    return sparse, dense, seq, label


def small(name: str, **extra) -> dict:
    accepted = set(model_hparam_names(name))
    return {**{k: v for k, v in SMALL.items() if k in accepted}, **extra}


def build(name: str, layout: TableLayout, **extra) -> CTRModel:
    torch.manual_seed(0)
    return build_model(name, layout, **small(name, **extra))


# ---------------------------------------------------------------- registry and aliases


def test_every_zoo_model_is_registered_under_its_name() -> None:
    assert set(ZOO) <= set(list_models())
    assert {name for name, _ in VARIANTS} == set(ZOO)


@pytest.mark.parametrize(("alias", "name"), [
    ("wdl", "wide_deep"), ("widedeep", "wide_deep"), ("Wide-Deep", "wide_deep"), ("dcn_v2", "dcnv2"),
    ("DCN-V2", "dcnv2"), ("deep_fm", "deepfm"), ("DeepFM", "deepfm"), ("xDeepFM", "xdeepfm"), ("auto_int", "autoint"),
    ("final_mlp", "finalmlp"), ("mask_net", "masknet"), ("logistic_regression", "lr"), ("xdeepfm", "xdeepfm"),
])
def test_aliases_resolve_to_the_registered_model(alias: str, name: str) -> None:
    layout = LAYOUTS["dense+seq"]
    assert resolve_model_name(alias) == name
    assert model_hparam_names(alias) == model_hparam_names(name)
    model = build_model(alias, layout, **small(name))
    assert model.model_name == name  # what a bundle records


def test_alias_map_names_registered_models_and_no_alias_shadows_a_model() -> None:
    aliases = list_aliases()
    assert aliases["wdl"] == "wide_deep" and aliases["dcn_v2"] == "dcnv2" and aliases["deep_fm"] == "deepfm"
    assert set(aliases.values()) <= set(list_models())
    assert not set(aliases) & set(list_models())


def test_unknown_model_lists_known_models_and_aliases() -> None:
    with pytest.raises(CtrzooError, match=r"unknown model 'nosuch'; known models: autoint, bst, dcn, dcnv2, .*, "
                                          r"xdeepfm; aliases: .*wdl \(wide_deep\)"):
        build_model("nosuch", LAYOUTS["dense+seq"])
    with pytest.raises(CtrzooError, match="unknown model 'dcn_v3'"):
        model_hparam_names("dcn_v3")


def test_aliases_cannot_take_a_registered_name(monkeypatch) -> None:
    from ctrzoo.models import registry

    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))

    class Other(DeepFM):
        pass

    with pytest.raises(CtrzooError, match="'wdl' already refers to model 'wide_deep'"):
        register_model("other", aliases=("wdl",))(Other)
    with pytest.raises(CtrzooError, match="'fm' already refers to model 'fm'"):
        register_model("other", aliases=("fm",))(Other)
    with pytest.raises(CtrzooError, match="'deep_fm' already refers to model 'deepfm'"):
        register_model("deep_fm")(Other)
    assert "other" not in registry._MODELS
    register_model("other", aliases=("other_alias",))(Other)
    assert resolve_model_name("Other-Alias") == "other"


def test_train_cli_accepts_aliases_stores_the_registered_name_and_lists_them(capsys) -> None:
    from ctrzoo.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--model", "WDL", "--data", "d", "--out", "o"])
    assert args.model == "wide_deep"
    assert parser.parse_args(["train", "--model", "dcn_v2", "--data", "d", "--out", "o"]).model == "dcnv2"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--model", "dcn_v3", "--data", "d", "--out", "o"])
    assert "invalid choice: 'dcn_v3' (choose from 'autoint', 'bst', 'dcn'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(name in help_text for name in list_models())
    assert "aliases: auto_int=autoint, behavior_sequence_transformer=bst, dcn_v2=dcnv2," in help_text
    assert "wdl=wide_deep" in help_text


def test_resolve_config_records_the_registered_name() -> None:
    from ctrzoo.train.config import resolve_config

    cfg = resolve_config("wdl", "criteo", None, {"hparams": {"emb_dim": 4}})
    assert cfg.model == "wide_deep"
    assert cfg.hparams["mlp"] == [400, 400, 400] and cfg.hparams["emb_dim"] == 4  # criteo.yaml's wide_deep entry


# ---------------------------------------------------------------- protocol, learning, hparams


@pytest.mark.parametrize("layout_id", list(LAYOUTS))
@pytest.mark.parametrize(("name", "hparams"), VARIANTS, ids=IDS)
def test_model_follows_the_protocol(name: str, hparams: dict, layout_id: str) -> None:
    layout = LAYOUTS[layout_id]
    model = build(name, layout, **hparams)
    assert isinstance(model, CTRModel) and model.model_name == name
    assert isinstance(model.embedding, FeatureEmbedding) and model.embedding.weight is model.embedding.table.weight
    json.dumps(model.hparams)
    sparse, dense, seq, label = make_batch(layout)
    logits = model(sparse, dense, seq)
    assert logits.shape == (B,) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    F.binary_cross_entropy_with_logits(logits, label).backward()
    assert torch.count_nonzero(model.embedding.weight.grad) > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # sequences reach every model as pooled fields (issue 16): the history changes the scores
    model.eval()
    if layout.n_seq:
        with torch.no_grad():  # lr's table starts at zero: give the ids weights first
            model.embedding.weight[1:].normal_(std=0.1)
        assert not torch.allclose(model(sparse, dense, torch.zeros_like(seq)), model(sparse, dense, seq))
    # eval scores are per row
    torch.testing.assert_close(model(sparse[:3], dense[:3], seq[:3]), model(sparse, dense, seq)[:3])


@pytest.mark.parametrize(("name", "hparams"), VARIANTS, ids=IDS)
def test_sparse_gradients_reach_only_the_embedding_tables(name: str, hparams: dict) -> None:
    layout = LAYOUTS["dense+seq"]
    model = build(name, layout, sparse_grad=True, **hparams)
    sparse_params, _ = split_sparse_params(model)
    assert any(p is model.embedding.weight for p in sparse_params)
    sparse, dense, seq, label = make_batch(layout)
    F.binary_cross_entropy_with_logits(model(sparse, dense, seq), label).backward()
    assert model.embedding.weight.grad.is_sparse
    touched = model.embedding.weight.grad.coalesce().indices()[0].unique()
    assert set(touched.tolist()) <= set(sparse.unique().tolist())


@pytest.mark.parametrize(("name", "hparams"), VARIANTS, ids=IDS)
def test_model_learns_a_synthetic_task(name: str, hparams: dict) -> None:
    layout = LAYOUTS["dense+seq"]
    model = build(name, layout, **hparams)
    sparse, dense, seq, label = make_batch(layout, n=64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(sparse, dense, seq), label)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert torch.count_nonzero(model.embedding.weight[0]) == 0  # the padding row never trains


@pytest.mark.parametrize(("name", "hparams"), VARIANTS, ids=IDS)
def test_hparams_round_trip_and_rebuild_the_same_model(name: str, hparams: dict) -> None:
    layout = LAYOUTS["dense+seq"]
    model = build(name, layout, dropout=0.3, **hparams) if "dropout" in model_hparam_names(name) \
        else build(name, layout, **hparams)
    stored = json.loads(json.dumps(model.hparams))
    assert set(stored) == set(model_hparam_names(name))
    for key, value in small(name, **hparams).items():
        assert stored[key] == (list(value) if isinstance(value, tuple) else value), key
    again = build_model(name, layout, **stored)
    assert again.hparams == stored
    again.load_state_dict(model.state_dict())
    model.eval()
    again.eval()
    sparse, dense, seq, _ = make_batch(layout)
    torch.testing.assert_close(again(sparse, dense, seq), model(sparse, dense, seq), rtol=0, atol=0)


def test_defaults_build_and_are_json() -> None:
    layout = LAYOUTS["dense+seq"]
    for name in ZOO:
        model = build_model(name, layout)
        assert json.loads(json.dumps(model.hparams)) == model.hparams
        assert model(*make_batch(layout, n=4)[:3]).shape == (4,)


def test_bad_hparams_name_the_problem() -> None:
    layout = LAYOUTS["dense+seq"]
    cases = [
        ("dcnv2", {"structure": "serial"}, "unknown DCN-V2 structure 'serial'"),
        ("dcnv2", {"num_experts": 4}, "needs low_rank > 0"),
        ("fibinet", {"bilinear_type": "pairwise"}, "unknown bilinear type 'pairwise'"),
        ("finalmlp", {"fs1_context": ["age"]}, "fs1_context: no sparse field 'age'; fields: user, item, cat"),
        ("finalmlp", {"num_heads": 3}, r"fusion heads \(3\) must divide"),
        ("masknet", {"mode": "stacked"}, "unknown MaskNet mode 'stacked'"),
        ("autoint", {"attention_dim": 7}, r"attention heads \(2\) must divide"),
        ("xdeepfm", {"cin": (3, 3)}, "even sizes"),
        ("lr", {"emb_dim": 8}, "does not accept hyper-parameter"),
    ]
    for name, hparams, message in cases:
        with pytest.raises(CtrzooError, match=message):
            build(name, layout, **hparams)


# ---------------------------------------------------------------- model-specific checks


def test_lr_is_exactly_logistic_regression() -> None:
    layout = LAYOUTS["dense+seq"]
    model = build("lr", layout)
    sparse, dense, seq, _ = make_batch(layout, n=5)
    assert model(sparse, dense, seq).abs().max() == 0  # a zero start
    w = torch.randn(layout.num_embeddings)
    w[0] = 0
    with torch.no_grad():
        model.embedding.weight.copy_(w.unsqueeze(1))
        model.linear.dense_linear.weight.copy_(torch.tensor([[0.5, -2.0]]))
        model.linear.bias.fill_(0.25)

    def history(ids: torch.Tensor) -> torch.Tensor:  # each sequence's mean weight (the default pooling), 0 if empty
        return sum((w[s[s != 0]].mean() if (s != 0).any() else torch.tensor(0.0)) for s in ids)

    expected = torch.stack([w[row].sum() + history(q) + 0.5 * d[0] - 2.0 * d[1] + 0.25
                            for row, q, d in zip(sparse, seq, dense)])
    torch.testing.assert_close(model(sparse, dense, seq), expected)


def test_fm_is_linear_plus_pairwise_dots_of_all_fields() -> None:
    layout = LAYOUTS["dense+seq"]
    model = build("fm", layout)
    with torch.no_grad():
        torch.nn.init.normal_(model.embedding.linear_table.weight)
        torch.nn.init.normal_(model.embedding.weight)
        model.embedding.weight[0] = 0
    sparse, dense, seq, _ = make_batch(layout, n=4)
    table = model.embedding.weight
    history = torch.stack([table[s[s != 0]].mean(0) if (s != 0).any() else torch.zeros(table.shape[1])
                           for s in seq[:, 0]])  # the sequence, mean-pooled: one more field
    v = torch.cat([table[sparse], history.unsqueeze(1), dense.unsqueeze(-1) * model.embedding.dense.weight], dim=1)
    n = v.shape[1]
    assert n == layout.n_sparse + layout.n_seq + layout.n_dense
    pairs = sum((v[:, i] * v[:, j]).sum(-1) for i in range(n) for j in range(i + 1, n))
    linear = model.embedding.linear_table.weight[sparse].sum((1, 2)) + model.linear(torch.zeros(4), dense)
    torch.testing.assert_close(model(sparse, dense, seq), linear + pairs)


def test_dcnv2_structures_compose_cross_and_mlp_as_documented() -> None:
    layout = LAYOUTS["dense+seq"]
    sparse, dense, seq, _ = make_batch(layout, n=4)
    parallel = build("dcnv2", layout).eval()
    x0 = torch.cat([parallel.embedding.fields(sparse, dense, seq).flatten(1), dense], dim=1)
    cross = x0
    for lin in parallel.cross.linears:
        cross = x0 * lin(cross) + cross
    expected = parallel.head(torch.cat([cross, parallel.deep(x0)], dim=1)).squeeze(-1)
    torch.testing.assert_close(parallel(sparse, dense, seq), expected)
    stacked = build("dcnv2", layout, structure="stacked", mlp=()).eval()
    x0 = torch.cat([stacked.embedding.fields(sparse, dense, seq).flatten(1), dense], dim=1)
    torch.testing.assert_close(stacked(sparse, dense, seq), stacked.head(stacked.cross(x0)).squeeze(-1))


def test_dlrm_without_dense_uses_only_field_dots() -> None:
    layout = LAYOUTS["no-dense+seq"]
    model = build("dlrm", layout).eval()
    assert model.bottom is None and model.interaction.out_dim == 6  # 3 categorical fields + the pooled history
    sparse, dense, seq, _ = make_batch(layout, n=4)
    e = model.embedding.fields(sparse, dense, seq)
    dots = torch.stack([(e[:, i] * e[:, j]).sum(-1) for i in range(4) for j in range(i + 1, 4)], dim=1)
    torch.testing.assert_close(model(sparse, dense, seq), model.head(model.deep(dots)).squeeze(-1))


def test_finalmlp_context_gates_depend_on_the_context_fields_only() -> None:
    layout = LAYOUTS["dense+seq"]
    model = build("finalmlp", layout, fs1_context=["user"]).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.gates[0].out.weight)
    sparse, dense, seq, _ = make_batch(layout, n=6)
    fields = model.embedding.fields(sparse, dense, seq)
    g = model.gates[0].gate(fields)
    other = sparse.clone()
    other[:, 1:] = sparse[:, 1:].roll(1, dims=0)  # change every field but the user
    torch.testing.assert_close(model.gates[0].gate(model.embedding.fields(other, dense, seq)), g)
    other = sparse.clone()
    other[:, 0] = sparse[:, 0].roll(1, dims=0)
    assert not torch.allclose(model.gates[0].gate(model.embedding.fields(other, dense, seq)), g)


# ---------------------------------------------------------------- ONNX export


def _onnx_max_diff(model: CTRModel, layout: TableLayout, tmp_path) -> float:
    """Exported by ``ctrzoo.export.write_onnx`` (the path ``ctrzoo export`` takes): onnxruntime's max |diff| to
    torch on in-range inputs at batch 1 and 37."""
    from ctrzoo.export import write_onnx

    return write_onnx(model, layout, tmp_path / "model.onnx")


EXPORTED = [VARIANTS[i] for i in (0, 1, 3, 4, 6, 8, 10, 12, 15, 16)]  # every model, and the variants with other ops


@pytest.mark.parametrize(("name", "hparams"), EXPORTED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(EXPORTED)])
def test_onnx_export_matches_torch(name: str, hparams: dict, tmp_path) -> None:
    layout = LAYOUTS["dense+seq"]
    model = build(name, layout, **hparams)
    with torch.no_grad():  # move every parameter off its init (zero gates and biases hide mistakes)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        model.embedding.weight[0] = 0
    assert _onnx_max_diff(model, layout, tmp_path) <= PARITY_TOLERANCE


# ---------------------------------------------------------------- end to end: trainer, bundle, export, service


def test_a_zoo_model_trains_exports_and_serves(synth_prepared, tmp_path) -> None:
    """``dcn_v2`` (an alias) through the real trainer on a prepared dataset, its bundle exported and served."""
    import pyarrow.parquet as pq

    with warnings.catch_warnings():  # starlette's testclient warns about its httpx dependency
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from ctrzoo.bundle import load_bundle
    from ctrzoo.data.dataset import PreparedDataset
    from ctrzoo.evaluate import score_split
    from ctrzoo.export import export_onnx
    from ctrzoo.train.run import train_bundle
    from serving.app import create_app

    out = tmp_path / "dcnv2"
    meta = train_bundle("dcn_v2", synth_prepared["criteo"], out, progress=False, verbose=False,
                        overrides={"epochs": 2, "batch_size": 256, "lr": 3e-3,
                                   "hparams": {"emb_dim": 8, "mlp": [32, 16], "low_rank": 8, "num_experts": 2}})
    bundle = load_bundle(out)
    assert bundle.model_name == "dcnv2" and bundle.hparams["low_rank"] == 8
    assert meta.metrics.test["auc"] > 0.6  # the synthetic task has signal (oracle AUC ~0.8)
    record = export_onnx(out)
    assert record.parity_max_abs_diff <= PARITY_TOLERANCE

    ds = PreparedDataset.open(synth_prepared["criteo"])
    _, offline, _ = score_split(load_bundle(out), ds, "test")
    raw = pq.read_table(ds.raw_path("test")).slice(0, 50).to_pylist()
    with TestClient(create_app(str(out))) as client:
        r = client.post("/rank", json={"candidates": [{k: v for k, v in row.items() if k != "label"} for row in raw]})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["scores"], offline[:50], rtol=0, atol=1e-6)
        info = client.get("/model").json()
        assert info["name"] == "dcnv2" and info["backend"] == "onnxruntime"
