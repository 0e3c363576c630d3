"""Deep Interest Evolution Network (Zhou et al., AAAI 2019): interests extracted from the history by a GRU, then
evolved toward the candidate by an attention-gated GRU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctrzoo.errors import CtrzooError
from ctrzoo.features.layout import TableLayout
from ctrzoo.models.registry import CTRModel, constructor_hparams, register_model
from ctrzoo.nn import (
    GRU,
    MLP,
    BagPooling,
    BilinearTargetAttention,
    FeatureEmbedding,
    TargetAttention,
    next_item_loss,
    padding_mask,
    sample_other_rows,
)


@register_model("dien", aliases=("deep_interest_evolution",))
class DIEN(CTRModel):
    """``logit = Linear(MLP([flatten(field embeddings), dense, interest_1, ..., interest_S, bags]))``.

    For each behaviour sequence ``s`` (items ``e_1..e_L``, oldest first) with target ``e_a``, the embedding
    of the sparse field whose table it shares (``layout.seq[s].shares_index``), as in DIN::

        h_t  = GRU(e_t, h_{t-1})                                  interest extractor
        a_t  = softmax_t(h_t W e_a)     (attention="bilinear", the paper's eq. 4; "din": DIN's unit + softmax)
        h'_t = AUGRU(h_t, h'_{t-1}, a_t)   (update gate scaled by a_t)   interest evolution
        interest_s = h'_L                 (padding has a_t = 0: the state after the row's last real item)

    In training mode the extractor also gets the auxiliary loss (eq. 5): ``h_t`` should score the next
    clicked item ``e_{t+1}`` above a negative drawn in-batch from the other rows' histories
    (``ctrzoo.nn.recurrent``); ``auxiliary_loss()`` returns ``aux_weight`` times its sum over sequences
    for the trainer to add (the paper's alpha). Eval mode (scoring, ONNX export) computes none of it.
    GRU sizes equal ``emb_dim`` (the loss is a dot product of states and item embeddings). Bags are pooled
    by their layout's pooling, dense features concatenated; without sequences the model is an MLP.
    """

    def __init__(
        self,
        layout: TableLayout,
        emb_dim: int = 16,
        mlp: Sequence[int] = (200, 80),
        dropout: float = 0.0,
        activation: str = "dice",
        batch_norm: bool = False,
        attention: str = "bilinear",
        att_hidden: Sequence[int] = (80, 40),
        att_activation: str = "dice",
        aux_weight: float = 1.0,
        sparse_grad: bool = False,
    ) -> None:
        hparams = constructor_hparams(locals())
        super().__init__()
        if attention not in ("bilinear", "din"):
            raise CtrzooError(f"unknown DIEN attention {attention!r}; expected 'bilinear' or 'din'")
        if aux_weight < 0:
            raise CtrzooError(f"DIEN aux_weight must be >= 0, got {aux_weight}")
        self.hparams = hparams
        self.sequences = [(k, s.shares_index) for k, s in layout.sequences]  # (seq slot, target field)
        self.aux_weight = float(aux_weight)
        self.embedding = FeatureEmbedding(layout, emb_dim, sparse_grad=sparse_grad, list_fields=False)
        self.extractors = nn.ModuleList(GRU(emb_dim, emb_dim) for _ in self.sequences)
        self.evolvers = nn.ModuleList(GRU(emb_dim, emb_dim) for _ in self.sequences)
        self.attention = nn.ModuleList(
            BilinearTargetAttention(emb_dim, emb_dim) if attention == "bilinear"
            else TargetAttention(emb_dim, att_hidden, att_activation, use_softmax=True)
            for _ in self.sequences
        )
        self.bags = BagPooling(layout.bags)
        in_dim = (layout.n_sparse + len(self.sequences) + len(self.bags.slots)) * emb_dim + layout.n_dense
        self.deep = MLP(in_dim, mlp, dropout, activation, batch_norm)
        self.head = nn.Linear(self.deep.out_dim, 1)
        self._aux: Tensor | None = None

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        fields = self.embedding(sparse)
        parts = [fields.flatten(1), dense]
        aux = []
        if self.sequences or self.bags.slots:
            history = self.embedding.lookup_seq(seq)  # [B, S, L, D]
            mask = padding_mask(seq)  # [B, S, L]
            for i, (k, target) in enumerate(self.sequences):
                ids, keep, items = seq[:, k], mask[:, k], history[:, k]
                if self.training:  # drop the columns that are padding in every row (exact: right padding)
                    n = max(int(keep.sum(1).max()), 1)
                    ids, keep, items = ids[:, :n], keep[:, :n], items[:, :n]
                states = self.extractors[i](items)  # [B, L, D]
                weights = self._attention(i, fields[:, target], states, keep)  # [B, L]
                parts.append(self.evolvers[i](states, weights)[:, -1])
                if self.training and self.aux_weight > 0:
                    negatives, usable = sample_other_rows(ids, keep)
                    aux.append(next_item_loss(states, items, self.embedding.lookup_seq(negatives), keep, usable))
            if self.bags.slots:
                parts.append(self.bags(history[:, self.bags.slots], mask[:, self.bags.slots]))
        self._aux = self.aux_weight * torch.stack(aux).sum() if aux else None
        return self.head(self.deep(torch.cat(parts, dim=1))).squeeze(-1)

    def auxiliary_loss(self) -> Tensor | None:
        aux, self._aux = self._aux, None
        return aux

    def _attention(self, i: int, target: Tensor, states: Tensor, keep: Tensor) -> Tensor:
        unit = self.attention[i]
        return unit.weights(target, states, keep) if isinstance(unit, TargetAttention) else unit(target, states, keep)
