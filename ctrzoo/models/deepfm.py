"""DeepFM (Guo et al., 2017): first-order + FM + MLP over the same field embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctrzoo.features.layout import TableLayout
from ctrzoo.models.registry import CTRModel, constructor_hparams, register_model
from ctrzoo.nn import MLP, DenseEmbedding, FactorizationMachine, FeatureEmbedding


@register_model("deepfm", aliases=("deep_fm",))
class DeepFM(CTRModel):
    """``logit = first_order + bias + FM(fields) + Linear(MLP(flatten(fields)))``.

    ``fields [B, n_sparse + n_dense, emb_dim]``: categorical embeddings followed by dense features as
    fields (value * learned vector), so numeric features take part in the pairwise interactions. FM and
    MLP share the embeddings, which is DeepFM's point (no separate wide feature engineering).
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
    ) -> None:
        hparams = constructor_hparams(locals())
        super().__init__()
        self.hparams = hparams
        self.embedding = FeatureEmbedding(layout, emb_dim, sparse_grad=sparse_grad)
        self.dense_embedding = DenseEmbedding(layout.n_dense, emb_dim) if layout.n_dense else None
        self.dense_linear = nn.Linear(layout.n_dense, 1, bias=False) if layout.n_dense else None
        self.bias = nn.Parameter(torch.zeros(1))
        self.fm = FactorizationMachine()
        n_fields = layout.n_sparse + layout.n_dense
        self.deep = MLP(n_fields * emb_dim, mlp, dropout, activation, batch_norm)
        self.head = nn.Linear(self.deep.out_dim, 1)

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        fields, first_order = self.embedding.lookup(sparse)
        logit = first_order + self.bias
        if self.dense_embedding is not None and self.dense_linear is not None:
            fields = torch.cat([fields, self.dense_embedding(dense)], dim=1)
            logit = logit + self.dense_linear(dense).squeeze(-1)
        deep = self.head(self.deep(fields.flatten(1))).squeeze(-1)
        return logit + self.fm(fields) + deep
