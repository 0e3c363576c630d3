"""DLRM (Naumov et al., 2019, "Deep Learning Recommendation Model for Personalization and Recommendation
Systems"): bottom MLP for dense features, dot interactions, top MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctrzoo.features.layout import TableLayout
from ctrzoo.models.registry import CTRModel, constructor_hparams, register_model
from ctrzoo.nn import MLP, DotInteraction, FeatureEmbedding


@register_model("dlrm")
class DLRM(CTRModel):
    """``d = BottomMLP(dense)`` ``[B, emb_dim]``, ``T = [d, field embeddings]``,
    ``logit = Linear(TopMLP([d, <t_i, t_j> for i < j]))``.

    The bottom MLP (``bottom_mlp`` then a last layer of ``emb_dim``, ReLU throughout, as the reference) maps
    the dense features into the embedding space so they take part in the pairwise dot products like one
    more field; the top MLP (``mlp``) sees the dense vector and all pairwise dots. Without dense features
    ``T`` is the field embeddings alone and the top MLP sees only their dots.
    """

    def __init__(
        self,
        layout: TableLayout,
        emb_dim: int = 16,
        bottom_mlp: Sequence[int] = (64,),
        mlp: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
        sparse_grad: bool = False,
    ) -> None:
        hparams = constructor_hparams(locals())
        super().__init__()
        self.hparams = hparams
        self.embedding = FeatureEmbedding(layout, emb_dim, sparse_grad=sparse_grad, first_order=False)
        self.bottom = MLP(layout.n_dense, (*bottom_mlp, emb_dim), activation=activation) if layout.n_dense else None
        n_vectors = self.embedding.num_fields + (1 if self.bottom is not None else 0)
        self.interaction = DotInteraction(n_vectors)
        top_in = self.interaction.out_dim + (emb_dim if self.bottom is not None else 0)
        self.deep = MLP(top_in, mlp, dropout, activation, batch_norm)
        self.head = nn.Linear(self.deep.out_dim, 1)

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        fields = self.embedding.fields(sparse, dense, seq)
        if self.bottom is None:
            return self.head(self.deep(self.interaction(fields))).squeeze(-1)
        d = self.bottom(dense)
        dots = self.interaction(torch.cat([d.unsqueeze(1), fields], dim=1))
        return self.head(self.deep(torch.cat([d, dots], dim=1))).squeeze(-1)
