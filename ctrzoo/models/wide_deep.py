"""Wide & Deep (Cheng et al., 2016): a logistic regression with cross-product features plus an MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctrzoo.errors import CtrzooError
from ctrzoo.features.layout import TableLayout
from ctrzoo.models.registry import CTRModel, constructor_hparams, register_model
from ctrzoo.nn import MLP, FeatureEmbedding

# Multipliers of the cross-product hash; ids stay far below 2**32, so products never overflow int64.
_HASH_A, _HASH_B, _HASH_SALT = 1_000_003, 998_244_353, 2_654_435_761


@register_model("wide_deep", aliases=("widedeep", "wdl", "wide_and_deep"))
class WideDeep(CTRModel):
    """``logit = wide(sparse, dense) + Linear(MLP([field embeddings, dense]))``.

    Field embeddings: the categorical fields and, with ``pool_lists``, each sequence and bag pooled.

    The wide part is linear in the raw ids: first-order weights of every field, a linear map of ``dense``
    and, for each configured field pair in ``crosses``, a weight of the hashed id pair (memorizes
    co-occurrences such as (user country, item category) that the deep part generalizes over). The pair
    ``(a, b)`` of global ids of cross ``c`` hashes to ``(a * A + b * B + c * S) mod cross_buckets``: pure
    integer arithmetic over the whole batch, the same in torch, ONNX and any other runtime.
    """

    def __init__(
        self,
        layout: TableLayout,
        emb_dim: int = 16,
        mlp: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
        crosses: Sequence[Sequence[str]] = (),
        cross_buckets: int = 200_003,
        sparse_grad: bool = False,
        pool_lists: bool = True,
    ) -> None:
        hparams = constructor_hparams(locals())
        super().__init__()
        pairs = [_cross_pair(layout, c) for c in crosses]
        self.hparams = hparams
        self.embedding = FeatureEmbedding(layout, emb_dim, sparse_grad=sparse_grad, list_fields=pool_lists)
        self.dense_linear = nn.Linear(layout.n_dense, 1, bias=False) if layout.n_dense else None
        self.bias = nn.Parameter(torch.zeros(1))
        self.cross_buckets = cross_buckets
        self.cross_table: nn.Embedding | None = None
        if pairs:
            index = torch.tensor(pairs, dtype=torch.long)
            self.register_buffer("cross_left", index[:, 0].contiguous(), persistent=False)
            self.register_buffer("cross_right", index[:, 1].contiguous(), persistent=False)
            self.register_buffer("cross_salt", torch.arange(len(pairs)) * _HASH_SALT, persistent=False)
            self.cross_table = nn.Embedding(cross_buckets, 1, sparse=sparse_grad)
            nn.init.zeros_(self.cross_table.weight)
        n_fields = layout.n_sparse + (layout.n_seq if pool_lists else 0)
        self.deep = MLP(n_fields * emb_dim + layout.n_dense, mlp, dropout, activation, batch_norm)
        self.head = nn.Linear(self.deep.out_dim, 1, bias=False)

    def cross_ids(self, sparse: Tensor) -> Tensor:
        """``sparse [B, F]`` -> hashed cross-product rows ``[B, n_crosses]`` in ``[0, cross_buckets)``."""
        left = sparse.index_select(1, self.cross_left)
        right = sparse.index_select(1, self.cross_right)
        return torch.remainder(left * _HASH_A + right * _HASH_B + self.cross_salt, self.cross_buckets)

    def wide(self, sparse: Tensor, dense: Tensor) -> Tensor:
        """The linear (logistic-regression) logit ``[B]``, bias included."""
        logit = self.embedding.first_order(sparse) + self.bias
        if self.dense_linear is not None:
            logit = logit + self.dense_linear(dense).squeeze(-1)
        if self.cross_table is not None:
            logit = logit + self.cross_table(self.cross_ids(sparse)).sum(dim=(1, 2))
        return logit

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        deep_in = self.embedding.flat_with_dense(sparse, dense, seq)
        return self.wide(sparse, dense) + self.head(self.deep(deep_in)).squeeze(-1)


def _cross_pair(layout: TableLayout, cross: Sequence[str]) -> tuple[int, int]:
    if len(cross) != 2:
        raise CtrzooError(f"a cross must name two sparse fields, got {list(cross)!r}")
    try:
        return layout.field_index(cross[0]), layout.field_index(cross[1])
    except KeyError as err:
        known = ", ".join(f.name for f in layout.sparse)
        raise CtrzooError(f"cross {list(cross)!r}: no sparse field {err.args[0]!r}; fields: {known}") from None
