"""Deep Interest Network (Zhou et al., 2018): attend over behaviour history with the candidate as query."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctrzoo.errors import CtrzooError
from ctrzoo.features.layout import TableLayout
from ctrzoo.models.registry import CTRModel, constructor_hparams, register_model
from ctrzoo.nn import MLP, FeatureEmbedding, SequencePooling, TargetAttention, padding_mask


@register_model("din")
class DIN(CTRModel):
    """``logit = Linear(MLP([flatten(field embeddings), dense, interest_1, ..., interest_S]))``.

    For each sequence feature ``s`` the candidate is the embedding of the sparse field whose table it
    shares (``layout.seq[s].shares_index``, e.g. the target item id for an item-id history) and
    ``interest_s = TargetAttention(candidate, history_s)``, so the user representation changes with the
    ad being scored. ``pooling="sum"`` replaces attention by masked sum pooling (the paper's base model,
    a benchmark baseline); ``concat_sum_pool=True`` also appends the sum-pooled history. Multi-value bags
    are not histories: each is pooled by its layout's pooling and appended as one more field. With no
    sequence features in the layout the model is an MLP over the field embeddings and dense features.
    """

    def __init__(
        self,
        layout: TableLayout,
        emb_dim: int = 16,
        mlp: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        activation: str = "dice",
        batch_norm: bool = False,
        att_hidden: Sequence[int] = (80, 40),
        att_activation: str = "dice",
        use_softmax: bool = False,
        pooling: str = "attention",
        concat_sum_pool: bool = False,
        sparse_grad: bool = False,
    ) -> None:
        hparams = constructor_hparams(locals())
        super().__init__()
        if pooling not in ("attention", "sum"):
            raise CtrzooError(f"unknown DIN pooling {pooling!r}; expected 'attention' or 'sum'")
        self.hparams = hparams
        self.sequences = [(k, s.shares_index) for k, s in layout.sequences]  # (seq slot, target field)
        self.bag_slots = [k for k, _ in layout.bags]
        self.bag_pools = nn.ModuleList(SequencePooling(s.pooling) for _, s in layout.bags)
        self.pooling = pooling
        self.concat_sum_pool = concat_sum_pool
        self.embedding = FeatureEmbedding(layout, emb_dim, sparse_grad=sparse_grad, list_fields=False)
        self.attention = nn.ModuleList(
            TargetAttention(emb_dim, att_hidden, att_activation, use_softmax)
            for _ in (self.sequences if pooling == "attention" else ())
        )
        self.sum_pool = SequencePooling("sum")
        per_seq = emb_dim * (2 if concat_sum_pool else 1)
        in_dim = (layout.n_sparse * emb_dim + layout.n_dense + len(self.sequences) * per_seq
                  + len(self.bag_slots) * emb_dim)
        self.deep = MLP(in_dim, mlp, dropout, activation, batch_norm)
        self.head = nn.Linear(self.deep.out_dim, 1)

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        fields = self.embedding(sparse)
        parts = [fields.flatten(1), dense]
        if self.sequences or self.bag_slots:
            history = self.embedding.lookup_seq(seq)  # [B, S, L, D]
            mask = padding_mask(seq)  # [B, S, L]
            for i, (k, shares) in enumerate(self.sequences):
                keys, keep = history[:, k], mask[:, k]
                if self.pooling == "attention":
                    parts.append(self.attention[i](fields[:, shares], keys, keep))
                else:
                    parts.append(self.sum_pool(keys, keep))
                if self.concat_sum_pool:
                    parts.append(self.sum_pool(keys, keep))
            for k, pool in zip(self.bag_slots, self.bag_pools):
                parts.append(pool(history[:, k], mask[:, k]))
        return self.head(self.deep(torch.cat(parts, dim=1))).squeeze(-1)
