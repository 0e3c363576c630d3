"""Model zoo: registry, forward/backward contracts, learnability on a tiny task, Wide&Deep's wide part."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ctrzoo.errors import CtrzooError
from ctrzoo.features.layout import TableLayout
from ctrzoo.models import CTRModel, build_model, list_models, model_hparam_names, register_model
from ctrzoo.models.wide_deep import _HASH_A, _HASH_B, _HASH_SALT
from ctrzoo.nn import FeatureEmbedding, split_sparse_params

B = 32
SMALL = {"emb_dim": 4, "mlp": (16, 8)}
VARIANTS = [
    ("wide_deep", {}),
    ("wide_deep", {"crosses": [("user", "item")], "cross_buckets": 101}),
    ("deepfm", {}),
    ("dcn", {}),
    ("dcn", {"cross_form": "matrix", "num_cross_layers": 2}),
    ("din", {}),
    ("din", {"use_softmax": True, "activation": "prelu", "concat_sum_pool": True}),
    ("din", {"pooling": "sum"}),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(VARIANTS)]


@pytest.fixture(scope="module")
def layout() -> TableLayout:
    return TableLayout.from_sizes({"user": 6, "item": 8, "cat": 4}, dense=("x1", "x2"), seq={"hist": ("item", 5)})


def make_batch(layout: TableLayout, n: int = B, seed: int = 0):
    """Random encoded batch plus a label that depends on the item id and a dense feature."""
    g = torch.Generator().manual_seed(seed)
    local = torch.stack([torch.randint(0, f.size, (n,), generator=g) for f in layout.sparse], dim=1)
    sparse = local + torch.tensor([f.offset for f in layout.sparse])
    dense = torch.randn(n, layout.n_dense, generator=g)
    table = layout.sparse[layout.seq[0].shares_index] if layout.seq else layout.sparse[0]
    seq = torch.randint(table.offset, table.offset + table.size, (n, layout.n_seq, layout.seq_len), generator=g)
    lengths = torch.randint(0, layout.seq_len + 1, (n, layout.n_seq, 1), generator=g)
    seq = torch.where(torch.arange(layout.seq_len) < lengths, seq, torch.zeros_like(seq))  # right padding
    label = (local[:, 1] % 2 == 0).float()
    if layout.n_dense:
        label = (label.bool() ^ (dense[:, 0] > 1.0)).float()
    return sparse, dense, seq, label


def build(name: str, layout: TableLayout, **extra):
    torch.manual_seed(0)
    return build_model(name, layout, **{**SMALL, **extra})


# ---------------------------------------------------------------- registry


def test_registry_lists_models_and_rejects_unknown_names(layout: TableLayout) -> None:
    assert {"dcn", "deepfm", "din", "wide_deep"} <= set(list_models())  # the zoo's others: tests/test_zoo.py
    assert list_models() == sorted(list_models())
    with pytest.raises(CtrzooError, match=f"known models: {', '.join(list_models())}"):
        build_model("nosuch", layout)
    with pytest.raises(CtrzooError, match="emb_size"):
        build_model("deepfm", layout, emb_size=8)
    assert "emb_dim" in model_hparam_names("din")


@pytest.mark.parametrize(("name", "hparams"), VARIANTS, ids=IDS)
def test_every_model_follows_the_protocol(layout: TableLayout, name: str, hparams: dict) -> None:
    """What trainer, exporter and runtimes rely on: a CTRModel with one FeatureEmbedding, JSON hparams, logits [B]."""
    model = build(name, layout, **hparams)
    assert isinstance(model, CTRModel) and model.model_name == name
    assert isinstance(model.embedding, FeatureEmbedding)
    assert model.embedding.weight is model.embedding.table.weight
    sparse_model = build(name, layout, sparse_grad=True, **hparams)
    sparse_params, _ = split_sparse_params(sparse_model)
    assert any(p is sparse_model.embedding.weight for p in sparse_params)  # what sparse optimizers update
    json.dumps(model.hparams)
    sparse, dense, seq, _ = make_batch(layout)
    assert model(sparse, dense, seq).shape == (B,)


def test_register_model_refuses_a_class_outside_the_protocol() -> None:
    class NotAModel(torch.nn.Module):
        pass

    with pytest.raises(CtrzooError, match="must subclass ctrzoo.models.CTRModel"):
        register_model("not_a_model")(NotAModel)
    assert "not_a_model" not in list_models()


def test_build_model_passes_hparams(layout: TableLayout) -> None:
    model = build_model("deepfm", layout, emb_dim=8)
    assert model.embedding.table.weight.shape == (layout.num_embeddings, 8)
    assert model.hparams["emb_dim"] == 8 and model.hparams["mlp"] == [400, 400, 400]
    assert model.hparams["dropout"] == 0.0


@pytest.mark.parametrize(("name", "hparams"), VARIANTS, ids=IDS)
def test_hparams_are_json_and_rebuild_the_same_model(layout: TableLayout, name: str, hparams: dict) -> None:
    model = build(name, layout, **hparams).eval()
    again = build_model(name, layout, **json.loads(json.dumps(model.hparams)))
    again.load_state_dict(model.state_dict())
    again.eval()
    sparse, dense, seq, _ = make_batch(layout)
    torch.testing.assert_close(again(sparse, dense, seq), model(sparse, dense, seq))


# ---------------------------------------------------------------- forward / backward / training


@pytest.mark.parametrize(("name", "hparams"), VARIANTS, ids=IDS)
def test_forward_backward_and_learning(layout: TableLayout, name: str, hparams: dict) -> None:
    model = build(name, layout, **hparams)
    sparse, dense, seq, label = make_batch(layout)
    logits = model(sparse, dense, seq)
    assert logits.shape == (B,) and torch.isfinite(logits).all()
    F.binary_cross_entropy_with_logits(logits, label).backward()
    assert model.embedding.table.weight.grad is not None
    assert torch.count_nonzero(model.embedding.table.weight.grad) > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(sparse, dense, seq), label)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert torch.count_nonzero(model.embedding.table.weight[0]) == 0  # padding row never trains


@pytest.mark.parametrize(("name", "hparams"), VARIANTS, ids=IDS)
def test_eval_output_is_deterministic(layout: TableLayout, name: str, hparams: dict) -> None:
    model = build(name, layout, dropout=0.5, **hparams)
    sparse, dense, seq, _ = make_batch(layout)
    model.train()
    model(sparse, dense, seq)  # move running statistics away from their init
    model.eval()
    first = model(sparse, dense, seq)
    torch.testing.assert_close(model(sparse, dense, seq), first, rtol=0, atol=0)
    # Eval scores are per row: a row's score does not depend on the rest of the batch.
    torch.testing.assert_close(model(sparse[:3], dense[:3], seq[:3]), first[:3])


@pytest.mark.parametrize("name", ["wide_deep", "deepfm", "dcn", "din"])
def test_models_accept_empty_seq_when_layout_has_none(name: str) -> None:
    plain = TableLayout.from_sizes({"a": 5, "b": 3}, dense=("x",))
    model = build(name, plain)
    sparse, dense, _, label = make_batch(plain, n=8)
    empty_seq = torch.zeros(8, 0, 0, dtype=torch.long)
    logits = model(sparse, dense, empty_seq)
    assert logits.shape == (8,) and torch.isfinite(logits).all()
    F.binary_cross_entropy_with_logits(logits, label).backward()


@pytest.mark.parametrize("name", ["wide_deep", "deepfm", "dcn"])
def test_field_models_use_the_pooled_history_unless_told_not_to(layout: TableLayout, name: str) -> None:
    """Issue 16: sequences reach Wide&Deep, DeepFM and DCN as pooled fields; ``pool_lists=False`` (what a
    bundle trained before this records) ignores them as these models used to."""
    sparse, dense, seq, _ = make_batch(layout)
    empty = torch.zeros_like(seq)
    torch.manual_seed(0)
    model = build(name, layout).eval()
    assert not torch.allclose(model(sparse, dense, seq), model(sparse, dense, empty))
    torch.manual_seed(0)
    without = build(name, layout, pool_lists=False).eval()
    torch.testing.assert_close(without(sparse, dense, torch.zeros(B, 0, 0, dtype=torch.long)),
                               without(sparse, dense, seq))


def test_models_without_dense_features() -> None:
    no_dense = TableLayout.from_sizes({"a": 5, "b": 3}, seq={"h": ("a", 4)})
    sparse, dense, seq, _ = make_batch(no_dense, n=4)
    assert dense.shape == (4, 0)
    for name in list_models():
        accepted = {k: v for k, v in SMALL.items() if k in model_hparam_names(name)}  # lr has no emb_dim, fm no mlp
        torch.manual_seed(0)
        model = build_model(name, no_dense, **accepted)
        assert model(sparse, dense, seq).shape == ((4, len(model.tasks)) if model.tasks else (4,))


def test_sparse_grad_models_train_with_sparse_adam(layout: TableLayout) -> None:
    model = build("deepfm", layout, sparse_grad=True)
    sparse, dense, seq, label = make_batch(layout)
    sparse_params, dense_params = split_sparse_params(model)
    assert len(sparse_params) == 2
    opts = [torch.optim.SparseAdam(sparse_params, lr=1e-2), torch.optim.Adam(dense_params, lr=1e-2)]
    before = model.embedding.table.weight.detach().clone()
    F.binary_cross_entropy_with_logits(model(sparse, dense, seq), label).backward()
    assert model.embedding.table.weight.grad.is_sparse
    for opt in opts:
        opt.step()
    changed = (model.embedding.table.weight.detach() != before).any(dim=1).nonzero().flatten()
    assert set(changed.tolist()) == set(sparse.unique().tolist())


# ---------------------------------------------------------------- model-specific checks


def test_wide_part_is_logistic_regression_on_the_same_ids(layout: TableLayout) -> None:
    model = build("wide_deep", layout)
    sparse, dense, seq, _ = make_batch(layout, n=5)
    lr_weights = torch.randn(layout.num_embeddings)
    lr_weights[0] = 0.0
    with torch.no_grad():
        model.embedding.linear_table.weight.copy_(lr_weights.unsqueeze(1))
        model.dense_linear.weight.copy_(torch.tensor([[0.5, -2.0]]))
        model.bias.fill_(0.25)
    expected = torch.tensor(
        [
            sum(lr_weights[i].item() for i in row) + 0.5 * d[0].item() - 2.0 * d[1].item() + 0.25
            for row, d in zip(sparse, dense)
        ]
    )
    torch.testing.assert_close(model.wide(sparse, dense), expected)
    # With the deep tower's output layer at zero the whole model is exactly that logistic regression.
    with torch.no_grad():
        model.head.weight.zero_()
    torch.testing.assert_close(model(sparse, dense, seq), expected)


def test_wide_crosses_hash_id_pairs_deterministically(layout: TableLayout) -> None:
    model = build("wide_deep", layout, crosses=[("user", "item"), ("item", "cat")], cross_buckets=97)
    sparse, dense, _, _ = make_batch(layout, n=6)
    ids = model.cross_ids(sparse)
    expected = [
        [(int(r[a]) * _HASH_A + int(r[b]) * _HASH_B + c * _HASH_SALT) % 97 for c, (a, b) in enumerate([(0, 1), (1, 2)])]
        for r in sparse
    ]
    assert ids.tolist() == expected
    with torch.no_grad():
        model.cross_table.weight.copy_(torch.arange(97.0).unsqueeze(1))
        model.embedding.linear_table.weight.zero_()
        model.dense_linear.weight.zero_()
    torch.testing.assert_close(model.wide(sparse, dense), ids.sum(1).float())
    with pytest.raises(CtrzooError, match="no sparse field 'age'"):
        build("wide_deep", layout, crosses=[("user", "age")])


def test_din_attends_to_history_and_ignores_padding(layout: TableLayout) -> None:
    model = build("din", layout).eval()
    sparse, dense, seq, _ = make_batch(layout, n=8)
    base = model(sparse, dense, seq)
    longer = torch.cat([seq, torch.zeros(8, 1, 3, dtype=torch.long)], dim=2)  # more padding on the right
    torch.testing.assert_close(model(sparse, dense, longer), base)
    item = layout.sparse[layout.field_index("item")]
    other = seq.clone()
    other[:, 0, 0] = item.offset + (seq[:, 0, 0] - item.offset + 1) % item.size  # a different first item
    assert not torch.allclose(model(sparse, dense, other), base)


def test_bad_hparams_raise_ctrzoo_errors(layout: TableLayout) -> None:
    with pytest.raises(CtrzooError, match="pooling"):
        build("din", layout, pooling="max")
    with pytest.raises(CtrzooError, match="form"):
        build("dcn", layout, cross_form="tensor")
    with pytest.raises(CtrzooError, match="activation"):
        build("din", layout, activation="gelu")
