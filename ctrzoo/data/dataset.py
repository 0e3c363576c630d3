"""A prepared dataset directory: metadata, feature spec and Parquet shards of the fixed layout.

Layout on disk::

    DIR/dataset.json        ``DatasetMeta`` (``ctrzoo.metadata``): format version, kind, inputs + fingerprint,
                            split config, splits (rows, positives, shards), labels, the schema, bad rows,
                            warnings
    DIR/spec.json, vocab/   the fitted FeatureSpec
    DIR/{train,valid,test}/part-NNNNN.parquet
                            columns: label int8, [label.<name> int8 per other label], [weight float32],
                            [user_id string], s.<field> int32 (global ids), d.<field> float32,
                            q.<field> fixed_size_list<int32>[L]
    DIR/raw/test.parquet    the raw test rows, so bundles with other specs can score the same rows

``dataset.json`` is written last and the directory is published by rename, so a directory that has it
is complete. Parquet pages carry CRCs, checked on every read; ``verify`` reads everything back.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ctrzoo.atomic import read_json, recover
from ctrzoo.errors import DatasetError
from ctrzoo.features import FeatureCodec, FeatureSpec, TableLayout
from ctrzoo.metadata import DatasetMeta

DATASET_FORMAT_VERSION = DatasetMeta.FORMATS[-1]
META_FILE = "dataset.json"


def shard_schema(layout: TableLayout, with_user: bool, extra_labels: list[str] | tuple[str, ...] = (),
                 with_weight: bool = False) -> pa.Schema:
    """Columns of an encoded shard: the label (the first label), the other labels, the sample weight, the user
    id (for GAUC), then one column per tensor slot."""
    fields = [pa.field("label", pa.int8())]
    fields += [pa.field(extra_label_column(name), pa.int8()) for name in extra_labels]
    if with_weight:
        fields.append(pa.field("weight", pa.float32()))
    if with_user:
        fields.append(pa.field("user_id", pa.string()))
    fields += [pa.field(f"s.{f.name}", pa.int32()) for f in layout.sparse]
    fields += [pa.field(f"d.{name}", pa.float32()) for name in layout.dense]
    fields += [pa.field(f"q.{s.name}", pa.list_(pa.int32(), layout.seq_len)) for s in layout.seq]
    return pa.schema(fields)


def extra_label_column(name: str) -> str:
    """The shard column of a label other than the first (which is ``label``)."""
    return f"label.{name}"


@dataclass
class PreparedDataset:
    path: Path
    meta: DatasetMeta
    spec: FeatureSpec

    @cached_property
    def codec(self) -> FeatureCodec:
        """The fitted spec compiled (once per opened dataset)."""
        return self.spec.compile()

    @classmethod
    def open(cls, path: str | Path) -> PreparedDataset:
        path = Path(path)
        meta_path = path / META_FILE
        recover(path, META_FILE)  # a publish interrupted between its two renames (where there is no exchange)
        if not path.is_dir():
            raise DatasetError(f"{path}: no such dataset directory (run `ctrzoo prepare` first)")
        if not meta_path.exists():
            raise DatasetError(f"{path}: not a complete prepared dataset ({META_FILE} missing)")
        meta = read_meta(meta_path)
        ds = cls(path, meta, FeatureSpec.load(path))
        for split in meta.splits.values():
            for shard in split.shards:
                if not (path / shard).exists():
                    raise DatasetError(f"{path / shard}: shard listed in {META_FILE} is missing")
        return ds

    def shards(self, split: str) -> list[Path]:
        if split not in self.meta.splits:
            raise DatasetError(f"{self.path}: no split {split!r}; has {sorted(self.meta.splits)}")
        return [self.path / s for s in self.meta.splits[split].shards]

    def rows(self, split: str) -> int:
        return self.meta.splits[split].rows

    @property
    def has_user_id(self) -> bool:
        return bool(self.meta.user_id)

    @property
    def labels(self) -> list[str]:
        """The labels in the shards, the default (column ``label``) first."""
        return list(self.meta.labels) or [self.spec.label or "label"]

    def label_column(self, name: str | None = None) -> str:
        """The shard column of label ``name`` (None: the first); an unknown name is a DatasetError listing them."""
        labels = self.labels
        if name is None or name == labels[0]:
            return "label"
        if name not in labels:
            raise DatasetError(f"{self.path}: no label {name!r}; its labels are {', '.join(labels)}")
        return extra_label_column(name)

    @property
    def has_weight(self) -> bool:
        return bool(self.meta.weight)

    @cached_property
    def schema(self):
        """The ``DatasetSchema`` its raw rows were read with (re-reading them reads them the same way)."""
        from ctrzoo.data.presets import load_preset
        from ctrzoo.data.schema import DatasetSchema

        if self.meta.schema is not None:
            return DatasetSchema.from_dict(self.meta.schema, str(self.path / META_FILE))
        return load_preset(self.meta.kind)  # prepared before schemas were recorded: a built-in format

    @property
    def fingerprint(self) -> str:
        return self.meta.fingerprint

    def raw_path(self, split: str = "test") -> Path:
        rel = self.meta.raw.get(split)
        if not rel:
            raise DatasetError(f"{self.path}: the raw {split} rows were not kept (prepare without --no-raw)")
        return self.path / rel


def read_meta(meta_path: Path) -> DatasetMeta:
    """``dataset.json``, checked (``DatasetError`` naming the file and the key)."""
    return DatasetMeta.from_json(read_json(meta_path, DatasetError, "dataset metadata"), meta_path)


def parquet_file(path: str | Path) -> pq.ParquetFile:
    """Open a shard (or the raw test file), or raise ``DatasetError`` naming it: truncated, empty, not Parquet.

    Pages are checked against the CRC ``prepare`` writes with them (no measurable cost), so a flipped bit
    is an error here instead of silently different features; files without CRCs read as before.
    """
    try:
        return pq.ParquetFile(path, page_checksum_verification=True)
    except FileNotFoundError:
        raise DatasetError(f"{path}: shard file is missing (prepare the data again)") from None
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DatasetError(f"{path}: damaged Parquet file ({_short(exc)}): prepare the data again") from None


def read_row_group(pf: pq.ParquetFile, path: str | Path, group: int, columns: list[str] | None = None) -> pa.Table:
    """One row group, or ``DatasetError`` naming the file and group when its pages do not decode."""
    try:
        return pf.read_row_group(group, columns=columns)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DatasetError(f"{path}: damaged Parquet file, row group {group} ({_short(exc)}): "
                           "prepare the data again") from None


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """A whole Parquet file (some columns), or ``DatasetError`` naming it when it is damaged."""
    pf = parquet_file(path)
    groups = [read_row_group(pf, path, g, columns) for g in range(pf.metadata.num_row_groups)]
    return (pa.concat_tables(groups) if groups
            else pf.schema_arrow.empty_table().select(columns or pf.schema_arrow.names))


def iter_batches(path: str | Path, batch_size: int, columns: list[str] | None = None):
    """Record batches of a Parquet file; a damaged file is a ``DatasetError`` naming it."""
    pf = parquet_file(path)
    it = pf.iter_batches(batch_size=batch_size, columns=columns)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise DatasetError(f"{path}: damaged Parquet file ({_short(exc)}): prepare the data again") from None
        yield batch


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return text if len(text) <= 200 else text[:197] + "..."


def verify(path: str | Path) -> list[str]:
    """Read every shard (footer, schema and all rows) and the raw test file; one line per problem found.

    Row counts are checked against ``dataset.json`` (the raw test file must hold the test split's rows).
    Slow (reads the whole dataset): ``ctrzoo info --verify``, not every open.
    """
    path = Path(path)
    meta_path = path / META_FILE
    if not path.is_dir():
        return [f"{path}: no such dataset directory"]
    try:
        meta = read_meta(meta_path)
        spec = FeatureSpec.load(path)
    except Exception as exc:
        return [str(exc)]
    problems: list[str] = []
    expected = shard_schema(spec.compile().layout, with_user=bool(meta.user_id), extra_labels=meta.labels[1:],
                            with_weight=bool(meta.weight))
    for name, split in meta.splits.items():
        rows = 0
        for rel in split.shards:
            n, problem = _read_all(path / rel, expected)
            if problem:
                problems.append(problem)
            rows += n
        if rows != split.rows and not any(p.startswith(str(path / name)) for p in problems):
            problems.append(f"{path / name}: {rows} rows in the shards, {META_FILE} says {split.rows}")
    raw = meta.raw.get("test")
    if raw:
        n, problem = _read_all(path / raw, None)
        want = meta.splits["test"].rows if "test" in meta.splits else None
        if problem:
            problems.append(problem)
        elif want is not None and n != want:
            problems.append(f"{path / raw}: {n} raw test rows, {META_FILE} says the test split has {want}")
    return problems


def _read_all(path: Path, schema: pa.Schema | None) -> tuple[int, str | None]:
    """(rows read, problem or None): the footer, the schema, every row group decoded, rows as the footer says."""
    try:
        pf = parquet_file(path)
        if schema is not None and not pf.schema_arrow.equals(schema):
            return 0, f"{path}: columns do not match the dataset's spec"
        rows = 0
        for g in range(pf.metadata.num_row_groups):
            table = read_row_group(pf, path, g)
            table.validate(full=True)
            if table.num_rows != pf.metadata.row_group(g).num_rows:
                return rows, f"{path}: row group {g} has {table.num_rows} rows, its footer says " \
                             f"{pf.metadata.row_group(g).num_rows}"
            rows += table.num_rows
        return rows, None
    except DatasetError as exc:
        return 0, str(exc)
    except (OSError, ValueError, pa.ArrowException) as exc:
        return 0, f"{path}: damaged Parquet file ({_short(exc)})"
