"""Embedding tables: one shared table for every categorical field, plus per-dense-feature vectors.

``sparse`` ids are already global rows of one table (``offset + local_id``, see
``ctrzoo.features.layout``), so every field is looked up with a single ``nn.Embedding`` call instead of one
module per field: fewer kernels, one parameter to regularize and one row space for sparse optimizers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ctrzoo.features.layout import PADDING_ID, TableLayout, VectorLayout
from ctrzoo.nn.sequence import SequencePooling, padding_mask


class FeatureEmbedding(nn.Module):
    """All categorical fields in one ``[num_embeddings, dim]`` table plus a 1-dim first-order table.

    Row 0 is the padding row in both tables: it starts at zero and ``padding_idx`` keeps its gradient at
    zero, so it never trains and padded sequence positions always embed to zeros.

    Args:
        layout: the fitted table layout (only ``num_embeddings`` is needed for the tables).
        dim: embedding size.
        sparse_grad: make both tables produce sparse gradients, so a trainer can update only the touched
            rows (``torch.optim.SparseAdam``) instead of the whole table.
        init_std: std of the normal init of the ``dim``-sized table; small, as in common CTR libraries, so
            untrained ids start near the origin. The first-order table starts at zero (a plain logistic
            regression start).
        first_order: keep the 1-dim first-order table (models without a linear term, such as the two
            towers, leave it out).
        dense_fields: also hold one learned vector per dense feature, so that :meth:`fields` returns each
            dense feature as a field (``value * vector``, as DeepFM) after the categorical ones.

    Example::

        layout = spec.compile().layout             # e.g. 3 fields in a 1000-row table
        emb = FeatureEmbedding(layout, dim=8)
        sparse = torch.tensor([[2, 310, 745]])     # [B=1, F=3] global ids
        fields, linear = emb.lookup(sparse)        # [1, 3, 8], [1]
        history = emb.lookup_seq(seq)              # seq [B, S, L] -> [B, S, L, 8], padding rows are zeros
        penalty_rows = emb.touched_rows(sparse, seq)  # distinct non-padding ids, for row-wise penalties
    """

    def __init__(self, layout: TableLayout, dim: int, sparse_grad: bool = False, init_std: float = 1e-2,
                 first_order: bool = True, dense_fields: bool = False, list_fields: bool = True) -> None:
        super().__init__()
        num = layout.num_embeddings
        self.dim = dim
        n_scalar = layout.n_scalar_dense
        self.dense = DenseEmbedding(n_scalar, dim, init_std) if dense_fields and n_scalar else None
        self.vectors = VectorFields(layout.vectors, dim) if dense_fields and layout.vectors else None
        self.lists = ListPooling(layout) if list_fields and layout.n_seq else None
        self.n_scalar_dense = n_scalar
        self.num_fields = (layout.n_sparse + (layout.n_seq if self.lists is not None else 0)
                           + (n_scalar if self.dense is not None else 0) + len(layout.vectors if dense_fields else ()))
        self.table = nn.Embedding(num, dim, padding_idx=PADDING_ID, sparse=sparse_grad)
        self.linear_table = nn.Embedding(num, 1, padding_idx=PADDING_ID, sparse=sparse_grad) if first_order else None
        nn.init.normal_(self.table.weight, std=init_std)
        if self.linear_table is not None:
            nn.init.zeros_(self.linear_table.weight)
        with_padding_zeroed(self.table)

    @property
    def sparse_grad(self) -> bool:
        return self.table.sparse

    @sparse_grad.setter
    def sparse_grad(self, value: bool) -> None:
        self.table.sparse = value
        if self.linear_table is not None:
            self.linear_table.sparse = value

    @property
    def weight(self) -> nn.Parameter:
        """The ``[num_embeddings, dim]`` table: what weight penalties and sparse optimizers act on."""
        return self.table.weight

    @staticmethod
    def touched_rows(*ids: Tensor) -> Tensor:
        """Distinct global rows ``[U]`` present in ``ids`` (any shapes: ``sparse [B, F]``, ``seq [B, S, L]``),
        padding excluded: the rows one step's gradient can change."""
        flat = torch.cat([t.reshape(-1) for t in ids])
        rows = torch.unique(flat)
        return rows[rows != PADDING_ID]

    def forward(self, sparse: Tensor) -> Tensor:
        """``sparse [B, F]`` global ids -> field embeddings ``[B, F, dim]``."""
        return self.table(sparse)

    def first_order(self, sparse: Tensor) -> Tensor:
        """``sparse [B, F]`` -> ``[B]``: the linear (logistic-regression) term, summed over fields."""
        if self.linear_table is None:
            raise RuntimeError("this FeatureEmbedding was built with first_order=False")
        return self.linear_table(sparse).sum(dim=(1, 2))

    def lookup(self, sparse: Tensor) -> tuple[Tensor, Tensor]:
        """``(self(sparse), self.first_order(sparse))`` in one go: ``[B, F, dim]`` and ``[B]``.

        When training with sparse gradients the batch's ids are deduplicated first (one sort): both tables
        are read, and their gradients made, for the ``U`` distinct rows only (a batch of 4096 Criteo rows
        has ~20k distinct ids among 106k), and the per-id gradient sums come from one ``index_add_`` into
        ``[U, dim]`` instead of a sparse gradient with a row per occurrence that the optimizer must
        deduplicate per table. The values are the same as the two plain lookups.
        """
        if not (self.sparse_grad and torch.is_grad_enabled()) or self.linear_table is None:
            return self(sparse), self.first_order(sparse)
        rows, inverse = torch.unique(sparse, sorted=True, return_inverse=True)
        flat = inverse.reshape(-1)
        fields = self.table(rows).index_select(0, flat).view(*sparse.shape, self.dim)
        first = self.linear_table(rows).index_select(0, flat).view(sparse.shape).sum(dim=1)
        return fields, first

    def fields(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        """A row's field vectors ``[B, num_fields, dim]``: the categorical fields, each sequence and bag
        pooled (``list_fields``, by its layout's pooling), then (``dense_fields``) every numeric feature as a
        field (value * vector) and every dense vector projected to one field.

        The one place the field-interaction models get their fields from, so a new kind of field reaches
        all of them at once.
        """
        return self._with_extra_fields(self(sparse), dense, seq)

    def flat_with_dense(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        """``[flatten(fields), dense]``, ``[B, num_fields * dim + D]``: the MLP and cross-network input of DCN,
        DCN-V2, Wide&Deep's deep part and the multi-task models (``flat_width(n_dense)`` wide)."""
        return torch.cat([self.fields(sparse, dense, seq).flatten(1), dense], dim=1)

    def flat_width(self, n_dense: int) -> int:
        """The width of ``flat_with_dense`` for ``n_dense`` dense columns."""
        return self.num_fields * self.dim + n_dense

    def fields_and_first_order(self, sparse: Tensor, dense: Tensor, seq: Tensor) -> tuple[Tensor, Tensor]:
        """``(self.fields(...), self.first_order(sparse))`` through :meth:`lookup`'s one deduplicated read."""
        fields, first = self.lookup(sparse)
        return self._with_extra_fields(fields, dense, seq), first

    def list_fields(self, seq: Tensor) -> Tensor | None:
        """``seq [B, S, L]`` -> each slot pooled ``[B, S, dim]`` (None without ``list_fields`` or slots)."""
        return None if self.lists is None else self.lists(self.table(seq), seq)

    def _with_extra_fields(self, fields: Tensor, dense: Tensor, seq: Tensor) -> Tensor:
        parts = [fields]
        if self.lists is not None:
            parts.append(self.lists(self.table(seq), seq))
        if self.dense is not None:
            parts.append(self.dense(dense[:, : self.n_scalar_dense]))
        if self.vectors is not None:
            parts.append(self.vectors(dense))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def lookup_seq(self, seq: Tensor) -> Tensor:
        """``seq [B, S, L]`` global ids (0 = padding) -> ``[B, S, L, dim]``; padded positions are zeros."""
        return self.table(seq)


class ListPooling(nn.Module):
    """Every ``seq`` slot (behaviour sequences and multi-value bags) pooled into one field by its layout's
    ``pooling``: ``embedded [B, S, L, D]`` and ``ids [B, S, L]`` -> ``[B, S, D]``; padding never counts."""

    def __init__(self, layout: TableLayout) -> None:
        super().__init__()
        modes = [s.pooling for s in layout.seq]
        self.single = modes[0] if len(set(modes)) == 1 else None
        self.pools = nn.ModuleList(SequencePooling(m) for m in modes)

    def forward(self, embedded: Tensor, ids: Tensor) -> Tensor:
        mask = padding_mask(ids)
        if self.single is not None:  # one mode for every slot: one call
            return self.pools[0](embedded, mask)
        return torch.stack([pool(embedded[:, k], mask[:, k]) for k, pool in enumerate(self.pools)], dim=1)


class VectorFields(nn.Module):
    """Each dense vector ``dense[:, start:start + dim]`` projected to one field: ``[B, n_dense] -> [B, V, D]``."""

    def __init__(self, vectors: tuple[VectorLayout, ...], dim: int) -> None:
        super().__init__()
        self.slices = [(v.start, v.start + v.dim) for v in vectors]
        self.projections = nn.ModuleList(nn.Linear(v.dim, dim) for v in vectors)

    def forward(self, dense: Tensor) -> Tensor:
        return torch.stack([proj(dense[:, a:b]) for (a, b), proj in zip(self.slices, self.projections)], dim=1)


class DenseEmbedding(nn.Module):
    """Turn ``dense [B, n_dense]`` into per-feature fields ``[B, n_dense, dim]`` (value * learned vector).

    This lets field-interaction layers (FM, cross network) treat numeric features like categorical ones.
    """

    def __init__(self, n_dense: int, dim: int, init_std: float = 1e-2) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_dense, dim))
        nn.init.normal_(self.weight, std=init_std)

    def forward(self, dense: Tensor) -> Tensor:
        return dense.unsqueeze(-1) * self.weight


def split_sparse_params(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split a model's parameters into (sparse-gradient embedding weights, everything else).

    A trainer gives the first list to ``SparseAdam`` and the second to a dense optimizer.
    """
    sparse_ids: set[int] = set()
    sparse: list[nn.Parameter] = []
    for m in module.modules():
        if isinstance(m, nn.Embedding) and m.sparse:
            sparse.append(m.weight)
            sparse_ids.add(id(m.weight))
    dense = [p for p in module.parameters() if id(p) not in sparse_ids]
    return sparse, dense


def with_padding_zeroed(embedding: nn.Embedding) -> nn.Embedding:
    """Zero the padding row of ``embedding`` in place (after a custom init) and return it."""
    if embedding.padding_idx is not None:
        embedding.weight.data[embedding.padding_idx].zero_()
    return embedding
