"""Multiplicative gates over embeddings: FiBiNET's SENET, FinalMLP's feature selection, MaskNet's masks.

Each layer computes weights from (part of) the row and multiplies them into a representation, so the model
learns which fields or embedding dimensions matter for this row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctrzoo.nn.mlp import MLP


class SENet(nn.Module):
    """FiBiNET's squeeze-excitation over fields: ``[B, F, D]`` -> ``[B, F, D]`` (Huang et al. 2019).

    Squeeze: ``z = mean_D(E)`` ``[B, F]``; excitation: ``a = ReLU(W2 ReLU(W1 z))`` with
    ``W1 [F -> max(1, F // reduction_ratio)]``, ``W2 [-> F]`` (no biases); re-weight: ``a[:, f] * E[:, f]``,
    which can switch uninformative fields off for this row.
    """

    def __init__(self, num_fields: int, reduction_ratio: float = 3.0) -> None:
        super().__init__()
        hidden = max(1, int(num_fields // reduction_ratio))
        self.squeeze = nn.Linear(num_fields, hidden, bias=False)
        self.excite = nn.Linear(hidden, num_fields, bias=False)

    def weights(self, fields: Tensor) -> Tensor:
        """The field weights ``a [B, F]``."""
        return torch.relu(self.excite(torch.relu(self.squeeze(fields.mean(dim=-1)))))

    def forward(self, fields: Tensor) -> Tensor:
        return self.weights(fields).unsqueeze(-1) * fields


class FeatureGate(nn.Module):
    """FinalMLP's feature selection: ``fields [B, F, D]`` -> gated flat input ``[B, F * D]`` (Mao et al. 2023).

    ``gate = 2 * sigmoid(Linear(MLP(context)))`` ``[B, F * D]`` multiplies ``flatten(fields)``; ``context`` is the
    embeddings of the fields at ``context`` (indices into ``F``), concatenated, or, with none, a learned
    vector of size ``D`` (then the gate is a learned per-feature weight, the same for every row). The gate's
    output layer starts at zero, i.e. every gate at 1.
    """

    def __init__(self, num_fields: int, dim: int, context: Sequence[int] = (), hidden: Sequence[int] = (64,)) -> None:
        super().__init__()
        self.register_buffer("context", torch.tensor(list(context), dtype=torch.long), persistent=False)
        self.context_bias = nn.Parameter(torch.zeros(dim)) if not context else None
        self.mlp = MLP(dim * max(1, len(context)), hidden)
        self.out = nn.Linear(self.mlp.out_dim, num_fields * dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def gate(self, fields: Tensor) -> Tensor:
        """The gate ``[B, F * D]``, values in ``(0, 2)``."""
        if self.context_bias is not None:
            ctx = self.context_bias.expand(fields.shape[0], -1)
        else:
            ctx = fields.index_select(1, self.context).flatten(1)
        return 2.0 * torch.sigmoid(self.out(self.mlp(ctx)))

    def forward(self, fields: Tensor) -> Tensor:
        return self.gate(fields) * fields.flatten(1)


class InstanceMask(nn.Module):
    """MaskNet's instance-guided mask: ``v_emb [B, in_dim]`` -> ``[B, out_dim]`` (Wang et al. 2021).

    ``mask = W2 ReLU(W1 v_emb + b1) + b2``, the aggregation layer ``W1`` of width
    ``max(1, int(out_dim * reduction_ratio))``: weights computed from the whole row that a MaskBlock multiplies
    into its hidden input, dimension by dimension.
    """

    def __init__(self, in_dim: int, out_dim: int, reduction_ratio: float = 1.0) -> None:
        super().__init__()
        hidden = max(1, int(out_dim * reduction_ratio))
        self.aggregate = nn.Linear(in_dim, hidden)
        self.project = nn.Linear(hidden, out_dim)

    def forward(self, v_emb: Tensor) -> Tensor:
        return self.project(torch.relu(self.aggregate(v_emb)))


class MaskBlock(nn.Module):
    """MaskNet's block: ``(v_emb [B, in_dim], hidden [B, hidden_dim])`` -> ``[B, out_dim]``.

    ``ReLU(LayerNorm(W (mask(v_emb) * hidden)))`` (``W`` without bias, the layer norm supplies it): the
    instance-guided mask turns the feed-forward layer's additive interactions into multiplicative ones.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, reduction_ratio: float = 1.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.mask = InstanceMask(in_dim, hidden_dim, reduction_ratio)
        self.linear = nn.Linear(hidden_dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, v_emb: Tensor, hidden: Tensor) -> Tensor:
        return self.dropout(torch.relu(self.norm(self.linear(self.mask(v_emb) * hidden))))
