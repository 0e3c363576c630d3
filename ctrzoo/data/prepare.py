"""``ctrzoo prepare``: raw logs -> a prepared dataset, in two streaming passes, published atomically.

Pass 1 reads every block, assigns splits and counts vocabulary values and numeric moments on the
training rows only; pass 2 encodes every block with the fitted spec into Parquet shards. Memory holds
one block and the vocabularies, never the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

import ctrzoo
from ctrzoo.data.dataset import DATASET_FORMAT_VERSION, META_FILE, shard_schema
from ctrzoo.data.formats import FORMATS, open_raw
from ctrzoo.data.reader import DEFAULT_BLOCK_BYTES, BadRows, check_inputs, read_blocks
from ctrzoo.data.splits import SPLITS, SplitConfig
from ctrzoo.errors import DataError
from ctrzoo.features import EncodedBatch, FeatureEncoder, FeatureSpec, SpecFitter


@dataclass
class PrepareOptions:
    split: SplitConfig = field(default_factory=SplitConfig)
    strict: bool = False
    block_bytes: int = DEFAULT_BLOCK_BYTES
    shard_rows: int = 2_000_000
    keep_raw_test: bool = True
    progress: bool | None = None  # None: a bar only on a terminal


def prepare(kind: str, inputs: list[str | Path], out: str | Path, spec: FeatureSpec | None = None,
            options: PrepareOptions | None = None) -> dict:
    """Prepare ``inputs`` of dataset ``kind`` into ``out``; returns the dataset metadata."""
    opts = options or PrepareOptions()
    if kind not in FORMATS:
        raise DataError(f"unknown dataset kind {kind!r}; known: {sorted(FORMATS)}")
    paths = check_inputs(inputs)
    out = Path(out)
    _check_replaceable(out)
    spec = (spec or FORMATS[kind].default_spec()).unfitted()
    user_col = spec.user_id
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.perf_counter()
    try:
        total_rows = _count_lines(paths, kind) if opts.split.method == "order" else None
        bad = BadRows(strict=opts.strict)
        hasher = hashlib.blake2b(digest_size=16)
        fitter = SpecFitter(spec)
        rows = np.zeros(3, dtype=np.int64)
        with _bar(paths, opts, "pass 1/2: count") as bar:
            for block in read_blocks(paths, kind, bad, opts.block_bytes, hasher):
                split = opts.split.assign(block.row_index, total_rows)
                rows += np.bincount(split, minlength=3)
                fitter.update(block.table.filter(pa.array(split == 0)))
                bar.update(block.nbytes)
        if rows.sum() == 0:
            raise DataError("no valid data rows in the input" + _bad_hint(bad))
        if rows[0] == 0:
            raise DataError("the training split is empty: more rows or other split ratios are needed")
        fitted = fitter.finalize()
        fitted.save(tmp)
        splits = _encode_pass(paths, kind, fitted, user_col, tmp, opts, total_rows)
        meta = {
            "format_version": DATASET_FORMAT_VERSION,
            "kind": kind,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "ctrzoo_version": ctrzoo.__version__,
            "inputs": [{"path": str(p.resolve()), "bytes": p.stat().st_size} for p in paths],
            "fingerprint": f"blake2b:{hasher.hexdigest()}",
            "split": opts.split.to_dict(),
            "splits": splits,
            "user_id": user_col,
            "raw": {"test": "raw/test.parquet"} if opts.keep_raw_test else {},
            "bad_rows": bad.summary(),
            "layout": _layout_summary(fitted),
            "seconds": round(time.perf_counter() - started, 3),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _encode_pass(paths, kind, spec: FeatureSpec, user_col, tmp: Path, opts: PrepareOptions, total_rows) -> dict:
    encoder = FeatureEncoder(spec)
    schema = shard_schema(spec, with_user=bool(user_col))
    writers = {name: _ShardWriter(tmp, name, schema, opts.shard_rows) for name in SPLITS}
    raw_writer = None
    with _bar(paths, opts, "pass 2/2: encode") as bar:
        for block in read_blocks(paths, kind, BadRows(), opts.block_bytes):
            split = opts.split.assign(block.row_index, total_rows)
            table = _to_shard_table(encoder.encode(block.table), block.table, spec.label, user_col, schema)
            for i, name in enumerate(SPLITS):
                mask = pa.array(split == i)
                writers[name].write(table.filter(mask))
                if name == "test" and opts.keep_raw_test:
                    raw = block.table.filter(mask)
                    if raw_writer is None:
                        (tmp / "raw").mkdir()
                        raw_writer = pq.ParquetWriter(tmp / "raw" / "test.parquet", raw.schema)
                    raw_writer.write_table(raw)
            bar.update(block.nbytes)
    if raw_writer is not None:
        raw_writer.close()
    return {name: w.close() for name, w in writers.items()}


def _to_shard_table(batch: EncodedBatch, raw: pa.Table, label: str, user_col: str | None, schema: pa.Schema) -> pa.Table:
    cols: list[pa.Array] = [raw.column(label).combine_chunks().cast(pa.int8())]
    names = schema.names
    if user_col:
        cols.append(raw.column(user_col).combine_chunks().cast(pa.string()))
    cols += [pa.array(batch.sparse[:, i].astype(np.int32)) for i in range(batch.sparse.shape[1])]
    cols += [pa.array(np.ascontiguousarray(batch.dense[:, j])) for j in range(batch.dense.shape[1])]
    L = batch.seq.shape[2] if batch.seq.ndim == 3 else 0
    cols += [
        pa.FixedSizeListArray.from_arrays(pa.array(batch.seq[:, k, :].astype(np.int32).ravel()), L)
        for k in range(batch.seq.shape[1])
    ]
    return pa.Table.from_arrays(cols, names=names)


class _ShardWriter:
    """Parquet files of at most ``shard_rows`` rows; one row group per written block."""

    def __init__(self, root: Path, split: str, schema: pa.Schema, shard_rows: int):
        self.dir = root / split
        self.dir.mkdir()
        self.schema, self.shard_rows = schema, shard_rows
        self.shards: list[str] = []
        self.rows = self.positives = self._in_shard = 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self._writer is None or self._in_shard >= self.shard_rows:
            self._roll()
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self._in_shard += table.num_rows
        self.rows += table.num_rows
        self.positives += int(np.count_nonzero(table.column("label").to_numpy()))

    def _roll(self) -> None:
        if self._writer is not None:
            self._writer.close()
        name = f"part-{len(self.shards):05d}.parquet"
        self._writer = pq.ParquetWriter(self.dir / name, self.schema)
        self.shards.append(f"{self.dir.name}/{name}")
        self._in_shard = 0

    def close(self) -> dict:
        if self._writer is not None:
            self._writer.close()
        return {"rows": self.rows, "positives": self.positives, "shards": self.shards}


def _layout_summary(spec: FeatureSpec) -> dict:
    layout = spec.layout()
    return {
        "num_embeddings": layout.num_embeddings,
        "sparse": {f.name: f.size for f in layout.sparse},
        "dense": list(layout.dense),
        "seq": {s.name: {"shares": s.shares, "max_len": s.max_len} for s in layout.seq},
    }


def _check_replaceable(out: Path) -> None:
    """Only an earlier prepared dataset (or nothing) may be replaced: never a user's other files."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / META_FILE).exists())):
        raise DataError(f"{out} exists and is not a prepared dataset: refusing to replace it")


def _publish(tmp: Path, out: Path) -> None:
    """Swap the finished directory in by renames; the old dataset stays intact until then."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def _count_lines(paths: list[Path], kind: str) -> int:
    """Data lines across files (for time-ordered splits): a fast newline count, header excluded."""
    total = 0
    for p in paths:
        with open_raw(p) as fh:
            n, last = 0, b"\n"
            while buf := fh.read(1 << 24):
                n += buf.count(b"\n")
                last = buf[-1:]
            n += last != b"\n"
        total += n - (1 if FORMATS[kind].has_header or _has_header(p, kind) else 0)
    return total


def _has_header(path: Path, kind: str) -> bool:
    from ctrzoo.data.formats import resolve_format

    return resolve_format(kind, path).has_header


def _bar(paths: list[Path], opts: PrepareOptions, desc: str) -> tqdm:
    show = sys.stderr.isatty() if opts.progress is None else opts.progress
    total = None if any(p.suffix == ".gz" for p in paths) else sum(p.stat().st_size for p in paths)
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not show, leave=False)


def _bad_hint(bad: BadRows) -> str:
    if not bad.total:
        return ""
    reason, info = max(bad.counts.items(), key=lambda kv: kv[1]), bad.first
    return f" ({bad.total} bad rows; most common: {reason[0]!r} at {', '.join(info[reason[0]][:3])})"
