"""A prepared dataset directory: metadata, feature spec and Parquet shards of the fixed layout.

Layout on disk::

    DIR/dataset.json        format version, kind, inputs + fingerprint, split config, rows, bad rows
    DIR/spec.json, vocab/   the fitted FeatureSpec
    DIR/{train,valid,test}/part-NNNNN.parquet
                            columns: label int8, [user_id string], s.<field> int32 (global ids),
                            d.<field> float32, q.<field> fixed_size_list<int32>[L]
    DIR/raw/test.parquet    the raw test rows, so bundles with other specs can score the same rows

``dataset.json`` is written last and the directory is published by rename, so a directory that has it
is complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ctrzoo.atomic import read_json
from ctrzoo.errors import DatasetError
from ctrzoo.features import FeatureSpec

DATASET_FORMAT_VERSION = 1
META_FILE = "dataset.json"


def shard_schema(spec: FeatureSpec, with_user: bool) -> pa.Schema:
    layout = spec.layout()
    fields = [pa.field("label", pa.int8())]
    if with_user:
        fields.append(pa.field("user_id", pa.string()))
    fields += [pa.field(f"s.{f.name}", pa.int32()) for f in layout.sparse]
    fields += [pa.field(f"d.{name}", pa.float32()) for name in layout.dense]
    fields += [pa.field(f"q.{s.name}", pa.list_(pa.int32(), layout.seq_len)) for s in layout.seq]
    return pa.schema(fields)


@dataclass
class PreparedDataset:
    path: Path
    meta: dict[str, Any]
    spec: FeatureSpec

    @classmethod
    def open(cls, path: str | Path) -> PreparedDataset:
        path = Path(path)
        meta_path = path / META_FILE
        if not path.is_dir():
            raise DatasetError(f"{path}: no such dataset directory (run `ctrzoo prepare` first)")
        if not meta_path.exists():
            raise DatasetError(f"{path}: not a complete prepared dataset ({META_FILE} missing)")
        meta = read_json(meta_path, DatasetError, "dataset metadata")
        if meta.get("format_version") != DATASET_FORMAT_VERSION:
            raise DatasetError(
                f"{meta_path}: dataset format version {meta.get('format_version')!r}, "
                f"this ctrzoo reads {DATASET_FORMAT_VERSION}: prepare the data again"
            )
        ds = cls(path, meta, FeatureSpec.load(path))
        for split in meta["splits"].values():
            for shard in split["shards"]:
                if not (path / shard).exists():
                    raise DatasetError(f"{path / shard}: shard listed in {META_FILE} is missing")
        return ds

    def shards(self, split: str) -> list[Path]:
        if split not in self.meta["splits"]:
            raise DatasetError(f"{self.path}: no split {split!r}; has {sorted(self.meta['splits'])}")
        return [self.path / s for s in self.meta["splits"][split]["shards"]]

    def rows(self, split: str) -> int:
        return int(self.meta["splits"][split]["rows"])

    @property
    def has_user_id(self) -> bool:
        return bool(self.meta.get("user_id"))

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def raw_path(self, split: str = "test") -> Path:
        rel = self.meta.get("raw", {}).get(split)
        if not rel:
            raise DatasetError(f"{self.path}: the raw {split} rows were not kept (prepare without --no-raw)")
        return self.path / rel
