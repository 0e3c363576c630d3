"""The fused BST backend against onnxruntime at batch 100, one thread, in one run (issue 17's goal: >= 1.2x).

    python benchmarks/fused_bst.py [--rows 50000] [--rounds 7] [--iters 200] [--pooling mean]

BST has the package defaults on the Taobao layout (embedding 16, one transformer layer, 2 heads, FFN 64,
MLP 200-80, history length 50) and is trained briefly on synthetic taobao rows (latency does not depend on
the weights, but it does on history lengths, so the inputs are real test rows of the synthetic log: 20
different batches of 100, cycled). A second input set, ``random_batch`` (lengths uniform in 0..50, twice as
long on average), shows how the gain shrinks as histories fill the padded length. The backends run in the same
process, one thread each, interleaved in ``--rounds`` blocks of ``--iters`` calls; reported per backend is
the median over rounds of each block's median latency, and the ratio onnxruntime / fused of those medians.
Results go to ``benchmarks/results/fused_bst.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BACKENDS = ("onnxruntime", "fused", "torch")


def _bundle(rows: int, pooling: str) -> tuple[Path, Path]:
    """A briefly trained, exported BST on synthetic taobao rows (cached in ``benchmarks/_work``)."""
    from _common import WORK, synth_file

    from ctrzoo.data.prepare import prepare
    from ctrzoo.export import export_onnx
    from ctrzoo.train.run import train_bundle

    data = WORK / f"taobao_{rows}_prepared"
    if not (data / "dataset.json").exists():
        prepare("taobao", [synth_file("taobao", rows)], data)
    out = WORK / f"bundle_bst_{pooling}_taobao_{rows}"
    if not (out / "model.onnx").exists():
        train_bundle("bst", data, out, overrides={"epochs": 1, "max_steps": 20, "hparams": {"pooling": pooling}},
                     progress=False, verbose=False)
        export_onnx(out)
    return out, data


def _inputs(bundle: Path, data: Path) -> dict[str, list[dict[str, np.ndarray]]]:
    from ctrzoo.bundle import load_bundle
    from ctrzoo.data.dataset import PreparedDataset
    from ctrzoo.data.loader import BatchLoader

    real = []
    for b in BatchLoader(PreparedDataset.open(data), "test", 100, shuffle=False, drop_last=True):
        real.append({"sparse": b.sparse.numpy(), "dense": b.dense.numpy(), "seq": b.seq.numpy()})
        if len(real) == 20:
            break
    codec = load_bundle(bundle).codec
    uniform = [codec.random_batch(100, seed=s).as_dict() for s in range(20)]
    return {"synthetic taobao test rows": real, "random_batch (uniform lengths)": uniform}


def main() -> None:
    sys.path.insert(0, str(HERE))
    import onnxruntime
    import torch
    from _common import cpu_name, median_latency_ms

    from ctrzoo import runtime

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--pooling", default="mean", choices=["mean", "target", "concat"])
    a = ap.parse_args()
    bundle, data = _bundle(a.rows, a.pooling)
    predictors = {b: runtime.load(bundle, b, threads=1) for b in BACKENDS}
    inputs = _inputs(bundle, data)
    report = {"cpu": cpu_name(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "threads": 1,
              "batch": 100, "pooling": a.pooling, "results": {}}
    print(f"CPU: {report['cpu']}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; one thread; "
          f"BST pooling={a.pooling}, batch 100")
    for name, batches in inputs.items():
        lengths = np.concatenate([(x["seq"][:, 0] != 0).sum(1) for x in batches])
        diff = max(float(np.abs(predictors[b].predict(x) - predictors["torch"].predict(x)).max())
                   for b in ("onnxruntime", "fused") for x in batches)
        for p in predictors.values():  # warm up
            median_latency_ms(p, batches, 20)
        per_round: dict[str, list[float]] = {b: [] for b in BACKENDS}
        for r in range(a.rounds):
            for b in (BACKENDS if r % 2 == 0 else BACKENDS[::-1]):
                per_round[b].append(median_latency_ms(predictors[b], batches, a.iters))
        p50 = {b: statistics.median(v) for b, v in per_round.items()}
        ratio = p50["onnxruntime"] / p50["fused"]
        report["results"][name] = {"history_len_mean": float(lengths.mean()), "history_len_max": int(lengths.max()),
                                   "p50_ms": p50, "rounds_ms": per_round, "onnxruntime_over_fused": ratio,
                                   "max_abs_diff_to_torch": diff}
        print(f"\n{name}: history length mean {lengths.mean():.1f}, max {lengths.max()} (padded to 50); "
              f"max |diff| to torch {diff:.1e}")
        for b in BACKENDS:
            print(f"  {b:<12} p50 {p50[b]:.3f} ms   rounds {[round(t, 3) for t in per_round[b]]}")
        print(f"  onnxruntime / fused = {ratio:.2f}x -> goal (>= 1.2x) {'met' if ratio >= 1.2 else 'NOT met'}")
    out = HERE / "results" / "fused_bst.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
