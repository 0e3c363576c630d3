"""FinalMLP (Mao et al., 2023, "FinalMLP: An Enhanced Two-Stream MLP Model for CTR Prediction"): two MLP
streams over differently gated inputs, fused by a multi-head bilinear layer."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ctrzoo.errors import CtrzooError
from ctrzoo.features.layout import TableLayout
from ctrzoo.models.registry import CTRModel, constructor_hparams, register_model
from ctrzoo.nn import MLP, BilinearFusion, FeatureEmbedding, FeatureGate


@register_model("finalmlp", aliases=("final_mlp",))
class FinalMLP(CTRModel):
    """``logit = Fusion(MLP_1(g_1 * e), MLP_2(g_2 * e))`` with ``e = flatten(field embeddings)``.

    ``g_s = 2 * sigmoid(MLP(context_s))`` (``ctrzoo.nn.FeatureGate``, on with ``feature_gating``) lets each
    stream select its own features; ``context_s`` are the embeddings of the sparse fields named in
    ``fs1_context`` / ``fs2_context`` (e.g. user fields for one stream, item fields for the other), or a
    learned vector when empty. The fusion (``ctrzoo.nn.BilinearFusion``) is
    ``b + w1 . o1 + w2 . o2 + sum_h o1_h^T W_h o2_h`` over ``num_heads`` heads, which must divide both streams'
    output widths (``mlp[-1]``, ``mlp2[-1]``). Dense features are fields (``value * vector``).
    """

    def __init__(
        self,
        layout: TableLayout,
        emb_dim: int = 16,
        mlp: Sequence[int] = (400, 400, 400),
        mlp2: Sequence[int] = (400,),
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
        feature_gating: bool = True,
        fs_hidden: Sequence[int] = (64,),
        fs1_context: Sequence[str] = (),
        fs2_context: Sequence[str] = (),
        num_heads: int = 2,
        sparse_grad: bool = False,
    ) -> None:
        hparams = constructor_hparams(locals())
        super().__init__()
        self.hparams = hparams
        self.embedding = FeatureEmbedding(layout, emb_dim, sparse_grad=sparse_grad, first_order=False,
                                          dense_fields=True)
        n_fields = self.embedding.num_fields
        contexts = [_field_indices(layout, names, hparam)
                    for hparam, names in (("fs1_context", fs1_context), ("fs2_context", fs2_context))]
        self.gates = (nn.ModuleList(FeatureGate(n_fields, emb_dim, c, fs_hidden) for c in contexts)
                      if feature_gating else None)
        self.stream1 = MLP(n_fields * emb_dim, mlp, dropout, activation, batch_norm)
        self.stream2 = MLP(n_fields * emb_dim, mlp2, dropout, activation, batch_norm)
        self.fusion = BilinearFusion(self.stream1.out_dim, self.stream2.out_dim, num_heads)

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        fields = self.embedding.fields(sparse, dense, seq)
        if self.gates is None:
            x1 = x2 = fields.flatten(1)
        else:
            x1, x2 = self.gates[0](fields), self.gates[1](fields)
        return self.fusion(self.stream1(x1), self.stream2(x2))


def _field_indices(layout: TableLayout, names: Sequence[str], hparam: str) -> list[int]:
    try:
        return [layout.field_index(n) for n in names]
    except KeyError as err:
        known = ", ".join(f.name for f in layout.sparse)
        raise CtrzooError(f"FinalMLP {hparam}: no sparse field {err.args[0]!r}; fields: {known}") from None
