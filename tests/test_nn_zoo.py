"""The model zoo's layers against hand computations (numpy loops over fields, pairs, heads) on tiny inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ctrzoo.errors import CtrzooError
from ctrzoo.features.layout import TableLayout
from ctrzoo.nn import (
    CIN,
    BilinearFusion,
    BilinearInteraction,
    CrossNetworkMix,
    DotInteraction,
    FeatureEmbedding,
    FeatureGate,
    FieldSelfAttention,
    InstanceMask,
    LinearLogit,
    MaskBlock,
    SENet,
)
from ctrzoo.threads import torch_threads


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and two threads spin-waiting on a shared 2-core machine
    made these tests ~50x slower."""
    with torch_threads(1):
        yield


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter drawn from N(0, 0.5): no zero-initialized bias or gate hides a term of the formula."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


def _close(got: torch.Tensor, want: np.ndarray) -> None:
    np.testing.assert_allclose(_np(got), want, rtol=1e-5, atol=1e-5)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------- field embeddings


def test_fields_are_categorical_then_pooled_lists_then_dense_fields() -> None:
    layout = TableLayout.from_sizes({"a": 4, "b": 3}, dense=("x", "y"), seq={"h": ("a", 3)})
    torch.manual_seed(0)
    emb = FeatureEmbedding(layout, 3, dense_fields=True)
    torch.nn.init.normal_(emb.linear_table.weight)
    sparse, dense = torch.tensor([[2, 6], [1, 5]]), torch.tensor([[0.5, -2.0], [1.0, 3.0]])
    seq = torch.tensor([[[2, 3, 0]], [[0, 0, 0]]])  # a history of two items; an empty one
    fields = emb.fields(sparse, dense, seq)
    assert emb.num_fields == 5 and fields.shape == (2, 5, 3)
    torch.testing.assert_close(fields[:, :2], emb.table.weight[sparse])
    torch.testing.assert_close(fields[0, 2], (emb.table.weight[2] + emb.table.weight[3]) / 2)  # mean pooling
    torch.testing.assert_close(fields[1, 2], torch.zeros(3))
    torch.testing.assert_close(fields[:, 3], dense[:, :1] * emb.dense.weight[0])
    torch.testing.assert_close(fields[:, 4], dense[:, 1:] * emb.dense.weight[1])
    both, first = emb.fields_and_first_order(sparse, dense, seq)
    torch.testing.assert_close(both, fields)
    torch.testing.assert_close(first, emb.first_order(sparse))
    emb.sparse_grad = True  # the deduplicated training lookup gives the same values
    with torch.enable_grad():
        deduped, first_dedup = emb.fields_and_first_order(sparse, dense, seq)
    torch.testing.assert_close(deduped, fields)
    torch.testing.assert_close(first_dedup, first)

    plain = FeatureEmbedding(layout, 3)  # the default keeps dense features out of the fields
    assert plain.dense is None and plain.num_fields == 3  # 2 categorical + the pooled history
    assert plain.fields(sparse, dense, seq).shape == (2, 3, 3)
    assert [n for n, _ in plain.named_parameters()] == ["table.weight", "linear_table.weight"]
    no_lists = FeatureEmbedding(layout, 3, list_fields=False)
    assert no_lists.num_fields == 2 and no_lists.fields(sparse, dense, seq).shape == (2, 2, 3)


def test_linear_logit_is_bias_plus_first_order_plus_dense_weights() -> None:
    lin = _randomize(LinearLogit(2), 1)
    first, dense = torch.tensor([0.5, -1.0]), torch.tensor([[1.0, 2.0], [-3.0, 0.5]])
    w, b = _np(lin.dense_linear.weight)[0], _np(lin.bias)[0]
    _close(lin(first, dense), _np(first) + b + _np(dense) @ w)
    no_dense = LinearLogit(0)
    assert no_dense.dense_linear is None
    torch.testing.assert_close(no_dense(first, torch.zeros(2, 0)), first)  # bias starts at 0


# ---------------------------------------------------------------- DCN-V2 low-rank mixture


@pytest.mark.parametrize("experts", [1, 3])
def test_cross_network_mix_by_hand(experts: int) -> None:
    torch.manual_seed(2)
    net = _randomize(CrossNetworkMix(in_dim=4, num_layers=2, rank=2, num_experts=experts), 3)
    x0 = torch.randn(3, 4)
    V, C, U, b, G = (_np(p) for p in (net.down, net.mid, net.up, net.bias, net.gate))
    want = []
    for row in _np(x0):
        x = row
        for layer in range(2):
            outs = [row * (np.tanh(np.tanh(x @ V[layer, e]) @ C[layer, e]) @ U[layer, e] + b[layer])
                    for e in range(experts)]
            logits = x @ G[layer]
            gate = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            x = sum(gate[e] * outs[e] for e in range(experts)) + x
        want.append(x)
    _close(net(x0), np.stack(want))
    with pytest.raises(CtrzooError, match="rank > 0"):
        CrossNetworkMix(4, 1, rank=0)


# ---------------------------------------------------------------- xDeepFM's CIN


@pytest.mark.parametrize("split_half", [True, False])
def test_cin_by_hand(split_half: bool) -> None:
    torch.manual_seed(4)
    m, d, sizes = 3, 2, (4, 3)
    cin = _randomize(CIN(m, sizes, split_half=split_half), 5)
    x0 = torch.randn(2, m, d)
    X0 = _np(x0)
    want = []
    for r in range(2):
        x, pooled = X0[r], []
        for k, conv in enumerate(cin.convs):
            W, bias = _np(conv.weight)[:, :, 0], _np(conv.bias)  # [H_k, H_{k-1} * m]
            h = np.zeros((sizes[k], d))
            for o in range(sizes[k]):
                for i in range(x.shape[0]):
                    for j in range(m):
                        h[o] += W[o, i * m + j] * x[i] * X0[r, j]
                h[o] += bias[o]
            if split_half and k < len(sizes) - 1:
                x, direct = h[: sizes[k] // 2], h[sizes[k] // 2:]
            else:
                x = direct = h
            pooled.append(direct.sum(axis=1))
        want.append(np.concatenate(pooled))
    assert cin.out_dim == want[0].size == (4 // 2 + 3 if split_half else 4 + 3)
    _close(cin(x0), np.stack(want))
    with pytest.raises(CtrzooError, match="even sizes"):
        CIN(3, (3, 2), split_half=True)


# ---------------------------------------------------------------- AutoInt's field self-attention


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("residual", [False, True])
def test_field_self_attention_one_head_by_hand(residual: bool) -> None:
    torch.manual_seed(6)
    att = _randomize(FieldSelfAttention(in_dim=3, out_dim=4, num_heads=1, residual=residual), 7)
    x = torch.randn(2, 5, 3)
    Wq, Wk, Wv = (_np(lin.weight).T for lin in (att.query, att.key, att.value))
    want = []
    for X in _np(x):
        Q, K, V = X @ Wq, X @ Wk, X @ Wv  # [F, d]
        A = _softmax(Q @ K.T / math.sqrt(4))
        out = A @ V + (X @ _np(att.residual.weight).T if residual else 0.0)
        want.append(_relu(out))
    _close(att(x), np.stack(want))
    _close(att.attention(x)[:, 0].sum(-1), np.ones((2, 5)))


def test_field_self_attention_heads_are_independent_attentions_concatenated() -> None:
    torch.manual_seed(8)
    att = _randomize(FieldSelfAttention(in_dim=3, out_dim=4, num_heads=2, residual=False), 9)
    x = torch.randn(2, 4, 3)
    want = []
    for X in _np(x):
        heads = []
        for h in range(2):
            cols = slice(2 * h, 2 * h + 2)
            Q, K, V = (X @ _np(lin.weight).T[:, cols] for lin in (att.query, att.key, att.value))
            heads.append(_softmax(Q @ K.T / math.sqrt(2)) @ V)
        want.append(_relu(np.concatenate(heads, axis=1)))
    _close(att(x), np.stack(want))
    with pytest.raises(CtrzooError, match="must divide"):
        FieldSelfAttention(3, 5, num_heads=2)


# ---------------------------------------------------------------- FiBiNET: SENET and bilinear interaction


def test_senet_weights_by_hand() -> None:
    torch.manual_seed(10)
    se = _randomize(SENet(num_fields=6, reduction_ratio=3), 11)
    assert se.squeeze.out_features == 2
    e = torch.randn(2, 6, 4)
    W1, W2 = _np(se.squeeze.weight), _np(se.excite.weight)
    z = _np(e).mean(axis=2)  # [B, F]
    a = _relu(_relu(z @ W1.T) @ W2.T)
    _close(se.weights(e), a)
    _close(se(e), a[:, :, None] * _np(e))
    assert SENet(num_fields=2, reduction_ratio=3).squeeze.out_features == 1


@pytest.mark.parametrize("kind", ["field_all", "field_each", "field_interaction"])
def test_bilinear_interaction_by_hand(kind: str) -> None:
    torch.manual_seed(12)
    f, d = 4, 3
    bi = _randomize(BilinearInteraction(f, d, kind), 13)
    e = torch.randn(2, f, d)
    W = _np(bi.weight)
    want = []
    for E in _np(e):
        rows = []
        for p, (i, j) in enumerate(itertools.combinations(range(f), 2)):
            w = W[{"field_all": 0, "field_each": i, "field_interaction": p}[kind]]
            rows.append((E[i] @ w) * E[j])
        want.append(np.stack(rows))
    assert bi.weight.shape[0] == {"field_all": 1, "field_each": f, "field_interaction": 6}[kind]
    _close(bi(e), np.stack(want))


def test_bilinear_interaction_refuses_bad_settings() -> None:
    with pytest.raises(CtrzooError, match="unknown bilinear type 'field_pair'"):
        BilinearInteraction(3, 2, "field_pair")
    with pytest.raises(CtrzooError, match="at least 2 fields"):
        BilinearInteraction(1, 2)


# ---------------------------------------------------------------- FinalMLP: feature gating and fusion


def test_feature_gate_with_context_fields_by_hand() -> None:
    torch.manual_seed(14)
    gate = _randomize(FeatureGate(num_fields=3, dim=2, context=(2, 0), hidden=(5,)), 15)
    e = torch.randn(4, 3, 2)
    E = _np(e)
    lin1, lin2 = gate.mlp.layers[0], gate.out
    ctx = np.concatenate([E[:, 2], E[:, 0]], axis=1)  # the context fields in the order given
    g = 2 * _sigmoid(_relu(ctx @ _np(lin1.weight).T + _np(lin1.bias)) @ _np(lin2.weight).T + _np(lin2.bias))
    _close(gate.gate(e), g)
    _close(gate(e), g * E.reshape(4, 6))


def test_feature_gate_without_context_is_one_learned_weight_per_feature() -> None:
    fresh = FeatureGate(num_fields=3, dim=2)
    e = torch.randn(4, 3, 2)
    torch.testing.assert_close(fresh(e), e.flatten(1))  # the output layer starts at zero: every gate is 1
    gate = _randomize(FeatureGate(num_fields=3, dim=2, hidden=(5,)), 16)
    g = gate.gate(e)
    torch.testing.assert_close(g, g[:1].expand(4, -1))  # the same for every row
    lin1, lin2 = gate.mlp.layers[0], gate.out
    ctx = _np(gate.context_bias)
    want = 2 * _sigmoid(_relu(ctx @ _np(lin1.weight).T + _np(lin1.bias)) @ _np(lin2.weight).T + _np(lin2.bias))
    _close(g[0], want)


@pytest.mark.parametrize("heads", [1, 2])
def test_bilinear_fusion_by_hand(heads: int) -> None:
    torch.manual_seed(17)
    fusion = _randomize(BilinearFusion(dim1=4, dim2=6, num_heads=heads), 18)
    o1, o2 = torch.randn(3, 4), torch.randn(3, 6)
    O1, O2, W = _np(o1), _np(o2), _np(fusion.weight)
    a, c = 4 // heads, 6 // heads
    want = (O1 @ _np(fusion.linear1.weight)[0] + _np(fusion.linear1.bias)[0] + O2 @ _np(fusion.linear2.weight)[0])
    for h in range(heads):
        want = want + np.einsum("bi,ij,bj->b", O1[:, h * a:(h + 1) * a], W[h], O2[:, h * c:(h + 1) * c])
    _close(fusion(o1, o2), want)
    with pytest.raises(CtrzooError, match="must divide both"):
        BilinearFusion(4, 6, num_heads=4)


# ---------------------------------------------------------------- MaskNet


def test_instance_mask_and_mask_block_by_hand() -> None:
    torch.manual_seed(19)
    block = _randomize(MaskBlock(in_dim=6, hidden_dim=4, out_dim=3, reduction_ratio=2.0), 20)
    assert isinstance(block.mask, InstanceMask) and block.mask.aggregate.out_features == 8
    v_emb, hidden = torch.randn(5, 6), torch.randn(5, 4)
    agg, proj = block.mask.aggregate, block.mask.project
    mask = _relu(_np(v_emb) @ _np(agg.weight).T + _np(agg.bias)) @ _np(proj.weight).T + _np(proj.bias)
    _close(block.mask(v_emb), mask)
    z = (mask * _np(hidden)) @ _np(block.linear.weight).T
    normed = (z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + block.norm.eps)
    _close(block(v_emb, hidden), _relu(normed * _np(block.norm.weight) + _np(block.norm.bias)))


# ---------------------------------------------------------------- DLRM


def test_dot_interaction_by_hand() -> None:
    torch.manual_seed(21)
    dot = DotInteraction(num_vectors=4)
    v = torch.randn(3, 4, 5)
    V = _np(v)
    want = np.stack([[V[b, i] @ V[b, j] for i, j in itertools.combinations(range(4), 2)] for b in range(3)])
    assert dot.out_dim == 6
    _close(dot(v), want)
    with pytest.raises(CtrzooError, match="at least 2 vectors"):
        DotInteraction(1)
