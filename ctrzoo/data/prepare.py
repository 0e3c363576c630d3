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
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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
    keep_raw_test: bool = True
    progress: bool | None = None  # None: a bar only on a terminal
    spill: bool | None = None  # keep pass 1's parsed blocks for pass 2; None: when the disk has room


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
        spill = _Spill(tmp / "spill") if _should_spill(paths, tmp, opts) else None
        raw_test = _RawTestWriter(tmp / "raw" / "test.parquet") if opts.keep_raw_test else None
        dict_columns = {c.source or c.name for c in spec.categorical}
        rows = np.zeros(3, dtype=np.int64)
        with _bar(paths, opts, "pass 1/2: count") as bar:
            for block in read_blocks(paths, kind, bad, opts.block_bytes, hasher):
                table = _dictionary_encode(block.table, dict_columns)
                split = opts.split.assign(block.row_index, total_rows)
                rows += np.bincount(split, minlength=3)
                fitter.update(table.filter(pa.array(split == 0)))
                if raw_test is not None:
                    raw_test.write(table.filter(pa.array(split == 2)))
                if spill is not None:
                    spill.write(table, split)
                bar.update(block.nbytes)
        if rows.sum() == 0:
            raise DataError("no valid data rows in the input" + _bad_hint(bad))
        if rows[0] == 0:
            raise DataError("the training split is empty: more rows or other split ratios are needed")
        if raw_test is not None:
            raw_test.close()
        fitted = fitter.finalize()
        fitted.save(tmp)
        if spill is not None:
            blocks = spill.read()
        else:
            blocks = _reparse(paths, kind, opts, total_rows, dict_columns)
        splits = _encode_pass(blocks, fitted, user_col, tmp, _bar(paths, opts, "pass 2/2: encode"))
        if spill is not None:
            spill.remove()
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


def _dictionary_encode(table: pa.Table, columns: set[str]) -> pa.Table:
    """Categorical columns hashed once here; counting, spilling and encoding then reuse the codes."""
    for i, name in enumerate(table.column_names):
        if name in columns and pa.types.is_string(table.schema.field(i).type):
            table = table.set_column(i, name, pc.dictionary_encode(table.column(i)).unify_dictionaries())
    return table


def _reparse(paths, kind, opts: PrepareOptions, total_rows, dict_columns) -> Iterator[tuple[pa.Table, np.ndarray, int]]:
    for block in read_blocks(paths, kind, BadRows(), opts.block_bytes):
        yield (_dictionary_encode(block.table, dict_columns), opts.split.assign(block.row_index, total_rows),
               block.nbytes)


def _encode_pass(blocks, spec: FeatureSpec, user_col, tmp: Path, bar: tqdm) -> dict:
    encoder = FeatureEncoder(spec)
    schema = shard_schema(spec, with_user=bool(user_col))
    writers = {name: _ShardWriter(tmp, name, schema) for name in SPLITS}
    with bar:
        for table, split, nbytes in blocks:
            shard_table = _to_shard_table(encoder.encode(table), table, spec.label, user_col, schema)
            for i, name in enumerate(SPLITS):
                writers[name].write(shard_table.filter(pa.array(split == i)))
            bar.update(nbytes)
    return {name: w.close() for name, w in writers.items()}


class _Spill:
    """Pass 1's parsed, dictionary-encoded blocks as Arrow IPC files, so pass 2 does not parse again."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True)
        self.files: list[tuple[Path, int]] = []

    def write(self, table: pa.Table, split: np.ndarray) -> None:
        path = self.dir / f"block-{len(self.files):06d}.arrow"
        table = table.append_column("__split", pa.array(split))
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        self.files.append((path, table.nbytes))

    def read(self) -> Iterator[tuple[pa.Table, np.ndarray, int]]:
        for path, nbytes in self.files:
            with pa.memory_map(str(path)) as source:
                table = pa.ipc.open_file(source).read_all()
            split = table.column("__split").to_numpy()
            yield table.drop_columns(["__split"]), split, nbytes
            path.unlink()

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class _RawTestWriter:
    def __init__(self, path: Path):
        self.path, self._writer = path, None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _should_spill(paths: list[Path], tmp: Path, opts: PrepareOptions) -> bool:
    """Spill when the disk keeps 2x the input free (the spill is about the size of the raw text)."""
    if opts.spill is not None:
        return opts.spill
    raw = sum(p.stat().st_size * (4 if p.suffix == ".gz" else 1) for p in paths)
    return shutil.disk_usage(tmp).free > 2 * raw


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

    def __init__(self, root: Path, split: str, schema: pa.Schema, shard_rows: int = 2_000_000):
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
        self._writer = pq.ParquetWriter(self.dir / name, self.schema, compression="lz4")
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
