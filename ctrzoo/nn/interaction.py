"""Explicit feature-interaction layers: FM's pairwise term, DCN's cross networks (full rank and DCN-V2's
low-rank mixture), xDeepFM's CIN, FiBiNET's bilinear interaction, DLRM's dot interaction and FinalMLP's
bilinear fusion of two streams."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctrzoo.errors import CtrzooError


class FactorizationMachine(nn.Module):
    """Second-order FM term: ``[B, F, D] -> [B]``, the sum of ``<v_i, v_j>`` over field pairs ``i < j``.

    Uses Rendle's identity ``0.5 * (||sum_f v_f||^2 - sum_f ||v_f||^2)``: O(F * D) instead of O(F^2 * D).
    While training, a hand-written backward (``d/dv_f = sum_g v_g - v_f``) replaces autograd's chain of
    pow/sum/mul kernels: about 3x less memory traffic over the ``[B, F, D]`` fields per step.
    """

    def forward(self, fields: Tensor) -> Tensor:
        if fields.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing():
            return _FMTerm.apply(fields)
        square_of_sum = fields.sum(dim=1).pow(2)
        sum_of_square = fields.pow(2).sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_square).sum(dim=-1)


class _FMTerm(torch.autograd.Function):
    """FM's pairwise term with its gradient in one expression: ``grad_v_f = g * (sum_g v_g - v_f)``."""

    @staticmethod
    def forward(ctx, fields: Tensor) -> Tensor:
        total = fields.sum(dim=1)  # [B, D]
        ctx.save_for_backward(fields, total)
        sum_of_square = torch.linalg.vector_norm(fields.flatten(1), dim=1).square()  # one pass, no temporary
        return 0.5 * (total.square().sum(dim=1) - sum_of_square)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        fields, total = ctx.saved_tensors
        return (total.unsqueeze(1) - fields).mul_(grad.view(-1, 1, 1))


class CrossNetwork(nn.Module):
    """DCN cross layers on ``x0 [B, in_dim]`` -> ``[B, in_dim]``; each layer adds one interaction degree.

    * ``form="vector"`` (DCN, Wang et al. 2017): ``x_{l+1} = x0 * (x_l . w_l) + b_l + x_l``; the weight of
      layer ``l`` is ``weight[l]`` and its bias ``bias[l]`` (both ``[in_dim]``), O(in_dim) parameters.
    * ``form="matrix"`` (DCN-V2, Wang et al. 2021): ``x_{l+1} = x0 * (W_l x_l + b_l) + x_l`` with
      ``W_l, b_l = linears[l].weight, linears[l].bias``; more expressive, O(in_dim^2) parameters.
    """

    def __init__(self, in_dim: int, num_layers: int, form: str = "vector") -> None:
        super().__init__()
        if form not in ("vector", "matrix"):
            raise CtrzooError(f"unknown cross network form {form!r}; expected 'vector' or 'matrix'")
        self.form = form
        self.num_layers = num_layers
        if form == "vector":
            # Glorot-normal of a [in_dim, 1] kernel, as in the paper's reference code.
            self.weight = nn.Parameter(torch.randn(num_layers, in_dim) * math.sqrt(2.0 / (in_dim + 1)))
            self.bias = nn.Parameter(torch.zeros(num_layers, in_dim))
        else:
            self.linears = nn.ModuleList(nn.Linear(in_dim, in_dim) for _ in range(num_layers))
            for linear in self.linears:
                nn.init.zeros_(linear.bias)

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for layer in range(self.num_layers):
            if self.form == "vector":
                # x_l . w_l as a multiply and a row sum, not a matrix-vector product: onnxruntime runs a
                # MatMul with a 1-d operand as a GEMM of width 1, 70 us a layer at batch 100 instead of ~5
                x = x0 * (x * self.weight[layer]).sum(dim=-1, keepdim=True) + self.bias[layer] + x
            else:
                x = x0 * self.linears[layer](x) + x
        return x


class CrossNetworkMix(nn.Module):
    """DCN-V2's low-rank mixture of cross experts on ``x0 [B, in_dim]`` -> ``[B, in_dim]`` (Wang et al. 2021).

    Layer ``l``: ``E_e(x_l) = x0 * (U_e tanh(C_e tanh(V_e^T x_l)) + b_l)`` per expert ``e``
    (``V_e, U_e [in_dim, rank]``, ``C_e [rank, rank]``) and
    ``x_{l+1} = sum_e softmax_e(g_e . x_l) E_e(x_l) + x_l``: each expert projects to a ``rank``-dim subspace,
    so a layer costs O(in_dim * rank * experts) instead of the full-rank layer's O(in_dim^2). One expert is a
    single (nonlinear) low-rank cross layer (its gate is 1).
    """

    def __init__(self, in_dim: int, num_layers: int, rank: int, num_experts: int = 4) -> None:
        super().__init__()
        if rank <= 0 or num_experts <= 0:
            raise CtrzooError(f"low-rank cross layers need rank > 0 and experts > 0, got {rank} and {num_experts}")
        self.num_layers = num_layers
        self.down = nn.Parameter(torch.empty(num_layers, num_experts, in_dim, rank))  # V
        self.mid = nn.Parameter(torch.empty(num_layers, num_experts, rank, rank))  # C
        self.up = nn.Parameter(torch.empty(num_layers, num_experts, rank, in_dim))  # U^T
        self.bias = nn.Parameter(torch.zeros(num_layers, in_dim))
        self.gate = nn.Parameter(torch.empty(num_layers, in_dim, num_experts))
        for w in (self.down, self.mid, self.up, self.gate):
            xavier_per_matrix(w)

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for layer in range(self.num_layers):
            down = self.down[layer]  # [E, in, rank]: every expert's projection in one matmul
            v = torch.tanh(x @ down.transpose(0, 1).flatten(1)).unflatten(1, (down.shape[0], -1))  # [B, E, rank]
            v = torch.tanh(_per_slot_matmul(v, self.mid[layer]))
            experts = x0.unsqueeze(1) * (_per_slot_matmul(v, self.up[layer]) + self.bias[layer])  # [B, E, in]
            gate = torch.softmax(x @ self.gate[layer], dim=-1)  # [B, E]
            x = (gate.unsqueeze(-1) * experts).sum(dim=1) + x
        return x


class CIN(nn.Module):
    """xDeepFM's compressed interaction network: fields ``[B, m, D]`` -> ``[B, out_dim]`` (Lian et al. 2018).

    ``X^k[h] = sum_{i, j} W^{k,h}_{i,j} (X^{k-1}[i] * X^0[j]) + b^{k,h}`` (``*`` elementwise over ``D``, a
    1x1 convolution over the ``H_{k-1} * m`` outer products): layer ``k`` holds explicit vector-wise
    interactions of degree ``k + 1``. Each layer's maps are sum-pooled over ``D`` and concatenated. With
    ``split_half`` (the paper's default) every layer but the last feeds half of its maps to the next layer and
    outputs the other half, so ``out_dim = sum(h // 2 for h in layers[:-1]) + layers[-1]``.
    """

    def __init__(self, num_fields: int, layers: Sequence[int] = (64, 64), split_half: bool = True) -> None:
        super().__init__()
        if not layers or any(int(h) <= 0 for h in layers):
            raise CtrzooError(f"CIN layer sizes must be positive (and at least one), got {list(layers)}")
        if split_half and any(int(h) % 2 for h in layers[:-1]):
            raise CtrzooError(f"CIN with split_half needs even sizes for all but the last layer, got {list(layers)}")
        self.split_half = split_half
        self.convs = nn.ModuleList()
        prev, self.out_dim = num_fields, 0
        for k, size in enumerate(int(h) for h in layers):
            self.convs.append(nn.Conv1d(prev * num_fields, size, kernel_size=1))
            last = k == len(layers) - 1
            prev = size // 2 if split_half and not last else size
            self.out_dim += size // 2 if split_half and not last else size

    def forward(self, x0: Tensor) -> Tensor:
        x, pooled = x0, []
        for k, conv in enumerate(self.convs):
            outer = (x.unsqueeze(2) * x0.unsqueeze(1)).flatten(1, 2)  # [B, H_{k-1} * m, D]
            h = conv(outer)  # [B, H_k, D]
            if self.split_half and k < len(self.convs) - 1:
                x, direct = h.chunk(2, dim=1)
            else:
                x = direct = h
            pooled.append(direct.sum(dim=-1))
        return torch.cat(pooled, dim=1)


BILINEAR_KINDS = ("field_all", "field_each", "field_interaction")


class BilinearInteraction(nn.Module):
    """FiBiNET's bilinear interaction: fields ``[B, F, D]`` -> ``[B, F(F-1)/2, D]`` (Huang et al. 2019).

    ``p_ij = (v_i W) * v_j`` for each field pair ``i < j`` (row-major order), with ``W [D, D]`` shared by all
    pairs (``field_all``), one per left field ``W_i`` (``field_each``) or one per pair ``W_ij``
    (``field_interaction``): a learned metric between fields instead of FM's plain inner product.
    """

    def __init__(self, num_fields: int, dim: int, kind: str = "field_interaction") -> None:
        super().__init__()
        if kind not in BILINEAR_KINDS:
            raise CtrzooError(f"unknown bilinear type {kind!r}; expected one of {', '.join(BILINEAR_KINDS)}")
        if num_fields < 2:
            raise CtrzooError(f"a bilinear interaction needs at least 2 fields, got {num_fields}")
        self.kind = kind
        left, right = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("left", left, persistent=False)
        self.register_buffer("right", right, persistent=False)
        n = {"field_all": 1, "field_each": num_fields, "field_interaction": left.numel()}[kind]
        self.weight = xavier_per_matrix(nn.Parameter(torch.empty(n, dim, dim)))

    def forward(self, fields: Tensor) -> Tensor:
        right = fields.index_select(1, self.right)
        if self.kind == "field_all":
            return torch.matmul(fields.index_select(1, self.left), self.weight[0]) * right
        if self.kind == "field_each":  # transform each field once, then pick the left side of every pair
            return _per_slot_matmul(fields, self.weight).index_select(1, self.left) * right
        return _per_slot_matmul(fields.index_select(1, self.left), self.weight) * right


def _per_slot_matmul(x: Tensor, weight: Tensor) -> Tensor:
    """``out[b, p] = x[b, p] @ weight[p]``: ``x [B, P, D]``, ``weight [P, D, E]`` -> ``[B, P, E]``, as one bmm
    batched over the slots (field pairs, heads, experts). ``matmul(x.unsqueeze(2), weight)`` would broadcast
    the weight to ``[B, P, D, E]`` and copy it, forward and backward: 0.8 GB per call for Criteo's 741 field
    pairs at batch 1024; it made FiBiNET and FinalMLP train 10-60x slower than their arithmetic."""
    return torch.bmm(x.transpose(0, 1), weight).transpose(0, 1)


class DotInteraction(nn.Module):
    """DLRM's dot interaction: vectors ``[B, N, D]`` -> ``[B, N(N-1)/2]``, ``<v_i, v_j>`` for ``i < j``.

    One batched ``V V^T`` and a gather of its strict upper triangle (row-major pair order); no
    self-interactions, as in the DLRM reference.
    """

    def __init__(self, num_vectors: int) -> None:
        super().__init__()
        if num_vectors < 2:
            raise CtrzooError(f"a dot interaction needs at least 2 vectors, got {num_vectors}")
        i, j = torch.triu_indices(num_vectors, num_vectors, offset=1)
        self.register_buffer("index", i * num_vectors + j, persistent=False)
        self.out_dim = int(i.numel())

    def forward(self, vectors: Tensor) -> Tensor:
        gram = torch.matmul(vectors, vectors.transpose(1, 2))  # [B, N, N]
        return gram.flatten(1).index_select(1, self.index)


class BilinearFusion(nn.Module):
    """FinalMLP's multi-head bilinear fusion of two stream outputs ``o1 [B, d1]``, ``o2 [B, d2]`` -> logit ``[B]``.

    ``y = b + w1 . o1 + w2 . o2 + sum_h o1_h^T W_h o2_h`` where ``o1_h, o2_h`` are the ``h``-th of ``num_heads``
    equal chunks (``W_h [d1/H, d2/H]``): second-order interactions between the streams at ``1/H`` of a full
    bilinear layer's parameters (Mao et al. 2023).
    """

    def __init__(self, dim1: int, dim2: int, num_heads: int = 1) -> None:
        super().__init__()
        if num_heads <= 0 or dim1 % num_heads or dim2 % num_heads:
            raise CtrzooError(f"fusion heads ({num_heads}) must divide both stream widths ({dim1} and {dim2})")
        self.num_heads = num_heads
        self.linear1 = nn.Linear(dim1, 1)
        self.linear2 = nn.Linear(dim2, 1, bias=False)
        self.weight = xavier_per_matrix(nn.Parameter(torch.empty(num_heads, dim1 // num_heads, dim2 // num_heads)))

    def forward(self, o1: Tensor, o2: Tensor) -> Tensor:
        h1 = o1.unflatten(-1, (self.num_heads, -1))  # [B, H, d1/H]
        h2 = o2.unflatten(-1, (self.num_heads, -1))  # [B, H, d2/H]
        bilinear = (_per_slot_matmul(h1, self.weight) * h2).sum(dim=(1, 2))
        return (self.linear1(o1) + self.linear2(o2)).squeeze(-1) + bilinear


def xavier_per_matrix(weight: Tensor) -> Tensor:
    """Glorot-normal init of a stack ``[..., a, b]`` of matrices, each by its own fans ``a`` and ``b`` (in place)."""
    with torch.no_grad():
        return weight.normal_(0.0, math.sqrt(2.0 / (weight.shape[-2] + weight.shape[-1])))
