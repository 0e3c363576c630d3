"""The fixed tensor layout every model, exporter and runtime reads.

Encoded batches are three tensors:

* ``sparse`` int64 ``[B, n_sparse]``: one id per categorical field, already offset into one shared
  embedding table (global row ``offset + local_id``; local 0 = missing, 1 = out of vocabulary);
* ``dense`` float32 ``[B, n_dense]``: transformed numeric features, then each dense vector's components;
* ``seq`` int64 ``[B, n_seq, L]``: behaviour sequences (ids in the table of the field they share) and
  multi-value bags (ids in their own table or a shared one), padded with 0 on the right (global row 0 is
  the padding row and never a feature value).

``TableLayout`` is what a model needs to know about a fitted ``FeatureSpec`` to build its layers, and no
more: models never see vocabularies.
"""

from __future__ import annotations

from dataclasses import dataclass

PADDING_ID = 0


@dataclass(frozen=True)
class FieldLayout:
    """One categorical field's slice ``[offset, offset + size)`` of the shared table."""

    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class SequenceLayout:
    """One slot of ``seq``: a behaviour sequence (``kind="sequence"``) whose ids are in the table of
    ``sparse[shares_index]`` (its attention target), or a multi-value bag (``kind="multi_value"``) with
    ids in its own slice ``[offset, offset + size)`` (``shares`` None) or in a shared field's table.
    ``pooling`` is how models without attention reduce it to one field vector."""

    name: str
    shares: str | None
    shares_index: int | None
    max_len: int
    kind: str = "sequence"
    pooling: str = "mean"
    offset: int = 0
    size: int = 0

    @property
    def is_sequence(self) -> bool:
        return self.kind == "sequence"


@dataclass(frozen=True)
class VectorLayout:
    """A dense vector: columns ``dense[:, start:start + dim]``."""

    name: str
    start: int
    dim: int


@dataclass(frozen=True)
class TableLayout:
    sparse: tuple[FieldLayout, ...]
    dense: tuple[str, ...]
    seq: tuple[SequenceLayout, ...]
    seq_len: int
    num_embeddings: int
    vectors: tuple[VectorLayout, ...] = ()

    @property
    def n_sparse(self) -> int:
        return len(self.sparse)

    @property
    def n_dense(self) -> int:
        return len(self.dense)

    @property
    def n_seq(self) -> int:
        return len(self.seq)

    @property
    def sequences(self) -> tuple[tuple[int, SequenceLayout], ...]:
        """(slot, layout) of the behaviour sequences (the slots attention models attend over)."""
        return tuple((k, s) for k, s in enumerate(self.seq) if s.is_sequence)

    @property
    def bags(self) -> tuple[tuple[int, SequenceLayout], ...]:
        """(slot, layout) of the multi-value bags (always pooled)."""
        return tuple((k, s) for k, s in enumerate(self.seq) if not s.is_sequence)

    @property
    def n_scalar_dense(self) -> int:
        """Numeric features: the first columns of ``dense``, before the vectors' components."""
        return self.n_dense - sum(v.dim for v in self.vectors)

    def field_index(self, name: str) -> int:
        for i, f in enumerate(self.sparse):
            if f.name == name:
                return i
        raise KeyError(name)

    @classmethod
    def from_sizes(
        cls,
        sizes: dict[str, int],
        dense: tuple[str, ...] = (),
        seq: dict[str, tuple[str, int]] | None = None,
    ) -> TableLayout:
        """Build a layout from per-field table sizes (handy in tests): offsets start after the padding row."""
        fields, offset = [], 1
        for name, size in sizes.items():
            fields.append(FieldLayout(name, offset, size))
            offset += size
        names = list(sizes)
        seq_layouts = tuple(
            SequenceLayout(name, shares, names.index(shares), max_len, offset=fields[names.index(shares)].offset,
                           size=fields[names.index(shares)].size)
            for name, (shares, max_len) in (seq or {}).items()
        )
        seq_len = max((s.max_len for s in seq_layouts), default=0)
        return cls(tuple(fields), tuple(dense), seq_layouts, seq_len, offset)
