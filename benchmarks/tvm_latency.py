"""Tuned TVM vs onnxruntime: p50 latency of DeepFM (emb 16, MLP 400-400-400, Criteo layout) per batch size.

    python benchmarks/tvm_latency.py [--minutes 10] [--trials 4000] [--buckets 1 16 128 1024] [--focus 100]

A bundle shaped like the benchmark's DeepFM is trained for one step on synthetic Criteo rows (latency does
not depend on the weights), exported, tuned with MetaSchedule within the budget (``ctrzoo.runtime.tvm.tuning``),
then both backends are timed in this process with ``ctrzoo.runtime.bench.bench_inference`` (same inputs,
same thread count), and the ratio to onnxruntime is printed. ``--reuse`` skips training and tuning when the
bundle already holds a tuned library (e.g. to re-time it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import WORK, child_bench, isolated_bench, synth_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="synthetic Criteo rows for the vocabularies")
    ap.add_argument("--minutes", type=float, default=10.0, help="tuning time budget, in total")
    ap.add_argument("--trials", type=int, default=4000, help="tuning trial budget, in total")
    ap.add_argument("--buckets", type=int, nargs="+", default=[1, 16, 128, 1024])
    ap.add_argument("--focus", type=int, nargs="*", default=[100], help="batch sizes whose buckets weigh 4x")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 100, 1024])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per (backend, batch size)")
    ap.add_argument("--bundle", default=str(WORK / "tvm_deepfm"))
    ap.add_argument("--reuse", action="store_true", help="keep an existing tuned bundle")
    ap.add_argument("--rounds", type=int, default=3, help="alternating child-process rounds per backend")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--generic-only", action="store_true",
                    help="tune dense layers with MetaSchedule's generic rules instead of ctrzoo's micro-kernel space")
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child_bench(sys.argv[2:])
    a = ap.parse_args()

    from ctrzoo.runtime.bench import bench_inference, format_table
    from ctrzoo.runtime.tvm.artifacts import artifact_dir, read_manifest
    from ctrzoo.runtime.tvm.tuning import tune_tvm

    bundle = Path(a.bundle)
    manifest = read_manifest(artifact_dir(_bundle(bundle))) if (bundle / "model.onnx").exists() and a.reuse else None
    if manifest and manifest.tuning:
        tuning = manifest.tuning
        print(f"reusing {bundle} (tuned: {tuning['trials']} trials in {tuning['tuning_seconds']} s)")
    else:
        _make_bundle(bundle, a.rows)
        t0 = time.perf_counter()
        tuning = tune_tvm(bundle, trials=a.trials, max_minutes=a.minutes, buckets=tuple(a.buckets),
                          focus=tuple(a.focus), micro_kernels=not a.generic_only)
        print(f"tuned in {time.perf_counter() - t0:.0f} s wall: {tuning['trials']} trials, stopped by "
              f"{tuning['stopped_by']}; library built in {tuning['build_seconds']} s")
    rows = isolated_bench(Path(__file__), bundle, ["onnxruntime", "tvm"], a.batch_sizes, a.seconds, a.threads, a.rounds)
    print(f"isolated (each backend alone in a child process, {a.rounds} alternating rounds, median of p50s):")
    print(format_table(rows))
    for r in rows:
        if r["backend"] == "tvm":
            print(f"  tvm/ort per round at batch {r['batch']}: {r['round_ratios']}")
    # After the isolated rounds, so that they run before this process loads a TVM library. (With TVM loaded
    # here, by tuning or by this timing, some onnxruntime children measured ~1.2 ms at batch 100 instead of
    # the 0.76 ms a lone child measures; the cause is not pinned down, hence the best-round verdict.)
    sequential = bench_inference(bundle, ["onnxruntime", "tvm"], a.batch_sizes, a.seconds, threads=a.threads)
    print("sequential, in this process (all onnxruntime cells, then all tvm cells):")
    print(format_table(sequential))
    # The verdict compares TVM's median with onnxruntime's *best* round: onnxruntime's p50 on this machine is
    # bimodal (~0.77 ms with both cores to itself, ~1.2 ms in some child runs), and the medians would credit
    # TVM with onnxruntime's bad minutes.
    ort_best = {r["batch"]: min(r["round_p50_ms"]) for r in rows if r["backend"] == "onnxruntime"}
    ratio = {r["batch"]: r["p50_ms"] / ort_best[r["batch"]] for r in rows if r["backend"] == "tvm"}
    for n, x in sorted(ratio.items()):
        print(f"tvm median p50 / onnxruntime best-round p50 at batch {n}: {x:.2f}x")
    if 100 in ratio:
        print(f"goal tvm within 1.3x of onnxruntime at batch 100: {ratio[100]:.2f}x -> "
              f"{'met' if ratio[100] <= 1.3 else 'NOT met'}")
    if a.json:
        print(json.dumps({"rows": rows, "tuning": tuning}))


def _bundle(path: Path):
    from ctrzoo.bundle import load_bundle

    return load_bundle(path)


def _make_bundle(bundle: Path, rows: int) -> None:
    import torch

    from ctrzoo.data.prepare import prepare
    from ctrzoo.export import export_onnx
    from ctrzoo.train.run import train_bundle

    data = WORK / f"tvm_criteo_{rows}"
    if not (data / "dataset.json").exists():
        prepare("criteo", [synth_file("criteo", rows)], data)
    hp = {"emb_dim": 16, "mlp": [400, 400, 400]}
    train_bundle("deepfm", data, bundle, overrides={"epochs": 1, "max_steps": 1, "hparams": hp},
                 progress=False, verbose=False)
    with torch.no_grad():  # the inference graph: FeatureEmbedding.lookup's training-time dedup stays out
        export_onnx(bundle)


if __name__ == "__main__":
    main()
