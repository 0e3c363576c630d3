"""Writing a synthetic log: the raw file block by block, the truth (true probabilities), the summary.

Separate from ``common`` (the click model) so that the optional conversion label (``conversion``), which
builds on the click model, is used here without an import cycle.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ctrzoo.synth.common import Synth, oracle_auc, rng_for, sigmoid
from ctrzoo.synth.conversion import COLUMN, Conversion, write_schema


def _open_out(path: Path) -> IO[bytes]:
    """Plain or gzip output; gzip with mtime 0 so that the bytes depend on the seed only."""
    raw = path.open("wb")
    if path.suffix == ".gz":
        return gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0)
    return raw


def _blocks(rows: int, size: int) -> Iterator[tuple[int, int, int]]:
    for b, start in enumerate(range(0, rows, size)):
        yield b, start, min(size, rows - start)


def run(synth: Synth, kind: str, rows: int, out: str | Path, progress: bool = False,
        conversions: bool = False) -> dict:
    """Generate ``rows`` rows block by block, write data, truth and summary, and return the summary.

    ``conversions``: also draw the ``converted`` label (``ctrzoo.synth.conversion``), written as the raw file's
    last column and to the truth, and write ``<out>.schema.yaml``. Its uniforms are drawn from each block's
    stream after the clicks, so every other byte is the same as without it.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    truth_path, summary_path = Path(f"{out}.truth.parquet"), Path(f"{out}.synth.json")
    calibration = synth.calibration_sample()
    bias = synth.calibrate(calibration[1])
    conv = None
    if conversions:
        conv = Conversion(synth, calibration, bias)
    del calibration
    options = pacsv.WriteOptions(
        include_header=False, delimiter=synth.delimiter, quoting_style="none", batch_size=1 << 16
    )
    schema = pa.schema([("p_click", pa.float64()), ("label", pa.int8())])
    if conv is not None:
        schema = schema.append(pa.field("p_cvr", pa.float64())).append(pa.field("p_conversion", pa.float64()))
        schema = schema.append(pa.field(COLUMN, pa.int8()))
    clicks, logloss, converted_total, conv_logloss = 0, 0.0, 0, 0.0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=rows, unit="rows", desc=f"synth {kind}")
    with _open_out(out) as fh, pq.ParquetWriter(truth_path, schema) as truth:
        if synth.header:
            fh.write((synth.header + ("" if conv is None else f"{synth.delimiter}{COLUMN}") + "\n").encode())
        for b, start, n in _blocks(rows, int(synth.cfg["block_rows"])):
            rng = rng_for(synth.seed, "block", b)
            feats = synth.features((start + np.arange(n)) / rows, rng)
            z = synth.logit(feats)
            p = sigmoid(bias + z)
            label = (rng.random(n) < p).astype(np.int8)
            table = synth.table(feats, label)
            cols = {"p_click": p, "label": label}
            if conv is not None:
                p_cvr = conv.p_cvr(feats, z)
                converted = ((label == 1) & (rng.random(n) < p_cvr)).astype(np.int8)
                table = table.append_column(COLUMN, pa.array(converted))
                cols.update({"p_cvr": p_cvr, "p_conversion": p * p_cvr, COLUMN: converted})
                converted_total += int(converted.sum())
                conv_logloss += _logloss_sum(p * p_cvr, converted)
            sink = pa.BufferOutputStream()
            pacsv.write_csv(table, sink, options)
            fh.write(sink.getvalue())
            truth.write_table(pa.table(cols, schema=schema))
            clicks += int(label.sum())
            logloss += _logloss_sum(p, label)
            if bar is not None:
                bar.update(n)
    if bar is not None:
        bar.close()
    summary = {
        "kind": kind,
        "rows": rows,
        "seed": synth.seed,
        "files": {"data": out.name, "truth": truth_path.name},
        "global_bias": bias,
        "base_ctr": clicks / rows,
        "oracle_auc": _or_none(oracle_auc(truth_path)),
        "oracle_logloss": logloss / rows,
        "config": synth.cfg if conv is not None else {k: v for k, v in synth.cfg.items() if k != "conversion"},
    }
    if conv is not None:
        schema_path = Path(f"{out}.schema.yaml")
        write_schema(kind, schema_path)
        summary["files"]["schema"] = schema_path.name
        summary["conversion"] = {
            "rate": converted_total / rows,
            "rate_among_clicks": converted_total / clicks if clicks else None,
            "oracle_auc": _or_none(oracle_auc(truth_path, "p_conversion", COLUMN)),
            "oracle_logloss": conv_logloss / rows,
            **conv.summary(),
        }
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _logloss_sum(p: np.ndarray, label: np.ndarray) -> float:
    """Summed log loss of probabilities ``p`` (R,) against 0/1 ``label`` (R,), clipped at 1e-15."""
    q = np.clip(np.where(label == 1, p, 1.0 - p), 1e-15, 1.0)
    return -float(np.log(q).sum())


def _or_none(x: float) -> float | None:
    return None if math.isnan(x) else x
