"""The transformer encoder layer of BST (Chen et al., DLP-KDD 2019), over a key-masked behaviour sequence."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctrzoo.errors import CtrzooError


class TransformerLayer(nn.Module):
    """Post-norm encoder layer: ``x [B, T, D]``, ``key_mask [B, T]`` (True = a real token) -> ``[B, T, D]``::

        [Q K V] = x W_in + b_in                   (one projection, split into heads of d = D / heads)
        A_h     = softmax(Q_h K_h^T / sqrt(d))     (masked keys get weight 0)
        S'      = LayerNorm(x + Dropout(concat_h(A_h V_h) W_o + b_o))
        out     = LayerNorm(S' + Dropout(LeakyReLU(S' W_1 + b_1) W_2 + b_2))

    as in the BST paper (LeakyReLU in the feed-forward network). Every row must have at least one real
    key (BST's target token always is one). Outputs at masked positions are computed but meaningless:
    callers ignore them.
    """

    def __init__(self, dim: int, num_heads: int = 2, ffn_dim: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        if num_heads <= 0 or dim % num_heads:
            raise CtrzooError(f"attention heads ({num_heads}) must divide the embedding size ({dim})")
        if ffn_dim <= 0:
            raise CtrzooError(f"ffn_dim must be positive, got {ffn_dim}")
        self.num_heads = num_heads
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn_in = nn.Linear(dim, ffn_dim)
        self.ffn_out = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def attention(self, x: Tensor, key_mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(weights [B, H, T, T], values [B, H, T, d])``; each weight row sums to 1 over the real keys."""
        q, k, v = (self._heads(t) for t in self.in_proj(x).chunk(3, dim=-1))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1), v

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        weights, v = self.attention(x, key_mask)
        attended = torch.matmul(weights, v).transpose(1, 2).flatten(2)  # [B, T, D]
        s = self.norm1(x + self.dropout(self.out_proj(attended)))
        return self.norm2(s + self.dropout(self.ffn_out(F.leaky_relu(self.ffn_in(s)))))

    def _heads(self, x: Tensor) -> Tensor:
        """``[B, T, D]`` -> ``[B, H, T, d]``."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
