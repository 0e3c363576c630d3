"""`prepare criteo` vs the usual in-memory pandas recipe, and peak RSS at 2M vs 8M rows; the preset path vs the
code before presets; Parquet input vs the same rows as CSV.

    python benchmarks/prepare.py [--rows 2000000] [--big-rows 8000000]
    python benchmarks/prepare.py --only ab --base /tmp/oldprep [--rows 1000000] [--rounds 3]
    python benchmarks/prepare.py --only parquet [--rows 1000000] [--rounds 3]

Baseline (same file, same script): ``pandas.read_csv`` (C engine) of the whole file, then for each
categorical column the min-count filter and ``pd.factorize``. ``prepare`` does more: two streaming passes,
validation, the 8:1:1 split, numeric transforms and Parquet shards.

``ab``: ``prepare criteo`` of the same synthetic file by this checkout (the preset ``ctrzoo/presets/criteo.yaml``
through the schema reader) and by ``--base``, a checkout of the code before presets (``git worktree add
/tmp/oldprep 15221dc``), each in a child process with ``PYTHONPATH`` set to its checkout, in alternating rounds;
medians and the ratio new/old (goal: <= 1.0, no slower).

``parquet``: the same rows as tab-separated text (the Criteo preset) and as a Parquet file (the preset's schema
with ``input: {format: parquet}``; integers as int64, categories as strings, snappy, 256k-row groups): the time
to read them (pass 1's parse + validation + the fingerprint's hash, ``ctrzoo.data.reader.read_blocks``) and the
whole ``prepare``; goal: Parquet read >= 2x faster.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def _baseline(path: Path, min_count: int) -> dict:
    import pandas as pd

    from ctrzoo.data.formats import CRITEO_CAT, CRITEO_INT

    t0 = time.perf_counter()
    df = pd.read_csv(path, sep="\t", header=None, names=["label", *CRITEO_INT, *CRITEO_CAT], engine="c")
    for c in CRITEO_CAT:
        s = df[c]
        frequent = s.map(s.value_counts()) >= min_count
        codes, _ = pd.factorize(s.where(frequent))
        df[c] = codes + 1  # -1 (missing or rare) -> 0
    return {"seconds": time.perf_counter() - t0, "rows": len(df)}


def _ours(path: Path, out: Path) -> dict:
    from ctrzoo.data.prepare import prepare

    t0 = time.perf_counter()
    meta = prepare("criteo", [path], out)
    rows = sum(s.rows for s in meta.splits.values())
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": time.perf_counter() - t0, "rows": rows}


def _criteo_parquet_schema():
    from dataclasses import replace

    from ctrzoo.data.presets import load_preset
    from ctrzoo.data.schema import InputFormat

    return replace(load_preset("criteo"), input=InputFormat("parquet"))


def _read(path: Path) -> dict:
    """Pass 1's reading alone: parse, validate and hash every block, as prepare does."""
    import hashlib

    from ctrzoo.data.reader import BadRows, read_blocks

    source = _criteo_parquet_schema() if path.suffix == ".parquet" else "criteo"
    t0 = time.perf_counter()
    rows = sum(b.table.num_rows for b in read_blocks([path], source, BadRows(), hasher=hashlib.blake2b()))
    return {"seconds": time.perf_counter() - t0, "rows": rows}


def _prepare_any(path: Path, out: Path) -> dict:
    from ctrzoo.data.prepare import prepare

    source = _criteo_parquet_schema() if path.suffix == ".parquet" else "criteo"
    t0 = time.perf_counter()
    meta = prepare(source, [path], out)
    rows = sum(s.rows for s in meta.splits.values())
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": time.perf_counter() - t0, "rows": rows}


def child(args: list[str]) -> None:
    from _common import peak_rss_mb

    which, path = args[0], Path(args[1])
    if which == "baseline":
        result = _baseline(path, 10)
    elif which == "read":
        result = _read(path)
    elif which == "prepare_any":
        result = _prepare_any(path, path.with_suffix(".prepared"))
    else:
        result = _ours(path, path.with_suffix(".prepared"))
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def _child_in(code: Path, path: Path) -> dict:
    """``prepare criteo`` of ``path`` by the checkout ``code`` (its own ctrzoo first on the path)."""
    import os
    import subprocess
    import sys

    script = (f"import json, sys, time, shutil; t0 = time.perf_counter(); from ctrzoo.data.prepare import prepare; "
              f"meta = prepare('criteo', [{str(path)!r}], {str(path.with_suffix('.ab'))!r}); "
              "s = time.perf_counter() - t0; shutil.rmtree(" + repr(str(path.with_suffix(".ab"))) + "); "
              "print(json.dumps({'seconds': s, 'rows': sum(v.rows for v in meta.splits.values())}))")
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, "-c", script], cwd=code, env=env, check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def ab(base: Path, rows: int, rounds: int) -> dict:
    """The preset path (this checkout) vs the code before presets (``base``), alternating, medians."""
    import statistics

    from _common import synth_file

    path = synth_file("criteo", rows)
    new_code = HERE.parents[1]
    times: dict[str, list[float]] = {"old": [], "new": []}
    for r in range(rounds):
        order = [("old", base), ("new", new_code)] if r % 2 == 0 else [("new", new_code), ("old", base)]
        for name, code in order:
            result = _child_in(code, path)
            times[name].append(result["seconds"])
    old, new = statistics.median(times["old"]), statistics.median(times["new"])
    print(f"prepare criteo, {rows:,d} rows, {rounds} alternating rounds: old {old:.2f}s, new (preset) {new:.2f}s, "
          f"new/old {new / old:.3f} (goal <= 1.0); rounds old {times['old']} new {times['new']}")
    return {"rows": rows, "old_s": old, "new_s": new, "ratio": new / old, "runs": times}


def _write_parquet(tsv: Path) -> Path:
    """The rows of a Criteo TSV as Parquet (typed as a Spark export would type them)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from ctrzoo.data.formats import CRITEO_CAT, CRITEO_INT

    out = tsv.with_suffix(".parquet")
    if out.exists():
        return out
    names = ["label", *CRITEO_INT, *CRITEO_CAT]
    types = {"label": pa.int8(), **{c: pa.int64() for c in CRITEO_INT}, **{c: pa.string() for c in CRITEO_CAT}}
    reader = pcsv.open_csv(tsv, read_options=pcsv.ReadOptions(column_names=names),
                           parse_options=pcsv.ParseOptions(delimiter="\t"),
                           convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=True))
    group: list = []
    with pq.ParquetWriter(out, pa.schema([(n, types[n]) for n in names])) as writer:
        for batch in [*reader, None]:
            if batch is not None:
                group.append(batch)
            if group and (batch is None or sum(b.num_rows for b in group) >= 256_000):
                writer.write_table(pa.Table.from_batches(group), row_group_size=256_000)
                group = []
    return out


def parquet_vs_csv(rows: int, rounds: int) -> dict:
    import statistics

    from _common import run_child, synth_file

    tsv = synth_file("criteo", rows)
    pqt = _write_parquet(tsv)
    res: dict[str, dict[str, float]] = {}
    for what in ("read", "prepare_any"):
        runs: dict[str, list[float]] = {"csv": [], "parquet": []}
        for r in range(rounds):
            for name in (("csv", "parquet") if r % 2 == 0 else ("parquet", "csv")):
                runs[name].append(run_child(HERE, what, str(tsv if name == "csv" else pqt))["seconds"])
        res[what] = {k: statistics.median(v) for k, v in runs.items()}
    mb = {"csv": tsv.stat().st_size / 2**20, "parquet": pqt.stat().st_size / 2**20}
    for what, label in (("read", "read (parse + validate + hash)"), ("prepare_any", "whole prepare")):
        c, p = res[what]["csv"], res[what]["parquet"]
        print(f"{label:<32} {rows:,d} rows: text {c:.2f}s ({mb['csv']:.0f} MB), Parquet {p:.2f}s "
              f"({mb['parquet']:.0f} MB): Parquet {c / p:.2f}x faster" + (" (goal >= 2x)" if what == "read" else ""))
    return {"rows": rows, **res, "mb": mb}


def main() -> None:
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    from _common import run_child, synth_file

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--big-rows", type=int, default=8_000_000)
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best is kept")
    ap.add_argument("--only", default="pandas,ab,parquet",
                    help="sections: pandas (vs pandas, peak RSS), ab (needs --base), parquet; comma-separated")
    ap.add_argument("--base", type=Path, default=None, help="ab: a checkout of the code before presets")
    ap.add_argument("--rounds", type=int, default=3, help="ab, parquet: alternating rounds (medians)")
    a = ap.parse_args()
    sections = set(a.only.split(","))
    if "ab" in sections and a.base is not None:
        ab(a.base, a.rows, a.rounds)
    if "parquet" in sections:
        parquet_vs_csv(a.rows, a.rounds)
    if "pandas" not in sections:
        return

    small = synth_file("criteo", a.rows)
    res = {}
    for name in ("baseline", "ours"):
        runs = [run_child(HERE, name, str(small)) for _ in range(a.repeat)]
        res[name] = min(runs, key=lambda r: r["seconds"]) | {"peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
    big = synth_file("criteo", a.big_rows)
    res["ours_big"] = run_child(HERE, "ours", str(big))

    b, o, ob = res["baseline"], res["ours"], res["ours_big"]
    speed = (o["rows"] / o["seconds"]) / (b["rows"] / b["seconds"])
    print(f"{'run':<28}{'rows':>12}{'seconds':>10}{'rows/s':>12}{'peak RSS MB':>13}")
    for label, r in (("pandas read_csv+factorize", b), ("ctrzoo prepare", o), ("ctrzoo prepare (big)", ob)):
        print(f"{label:<28}{r['rows']:>12,d}{r['seconds']:>10.2f}"
              f"{r['rows'] / r['seconds']:>12,.0f}{r['peak_rss_mb']:>13.0f}")
    print(f"prepare rows/s vs baseline: {speed:.2f}x (goal >= 1.5x)")
    print(f"prepare peak RSS {a.big_rows:,d} / {a.rows:,d} rows: "
          f"{ob['peak_rss_mb'] / o['peak_rss_mb']:.2f}x (goal < 1.5x)")
    print(f"prepare peak RSS vs baseline: {o['peak_rss_mb'] / b['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
