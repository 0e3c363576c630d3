"""DIN rewritten for inference, in LightSeq's spirit: no work on padding, and an algebraically split first layer.

A right-padded ``[B, L]`` history is mostly padding (users' histories are short; ``L`` is the longest), yet
the exported graph scores every position with the activation unit and masks afterwards. Here:

* **Padding removal.** Only the ``N`` real history positions are embedded and scored (``[N, ...]`` instead
  of ``[B * L, ...]``); the interest vector is a scatter-add of the weighted items into ``[B, D]``.
* **Split first layer.** The unit's first layer sees ``[q, k, q - k, q * k]``, so
  ``W [q, k, q-k, q*k] = (Wq + Wd) q + [Wk - Wd, Wp] [k, q*k]``: the query part is computed once per
  candidate (``B`` rows) and the per-item part is a ``2D``-wide matmul instead of a ``4D``-wide one.

Everything after the first layer (Dice or another activation, batch norm in eval, the score layer, the
main tower) runs the trained modules themselves, so any DIN configuration is served. The scores equal the
reference model's up to float rounding (parity tested within ``PARITY_TOLERANCE``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ctrzoo.features.layout import PADDING_ID
from ctrzoo.nn.sequence import TargetAttention


class PackedTargetAttention(nn.Module):
    """``TargetAttention`` over packed real positions: ``query [B, D]``, items ``[N, D]`` of rows ``row [N]``."""

    def __init__(self, unit: TargetAttention):
        super().__init__()
        first, *rest = unit.mlp.layers
        wq, wk, wd, wp = first.weight.detach().split(first.in_features // 4, dim=1)
        self.query_proj = nn.Linear(wq.shape[1], first.out_features)
        self.item_proj = nn.Linear(2 * wq.shape[1], first.out_features, bias=False)
        with torch.no_grad():
            self.query_proj.weight.copy_(wq + wd)
            self.query_proj.bias.copy_(first.bias.detach())
            self.item_proj.weight.copy_(torch.cat([wk - wd, wp], dim=1))
        self.rest = nn.Sequential(*rest)
        self.score = unit.score
        self.use_softmax = unit.use_softmax

    def forward(self, query: Tensor, items: Tensor, row: Tensor, pos: Tensor, length: int) -> Tensor:
        q = query.index_select(0, row)
        hidden = self.query_proj(query).index_select(0, row) + self.item_proj(torch.cat([items, q * items], dim=1))
        weights = self.score(self.rest(hidden)).squeeze(-1)  # [N]
        if self.use_softmax:  # softmax over each row's real positions (padding: exactly weight 0)
            full = weights.new_full((query.shape[0], length), torch.finfo(weights.dtype).min)
            full[row, pos] = weights
            present = torch.zeros_like(full, dtype=torch.bool)
            present[row, pos] = True
            probs = torch.where(present, torch.softmax(full, dim=-1), torch.zeros_like(full))
            weights = probs[row, pos]
        return query.new_zeros(query.shape).index_add_(0, row, weights.unsqueeze(-1) * items)


class FusedDIN(nn.Module):
    """The inference form of a trained ``DIN`` (eval mode), sharing its parameters: logits ``[B]``."""

    def __init__(self, din: nn.Module):
        super().__init__()
        din = din.eval()
        self.table = din.embedding  # a FeatureEmbedding: any shape of ids -> [..., D]
        self.sequences = list(din.sequences)
        self.bag_slots = list(din.bag_slots)
        self.bag_pools = din.bag_pools
        self.pooling = din.pooling
        self.concat_sum_pool = din.concat_sum_pool
        self.attention = nn.ModuleList(PackedTargetAttention(a) for a in din.attention)
        self.deep = din.deep
        self.head = din.head

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        fields = self.table(sparse)
        parts = [fields.flatten(1), dense]
        batch, length = sparse.shape[0], seq.shape[-1]
        for s, (k, shares) in enumerate(self.sequences):
            ids = seq[:, k]
            row, pos = (ids != PADDING_ID).nonzero(as_tuple=True)
            items = self.table(ids[row, pos])  # [N, D]: only the real positions are looked up
            pooled = items.new_zeros(batch, items.shape[1]).index_add_(0, row, items)
            if self.pooling == "attention":
                parts.append(self.attention[s](fields[:, shares], items, row, pos, length))
            else:
                parts.append(pooled)
            if self.concat_sum_pool:
                parts.append(pooled)
        for k, pool in zip(self.bag_slots, self.bag_pools):  # bags are short: pooled as padded
            parts.append(pool(self.table(seq[:, k]), seq[:, k] != PADDING_ID))
        return self.head(self.deep(torch.cat(parts, dim=1))).squeeze(-1)
