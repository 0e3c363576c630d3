"""FiBiNET (Huang et al., 2019, "FiBiNET: Combining Feature Importance and Bilinear Feature Interaction for
Click-Through Rate Prediction"): SENET field weights and bilinear interactions, then an MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctrzoo.features.layout import TableLayout
from ctrzoo.models.registry import CTRModel, constructor_hparams, register_model
from ctrzoo.nn import MLP, BilinearInteraction, FeatureEmbedding, LinearLogit, SENet


@register_model("fibinet")
class FiBiNET(CTRModel):
    """``logit = linear + Linear(MLP([flatten(Bilinear(E)), flatten(Bilinear'(SENET(E)))]))``.

    ``E`` are the field embeddings (dense features as fields); SENET re-weights them per row
    (``ctrzoo.nn.SENet``, ``reduction_ratio``); two bilinear layers (``ctrzoo.nn.BilinearInteraction``, one for
    ``E``, one for the re-weighted ``V``) give ``p_ij = (e_i W) * e_j`` for every field pair, with ``W`` shared
    (``bilinear_type="field_all"``), per field (``field_each``) or per pair (``field_interaction``).
    """

    def __init__(
        self,
        layout: TableLayout,
        emb_dim: int = 16,
        mlp: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
        reduction_ratio: float = 3.0,
        bilinear_type: str = "field_interaction",
        sparse_grad: bool = False,
    ) -> None:
        hparams = constructor_hparams(locals())
        super().__init__()
        self.hparams = hparams
        self.embedding = FeatureEmbedding(layout, emb_dim, sparse_grad=sparse_grad, dense_fields=True)
        n_fields = self.embedding.num_fields
        self.linear = LinearLogit(layout.n_dense)
        self.senet = SENet(n_fields, reduction_ratio)
        self.bilinear = BilinearInteraction(n_fields, emb_dim, bilinear_type)
        self.bilinear_senet = BilinearInteraction(n_fields, emb_dim, bilinear_type)
        n_pairs = n_fields * (n_fields - 1) // 2
        self.deep = MLP(2 * n_pairs * emb_dim, mlp, dropout, activation, batch_norm)
        self.head = nn.Linear(self.deep.out_dim, 1, bias=False)

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        fields, first_order = self.embedding.fields_and_first_order(sparse, dense, seq)
        p = self.bilinear(fields).flatten(1)
        q = self.bilinear_senet(self.senet(fields)).flatten(1)
        return self.linear(first_order, dense) + self.head(self.deep(torch.cat([p, q], dim=1))).squeeze(-1)
