"""``ctrzoo prepare``: raw logs -> a prepared dataset, in two streaming passes, published atomically.

What the logs hold and how to read them is a ``DatasetSchema`` (a built-in format's, or a user's YAML); its
inputs are resolved and its columns checked before any row is read (``ctrzoo.data.inputs``). Pass 1 reads
every block, assigns splits and counts vocabulary values and numeric moments on the training rows only;
pass 2 encodes every block with the fitted spec into Parquet shards. Memory holds one block and the
vocabularies, never the file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

import ctrzoo
from ctrzoo.atomic import building, disk_errors, write_json
from ctrzoo.data.dataset import META_FILE, extra_label_column, shard_schema
from ctrzoo.data.inputs import InputPlan, plan_inputs
from ctrzoo.data.presets import resolve_schema
from ctrzoo.data.rawfile import GzipDataError, open_raw
from ctrzoo.data.reader import DEFAULT_BLOCK_BYTES, DEFAULT_MAX_LINE_BYTES, BadRows, read_file
from ctrzoo.data.schema import DatasetSchema
from ctrzoo.data.splits import SPLITS, SplitConfig, unix_seconds
from ctrzoo.errors import DataError
from ctrzoo.features import EncodedBatch, FeatureSpec, SpecFitter
from ctrzoo.metadata import DatasetMeta, InputFile, LayoutSummary, SplitInfo


@dataclass
class PrepareOptions:
    split: SplitConfig | None = None  # None: the schema's split, else random 8:1:1
    strict: bool = False
    block_bytes: int = DEFAULT_BLOCK_BYTES
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES  # a longer line is a counted bad row ("line longer than ...")
    keep_raw_test: bool = True
    progress: bool | None = None  # None: a bar only on a terminal
    spill: bool | None = None  # keep pass 1's parsed blocks for pass 2; None: when the disk has room
    workers: int = 1  # processes, one input file each at a time


def prepare(source: str | DatasetSchema, inputs: list[str | Path], out: str | Path, spec: FeatureSpec | None = None,
            options: PrepareOptions | None = None) -> DatasetMeta:
    """Prepare ``inputs`` read by the schema ``source`` (or a built-in format's name: ``criteo``, ``avazu``,
    ``taobao``) into ``out``; ``spec``: other features than the schema's. Returns ``dataset.json``'s metadata.

    Each input file (a directory: each of its part files) is one unit of work (pass 1: count; pass 2: encode),
    run in ``options.workers`` processes; per-file counts are merged in file order, so any number of workers
    gives the same dataset.
    """
    opts = options or PrepareOptions()
    schema = resolve_schema(source)
    if spec is not None:
        schema = schema.with_spec(spec)
    schema = replace(schema, split=opts.split or schema.split or SplitConfig())
    plan = plan_inputs(schema, inputs)  # every column checked before any row is read
    paths = plan.files
    spec = schema.feature_spec().unfitted()
    started = time.perf_counter()
    with building(out, META_FILE, "prepared dataset", DataError) as tmp:
        line_counts = [_count_rows(plan.only(i)) for i in range(len(paths))] if schema.split.method == "order" \
            else None
        total_rows = sum(line_counts) if line_counts else None
        bases = np.cumsum([0, *line_counts[:-1]]).tolist() if line_counts else [0] * len(paths)
        spill = _should_spill(paths, tmp, opts)
        jobs = [_Pass1Job(i, plan.only(i), spec, opts, tmp, spill, bases[i], total_rows) for i in range(len(paths))]
        with _pool(opts.workers, len(paths)) as run, _bar(paths, opts, "pass 1/2: count") as bar:
            results = run(_pass1, jobs, bar)
        fitter, bad, rows = results[0].fitter, BadRows(strict=opts.strict), np.zeros(3, dtype=np.int64)
        for r in results[1:]:
            fitter.merge(r.fitter)
        for r in results:
            bad.merge(r.bad)
            rows += r.rows
        if rows.sum() == 0:
            raise DataError("no valid data rows in the input" + _bad_hint(bad))
        if rows[0] == 0:
            raise DataError("the training split is empty: more rows or other split ratios are needed"
                            if schema.split.method != "time" else
                            "the training split is empty: every row is at or after split.valid_from")
        fitted = fitter.finalize()
        with disk_errors("the feature spec", tmp / "spec.json"):
            fitted.save(tmp)
        if opts.keep_raw_test:
            _concat_parquet([r.raw_test for r in results], tmp / "raw" / "test.parquet")
        jobs2 = [_Pass2Job(r.index, plan.only(r.index), fitted, opts, tmp, r.spill_dir, bases[r.index], total_rows)
                 for r in results]
        with _pool(opts.workers, len(paths)) as run, _bar(paths, opts, "pass 2/2: encode") as bar:
            parts = run(_pass2, jobs2, bar)
        shutil.rmtree(tmp / "spill", ignore_errors=True)
        splits = {name: SplitInfo(rows=sum(p[name]["rows"] for p in parts),
                                  positives=sum(p[name]["positives"] for p in parts),
                                  shards=[s for p in parts for s in p[name]["shards"]],
                                  label_positives={lab: sum(p[name]["label_positives"][lab] for p in parts)
                                                   for lab in _extra_labels(schema)})
                  for name in SPLITS}
        fingerprint = hashlib.blake2b(b"".join(r.digest for r in results), digest_size=16).hexdigest()
        meta = DatasetMeta(
            kind=schema.name,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            ctrzoo_version=ctrzoo.__version__,
            inputs=[InputFile(path=str(p.resolve()), bytes=p.stat().st_size) for p in paths],
            fingerprint=f"blake2b:{fingerprint}",
            split=schema.split.to_dict(),
            splits=splits,
            user_id=schema.user_id,
            labels=[lab.name for lab in schema.labels],
            label_rules={lab.name: lab.describe() for lab in schema.labels},
            weight=schema.weight,
            schema=schema.to_dict(),
            raw={"test": "raw/test.parquet"} if opts.keep_raw_test else {},
            bad_rows=bad.summary(),
            warnings=split_warnings(splits),
            layout=_layout_summary(fitted),
            workers=opts.workers,
            seconds=round(time.perf_counter() - started, 3),
        )
        write_json(tmp / META_FILE, meta.to_json())
    return meta


def split_warnings(splits: dict[str, SplitInfo]) -> list[str]:
    """What a split's size or labels will do to training and evaluation (empty, or a single class)."""
    out = []
    effect = {"train": "the model learns from one class only",
              "valid": "no early stopping (train keeps the last epoch), and no validation AUC",
              "test": "no test metrics"}
    for name, s in splits.items():
        if s.rows == 0:
            out.append(f"the {name} split is empty: {effect[name] if name != 'train' else 'nothing to train on'}"
                       " (more rows, or other --ratios)")
        elif s.positives in (0, s.rows):
            cls = "negatives (no clicks)" if s.positives == 0 else "positives (all clicks)"
            auc_effect = effect["train"] if name == "train" else "its AUC is undefined"
            out.append(f"the {name} split has only {cls}: {auc_effect}")
    return out


@dataclass
class _Pass1Job:
    index: int
    plan: InputPlan  # of this one file
    spec: FeatureSpec
    opts: PrepareOptions
    tmp: Path
    spill: bool
    row_base: int
    total_rows: int | None


@dataclass
class _Pass1Result:
    index: int
    fitter: SpecFitter
    bad: BadRows
    rows: np.ndarray
    digest: bytes
    spill_dir: Path | None
    raw_test: Path | None
    nbytes: int


def _split_of(job, block) -> np.ndarray:
    """Random splits hash (file ordinal, line): independent of block size and of which worker reads it; time
    splits read each row's time."""
    split = job.plan.schema.split
    if split.method == "time":
        return split.assign_times(unix_seconds(block.table.column(split.column).combine_chunks(), split.time_format,
                                               split.column))
    if split.method == "order":
        return split.assign(job.row_base + block.row_index, job.total_rows)
    return split.assign((np.int64(job.index) << np.int64(40)) + block.row_index)


def _pass1(job: _Pass1Job) -> _Pass1Result:
    """Read, validate, split and count one file; spill its dictionary-encoded blocks for pass 2."""
    bad = BadRows(strict=job.opts.strict)
    hasher = hashlib.blake2b(digest_size=16)
    fitter = SpecFitter(job.spec)
    dict_columns = {c.column for c in job.spec.categorical}
    spill = _Spill(job.tmp / "spill" / f"file-{job.index:05d}") if job.spill else None
    raw_test = _RawTestWriter(job.tmp / "raw" / f"test-{job.index:05d}.parquet") if job.opts.keep_raw_test else None
    rows = np.zeros(3, dtype=np.int64)
    nbytes = 0
    for block in read_file(job.plan, bad, job.opts.block_bytes, hasher, job.opts.max_line_bytes):
        table = _dictionary_encode(block.table, dict_columns)
        split = _split_of(job, block)
        rows += np.bincount(split, minlength=3)
        fitter.update(table.filter(pa.array(split == 0)))
        if raw_test is not None:
            raw_test.write(table.filter(pa.array(split == 2)))
        if spill is not None:
            spill.write(table, split)
        nbytes += block.nbytes
    if raw_test is not None:
        raw_test.close()
    return _Pass1Result(job.index, fitter, bad, rows, hasher.digest(), spill.dir if spill else None,
                        raw_test.path if raw_test and raw_test.written else None, nbytes)


@dataclass
class _Pass2Job:
    index: int
    plan: InputPlan  # of this one file
    spec: FeatureSpec
    opts: PrepareOptions
    tmp: Path
    spill_dir: Path | None
    row_base: int
    total_rows: int | None


def _pass2(job: _Pass2Job) -> dict:
    """Encode one file's rows with the fitted spec into its own shards (named by file ordinal)."""
    if job.spill_dir is not None:
        blocks = _Spill.read_dir(job.spill_dir)
    else:
        dict_columns = {c.column for c in job.spec.categorical}
        blocks = ((_dictionary_encode(b.table, dict_columns), _split_of(job, b), b.nbytes)
                  for b in read_file(job.plan, BadRows(), job.opts.block_bytes,
                                     max_line_bytes=job.opts.max_line_bytes))
    return _encode_pass(blocks, job.spec, job.plan.schema, job.tmp, prefix=f"part-{job.index:05d}")


def _dictionary_encode(table: pa.Table, columns: set[str]) -> pa.Table:
    """Categorical columns hashed once here; counting, spilling and encoding then reuse the codes."""
    for i, name in enumerate(table.column_names):
        if name in columns and pa.types.is_string(table.schema.field(i).type):
            table = table.set_column(i, name, pc.dictionary_encode(table.column(i)).unify_dictionaries())
    return table


def _encode_pass(blocks, spec: FeatureSpec, schema: DatasetSchema, tmp: Path, prefix: str) -> dict:
    codec = spec.compile()
    extra = _extra_labels(schema)
    shard = shard_schema(codec.layout, with_user=bool(schema.user_id), extra_labels=extra,
                         with_weight=bool(schema.weight))
    writers = {name: _ShardWriter(tmp, name, shard, prefix, extra_labels=extra) for name in SPLITS}
    for table, split, _ in blocks:
        shard_table = _to_shard_table(codec.encode(table), table, schema, shard)
        for i, name in enumerate(SPLITS):
            writers[name].write(shard_table.filter(pa.array(split == i)))
    return {name: w.close() for name, w in writers.items()}


def _extra_labels(schema: DatasetSchema) -> list[str]:
    """The labels after the first, stored beside it as ``label.<name>``."""
    return [lab.name for lab in schema.labels[1:]]


class _pool:
    """``run(fn, jobs, bar)`` inline (1 worker) or in spawned processes, results in job order."""

    def __init__(self, workers: int, n_jobs: int):
        self.workers = max(1, min(workers, n_jobs))
        self.executor = None

    def __enter__(self):
        if self.workers > 1:
            import multiprocessing

            self.executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_init, initargs=(self.workers,))
        return self.run

    def run(self, fn, jobs, bar) -> list:
        if self.executor is None:
            out = []
            for job in jobs:
                out.append(fn(job))
                bar.update(job.plan.files[0].stat().st_size)
            return out
        futures = [self.executor.submit(fn, job) for job in jobs]
        out = []
        for job, fut in zip(jobs, futures):
            out.append(fut.result())
            bar.update(job.plan.files[0].stat().st_size)
        return out

    def __exit__(self, *exc):
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        return False


def _worker_init(workers: int) -> None:
    """Share the cores between worker processes instead of each one starting a thread per core."""
    pa.set_cpu_count(max(1, (os.cpu_count() or 1) // workers))


def _concat_parquet(parts: list[Path | None], out: Path) -> None:
    """Per-file raw test rows, concatenated in file order into one file (row groups copied)."""
    with disk_errors("the raw test rows", out):
        out.parent.mkdir(parents=True, exist_ok=True)
        writer = None
        for part in parts:
            if part is None:
                continue
            pf = pq.ParquetFile(part)
            for g in range(pf.num_row_groups):
                table = pf.read_row_group(g)
                if writer is None:
                    writer = pq.ParquetWriter(out, table.schema, write_page_checksum=True)
                writer.write_table(table)
            part.unlink()
        if writer is not None:
            writer.close()


class _Spill:
    """Pass 1's parsed, dictionary-encoded blocks as Arrow IPC files, so pass 2 does not parse again."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True)
        self.files: list[tuple[Path, int]] = []

    def write(self, table: pa.Table, split: np.ndarray) -> None:
        path = self.dir / f"block-{len(self.files):06d}.arrow"
        table = table.append_column("__split", pa.array(split))
        with disk_errors("the spill file (pass 1's parsed rows)", path), pa.OSFile(str(path), "wb") as sink, \
                pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        self.files.append((path, table.nbytes))

    @staticmethod
    def read_dir(directory: Path) -> Iterator[tuple[pa.Table, np.ndarray, int]]:
        for path in sorted(directory.glob("block-*.arrow")):
            with pa.memory_map(str(path)) as source:
                table = pa.ipc.open_file(source).read_all()
            split = table.column("__split").to_numpy()
            yield table.drop_columns(["__split"]), split, table.nbytes
            path.unlink()


class _RawTestWriter:
    def __init__(self, path: Path):
        self.path, self._writer = path, None

    @property
    def written(self) -> bool:
        return self._writer is not None

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0 and self._writer is not None:
            return
        with disk_errors("the raw test rows", self.path):
            if self._writer is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._writer = pq.ParquetWriter(self.path, table.schema, write_page_checksum=True)
            self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            with disk_errors("the raw test rows", self.path):
                self._writer.close()


def _should_spill(paths: list[Path], tmp: Path, opts: PrepareOptions) -> bool:
    """Spill when the disk keeps 2x the input free (the spill is about the size of the raw text)."""
    if opts.spill is not None:
        return opts.spill
    raw = sum(p.stat().st_size * (4 if p.suffix == ".gz" else 1) for p in paths)
    return shutil.disk_usage(tmp).free > 2 * raw


def _to_shard_table(batch: EncodedBatch, raw: pa.Table, schema: DatasetSchema, shard: pa.Schema) -> pa.Table:
    """The shard columns of a block (``shard_schema``): labels, weight and user id from the raw rows, then the
    encoded tensors column by column."""
    cols: list[pa.Array] = [raw.column(lab.name).combine_chunks().cast(pa.int8()) for lab in schema.labels]
    if schema.weight:
        cols.append(raw.column(schema.weight).combine_chunks().cast(pa.float32()))
    if schema.user_id:
        cols.append(raw.column(schema.user_id).combine_chunks().cast(pa.string()))
    cols += [pa.array(batch.sparse[:, i].astype(np.int32)) for i in range(batch.sparse.shape[1])]
    cols += [pa.array(np.ascontiguousarray(batch.dense[:, j])) for j in range(batch.dense.shape[1])]
    L = batch.seq.shape[2] if batch.seq.ndim == 3 else 0
    cols += [
        pa.FixedSizeListArray.from_arrays(pa.array(batch.seq[:, k, :].astype(np.int32).ravel()), L)
        for k in range(batch.seq.shape[1])
    ]
    return pa.Table.from_arrays(cols, schema=shard)


class _ShardWriter:
    """Parquet files of at most ``shard_rows`` rows; one row group per written block."""

    def __init__(self, root: Path, split: str, schema: pa.Schema, prefix: str = "part", shard_rows: int = 2_000_000,
                 extra_labels: list[str] | None = None):
        self.dir = root / split
        self.label_positives = dict.fromkeys(extra_labels or [], 0)
        with disk_errors("the shard directory", self.dir):
            self.dir.mkdir(exist_ok=True)
        self.prefix = prefix
        self.schema, self.shard_rows = schema, shard_rows
        self.shards: list[str] = []
        self.rows = self.positives = self._in_shard = 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self._writer is None or self._in_shard >= self.shard_rows:
            self._roll()
        with disk_errors("the shard", self._path):
            self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self._in_shard += table.num_rows
        self.rows += table.num_rows
        self.positives += int(np.count_nonzero(table.column("label").to_numpy()))
        for name in self.label_positives:
            self.label_positives[name] += int(np.count_nonzero(table.column(extra_label_column(name)).to_numpy()))

    @property
    def _path(self) -> Path:
        return self.dir.parent / self.shards[-1]

    def _roll(self) -> None:
        self._close()
        name = f"{self.prefix}-{len(self.shards):03d}.parquet"
        with disk_errors("the shard", self.dir / name):
            self._writer = pq.ParquetWriter(self.dir / name, self.schema, compression="lz4", write_page_checksum=True)
        self.shards.append(f"{self.dir.name}/{name}")
        self._in_shard = 0

    def _close(self) -> None:
        if self._writer is not None:
            with disk_errors("the shard", self._path):
                self._writer.close()

    def close(self) -> dict:
        self._close()
        return {"rows": self.rows, "positives": self.positives, "shards": self.shards,
                "label_positives": self.label_positives}


def _layout_summary(spec: FeatureSpec) -> LayoutSummary:
    layout = spec.compile().layout
    return LayoutSummary(num_embeddings=layout.num_embeddings, sparse={f.name: f.size for f in layout.sparse},
                         dense=list(layout.dense),
                         seq={s.name: {"shares": s.shares, "max_len": s.max_len} for s in layout.seq})


def _count_rows(plan: InputPlan) -> int:
    """Data rows of a one-file plan (for time-ordered splits): Parquet's footer; else a fast newline count,
    the header excluded."""
    p = plan.files[0]
    if plan.format == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(p).metadata.num_rows
    with open_raw(p) as fh:
        n, last = 0, b"\n"
        try:
            while buf := fh.read(1 << 24):
                n += buf.count(b"\n")
                last = buf[-1:]
        except GzipDataError as exc:  # name the line, as the block reader does
            raise DataError(f"{exc.detail} after line {n} (the last whole line read)", str(p), n or None) from None
        n += last != b"\n"
    return n - (1 if plan.text and plan.text[0].header else 0)


def _bar(paths: list[Path], opts: PrepareOptions, desc: str) -> tqdm:
    show = sys.stderr.isatty() if opts.progress is None else opts.progress
    total = None if any(p.suffix == ".gz" for p in paths) else sum(p.stat().st_size for p in paths)
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not show, leave=False)


def _bad_hint(bad: BadRows) -> str:
    if not bad.total:
        return ""
    reason, info = max(bad.counts.items(), key=lambda kv: kv[1]), bad.first
    return f" ({bad.total} bad rows; most common: {reason[0]!r} at {', '.join(info[reason[0]][:3])})"
