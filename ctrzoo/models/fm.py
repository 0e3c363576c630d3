"""Factorization machine (Rendle, 2010): logistic regression plus all pairwise field interactions."""

from __future__ import annotations

from torch import Tensor

from ctrzoo.features.layout import TableLayout
from ctrzoo.models.registry import CTRModel, constructor_hparams, register_model
from ctrzoo.nn import FactorizationMachine, FeatureEmbedding, LinearLogit


@register_model("fm", aliases=("factorization_machine",))
class FM(CTRModel):
    """``logit = b + sum_f w[id_f] + w_dense . dense + sum_{i<j} <v_i, v_j>``.

    ``v`` are the field embeddings with each dense feature as a field (``value * vector``, as DeepFM), so
    every pair of features, numeric ones included, interacts through an inner product of learned vectors.
    """

    def __init__(self, layout: TableLayout, emb_dim: int = 16, sparse_grad: bool = False) -> None:
        hparams = constructor_hparams(locals())
        super().__init__()
        self.hparams = hparams
        self.embedding = FeatureEmbedding(layout, emb_dim, sparse_grad=sparse_grad, dense_fields=True)
        self.linear = LinearLogit(layout.n_dense)
        self.fm = FactorizationMachine()

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        fields, first_order = self.embedding.fields_and_first_order(sparse, dense, seq)
        return self.linear(first_order, dense) + self.fm(fields)
