"""Behavior Sequence Transformer (Chen et al., DLP-KDD 2019): a transformer layer over the history with the
target item appended."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctrzoo.errors import CtrzooError
from ctrzoo.features.layout import TableLayout
from ctrzoo.models.registry import CTRModel, constructor_hparams, register_model
from ctrzoo.nn import MLP, BagPooling, FeatureEmbedding, TransformerLayer, padding_mask

POOLINGS = ("mean", "target", "concat")


@register_model("bst", aliases=("behavior_sequence_transformer",))
class BST(CTRModel):
    """``logit = Linear(MLP([flatten(field embeddings), dense, pool(Z_1), ..., pool(Z_S), bags]))``.

    For each behaviour sequence ``s`` (items ``e_1..e_n`` of a row, oldest first, right-padded to ``L``)
    with target ``e_a``, the embedding of the sparse field whose table it shares (as in DIN)::

        X   = [e_1 + p_n, ..., e_n + p_1, <padding>, e_a + p_0]    [B, L + 1, D]
        Z_s = TransformerLayer^num_layers(X, padding masked as keys)

    ``p_j`` are learned position embeddings by recency (the paper's ``pos(v_i) = t(v_t) - t(v_i)``: 0 for
    the target, 1 for the most recent click), added to the items. ``pooling`` reduces ``Z_s`` over the real
    tokens: ``mean`` (FuxiCTR's default), ``target`` (the target token's output) or ``concat`` (every slot
    flattened, padding as zeros: the paper's, ``(L + 1) * D`` wide). Bags are pooled by their layout's
    pooling, dense features concatenated; without sequences the model is an MLP. The inference rewrite
    (history padding removed, ``scaled_dot_product_attention``) is ``ctrzoo.runtime.fused_bst.FusedBST``.
    """

    def __init__(
        self,
        layout: TableLayout,
        emb_dim: int = 16,
        mlp: Sequence[int] = (200, 80),
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
        num_heads: int = 2,
        num_layers: int = 1,
        ffn_dim: int = 64,
        attention_dropout: float = 0.0,
        pooling: str = "mean",
        sparse_grad: bool = False,
    ) -> None:
        hparams = constructor_hparams(locals())
        super().__init__()
        if pooling not in POOLINGS:
            raise CtrzooError(f"unknown BST pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
        if num_layers < 1:
            raise CtrzooError(f"BST num_layers must be >= 1, got {num_layers}")
        self.hparams = hparams
        self.sequences = [(k, s.shares_index) for k, s in layout.sequences]  # (seq slot, target field)
        self.pooling = pooling
        self.embedding = FeatureEmbedding(layout, emb_dim, sparse_grad=sparse_grad, list_fields=False)
        # per sequence: position 0 = the target, j = the j-th most recent item
        self.positions = nn.ParameterList(nn.Parameter(torch.randn(layout.seq_len + 1, emb_dim) * 1e-2)
                                          for _ in self.sequences)
        self.encoders = nn.ModuleList(
            nn.ModuleList(TransformerLayer(emb_dim, num_heads, ffn_dim, attention_dropout) for _ in range(num_layers))
            for _ in self.sequences
        )
        self.bags = BagPooling(layout.bags)
        per_seq = emb_dim * (layout.seq_len + 1 if pooling == "concat" else 1)
        in_dim = ((layout.n_sparse + len(self.bags.slots)) * emb_dim + len(self.sequences) * per_seq
                  + layout.n_dense)
        self.deep = MLP(in_dim, mlp, dropout, activation, batch_norm)
        self.head = nn.Linear(self.deep.out_dim, 1)

    def forward(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        fields = self.embedding(sparse)
        parts = [fields.flatten(1), dense]
        if self.sequences or self.bags.slots:
            history = self.embedding.lookup_seq(seq)  # [B, S, L, D]
            mask = padding_mask(seq)  # [B, S, L]
            for i, (k, target) in enumerate(self.sequences):
                keep, items = mask[:, k], history[:, k]
                if self.training and self.pooling != "concat":  # all-padding columns change nothing: drop them
                    n = max(int(keep.sum(1).max()), 1)
                    keep, items = keep[:, :n], items[:, :n]
                parts.append(self.encode(i, fields[:, target], items, keep))
            if self.bags.slots:
                parts.append(self.bags(history[:, self.bags.slots], mask[:, self.bags.slots]))
        return self.head(self.deep(torch.cat(parts, dim=1))).squeeze(-1)

    def encode(self, i: int, target: Tensor, items: Tensor, keep: Tensor) -> Tensor:
        """Sequence ``i``'s pooled transformer output: ``target [B, D]``, ``items [B, L, D]``, ``keep [B, L]``."""
        positions = self.positions[i]
        recency = (keep.sum(1, keepdim=True) - torch.arange(items.shape[1])).clamp(min=0)  # [B, L]; padding: 0
        x = torch.cat([items + positions[recency], (target + positions[0]).unsqueeze(1)], dim=1)
        key_mask = torch.cat([keep, torch.ones_like(keep[:, :1])], dim=1)  # the target is always a real token
        for layer in self.encoders[i]:
            x = layer(x, key_mask)
        if self.pooling == "target":
            return x[:, -1]
        m = key_mask.unsqueeze(-1).to(x.dtype)
        if self.pooling == "mean":
            return (x * m).sum(1) / m.sum(1)
        return (x * m).flatten(1)
