"""`prepare criteo` vs the usual in-memory pandas recipe, and peak RSS at 2M vs 8M rows.

    python benchmarks/prepare.py [--rows 2000000] [--big-rows 8000000]

Baseline (same file, same script): ``pandas.read_csv`` (C engine) of the whole file, then for each
categorical column the min-count filter and ``pd.factorize``. ``prepare`` does more: two streaming passes,
validation, the 8:1:1 split, numeric transforms and Parquet shards.
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


def child(args: list[str]) -> None:
    from _common import peak_rss_mb

    which, path = args[0], Path(args[1])
    result = _baseline(path, 10) if which == "baseline" else _ours(path, path.with_suffix(".prepared"))
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def main() -> None:
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    from _common import run_child, synth_file

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--big-rows", type=int, default=8_000_000)
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best is kept")
    a = ap.parse_args()

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
