"""DeepFM (Guo et al., 2017): first-order + FM + MLP over the same field embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctrzoo.features.layout import TableLayout
from ctrzoo.models.registry import CTRModel, constructor_hparams, register_model
from ctrzoo.nn import MLP, DenseEmbedding, FactorizationMachine, FeatureEmbedding
from ctrzoo.nn.embedding import VectorFields


@register_model("deepfm", aliases=("deep_fm",))
class DeepFM(CTRModel):
    """``logit = first_order + bias + FM(fields) + Linear(MLP(flatten(fields)))``.

    ``fields [B, F, emb_dim]``: categorical embeddings, each sequence and multi-value bag pooled
    (``pool_lists``), numeric features as fields (value * learned vector) and each dense vector projected
    to a field, so all of them take part in the pairwise interactions. FM and MLP share the embeddings,
    which is DeepFM's point (no separate wide feature engineering).
    """

    def __init__(
        self,
        layout: TableLayout,
        emb_dim: int = 16,
        mlp: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
        sparse_grad: bool = False,
        pool_lists: bool = True,
    ) -> None:
        hparams = constructor_hparams(locals())
        super().__init__()
        self.hparams = hparams
        self.embedding = FeatureEmbedding(layout, emb_dim, sparse_grad=sparse_grad, list_fields=pool_lists)
        self.n_scalar_dense = layout.n_scalar_dense
        self.dense_embedding = DenseEmbedding(self.n_scalar_dense, emb_dim) if self.n_scalar_dense else None
        self.vector_fields = VectorFields(layout.vectors, emb_dim) if layout.vectors else None
        self.dense_linear = nn.Linear(layout.n_dense, 1, bias=False) if layout.n_dense else None
        self.bias = nn.Parameter(torch.zeros(1))
        self.fm = FactorizationMachine()
        n_fields = (layout.n_sparse + (layout.n_seq if pool_lists else 0) + self.n_scalar_dense
                    + len(layout.vectors))
        self.deep = MLP(n_fields * emb_dim, mlp, dropout, activation, batch_norm)
        self.head = nn.Linear(self.deep.out_dim, 1)

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        fields, first_order = self.embedding.lookup(sparse)
        logit = first_order + self.bias
        parts = [fields]
        lists = self.embedding.list_fields(seq)
        if lists is not None:
            parts.append(lists)
        if self.dense_embedding is not None:
            parts.append(self.dense_embedding(dense[:, : self.n_scalar_dense]))
        if self.vector_fields is not None:
            parts.append(self.vector_fields(dense))
        if self.dense_linear is not None:
            logit = logit + self.dense_linear(dense).squeeze(-1)
        fields = torch.cat(parts, dim=1) if len(parts) > 1 else fields
        deep = self.head(self.deep(fields.flatten(1))).squeeze(-1)
        return logit + self.fm(fields) + deep
