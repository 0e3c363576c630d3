"""ctrzoo.nn layers checked against hand computations on tiny inputs."""

from __future__ import annotations

import itertools

import pytest
import torch

from ctrzoo.errors import CtrzooError
from ctrzoo.features.layout import TableLayout
from ctrzoo.nn import (
    MLP,
    CrossNetwork,
    DenseEmbedding,
    Dice,
    FactorizationMachine,
    FeatureEmbedding,
    RowSparseAdam,
    SequencePooling,
    TargetAttention,
    padding_mask,
    split_sparse_params,
)


@pytest.fixture
def layout() -> TableLayout:
    return TableLayout.from_sizes({"user": 4, "item": 6, "cat": 3}, dense=("price",), seq={"hist": ("item", 5)})


def _global(layout: TableLayout, local: torch.Tensor) -> torch.Tensor:
    offsets = torch.tensor([f.offset for f in layout.sparse])
    return local + offsets


# ---------------------------------------------------------------- embeddings


def test_one_lookup_equals_per_field_lookups(layout: TableLayout) -> None:
    torch.manual_seed(0)
    emb = FeatureEmbedding(layout, dim=3)
    torch.nn.init.normal_(emb.linear_table.weight)
    local = torch.stack([torch.randint(0, f.size, (5,)) for f in layout.sparse], dim=1)
    sparse = _global(layout, local)
    out = emb(sparse)
    assert out.shape == (5, 3, 3)
    for f, field in enumerate(layout.sparse):
        expected = emb.table.weight[field.offset + local[:, f]]
        torch.testing.assert_close(out[:, f], expected)
    first = sum(emb.linear_table.weight[field.offset + local[:, f], 0] for f, field in enumerate(layout.sparse))
    torch.testing.assert_close(emb.first_order(sparse), first)


def test_padding_row_is_zero_and_stays_zero(layout: TableLayout) -> None:
    torch.manual_seed(0)
    emb = FeatureEmbedding(layout, dim=4)
    assert torch.count_nonzero(emb.table.weight[0]) == 0
    assert torch.count_nonzero(emb.linear_table.weight[0]) == 0
    seq = torch.tensor([[[2, 5, 0, 0]], [[0, 0, 0, 0]]])
    hist = emb.lookup_seq(seq)
    assert hist.shape == (2, 1, 4, 4)
    assert torch.count_nonzero(hist[0, 0, 2:]) == 0 and torch.count_nonzero(hist[1]) == 0
    opt = torch.optim.Adam(emb.parameters(), lr=0.1, weight_decay=0.01)
    sparse = torch.tensor([[1, 5, 11], [0, 6, 12]])  # a missing field encoded as padding in row 2
    for _ in range(3):
        opt.zero_grad()
        loss = emb(sparse).pow(2).sum() + emb.lookup_seq(seq).sum() + emb.first_order(sparse).sum()
        loss.backward()
        opt.step()
    assert torch.count_nonzero(emb.table.weight[0]) == 0
    assert torch.count_nonzero(emb.linear_table.weight[0]) == 0
    assert torch.count_nonzero(emb.table.weight[1]) > 0  # touched rows did train


def test_sparse_grad_gives_sparse_gradients(layout: TableLayout) -> None:
    emb = FeatureEmbedding(layout, dim=2, sparse_grad=True)
    sparse = torch.tensor([[1, 5, 11]])
    (emb(sparse).sum() + emb.first_order(sparse).sum()).backward()
    assert emb.table.weight.grad.is_sparse and emb.linear_table.weight.grad.is_sparse
    touched = emb.table.weight.grad.coalesce().indices()[0]
    assert sorted(touched.tolist()) == [1, 5, 11]
    sparse_params, dense_params = split_sparse_params(emb)
    assert len(sparse_params) == 2 and dense_params == []
    emb.sparse_grad = False
    emb.zero_grad(set_to_none=True)
    emb(sparse).sum().backward()
    assert not emb.table.weight.grad.is_sparse


def test_row_sparse_adam_matches_sparse_adam_on_duplicate_rows(layout: TableLayout) -> None:
    torch.manual_seed(4)
    embs = [FeatureEmbedding(layout, dim=3, sparse_grad=True) for _ in range(2)]
    embs[1].load_state_dict(embs[0].state_dict())
    opts = [torch.optim.SparseAdam(list(embs[0].parameters()), lr=0.05),
            RowSparseAdam(list(embs[1].parameters()), lr=0.05)]
    batches = [torch.tensor([[1, 5, 11], [1, 5, 0], [2, 5, 12]]), torch.tensor([[3, 6, 11], [1, 6, 11]])]
    for step in range(4):
        sparse = batches[step % 2]
        for emb, opt in zip(embs, opts, strict=True):
            opt.zero_grad(set_to_none=True)
            (emb(sparse).pow(2).sum() + emb.first_order(sparse).sum() * (step + 1)).backward()
            opt.step()
    for a, b in zip(embs[0].parameters(), embs[1].parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert torch.count_nonzero(embs[1].table.weight[0]) == 0  # padding never trains
    untouched = torch.tensor([4, 7, 8, 9, 10, 13])
    torch.testing.assert_close(embs[1].table.weight[untouched], embs[0].table.weight[untouched])
    # the state is SparseAdam's: a checkpoint of one loads into the other
    opts[0].load_state_dict(opts[1].state_dict())
    with pytest.raises(CtrzooError, match="sparse gradients"):
        dense = FeatureEmbedding(layout, dim=3)
        dense(batches[0]).sum().backward()
        RowSparseAdam(list(dense.parameters())).step()


def test_dense_embedding_is_value_times_vector() -> None:
    de = DenseEmbedding(n_dense=2, dim=3)
    dense = torch.tensor([[2.0, -1.0]])
    out = de(dense)
    assert out.shape == (1, 2, 3)
    torch.testing.assert_close(out[0, 0], 2.0 * de.weight[0])
    torch.testing.assert_close(out[0, 1], -1.0 * de.weight[1])


# ---------------------------------------------------------------- interactions


def test_fm_equals_sum_of_pairwise_dot_products() -> None:
    torch.manual_seed(1)
    x = torch.randn(3, 4, 5)
    expected = torch.zeros(3)
    for i, j in itertools.combinations(range(4), 2):
        expected += (x[:, i] * x[:, j]).sum(-1)
    out = FactorizationMachine()(x)
    assert out.shape == (3,)
    torch.testing.assert_close(out, expected)


def test_fm_training_gradient_equals_autograd_of_the_formula() -> None:
    torch.manual_seed(3)
    x = torch.randn(4, 6, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, dtype=torch.float64)
    (FactorizationMachine()(x) * weights).sum().backward()
    plain = x.detach().clone().requires_grad_()
    (0.5 * (plain.sum(1).pow(2) - plain.pow(2).sum(1)).sum(-1) * weights).sum().backward()
    torch.testing.assert_close(x.grad, plain.grad)
    assert torch.autograd.gradcheck(FactorizationMachine(), (x.detach().requires_grad_(),))


def test_vector_cross_layers_by_hand() -> None:
    torch.manual_seed(2)
    net = CrossNetwork(4, num_layers=2, form="vector")
    with torch.no_grad():
        net.bias.normal_()
    x0 = torch.randn(3, 4)
    w0, b0, w1, b1 = net.weight[0], net.bias[0], net.weight[1], net.bias[1]
    x1 = torch.stack([x0[r] * torch.dot(x0[r], w0) + b0 + x0[r] for r in range(3)])
    x2 = torch.stack([x0[r] * torch.dot(x1[r], w1) + b1 + x1[r] for r in range(3)])
    torch.testing.assert_close(net(x0), x2)
    one = CrossNetwork(4, num_layers=1)
    torch.testing.assert_close(one(x0), x0 * (x0 @ one.weight[0]).unsqueeze(-1) + one.bias[0] + x0)


def test_matrix_cross_layer_by_hand() -> None:
    torch.manual_seed(3)
    net = CrossNetwork(3, num_layers=1, form="matrix")
    with torch.no_grad():
        net.linears[0].bias.normal_()
    x0 = torch.randn(2, 3)
    W, b = net.linears[0].weight, net.linears[0].bias
    expected = torch.stack([x0[r] * (W @ x0[r] + b) + x0[r] for r in range(2)])
    torch.testing.assert_close(net(x0), expected)
    with pytest.raises(CtrzooError):
        CrossNetwork(3, 1, form="tensor")


# ---------------------------------------------------------------- MLP and Dice


def _dice_formula(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, alpha: torch.Tensor, eps: float):
    p = torch.sigmoid((x - mean) / torch.sqrt(var + eps))
    return p * x + (1 - p) * alpha * x


def test_dice_uses_batch_stats_in_train_and_running_stats_in_eval() -> None:
    torch.manual_seed(4)
    dice = Dice(3)
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.1, -0.5, 0.25]))
    x = torch.randn(8, 3) * 2 + 1
    dice.train()
    out_train = dice(x)
    expected = _dice_formula(x, x.mean(0), x.var(0, unbiased=False), dice.alpha, 1e-8)
    torch.testing.assert_close(out_train, expected)

    dice.eval()
    with torch.no_grad():
        dice.bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        dice.bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
    out_eval = dice(x)
    expected = _dice_formula(x, dice.bn.running_mean, dice.bn.running_var, dice.alpha, 1e-8)
    torch.testing.assert_close(out_eval, expected)
    assert not torch.allclose(out_train, out_eval)


def test_dice_accepts_3d_input_with_stats_over_all_positions() -> None:
    torch.manual_seed(5)
    dice = Dice(2)
    x = torch.randn(3, 4, 2)
    out = dice(x)
    flat = x.reshape(-1, 2)
    expected = _dice_formula(flat, flat.mean(0), flat.var(0, unbiased=False), dice.alpha, 1e-8)
    torch.testing.assert_close(out, expected.reshape(3, 4, 2))


@pytest.mark.parametrize("activation", ["relu", "prelu", "dice"])
def test_mlp_shapes_and_last_dim_semantics(activation: str) -> None:
    torch.manual_seed(6)
    mlp = MLP(5, hidden=(7, 3), dropout=0.1, activation=activation, batch_norm=True).eval()
    assert mlp.out_dim == 3
    x = torch.randn(2, 4, 5)
    out3 = mlp(x)
    assert out3.shape == (2, 4, 3)
    torch.testing.assert_close(out3.reshape(8, 3), mlp(x.reshape(8, 5)))  # same per-row function in eval


def test_mlp_empty_hidden_is_identity_and_bad_activation_raises() -> None:
    x = torch.randn(2, 5)
    mlp = MLP(5, hidden=())
    assert mlp.out_dim == 5
    torch.testing.assert_close(mlp(x), x)
    with pytest.raises(CtrzooError, match="activation"):
        MLP(5, hidden=(3,), activation="swish")


# ---------------------------------------------------------------- sequence layers


def test_sequence_pooling_ignores_padding() -> None:
    keys = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    ids = torch.tensor([[4, 7, 0], [0, 0, 0]])
    mask = padding_mask(ids)
    summed = SequencePooling("sum")(keys, mask)
    torch.testing.assert_close(summed, torch.stack([keys[0, 0] + keys[0, 1], torch.zeros(2)]))
    mean = SequencePooling("mean")(keys, mask)
    torch.testing.assert_close(mean, torch.stack([(keys[0, 0] + keys[0, 1]) / 2, torch.zeros(2)]))


def _attention_inputs():
    torch.manual_seed(7)
    query, keys = torch.randn(3, 4), torch.randn(3, 5, 4)
    ids = torch.tensor([[3, 8, 2, 0, 0], [9, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    return query, keys, padding_mask(ids)


@pytest.mark.parametrize("use_softmax", [False, True])
def test_target_attention_is_weighted_sum_of_real_positions(use_softmax: bool) -> None:
    query, keys, mask = _attention_inputs()
    att = TargetAttention(4, hidden=(6, 3), activation="prelu", use_softmax=use_softmax).eval()
    scores = att.scores(query, keys)
    out = att(query, keys, mask)
    assert out.shape == (3, 4)
    for r in range(2):
        real = mask[r].nonzero().flatten()
        w = torch.softmax(scores[r, real], 0) if use_softmax else scores[r, real]
        torch.testing.assert_close(out[r], (w.unsqueeze(-1) * keys[r, real]).sum(0))
    torch.testing.assert_close(out[2], torch.zeros(4))  # all-padding history


@pytest.mark.parametrize(("activation", "train"), [("dice", False), ("prelu", True), ("sigmoid", True)])
@pytest.mark.parametrize("use_softmax", [False, True])
def test_target_attention_ignores_padded_positions(activation: str, train: bool, use_softmax: bool) -> None:
    query, keys, mask = _attention_inputs()
    att = TargetAttention(4, hidden=(6,), activation=activation, use_softmax=use_softmax).train(train)
    out = att(query, keys, mask)
    changed = torch.where(mask.unsqueeze(-1), keys, torch.randn_like(keys) * 100)
    torch.testing.assert_close(att(query, changed, mask), out)
    w = att.weights(query, changed, mask)
    assert torch.count_nonzero(w[~mask]) == 0


@pytest.mark.parametrize("use_softmax", [False, True])
def test_target_attention_all_padding_is_zero_and_nan_free(use_softmax: bool) -> None:
    att = TargetAttention(4, hidden=(6,), activation="dice", use_softmax=use_softmax)
    query = torch.randn(2, 4, requires_grad=True)
    keys = torch.randn(2, 3, 4, requires_grad=True)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    out = att(query, keys, mask)
    torch.testing.assert_close(out, torch.zeros(2, 4))
    out.sum().backward()
    grads = [query.grad, keys.grad] + [p.grad for p in att.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("activation", ["prelu", "sigmoid"])
def test_packed_attention_scores_equal_masked_full_scores(activation):
    """Training scores only the real positions; without batch statistics that must change nothing."""
    from ctrzoo.nn import TargetAttention

    torch.manual_seed(0)
    att = TargetAttention(6, (8, 4), activation)
    q, k = torch.randn(5, 6), torch.randn(5, 7, 6)
    mask = torch.rand(5, 7) > 0.4
    mask[0] = False  # an all-padding row
    full = torch.where(mask, att.scores(q, k), torch.zeros(5, 7))
    packed = att.packed_scores(q, k, mask)
    torch.testing.assert_close(packed, full)
    att.train()
    out_train = att(q, k, mask)
    att.eval()
    torch.testing.assert_close(out_train, att(q, k, mask))


def test_touched_rows_are_the_distinct_non_padding_ids_of_every_input(layout: TableLayout) -> None:
    sparse = torch.tensor([[3, 7], [3, 0]])
    seq = torch.tensor([[[7, 9, 0]], [[0, 0, 0]]])
    assert FeatureEmbedding.touched_rows(sparse, seq).tolist() == [3, 7, 9]


def test_embedding_without_first_order_has_one_table_and_refuses_the_linear_term(layout: TableLayout) -> None:
    emb = FeatureEmbedding(layout, dim=4, sparse_grad=True, first_order=False)
    assert [n for n, _ in emb.named_parameters()] == ["table.weight"]
    assert emb(torch.tensor([[1, 2]])).shape == (1, 2, 4)
    with pytest.raises(RuntimeError, match="first_order=False"):
        emb.first_order(torch.tensor([[1, 2]]))
