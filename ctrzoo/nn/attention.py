"""Self-attention over a row's fields (AutoInt's interacting layer)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ctrzoo.errors import CtrzooError


class FieldSelfAttention(nn.Module):
    """Multi-head self-attention across fields: ``[B, F, in_dim]`` -> ``[B, F, out_dim]`` (Song et al. 2019).

    Per head ``h`` (``d = out_dim / num_heads``): ``Q = X W_Q^h``, ``K = X W_K^h``, ``V = X W_V^h`` (``[B, F, d]``)
    and ``A = softmax(Q K^T / sqrt(d))`` (``[B, F, F]``, how much field ``i`` attends to field ``j``); the
    output is ``ReLU(concat_h(A V) + X W_res)``, the residual projection only with ``residual=True``.
    Every field thus becomes a learned combination of the fields it interacts with; stacking layers builds
    higher-order interactions. The ``1 / sqrt(d)`` scaling (not in the paper) keeps the softmax out of
    saturation as ``d`` grows.
    """

    def __init__(self, in_dim: int, out_dim: int, num_heads: int = 2, residual: bool = True) -> None:
        super().__init__()
        if num_heads <= 0 or out_dim % num_heads:
            raise CtrzooError(f"attention heads ({num_heads}) must divide the attention size ({out_dim})")
        self.num_heads = num_heads
        self.query = nn.Linear(in_dim, out_dim, bias=False)
        self.key = nn.Linear(in_dim, out_dim, bias=False)
        self.value = nn.Linear(in_dim, out_dim, bias=False)
        self.residual = nn.Linear(in_dim, out_dim, bias=False) if residual else None

    def attention(self, x: Tensor) -> Tensor:
        """The attention weights ``[B, heads, F, F]`` (each row sums to 1)."""
        q, k = self._heads(self.query(x)), self._heads(self.key(x))
        return torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1]), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.matmul(self.attention(x), self._heads(self.value(x)))  # [B, H, F, d]
        out = out.transpose(1, 2).flatten(2)  # [B, F, H * d]
        if self.residual is not None:
            out = out + self.residual(x)
        return torch.relu(out)

    def _heads(self, x: Tensor) -> Tensor:
        """``[B, F, H * d]`` -> ``[B, H, F, d]``."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
