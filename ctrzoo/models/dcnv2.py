"""DCN-V2 (Wang et al., 2021, "DCN V2: Improved Deep & Cross Network"): matrix cross layers, optionally a
low-rank mixture of experts, stacked with or parallel to an MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctrzoo.errors import CtrzooError
from ctrzoo.features.layout import TableLayout
from ctrzoo.models.registry import CTRModel, constructor_hparams, register_model
from ctrzoo.nn import MLP, CrossNetwork, CrossNetworkMix, FeatureEmbedding

STRUCTURES = ("parallel", "stacked")


@register_model("dcnv2", aliases=("dcn_v2",))
class DCNv2(CTRModel):
    """``x0 = [flatten(field embeddings), dense]``, cross layers ``x_{l+1} = x0 * (W_l x_l + b_l) + x_l``.

    * ``structure="parallel"``: ``logit = Linear([Cross(x0), MLP(x0)])``;
    * ``structure="stacked"``: ``logit = Linear(MLP(Cross(x0)))`` (``mlp=()`` leaves the cross network alone).

    ``low_rank > 0`` replaces each full-rank ``W_l`` by a gated mixture of ``num_experts`` rank-``low_rank``
    experts (``CrossNetworkMix``), the paper's cheaper variant for wide inputs. Dense features enter as in
    DCN: concatenated to the flattened embeddings.
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
        structure: str = "parallel",
        low_rank: int = 0,
        num_experts: int = 1,
        sparse_grad: bool = False,
    ) -> None:
        hparams = constructor_hparams(locals())
        super().__init__()
        if structure not in STRUCTURES:
            raise CtrzooError(f"unknown DCN-V2 structure {structure!r}; expected one of {', '.join(STRUCTURES)}")
        if num_experts != 1 and low_rank <= 0:
            raise CtrzooError(f"DCN-V2 with num_experts={num_experts} needs low_rank > 0 (experts are low-rank)")
        self.hparams = hparams
        self.structure = structure
        self.embedding = FeatureEmbedding(layout, emb_dim, sparse_grad=sparse_grad, first_order=False)
        in_dim = self.embedding.flat_width(layout.n_dense)
        self.cross: nn.Module = (CrossNetworkMix(in_dim, num_cross_layers, low_rank, num_experts) if low_rank > 0
                                 else CrossNetwork(in_dim, num_cross_layers, form="matrix"))
        self.deep = MLP(in_dim, mlp, dropout, activation, batch_norm)
        self.head = nn.Linear(self.deep.out_dim + (in_dim if structure == "parallel" else 0), 1)

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        x0 = self.embedding.flat_with_dense(sparse, dense, seq)
        if self.structure == "stacked":
            return self.head(self.deep(self.cross(x0))).squeeze(-1)
        return self.head(torch.cat([self.cross(x0), self.deep(x0)], dim=1)).squeeze(-1)
