"""Multi-task models against single-task ones on two labels with known probabilities (issue 17).

    python benchmarks/zoo_multitask.py [--kind criteo] [--rows 200000] [--seeds 1 2 3] [--epochs 1]
                                       [--out benchmarks/results/zoo_multitask.md]

``ctrzoo synth KIND --conversions`` writes a click log whose ``converted`` label can only follow a click, with
each row's true pCTR and pCTCVR; it is prepared through the schema the generator writes beside it (labels
click, converted). MMoE, PLE and ESMM learn both labels at once; two DeepFM models learn one label each (the
single-task baselines). Each model is trained with each seed; per task, test AUC and logloss (mean +- std)
beside the oracle's, and each multi-task model against the single-task DeepFM of that task on the same test
rows (first seed) with DeLong's paired 95% interval. Training samples/s as a ratio to the click DeepFM in the
same run (one torch thread; a multi-task model's samples serve both tasks, the single-task pair needs two runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MULTI_TASK = ("mmoe", "ple", "esmm")


def _truth(data: Path, raw: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per task, (label, true probability) of the test rows in the order the loader yields them."""
    import pyarrow.parquet as pq

    from ctrzoo.data.dataset import PreparedDataset
    from ctrzoo.data.splits import SplitConfig

    ds = PreparedDataset.open(data)
    if ds.meta.bad_rows.total:
        raise SystemExit(f"{data}: prepare skipped bad rows, so line index != row number; cannot align truth")
    sp = ds.meta.split
    split = SplitConfig(method=sp["method"], ratios=tuple(sp["ratios"]), seed=sp["seed"])
    t = pq.read_table(f"{raw}.truth.parquet")
    test = split.assign(np.arange(t.num_rows, dtype=np.int64), t.num_rows) == 2
    col = lambda name: t[name].to_numpy()[test]  # noqa: E731
    labels = ds.labels
    return {labels[0]: (col("label").astype(np.float32), col("p_click")),
            labels[1]: (col("converted").astype(np.float32), col("p_conversion"))}


def main() -> None:
    sys.path.insert(0, str(HERE))
    from _common import WORK, cpu_name

    from ctrzoo.compare.run import compare
    from ctrzoo.data.prepare import prepare
    from ctrzoo.data.schema import load_schema
    from ctrzoo.metrics import auc, logloss
    from ctrzoo.synth import generate
    from ctrzoo.train.run import train_bundle

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", default="criteo")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--out", default=str(HERE / "results" / "zoo_multitask.md"))
    a = ap.parse_args()
    root = WORK / f"zoo_mt_{a.kind}_{a.rows}"
    root.mkdir(parents=True, exist_ok=True)
    raw = root / f"{a.kind}.raw"
    if not Path(f"{raw}.synth.json").exists():
        generate(a.kind, a.rows, 1, raw, conversions=True)
    data = root / "data"
    if not (data / "dataset.json").exists():
        prepare(load_schema(f"{raw}.schema.yaml"), [raw], data)
    truth = _truth(data, raw)
    click, conv = list(truth)
    oracle = {t: {"auc": auc(y, p), "logloss": logloss(y, p), "rate": float(y.mean())} for t, (y, p) in truth.items()}
    jobs = [("deepfm", click, {}), ("deepfm", conv, {"label": conv}), *[(m, None, {}) for m in MULTI_TASK]]
    results: dict[str, dict] = {}
    for model, task, extra in jobs:
        name = model if task is None else f"{model} ({task} only)"
        runs = []
        for seed in a.seeds:
            out = root / f"{model}_{task or 'mt'}_{seed}"
            meta = train_bundle(model, data, out, progress=False, verbose=False,
                                overrides={"epochs": a.epochs, "seed": seed, "threads": 1,
                                           "batch_size": a.batch_size, **extra})
            test = meta.metrics.test
            per_task = test.get("tasks") or {task: test}
            speed = np.mean([h["samples_per_s"] for h in meta.history if h.get("samples_per_s")])
            runs.append({"tasks": {t: {"auc": m["auc"], "logloss": m["logloss"]} for t, m in per_task.items()},
                         "samples_per_s": float(speed), "bundle": str(out)})
            print(f"{name} seed {seed}: " + ", ".join(f"{t} AUC {m['auc']:.4f}" for t, m in per_task.items()),
                  file=sys.stderr, flush=True)
        results[name] = {"runs": runs}
    single = {click: results[f"deepfm ({click} only)"]["runs"][0]["bundle"],
              conv: results[f"deepfm ({conv} only)"]["runs"][0]["bundle"]}
    for model in MULTI_TASK:
        mt = results[model]["runs"][0]["bundle"]
        results[model]["vs_single"] = {}
        for t in (click, conv):
            rep = compare([single[t], mt], data, baseline=single[t], n_boot=200)
            part = rep if rep["data"]["label"] == t else rep["tasks"][t]
            results[model]["vs_single"][t] = part["comparisons"][0]["auc"]
    text = _table(results, oracle, a, cpu_name(), click, conv)
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text + "\n")
    Path(a.out).with_suffix(".json").write_text(json.dumps({"oracle": oracle, "results": results}, indent=1))


def _table(results: dict, oracle: dict, a, cpu: str, click: str, conv: str) -> str:
    ref = np.mean([r["samples_per_s"] for r in results[f"deepfm ({click} only)"]["runs"]])
    lines = [f"{cpu}; `synth {a.kind} --conversions`, {a.rows:,d} rows (8:1:1), {a.epochs} epoch(s) of batch "
             f"{a.batch_size}, seeds "
             f"{a.seeds}, the {a.kind} package config, one torch thread. Oracle: {click} AUC "
             f"{oracle[click]['auc']:.4f} / logloss {oracle[click]['logloss']:.4f} (rate {oracle[click]['rate']:.3f}); "
             f"{conv} AUC {oracle[conv]['auc']:.4f} / logloss {oracle[conv]['logloss']:.4f} "
             f"(rate {oracle[conv]['rate']:.4f}).", "",
             f"| model | {click} AUC | {click} logloss | {conv} AUC | {conv} logloss | training samples/s vs DeepFM | "
             f"{click}: AUC - single-task (DeLong 95% CI) | {conv}: AUC - single-task (DeLong 95% CI) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        cells = []
        for t in (click, conv):
            for metric in ("auc", "logloss"):
                vals = np.array([x["tasks"][t][metric] for x in r["runs"] if t in x["tasks"]])
                cells.append(f"{vals.mean():.4f} +- {vals.std():.4f}" if vals.size else "-")
        speed = np.mean([x["samples_per_s"] for x in r["runs"]]) / ref
        vs = [(f"{d['diff']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]" if (d := r.get("vs_single", {}).get(t))
               else "-") for t in (click, conv)]
        lines.append(f"| {name} | {' | '.join(cells)} | {speed:.2f}x | {vs[0]} | {vs[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
