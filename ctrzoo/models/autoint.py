"""AutoInt (Song et al., 2019, "AutoInt: Automatic Feature Interaction Learning via Self-Attentive Neural
Networks"): stacked multi-head self-attention over the fields; AutoInt+ adds an MLP."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

from ctrzoo.features.layout import TableLayout
from ctrzoo.models.registry import CTRModel, constructor_hparams, register_model
from ctrzoo.nn import MLP, FeatureEmbedding, FieldSelfAttention


@register_model("autoint", aliases=("auto_int",))
class AutoInt(CTRModel):
    """``logit = Linear(flatten(Att_L(...Att_1(fields))))`` [``+ Linear(MLP(flatten(fields)))`` with ``use_mlp``].

    Each ``Att`` is a ``FieldSelfAttention`` layer (``num_heads`` heads, ``attention_dim`` wide, residual
    connection with ``residual``): field ``i`` becomes ``ReLU(sum_j softmax_j(<q_i, k_j> / sqrt(d)) v_j + W x_i)``.
    ``use_mlp=True`` is AutoInt+ (the paper's joint model with a parallel MLP of sizes ``mlp``). Dense features
    are fields (``value * vector``).
    """

    def __init__(
        self,
        layout: TableLayout,
        emb_dim: int = 16,
        attention_layers: int = 3,
        num_heads: int = 2,
        attention_dim: int = 32,
        residual: bool = True,
        use_mlp: bool = False,
        mlp: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
        sparse_grad: bool = False,
    ) -> None:
        hparams = constructor_hparams(locals())
        super().__init__()
        self.hparams = hparams
        self.embedding = FeatureEmbedding(layout, emb_dim, sparse_grad=sparse_grad, first_order=False,
                                          dense_fields=True)
        n_fields = self.embedding.num_fields
        dims = [emb_dim] + [attention_dim] * attention_layers
        self.attention = nn.Sequential(*(FieldSelfAttention(d_in, d_out, num_heads, residual)
                                         for d_in, d_out in pairwise(dims)))
        self.head = nn.Linear(n_fields * dims[-1], 1)
        self.deep = MLP(n_fields * emb_dim, mlp, dropout, activation, batch_norm) if use_mlp else None
        self.deep_head = nn.Linear(self.deep.out_dim, 1, bias=False) if self.deep is not None else None

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        fields = self.embedding.fields(sparse, dense, seq)
        logit = self.head(self.attention(fields).flatten(1)).squeeze(-1)
        if self.deep is not None and self.deep_head is not None:
            logit = logit + self.deep_head(self.deep(fields.flatten(1))).squeeze(-1)
        return logit
