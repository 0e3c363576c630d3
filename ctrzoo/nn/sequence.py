"""Behaviour-sequence layers: masked pooling, DIN's target attention, DIEN's bilinear attention, bag pooling.

Sequences arrive as ``[B, L]`` ids padded with ``PADDING_ID`` (0) on the right; layers take the boolean
``mask = ids != 0`` (see :func:`padding_mask`) so padded positions never contribute, whatever their
embedding holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctrzoo.errors import CtrzooError
from ctrzoo.features.layout import PADDING_ID, SequenceLayout
from ctrzoo.nn.mlp import MLP


def padding_mask(ids: Tensor) -> Tensor:
    """``ids [..., L]`` -> bool ``[..., L]``, True at real (non-padding) positions."""
    return ids != PADDING_ID


class SequencePooling(nn.Module):
    """Masked ``sum``, ``mean`` or ``max`` over the sequence axis: ``keys [..., L, D], mask [..., L] -> [..., D]``.

    ``mean`` divides by the number of real positions (at least 1); an empty history or bag gives zeros in
    every mode.
    """

    MODES = ("sum", "mean", "max")

    def __init__(self, mode: str = "sum") -> None:
        super().__init__()
        if mode not in self.MODES:
            raise CtrzooError(f"unknown pooling mode {mode!r}; expected one of {self.MODES}")
        self.mode = mode

    def forward(self, keys: Tensor, mask: Tensor) -> Tensor:
        m = mask.unsqueeze(-1).to(keys.dtype)
        if self.mode == "max":
            lowest = torch.finfo(keys.dtype).min
            pooled = keys.masked_fill(m == 0, lowest).amax(dim=-2)
            return torch.where(m.sum(dim=-2) > 0, pooled, torch.zeros_like(pooled))
        pooled = (keys * m).sum(dim=-2)
        if self.mode == "mean":
            count = m.sum(dim=-2)
            # count, or 1 when empty: arithmetic instead of clamp, whose elementwise Max TVM's build lacked
            pooled = pooled / (count + (count == 0).to(count.dtype))
        return pooled


class TargetAttention(nn.Module):
    """DIN's local activation unit: weight each history item by its relevance to the candidate.

    ``query [B, D]`` (candidate embedding), ``keys [B, L, D]`` (history embeddings), ``mask [B, L]``
    -> ``[B, D] = sum_t w_t * k_t`` with ``w_t = Linear(MLP([q, k_t, q - k_t, q * k_t]))``.

    Without softmax (the paper's default) weights are unnormalized, so the output keeps the intensity of
    user interest (how many relevant items there are); padded positions get weight exactly 0. With
    ``use_softmax=True`` padded scores are pushed to the most negative finite float before the softmax
    (effectively ``-inf``, but a row with no real item becomes uniform instead of NaN) and the weights are
    then masked, so an all-padding history yields zeros in both modes.

    In training mode the unit runs on the real positions only (gathered to ``[N, 4D]``, ``N`` = number of
    real positions in the batch, then scattered back): with ``activation="dice"`` (or batch norm) the
    batch statistics then describe real history items, not the padding that fills most of a
    right-padded ``[B, L]`` batch (pooling over padding, as some implementations do, centres Dice's
    switch point on the padding rows' ``[q, 0, q, 0]`` inputs, and the running statistics used in eval
    inherit that bias), and the unit does ``N / (B * L)`` of the work. In eval mode every position is
    scored (static shapes for export; per-row results do not depend on the batch) and padding is masked,
    so it has no effect at all.
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (80, 40),
        activation: str = "dice",
        use_softmax: bool = False,
    ) -> None:
        super().__init__()
        self.mlp = MLP(4 * dim, hidden, activation=activation)
        self.score = nn.Linear(self.mlp.out_dim, 1)
        self.use_softmax = use_softmax

    def scores(self, query: Tensor, keys: Tensor) -> Tensor:
        """Raw relevance scores ``[B, L]`` before masking."""
        q = query.unsqueeze(1).expand_as(keys)
        unit_in = torch.cat([q, keys, q - keys, q * keys], dim=-1)
        return self.score(self.mlp(unit_in)).squeeze(-1)

    def packed_scores(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """Scores ``[B, L]`` computed on the real positions only; padded positions hold 0.

        Equal to ``scores`` at real positions when the unit has no batch statistics (or is in eval mode);
        with Dice in training mode the statistics pool over the real positions only.
        """
        rows = mask.nonzero(as_tuple=True)  # (batch index, position) of each real item, row-major
        q, k = query[rows[0]], keys[rows]  # [N, D] each
        real = self.score(self.mlp(torch.cat([q, k, q - k, q * k], dim=-1))).squeeze(-1)  # [N]
        return real.new_zeros(mask.shape).masked_scatter(mask, real)

    def weights(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """Attention weights ``[B, L]``, exactly 0 at padded positions."""
        if self.training and int(mask.sum()) >= 2:  # batch statistics need more than one row
            scores = self.packed_scores(query, keys, mask)
        else:
            scores = self.scores(query, keys)
        zeros = torch.zeros_like(scores)
        if self.use_softmax:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            return torch.where(mask, torch.softmax(scores, dim=-1), zeros)
        return torch.where(mask, scores, zeros)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        w = self.weights(query, keys, mask)
        return torch.where(mask.unsqueeze(-1), w.unsqueeze(-1) * keys, torch.zeros_like(keys)).sum(dim=1)


class BilinearTargetAttention(nn.Module):
    """DIEN's attention (Zhou et al., AAAI 2019, eq. 4): ``a_t = softmax_t(h_t W e_target)`` over the real
    positions. ``query [B, Dq]``, ``keys [B, L, Dk]``, ``mask [B, L]`` -> weights ``[B, L]``, exactly 0 at
    padding (and all 0 for an empty history)."""

    def __init__(self, query_dim: int, key_dim: int) -> None:
        super().__init__()
        self.bilinear = nn.Linear(query_dim, key_dim, bias=False)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        scores = (keys * self.bilinear(query).unsqueeze(1)).sum(-1)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        return torch.where(mask, torch.softmax(scores, dim=-1), torch.zeros_like(scores))


class BagPooling(nn.Module):
    """The multi-value bags among the ``seq`` slots, each pooled by its layout's pooling (bags are sets, never
    attended): ``embedded [B, n_bags, L, D]`` and ``mask [B, n_bags, L]`` of the slots ``self.slots`` (in that
    order) -> ``[B, n_bags * D]``."""

    def __init__(self, bags: Sequence[tuple[int, SequenceLayout]]) -> None:
        super().__init__()
        self.slots = [k for k, _ in bags]
        self.pools = nn.ModuleList(SequencePooling(s.pooling) for _, s in bags)

    def forward(self, embedded: Tensor, mask: Tensor) -> Tensor:
        return torch.cat([pool(embedded[:, i], mask[:, i]) for i, pool in enumerate(self.pools)], dim=1)
