"""ESMM (Ma et al., SIGIR 2018, "Entire Space Multi-Task Model"): conversion rate learned over every
impression through pCTCVR = pCTR x pCVR, so the CVR tower never trains on the clicked rows alone."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctrzoo.features.layout import TableLayout
from ctrzoo.models.registry import CTRModel, constructor_hparams, register_model
from ctrzoo.nn import MLP, FeatureEmbedding
from ctrzoo.nn.multitask import check_tasks, product_logit


@register_model("esmm")
class ESMM(CTRModel):
    """Two MLP towers over the shared embeddings ``x = [flatten(fields), dense]``: ``a = ctr(x)``,
    ``b = cvr(x)``; output ``[a, logit(sigmoid(a) * sigmoid(b))]``, ``[B, 2]``.

    ``tasks = (click label, conversion label)``, where a conversion counts only after a click (the
    conversion label is click AND convert), so task 2's probability is pCTCVR; both are supervised over
    all impressions (the paper's loss). ``cvr_logit`` gives pCVR's logit for analysis.
    """

    def __init__(
        self,
        layout: TableLayout,
        tasks: Sequence[str] = ("click", "conversion"),
        emb_dim: int = 16,
        tower_mlp: Sequence[int] = (256, 128, 64),
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
        sparse_grad: bool = False,
    ) -> None:
        hparams = constructor_hparams(locals())
        super().__init__()
        self.hparams = hparams
        self.tasks = check_tasks(tasks, "esmm", exactly=2)
        self.embedding = FeatureEmbedding(layout, emb_dim, sparse_grad=sparse_grad, first_order=False)
        in_dim = self.embedding.flat_width(layout.n_dense)
        self.ctr = MLP(in_dim, tower_mlp, dropout, activation, batch_norm)
        self.cvr = MLP(in_dim, tower_mlp, dropout, activation, batch_norm)
        self.ctr_head, self.cvr_head = nn.Linear(self.ctr.out_dim, 1), nn.Linear(self.cvr.out_dim, 1)

    def tower_logits(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> tuple[Tensor, Tensor]:
        """(pCTR's logit, pCVR's logit), each ``[B]``."""
        x = self.embedding.flat_with_dense(sparse, dense, seq)
        return self.ctr_head(self.ctr(x)).squeeze(-1), self.cvr_head(self.cvr(x)).squeeze(-1)

    def cvr_logit(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        return self.tower_logits(sparse, dense, seq)[1]

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        a, b = self.tower_logits(sparse, dense, seq)
        return torch.stack([a, product_logit(a, b)], dim=1)
