"""MaskNet (Wang et al., 2021, "MaskNet: Introducing Feature-Wise Multiplication to CTR Ranking Models by
Instance-Guided Mask"): MaskBlocks in series or in parallel."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctrzoo.errors import CtrzooError
from ctrzoo.features.layout import TableLayout
from ctrzoo.models.registry import CTRModel, constructor_hparams, register_model
from ctrzoo.nn import MLP, FeatureEmbedding, MaskBlock

MODES = ("parallel", "serial")


@register_model("masknet", aliases=("mask_net",))
class MaskNet(CTRModel):
    """``e = flatten(field embeddings)``, ``h = flatten(LayerNorm(each field embedding))``, blocks
    ``MaskBlock(e, x) = ReLU(LN(W (mask(e) * x)))`` with ``mask(e) = W2 ReLU(W1 e)`` (``ctrzoo.nn.MaskBlock``).

    * ``mode="serial"``: ``x_1 = Block_1(e, h)``, ``x_k = Block_k(e, x_{k-1})``, then ``Linear(MLP(x_K))``;
    * ``mode="parallel"``: ``Linear(MLP([Block_1(e, h), ..., Block_K(e, h)]))``.

    ``num_blocks`` blocks of width ``block_dim``; the mask's aggregation layer is ``reduction_ratio`` times
    the width of what it masks. ``mlp=()`` puts the output layer right after the blocks (the paper's serial
    model). Dense features are fields (``value * vector``).
    """

    def __init__(
        self,
        layout: TableLayout,
        emb_dim: int = 16,
        mode: str = "parallel",
        num_blocks: int = 3,
        block_dim: int = 64,
        reduction_ratio: float = 1.0,
        mlp: Sequence[int] = (400, 400),
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
        sparse_grad: bool = False,
    ) -> None:
        hparams = constructor_hparams(locals())
        super().__init__()
        if mode not in MODES:
            raise CtrzooError(f"unknown MaskNet mode {mode!r}; expected one of {', '.join(MODES)}")
        if num_blocks < 1:
            raise CtrzooError(f"MaskNet needs at least one block, got num_blocks={num_blocks}")
        self.hparams = hparams
        self.serial = mode == "serial"
        self.embedding = FeatureEmbedding(layout, emb_dim, sparse_grad=sparse_grad, first_order=False,
                                          dense_fields=True)
        in_dim = self.embedding.num_fields * emb_dim
        self.field_norm = nn.LayerNorm(emb_dim)
        hidden = [in_dim] + [block_dim] * (num_blocks - 1) if self.serial else [in_dim] * num_blocks
        self.blocks = nn.ModuleList(MaskBlock(in_dim, h, block_dim, reduction_ratio, dropout) for h in hidden)
        self.deep = MLP(block_dim * (1 if self.serial else num_blocks), mlp, dropout, activation, batch_norm)
        self.head = nn.Linear(self.deep.out_dim, 1)

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        fields = self.embedding.fields(sparse, dense, seq)
        e, x = fields.flatten(1), self.field_norm(fields).flatten(1)
        if self.serial:
            for block in self.blocks:
                x = block(e, x)
        else:
            x = torch.cat([block(e, x) for block in self.blocks], dim=1)
        return self.head(self.deep(x)).squeeze(-1)
