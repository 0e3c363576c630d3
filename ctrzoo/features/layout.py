"""The fixed tensor layout every model, exporter and runtime reads.

Encoded batches are three tensors:

* ``sparse`` int64 ``[B, n_sparse]``: one id per categorical field, already offset into one shared
  embedding table (global row ``offset + local_id``; local 0 = missing, 1 = out of vocabulary);
* ``dense`` float32 ``[B, n_dense]``: transformed numeric features;
* ``seq`` int64 ``[B, n_seq, L]``: behaviour sequences, ids in the table of the field they share, padded
  with 0 on the right (global row 0 is the padding row and never a feature value).

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
    """A behaviour sequence that looks up its ids in the table of ``sparse[shares_index]``."""

    name: str
    shares: str
    shares_index: int
    max_len: int


@dataclass(frozen=True)
class TableLayout:
    sparse: tuple[FieldLayout, ...]
    dense: tuple[str, ...]
    seq: tuple[SequenceLayout, ...]
    seq_len: int
    num_embeddings: int

    @property
    def n_sparse(self) -> int:
        return len(self.sparse)

    @property
    def n_dense(self) -> int:
        return len(self.dense)

    @property
    def n_seq(self) -> int:
        return len(self.seq)

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
            SequenceLayout(name, shares, names.index(shares), max_len)
            for name, (shares, max_len) in (seq or {}).items()
        )
        seq_len = max((s.max_len for s in seq_layouts), default=0)
        return cls(tuple(fields), tuple(dense), seq_layouts, seq_len, offset)
