"""The item catalogue: item id -> raw item features, one row per item, stored as Parquet.

Retrieval returns catalogue positions; the catalogue turns them into item ids and gives the ranking
model the candidates' raw features, so ``/recommend`` ranks with the same encoder as ``/rank``. A
catalogue read from a file is checked strictly (no duplicate or missing ids, not empty, the columns the
item tower reads); one built from logs keeps the last row seen per item, since attributes can change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

from ctrzoo.features import Categorical, FeatureCodec, FeatureSpec
from ctrzoo.features.columns import categorical_strings
from ctrzoo.features.vocab import FIRST_ID, MISSING_ID, OOV_ID
from ctrzoo.retrieval.errors import RetrievalError
from ctrzoo.retrieval.towers import TowerSplit, TwoTower

CATALOGUE_FILE = "catalogue.parquet"


def item_columns(spec: FeatureSpec, split: TowerSplit) -> tuple[str, list[str]]:
    """(raw id column, raw columns of the other item features) the catalogue must hold."""
    id_col = spec[split.item_id].column
    cols = [spec[n].column for n in split.item]
    return id_col, [c for i, c in enumerate(cols) if c != id_col and c not in cols[:i]]


@dataclass
class Catalogue:
    """``table``: the id column (canonical strings) first, then raw item feature columns."""

    table: pa.Table
    id_column: str
    source: str = "catalogue"

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def ids(self) -> pa.Array:
        return self.table.column(self.id_column).combine_chunks()

    @property
    def feature_columns(self) -> list[str]:
        return [c for c in self.table.column_names if c != self.id_column]

    def rows(self, positions: np.ndarray) -> pa.Table:
        """Raw rows at catalogue ``positions`` (what the ranking model scores)."""
        return self.table.take(pa.array(np.asarray(positions, dtype=np.int64)))

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_rows(cls, table: pa.Table, id_column: str, columns: list[str], source: str = "rows") -> Catalogue:
        """Distinct items of log rows, the last row of each item winning; rows without an id are dropped."""
        missing = [c for c in [id_column, *columns] if c not in table.column_names]
        if missing:
            raise RetrievalError(f"{source}: no column(s) {missing} to build the catalogue from")
        ids = categorical_strings(_plain(table.column(id_column)), id_column)
        keep = pc.is_valid(ids)
        table = pa.table({id_column: ids, **{c: _plain(table.column(c)) for c in columns}}).filter(keep)
        codes, _ = pd.factorize(table.column(id_column).to_numpy(zero_copy_only=False))
        n = len(codes)
        # last occurrence per id: unique over the reversed codes, positions mapped back, then in id order
        _, first_rev = np.unique(codes[::-1], return_index=True)
        last = np.sort(n - 1 - first_rev)
        return cls(table.take(pa.array(last)), id_column, source)

    @classmethod
    def read(cls, path: str | Path, id_column: str, columns: list[str]) -> Catalogue:
        """A catalogue file (Parquet, or CSV/TSV with a header), checked strictly."""
        path = Path(path)
        if not path.is_file():
            raise RetrievalError(f"{path}: no such catalogue file")
        try:
            if path.suffix in (".csv", ".tsv", ".txt"):
                opts = pacsv.ConvertOptions(column_types={id_column: pa.string()}, strings_can_be_null=True)
                parse = pacsv.ParseOptions(delimiter="\t" if path.suffix == ".tsv" else ",")
                table = pacsv.read_csv(path, parse_options=parse, convert_options=opts)
            else:
                table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise RetrievalError(f"{path}: cannot read the catalogue ({exc})") from None
        missing = [c for c in [id_column, *columns] if c not in table.column_names]
        if missing:
            raise RetrievalError(f"{path}: catalogue lacks column(s) {missing} (has {table.column_names})")
        ids = categorical_strings(_plain(table.column(id_column)), id_column)
        if table.num_rows == 0:
            raise RetrievalError(f"{path}: the catalogue is empty (no items to index)")
        nulls = np.flatnonzero(~pc.is_valid(ids).to_numpy(zero_copy_only=False))
        if nulls.size:
            raise RetrievalError(f"{path}: {nulls.size} row(s) without an item id in column {id_column!r} "
                                 f"(first: row {int(nulls[0])})")
        counts = pc.value_counts(ids)
        dupes = counts.filter(pc.greater(counts.field("counts"), 1))
        if len(dupes):
            examples = dupes.field("values").to_pylist()[:5]
            raise RetrievalError(f"{path}: {len(dupes)} duplicate item id(s) in column {id_column!r}, e.g. "
                                 f"{examples}: a catalogue holds each item once")
        return cls(pa.table({id_column: ids, **{c: _plain(table.column(c)) for c in columns}}), id_column, str(path))

    @classmethod
    def load(cls, path: str | Path, id_column: str) -> Catalogue:
        """A catalogue saved by ``save`` (the bundle's or an index's): every column it holds."""
        table = pq.read_table(path) if Path(path).is_file() else None
        if table is None:
            raise RetrievalError(f"{path}: missing catalogue file")
        cols = [c for c in table.column_names if c != id_column]
        return cls.read(path, id_column, cols)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        pq.write_table(self.table, path)
        return path

    # -- checks and encoding -------------------------------------------------------------------------
    def encode(self, spec: FeatureSpec, model: TwoTower, allow_unknown: bool = False,
               codec: FeatureCodec | None = None) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """The item tower's inputs for every item, and whether each id is known to the vocabulary.

        An id the model never saw would be embedded as "out of vocabulary", by its other features only:
        an error unless ``allow_unknown`` (then those items are retrievable by their attributes).
        """
        if len(self) == 0:
            raise RetrievalError(f"{self.source}: the catalogue is empty (no items to index)")
        # item columns only: the user tower reads the rest
        batch = (codec or spec.compile()).encode(self.table, allow_missing=True)
        sparse, dense = model.item_inputs(torch.from_numpy(batch.sparse), torch.from_numpy(batch.dense))
        local = sparse[:, model.item_id_col].numpy() - model.item_field.offset
        feature = spec[model.split.item_id]
        known = (local >= FIRST_ID if isinstance(feature, Categorical) and not feature.hash_buckets
                 else local != MISSING_ID)
        if not known.all() and not allow_unknown:
            bad = np.flatnonzero(local == OOV_ID)
            examples = self.ids.take(pa.array(bad[:5])).to_pylist()
            raise RetrievalError(
                f"{self.source}: {bad.size} of {len(self)} item id(s) in column {self.id_column!r} are unknown to "
                f"the model's vocabulary of {model.split.item_id!r}, e.g. {examples}; pass allow_unknown "
                "(--allow-unknown-items) to retrieve them by their other features"
            )
        return sparse, dense, known


def _plain(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One chunk, dictionary columns decoded (Parquet round trips and ``take`` stay simple)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.dictionary_decode() if pa.types.is_dictionary(arr.type) else arr


def catalogue_from_dataset(dataset, split: TowerSplit, block_bytes: int = 32 << 20) -> tuple[Catalogue, dict]:
    """Distinct items of a prepared dataset's raw input files (all splits), last row of each item winning.

    Items whose id is out of the vocabulary (rarer than its min count) are left out: the model has no
    embedding of their own for them. Returns the catalogue and counts for the bundle's metadata.
    """
    from ctrzoo.data.reader import BadRows, read_blocks

    spec = dataset.spec
    id_col, cols = item_columns(spec, split)
    paths = [Path(i.path) for i in dataset.meta.inputs]
    gone = [str(p) for p in paths if not p.is_file()]
    if not paths or gone:
        raise RetrievalError(f"{dataset.path}: the raw input file(s) {gone or '(none recorded)'} are needed to build "
                             "the item catalogue: restore them, or pass a catalogue file (--items)")
    parts = []
    for block in read_blocks(paths, dataset.schema, BadRows(), block_bytes):
        parts.append(Catalogue.from_rows(block.table, id_col, cols, str(paths[0])).table)
    if not parts:
        raise RetrievalError(f"{paths[0]}: no rows to build the catalogue from")
    merged = Catalogue.from_rows(pa.concat_tables(parts, promote_options="permissive"), id_col, cols,
                                 str(paths[0]))
    feature = spec[split.item_id]
    known = np.ones(len(merged), dtype=bool)
    if isinstance(feature, Categorical) and not feature.hash_buckets:
        known = dataset.codec.local_ids(split.item_id, merged.ids) >= FIRST_ID
    out = Catalogue(merged.table.filter(pa.array(known)), id_col, f"{dataset.path} (catalogue)")
    if len(out) == 0:
        raise RetrievalError(f"{dataset.path}: no item of the raw rows is in the vocabulary of {split.item_id!r}")
    return out, {"items": len(out), "distinct_in_rows": len(merged), "left_out_unknown": int((~known).sum())}


def check_ids(catalogue: Catalogue, ids: list) -> np.ndarray:
    """Catalogue positions of ``ids`` (canonical strings); an id not in the catalogue is an error naming it."""
    wanted = categorical_strings(pa.array([None if v is None else v for v in ids]), catalogue.id_column)
    pos = pc.index_in(wanted, value_set=catalogue.ids).to_numpy(zero_copy_only=False)
    missing = [ids[i] for i in np.flatnonzero(pd.isna(pos))]
    if missing:
        raise RetrievalError(f"item id(s) {missing[:5]} not in the catalogue ({catalogue.source})")
    return pos.astype(np.int64)
