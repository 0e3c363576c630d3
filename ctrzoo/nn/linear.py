"""The logistic-regression term that LR, FM, xDeepFM and FiBiNET add to their logit."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LinearLogit(nn.Module):
    """``logit [B] = bias + sum_f w[id_f] + w_dense . dense``.

    The per-id weights live in ``FeatureEmbedding``'s first-order table (so sparse optimizers update only the
    ids a batch touched) and arrive summed as ``first_order [B]``; this module owns the dense weights and the
    bias, both starting at zero (a plain logistic-regression start).
    """

    def __init__(self, n_dense: int) -> None:
        super().__init__()
        self.dense_linear = nn.Linear(n_dense, 1, bias=False) if n_dense else None
        if self.dense_linear is not None:
            nn.init.zeros_(self.dense_linear.weight)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, first_order: Tensor, dense: Tensor) -> Tensor:
        logit = first_order + self.bias
        if self.dense_linear is not None:
            logit = logit + self.dense_linear(dense).squeeze(-1)
        return logit
