"""GPU check (issue 18): what only a machine with a CUDA device can show, in under 8 minutes on one.

    python benchmarks/gpu_check.py [--rows 2000000] [--json gpu_check.json]

1. one epoch of DeepFM (the Criteo defaults: embedding 16, MLP 400-400-400, batch 4096) on ``--rows`` synthetic
   Criteo rows, ``--device cuda`` (bf16 autocast where the GPU has it, else fp16 with a loss scaler) and
   ``--device cpu``, same seed: training samples/s of each and their test AUC;
2. the GPU-trained bundle scored on the CPU and on the GPU (fp32 both): the largest difference of the
   probabilities; its weights file holds CPU tensors, and it exports to ONNX on the CPU (golden rows checked);
3. one data-parallel step in a 1-process ``cpu:gloo,cuda:nccl`` group: DDP over the dense layers (nccl), the
   tables' touched rows through ``DistContext.average_row_grads`` on CUDA tensors (with one process the
   average is the rank's own gradient, which is checked).

Without a CUDA device it exits with status 2 and one line saying so. ``--smoke-on-cpu`` runs every step with
the CPU standing in for the GPU (and gloo for nccl): a check of this script's code paths, not of a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import WORK, synth_file


def no_gpu_message() -> str | None:
    """Why this machine cannot run the check (None when it can)."""
    if torch.cuda.is_available():
        return None
    return (f"gpu_check: no CUDA device here (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}): "
            "run it on a machine with a GPU and a CUDA build of torch")


def prepared(rows: int) -> Path:
    """The synthetic Criteo rows, prepared once (cached under benchmarks/_work)."""
    from ctrzoo.data.prepare import prepare

    out = WORK / f"gpu_check_criteo_{rows}"
    if not (out / "dataset.json").exists():
        prepare("criteo", [synth_file("criteo", rows)], out)
    return out


def train_one_epoch(data: Path, out: Path, device: str, max_steps: int | None) -> dict:
    from ctrzoo.train.run import train_bundle

    t0 = time.perf_counter()
    meta = train_bundle("deepfm", data, out, overrides={"epochs": 1, "device": device, "max_steps": max_steps},
                        progress=False, verbose=False)
    h = meta.history[0]
    return {"device": meta.train["device"], "bf16": meta.train["bf16"], "samples_per_s": h["samples_per_s"],
            "epoch_seconds": h["seconds"], "test_auc": meta.metrics.test["auc"],
            "wall_s": round(time.perf_counter() - t0, 1)}


def score_parity(bundle_dir: Path, data: Path, gpu: str) -> dict:
    from ctrzoo.bundle import load_bundle
    from ctrzoo.data.dataset import PreparedDataset
    from ctrzoo.evaluate import score_split

    bundle, ds = load_bundle(bundle_dir), PreparedDataset.open(data)
    _, on_cpu, _ = score_split(bundle, ds, "test", device="cpu")
    _, on_gpu, _ = score_split(bundle, ds, "test", device=gpu)
    weights = torch.load(bundle_dir / "weights.pt", weights_only=True)
    out = {"rows": int(on_cpu.size), "max_abs_diff": float(np.abs(on_cpu - on_gpu).max()),
           "weights_on_cpu": all(t.device.type == "cpu" for t in weights.values())}
    try:
        from ctrzoo.export import export_onnx

        record = export_onnx(bundle_dir)  # on the CPU: golden rows and onnxruntime parity checked
        out["onnx_golden_max_abs_diff"] = record.golden_max_abs_diff
    except ImportError as exc:  # the export extra is not installed on this machine
        out["onnx"] = f"not checked ({exc})"
    return out


def ddp_step(device: str) -> dict:
    """One DeepFM step under DistributedDataParallel in a 1-process group (nccl for CUDA tensors)."""
    import torch.distributed as dist
    import torch.nn.functional as F

    from ctrzoo.features.layout import TableLayout
    from ctrzoo.models import build_model
    from ctrzoo.nn.optim import row_sums
    from ctrzoo.train.distributed import DistContext, data_parallel

    class OneRankExchange(DistContext):
        """The exchange of several ranks, run by one: its collectives go through the group's backend."""

        @property
        def enabled(self) -> bool:
            return True

    where = torch.device(device)
    backend = "cpu:gloo,cuda:nccl" if where.type == "cuda" else "gloo"
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(backend, init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            layout = TableLayout.from_sizes({f"C{i}": 1000 for i in range(26)}, dense=tuple(f"I{i}" for i in range(13)))
            model = build_model("deepfm", layout, emb_dim=16, mlp=[64], sparse_grad=True).to(where)
            wrapped = data_parallel(model, where)
            sparse = torch.randint(1, layout.num_embeddings, (256, 26), device=where)
            dense, label = torch.randn(256, 13, device=where), torch.rand(256, device=where).round()
            loss = F.binary_cross_entropy_with_logits(wrapped(sparse, dense, torch.zeros(256, 0, 0, device=where,
                                                                                         dtype=torch.long)), label)
            loss.backward()
            table = model.embedding.table.weight
            rows, values = row_sums(table.grad)
            OneRankExchange(0, 1).average_row_grads([table, model.embedding.linear_table.weight])
            after_rows, after_values = table.grad._indices()[0], table.grad._values()
            same = bool(torch.equal(rows, after_rows) and torch.allclose(values, after_values))
            dense_grads = all(p.grad is not None for n, p in model.named_parameters() if "embedding.table" not in n
                              and "linear_table" not in n)
            return {"backend": backend, "loss": loss.item(), "row_grads_unchanged": same,
                    "touched_rows": int(rows.numel()), "dense_grads": dense_grads,
                    "ignored_by_ddp": sorted(model._ddp_params_and_buffers_to_ignore)}
        finally:
            dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000, help="synthetic Criteo rows (default 2,000,000)")
    ap.add_argument("--max-steps", type=int, default=None, help="cap each epoch's steps (a quicker check)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--smoke-on-cpu", action="store_true",
                    help="the CPU stands in for the GPU: checks this script's code paths, not a GPU")
    a = ap.parse_args()
    reason = no_gpu_message()
    if reason and not a.smoke_on_cpu:
        print(reason, file=sys.stderr)
        return 2
    gpu = "cpu" if a.smoke_on_cpu else "cuda"
    t0 = time.perf_counter()
    data = prepared(a.rows)
    root = WORK / f"gpu_check_bundles_{a.rows}"
    results = {"device_name": torch.cuda.get_device_name(0) if gpu == "cuda" else "cpu (smoke)",
               "rows": a.rows, "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    results["train_gpu"] = train_one_epoch(data, root / "gpu", gpu, a.max_steps)
    print(f"train on {gpu}: {results['train_gpu']}", flush=True)
    results["train_cpu"] = train_one_epoch(data, root / "cpu", "cpu", a.max_steps)
    print(f"train on cpu: {results['train_cpu']}", flush=True)
    results["parity"] = score_parity(root / "gpu", data, gpu)
    print(f"scores of the {gpu}-trained bundle, cpu vs {gpu}: {results['parity']}", flush=True)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    results["ddp_step"] = ddp_step(gpu)
    print(f"1-process DDP step: {results['ddp_step']}", flush=True)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    g, c = results["train_gpu"], results["train_cpu"]
    print(f"\n| | samples/s | epoch s | test AUC |\n| --- | ---: | ---: | ---: |\n"
          f"| {gpu} ({'bf16' if g['bf16'] else 'fp16' if gpu == 'cuda' else 'fp32'}) | {g['samples_per_s']:,.0f} | "
          f"{g['epoch_seconds']} | {g['test_auc']:.4f} |\n"
          f"| cpu ({results['cpu_threads']} threads) | {c['samples_per_s']:,.0f} | {c['epoch_seconds']} | "
          f"{c['test_auc']:.4f} |")
    print(f"GPU vs CPU samples/s: {g['samples_per_s'] / c['samples_per_s']:.1f}x; score parity max |diff| "
          f"{results['parity']['max_abs_diff']:.2e}; total {results['seconds']} s")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
