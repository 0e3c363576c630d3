"""Logistic regression: the linear baseline every other model should beat."""

from __future__ import annotations

from torch import Tensor, nn

from ctrzoo.features.layout import TableLayout
from ctrzoo.models.registry import CTRModel, constructor_hparams, register_model
from ctrzoo.nn import FeatureEmbedding, LinearLogit


@register_model("lr", aliases=("logistic_regression",))
class LogisticRegression(CTRModel):
    """``logit = b + sum_f w[id_f] + w_dense . dense`` (e.g. McMahan et al. 2013, "Ad Click Prediction").

    The per-id weights are the shared table itself (``FeatureEmbedding`` of width 1, starting at zero), so
    weight penalties and sparse optimizers act on them like on any model's embeddings. No interactions at
    all: the floor of the zoo.
    """

    def __init__(self, layout: TableLayout, sparse_grad: bool = False) -> None:
        hparams = constructor_hparams(locals())
        super().__init__()
        self.hparams = hparams
        self.embedding = FeatureEmbedding(layout, 1, sparse_grad=sparse_grad, first_order=False)
        nn.init.zeros_(self.embedding.weight)
        self.linear = LinearLogit(layout.n_dense)

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        return self.linear(self.embedding.fields(sparse, dense, seq).sum(dim=(1, 2)), dense)
