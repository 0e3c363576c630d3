"""DIEN's recurrent layers: a GRU (optionally attention-gated: AUGRU) and the auxiliary next-item loss.

Histories arrive right-padded (``ctrzoo.features.layout``), oldest item first. The GRU runs over every
position; a state at a real position depends only on the items before it, so padding after a row's end
never changes what the model reads (the extractor's states are read at real positions only, and the
AUGRU's attention is exactly 0 at padding, which leaves its state unchanged: its last state is the state
after the row's most recent item).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GRU(nn.Module):
    """One GRU layer over ``x [B, L, in_dim]`` -> every step's state ``[B, L, hidden]`` (``h_0 = 0``).

    The DIEN paper's gate convention (``u`` weighs the new candidate)::

        r_t = sigmoid(W_r x_t + b_r + U_r h_{t-1} + c_r)
        u_t = sigmoid(W_u x_t + b_u + U_u h_{t-1} + c_u)
        n_t = tanh(W_n x_t + b_n + r_t * (U_n h_{t-1} + c_n))
        h_t = (1 - u_t) * h_{t-1} + u_t * n_t

    With ``attention a [B, L]`` it is the AUGRU (Zhou et al., AAAI 2019, eq. 6-7): ``u'_t = a_t * u_t``
    replaces ``u_t``, so an item the target finds irrelevant (``a_t ~ 0``; padding: exactly 0) barely moves
    the interest state. The input projection of all steps is one matmul; only ``U h_{t-1}`` is sequential.
    """

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.input_proj = nn.Linear(in_dim, 3 * hidden)  # rows: r, u, n
        self.hidden_proj = nn.Linear(hidden, 3 * hidden)

    def step(self, x_proj: Tensor, h: Tensor, attention: Tensor | None = None) -> Tensor:
        """One step: ``x_proj = input_proj(x_t) [B, 3H]``, ``h = h_{t-1} [B, H]``, ``attention [B]`` -> ``h_t``."""
        xr, xu, xn = x_proj.chunk(3, dim=-1)
        hr, hu, hn = self.hidden_proj(h).chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        u = torch.sigmoid(xu + hu)
        n = torch.tanh(xn + r * hn)
        if attention is not None:
            u = attention.unsqueeze(-1) * u
        return h + u * (n - h)

    def forward(self, x: Tensor, attention: Tensor | None = None) -> Tensor:
        # unbind, not x_proj[:, t]: one backward op instead of a full-size zero gradient per step
        x_steps = self.input_proj(x).unbind(1)  # L x [B, 3H]; L is static: unrolled in the exported graph
        a_steps = [None] * len(x_steps) if attention is None else attention.unbind(1)
        h = x.new_zeros(x.shape[0], self.hidden)
        states = []
        for x_t, a_t in zip(x_steps, a_steps):
            h = self.step(x_t, h, a_t)
            states.append(h)
        return torch.stack(states, dim=1)


def sample_other_rows(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """In-batch negatives: for every position of ``ids [B, L]``, an item drawn uniformly from the real
    positions of the *other* rows' histories (so popular items are drawn more often, as in word2vec's
    unigram sampling); no extra input tensors are needed.

    Returns ``(negative ids [B, L], usable [B, L])``; a draw is unusable where no other row has history or
    where it happens to be the row's own item at that position.
    """
    b, length = ids.shape
    real = ids[mask]  # [N] real ids, row-major
    counts = mask.sum(dim=1)  # [B]
    starts = counts.cumsum(0) - counts  # each row's first index in `real`
    others = real.numel() - counts  # [B] real positions of the other rows
    if real.numel() == 0:
        return torch.zeros_like(ids), torch.zeros_like(mask)
    draw = (torch.rand(b, length, device=ids.device) * others.unsqueeze(1)).long()  # [0, others)
    draw = torch.where(draw >= starts.unsqueeze(1), draw + counts.unsqueeze(1), draw)  # skip the own row
    negatives = real[draw.clamp(max=real.numel() - 1)]
    return negatives, (others.unsqueeze(1) > 0) & (negatives != ids)


def next_item_loss(states: Tensor, items: Tensor, negatives: Tensor, mask: Tensor, usable: Tensor) -> Tensor:
    """DIEN's auxiliary loss (eq. 5): the state after item ``t`` should score the clicked next item above a
    negative, ``-log sigmoid(h_t . e_{t+1}) - log(1 - sigmoid(h_t . e'_{t+1}))``, averaged over the pairs where
    item ``t + 1`` is real (a negative term only where it is ``usable``).

    ``states``, ``items``, ``negatives``: ``[B, L, D]``; ``mask``, ``usable``: ``[B, L]`` -> a scalar.
    """
    h, nxt = states[:, :-1], mask[:, 1:]
    pos_logit = (h * items[:, 1:]).sum(-1)
    neg_logit = (h * negatives[:, 1:]).sum(-1)
    zeros = torch.zeros_like(pos_logit)
    pos = torch.where(nxt, F.softplus(-pos_logit), zeros).sum()  # softplus(-x) = -log sigmoid(x)
    neg = torch.where(nxt & usable[:, 1:], F.softplus(neg_logit), zeros).sum()
    return (pos + neg) / nxt.sum().clamp(min=1)
