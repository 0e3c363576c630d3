"""xDeepFM (Lian et al., 2018, "xDeepFM: Combining Explicit and Implicit Feature Interactions"): linear +
compressed interaction network + MLP."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ctrzoo.features.layout import TableLayout
from ctrzoo.models.registry import CTRModel, constructor_hparams, register_model
from ctrzoo.nn import CIN, MLP, FeatureEmbedding, LinearLogit


@register_model("xdeepfm")
class XDeepFM(CTRModel):
    """``logit = linear + Linear(CIN(fields)) + Linear(MLP(flatten(fields)))``.

    The CIN (``ctrzoo.nn.CIN``) learns explicit vector-wise interactions of bounded degree
    (``len(cin) + 1``), the MLP implicit bit-wise ones, the linear part memorizes single ids; all three share
    the field embeddings (dense features as fields, as in DeepFM).
    """

    def __init__(
        self,
        layout: TableLayout,
        emb_dim: int = 16,
        mlp: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
        cin: Sequence[int] = (64, 64),
        split_half: bool = True,
        sparse_grad: bool = False,
    ) -> None:
        hparams = constructor_hparams(locals())
        super().__init__()
        self.hparams = hparams
        self.embedding = FeatureEmbedding(layout, emb_dim, sparse_grad=sparse_grad, dense_fields=True)
        n_fields = self.embedding.num_fields
        self.linear = LinearLogit(layout.n_dense)
        self.cin = CIN(n_fields, cin, split_half)
        self.cin_head = nn.Linear(self.cin.out_dim, 1, bias=False)
        self.deep = MLP(n_fields * emb_dim, mlp, dropout, activation, batch_norm)
        self.head = nn.Linear(self.deep.out_dim, 1, bias=False)

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        fields, first_order = self.embedding.fields_and_first_order(sparse, dense, seq)
        explicit = self.cin_head(self.cin(fields)).squeeze(-1)
        implicit = self.head(self.deep(fields.flatten(1))).squeeze(-1)
        return self.linear(first_order, dense) + explicit + implicit
