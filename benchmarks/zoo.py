"""The model zoo on synthetic logs with known click probabilities: a BARS-style table (issue 17).

    python benchmarks/zoo.py [--rows 200000] [--seeds 1 2 3] [--epochs 1] [--models deepfm dcnv2 ...]
                             [--kinds criteo avazu taobao] [--out benchmarks/results/zoo.md]

Every registered single-task model on ``synth criteo`` and ``synth avazu``; the sequence models (and DeepFM
as the reference) on ``synth taobao``. Each is trained with each seed (the package's config of the dataset
plus ``--epochs``), its test AUC and logloss reported as mean +- std over seeds beside the oracle's (the
generator's true click probabilities of the same test rows), and its training samples/s and onnxruntime
latency at batch 100 (one thread) as ratios to DeepFM's in the same run. On taobao, DIEN and BST are each
compared with DIN on the same test rows (first seed) with DeLong's paired 95% interval. One process runs
everything in turn (2 cores: no parallel runs, so the speed ratios compare like with like).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEQUENCE_MODELS = ("din", "dien", "bst")
REFERENCE = "deepfm"


def _latency_ms(bundle: Path, batch: int = 100, runs: int = 200) -> float:
    from ctrzoo import runtime
    from ctrzoo.bundle import load_bundle
    from ctrzoo.export import export_onnx

    export_onnx(bundle)
    b = load_bundle(bundle)
    predictor = runtime.load(b, "onnxruntime", threads=1)
    x = b.codec.random_batch(batch, seed=1)
    from _common import median_latency_ms

    median_latency_ms(predictor, [x], 20)  # warm up
    return median_latency_ms(predictor, [x], runs)


def main() -> None:
    sys.path.insert(0, str(HERE))
    from _common import WORK, synth_file
    from quality import test_truth

    from ctrzoo.compare.run import compare
    from ctrzoo.data.prepare import prepare
    from ctrzoo.metrics import auc, logloss
    from ctrzoo.models import list_models
    from ctrzoo.train.run import train_bundle

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=1024,
                    help="training batch (the package configs' 4096 gives only ~40 steps per epoch at 200k rows)")
    ap.add_argument("--models", nargs="*", default=None, help="default: every registered single-task model")
    ap.add_argument("--kinds", nargs="*", default=["criteo", "avazu", "taobao"])
    ap.add_argument("--out", default=str(HERE / "results" / "zoo.md"))
    a = ap.parse_args()
    from ctrzoo.bundle import load_bundle
    from ctrzoo.models.registry import is_multitask

    models = a.models or [m for m in list_models() if not is_multitask(m)]  # multi-task: zoo_multitask.py
    root = WORK / f"zoo_{a.rows}"
    results: dict[str, dict[str, dict]] = {}
    for kind in a.kinds:
        raw = synth_file(kind, a.rows)
        data = root / f"data_{kind}"
        if not (data / "dataset.json").exists():
            prepare(kind, [raw], data)
        y, p = test_truth(data, raw)
        oracle = {"auc": auc(y, p), "logloss": logloss(y, p)}
        on_kind = [m for m in models if (m in SEQUENCE_MODELS) == (kind == "taobao") or m == REFERENCE]
        results[kind] = {"oracle": oracle}
        for model in on_kind:
            runs = []
            for seed in a.seeds:
                out = root / f"{kind}_{model}_{seed}"
                if (out / "bundle.json").exists():  # a finished run of an interrupted invocation: reused
                    meta = load_bundle(out).meta
                else:
                    meta = train_bundle(model, data, out, progress=False, verbose=False,
                                        overrides={"epochs": a.epochs, "seed": seed, "threads": 1,
                                                   "batch_size": a.batch_size})
                speed = np.mean([h["samples_per_s"] for h in meta.history if h.get("samples_per_s")])
                runs.append({"auc": meta.metrics.test["auc"], "logloss": meta.metrics.test["logloss"],
                             "samples_per_s": float(speed), "bundle": str(out)})
                print(f"{kind} {model} seed {seed}: AUC {runs[-1]['auc']:.4f}", file=sys.stderr, flush=True)
            runs[0]["latency_ms"] = _latency_ms(Path(runs[0]["bundle"]))
            results[kind][model] = {"runs": runs}
        if kind == "taobao" and "din" in on_kind:
            for other in ("dien", "bst"):
                if other in on_kind:
                    din = results[kind]["din"]["runs"][0]["bundle"]
                    rep = compare([din, results[kind][other]["runs"][0]["bundle"]], data, baseline=din)
                    results[kind][other]["vs_din"] = rep["comparisons"][0]["auc"]
    text = _table(results, a)
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text + "\n")
    Path(a.out).with_suffix(".json").write_text(json.dumps(results, indent=1))


def _table(results: dict, a) -> str:
    from _common import cpu_name

    lines = [f"{cpu_name()}; {a.rows:,d} synthetic rows per dataset (8:1:1), {a.epochs} epoch(s) of batch "
             f"{a.batch_size}, seeds {a.seeds}, each dataset's package config otherwise, one torch thread; speed "
             "ratios to DeepFM in the same run (training samples/s: higher is faster; onnxruntime latency at "
             "batch 100, one thread: lower is faster)."]
    for kind, res in results.items():
        ref = res.get(REFERENCE)
        lines += ["", f"#### synth {kind} (oracle AUC {res['oracle']['auc']:.4f}, logloss "
                      f"{res['oracle']['logloss']:.4f})", "",
                  "| model | test AUC (mean +- std) | test logloss | training speed vs DeepFM | latency vs DeepFM |"
                  + (" AUC - DIN (DeLong 95% CI) |" if kind == "taobao" else ""),
                  "| --- | --- | --- | --- | --- |" + (" --- |" if kind == "taobao" else "")]
        for model, r in res.items():
            if model == "oracle":
                continue
            aucs = np.array([x["auc"] for x in r["runs"]])
            lls = np.array([x["logloss"] for x in r["runs"]])
            speed = (np.mean([x["samples_per_s"] for x in r["runs"]])
                     / np.mean([x["samples_per_s"] for x in ref["runs"]])) if ref else float("nan")
            lat = r["runs"][0]["latency_ms"] / ref["runs"][0]["latency_ms"] if ref else float("nan")
            row = (f"| {model} | {aucs.mean():.4f} +- {aucs.std():.4f} | {lls.mean():.4f} +- {lls.std():.4f} | "
                   f"{speed:.2f}x | {lat:.2f}x |")
            if kind == "taobao":
                d = r.get("vs_din")
                row += (f" {d['diff']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] |" if d else " - |")
            lines.append(row)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
