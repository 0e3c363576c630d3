"""Deep & Cross Network (DCN, Wang et al. 2017; matrix form from DCN-V2, 2021), parallel structure."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctrzoo.features.layout import TableLayout
from ctrzoo.models.registry import CTRModel, constructor_hparams, register_model
from ctrzoo.nn import MLP, CrossNetwork, FeatureEmbedding


@register_model("dcn")
class DCN(CTRModel):
    """``x0 = [flatten(field embeddings), dense]``; ``logit = Linear([Cross(x0), MLP(x0)])``.

    Field embeddings: the categorical fields and, with ``pool_lists``, each sequence and bag pooled.

    The cross network builds bounded-degree explicit interactions (degree ``num_cross_layers + 1``), the
    MLP implicit ones; ``cross_form`` picks the vector (DCN) or matrix (DCN-V2) cross layer.
    """

    def __init__(
        self,
        layout: TableLayout,
        emb_dim: int = 16,
        mlp: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
        num_cross_layers: int = 3,
        cross_form: str = "vector",
        sparse_grad: bool = False,
        pool_lists: bool = True,
    ) -> None:
        hparams = constructor_hparams(locals())
        super().__init__()
        self.hparams = hparams
        in_dim = (layout.n_sparse + (layout.n_seq if pool_lists else 0)) * emb_dim + layout.n_dense
        self.embedding = FeatureEmbedding(layout, emb_dim, sparse_grad=sparse_grad, list_fields=pool_lists)
        self.cross = CrossNetwork(in_dim, num_cross_layers, form=cross_form)
        self.deep = MLP(in_dim, mlp, dropout, activation, batch_norm)
        self.head = nn.Linear(in_dim + self.deep.out_dim, 1)

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        x0 = self.embedding.flat_with_dense(sparse, dense, seq)
        return self.head(torch.cat([self.cross(x0), self.deep(x0)], dim=1)).squeeze(-1)
