"""Inference latency and throughput: every backend x model x batch size, plus the int8 AUC cost.

    python benchmarks/inference.py [--seconds 1.0] [--threads 2] [--rounds 2] [--models deepfm din ...]

Models have the benchmark shapes (Criteo layout, embedding 16, MLP 400-400-400; DIN on the Taobao
layout with its default 200-80 MLP) and are trained briefly on synthetic data: latency does not depend
on the weights, the int8 AUC comparison uses a DeepFM trained for one epoch. The TVM rows appear when
apache-tvm is installed (extra `tvm`); tuned libraries are used when the bundle has them. Each backend is
timed alone in its own child process (an idle backend's spinning thread pool would steal the cores of the
one being timed), ``--rounds`` times in alternating order; cells are medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import WORK, bench_bundle, child_bench, isolated_bench

MODELS = {"wide_deep": "criteo", "deepfm": "criteo", "dcn": "criteo", "din": "taobao"}


def _int8_auc_cost(threads: int) -> dict:
    import numpy as np

    from ctrzoo import runtime
    from ctrzoo.data.dataset import PreparedDataset
    from ctrzoo.data.loader import BatchLoader
    from ctrzoo.metrics import auc, logloss

    bundle, data = bench_bundle("deepfm", "criteo", 300_000, None)
    ds = PreparedDataset.open(data)
    batch = next(iter(BatchLoader(ds, "test", 10**7, shuffle=False)))
    y = batch.label.numpy()
    p32 = runtime.load(bundle, "onnxruntime", threads).predict(batch)
    p8 = runtime.load(bundle, "onnxruntime-int8", threads).predict(batch)
    return {"rows": int(y.size), "auc_fp32": auc(y, p32), "auc_int8": auc(y, p8), "logloss_fp32": logloss(y, p32),
            "logloss_int8": logloss(y, p8), "max_abs_diff": float(np.abs(p8 - p32).max())}


def _verdicts(results: dict) -> None:
    """The issue's goals, judged against onnxruntime's *best* round (its p50 is bimodal on this machine, and
    a slow round would flatter the other backends), from the rows of exact backends."""
    exact = ("torch", "onnxruntime", "fused", "tvm")
    print()
    for model, rows in results.items():
        ort_best = {r["batch"]: min(r["round_p50_ms"]) for r in rows if r["backend"] == "onnxruntime"}
        for n in (1, 100):
            if n not in ort_best:
                continue
            others = {r["backend"]: r["p50_ms"] for r in rows if r["batch"] == n and r["backend"] in exact
                      and r["backend"] != "onnxruntime"}
            best_other = min(others, key=others.get) if others else None
            line = f"{model} batch {n}: onnxruntime best-round p50 {ort_best[n]:.3f} ms"
            if best_other:
                line += f", fastest other exact backend {best_other} {others[best_other]:.3f} ms"
                line += (" -> onnxruntime fastest" if ort_best[n] <= others[best_other]
                         else " -> onnxruntime NOT fastest")
            print(line)
        fused = next((r for r in rows if r["backend"] == "fused" and r["batch"] == 100), None)
        if model == "din" and fused and 100 in ort_best:
            speedup = ort_best[100] / fused["p50_ms"]
            print(f"goal fused >= 1.2x faster than onnxruntime for DIN at batch 100: {speedup:.2f}x -> "
                  f"{'met' if speedup >= 1.2 else 'NOT met'}")


def main() -> None:
    from ctrzoo.runtime.bench import format_table

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="alternating child-process rounds per backend")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--backends", nargs="+", default=["torch", "onnxruntime", "onnxruntime-int8", "fused", "tvm"])
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child_bench(sys.argv[2:])
    a = ap.parse_args()
    try:
        import tvm  # noqa: F401
    except ImportError:
        if "tvm" in a.backends:
            print("apache-tvm not installed: no tvm rows (pip install -e '.[tvm]')", file=sys.stderr)
        a.backends = [b for b in a.backends if b != "tvm"]
    results = {}
    for model in a.models:
        bundle, _ = bench_bundle(model, MODELS[model])
        rows = isolated_bench(Path(__file__), bundle, a.backends, [1, 100, 1024], a.seconds, a.threads, a.rounds)
        results[model] = rows
        print(f"\n## {model}\n{format_table(rows)}", flush=True)
        for r in rows:
            if r["backend"] != "onnxruntime":
                print(f"  {r['backend']}/onnxruntime p50 per round at batch {r['batch']}: {r['round_ratios']}")
    _verdicts(results)
    cost = _int8_auc_cost(a.threads)
    results["int8_auc_cost"] = cost
    print(f"\nint8 dynamic quantization, DeepFM trained 1 epoch on 240k rows, {cost['rows']:,d} test rows: "
          f"AUC {cost['auc_fp32']:.5f} -> {cost['auc_int8']:.5f} ({cost['auc_int8'] - cost['auc_fp32']:+.5f}), "
          f"logloss {cost['logloss_fp32']:.5f} -> {cost['logloss_int8']:.5f}, max |diff| {cost['max_abs_diff']:.1e}")
    (WORK / "inference_results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
