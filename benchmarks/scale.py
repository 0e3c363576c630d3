"""Criteo-scale on one machine: prepare + one epoch of DeepFM on 10M synthetic rows, 1 vs 2 processes.

    python benchmarks/scale.py [--rows 10000000] [--parts 4] [--steps all|N]

One ``ctrzoo synth criteo`` file of ``--rows`` rows is cut into ``--parts`` files (the shape of Criteo 1TB's
day files). Then, each as a real ``ctrzoo`` command in its own process tree:

1. ``ctrzoo prepare criteo --input parts... --workers 1`` and ``--workers 2``;
2. ``ctrzoo train --model deepfm --epochs 1`` on that dataset with one process and with ``--nproc 2``
   (torchrun, gloo, DistributedDataParallel; each rank reads half of the row groups).

Measured per run: wall seconds, rows/s, and peak RSS of the whole process tree (the sum over its processes,
sampled every 0.1 s), plus the test AUC of both bundles. On this 2-core machine two processes cannot speed
anything up (each takes one core that one process would use with 2 threads): the 2-process rows measure
the overhead of the distributed path, and are reported as such.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from _common import WORK, synth_file


def split_lines(src: Path, parts: int) -> list[Path]:
    """Cut ``src`` into ``parts`` files of whole lines (cached); coreutils ``split`` streams it."""
    out = WORK / f"scale_parts_{src.stem}_{parts}"
    files = [out / f"part-{i:02d}.tsv" for i in range(parts)]
    if not all(f.exists() for f in files):
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(["split", "-n", f"l/{parts}", "-d", "-a", "2", "--additional-suffix=.tsv", str(src),
                        str(out / "part-")], check=True)
    return files


def run_measured(cmd: list[str]) -> dict:
    """Run ``cmd``; wall seconds and the peak of the summed RSS of it and all its descendants."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                total = 0
                for p in tree:
                    with contextlib.suppress(psutil.Error):  # a process may end between listing and reading
                        total += p.memory_info().rss
                peak = max(peak, total)
            except psutil.Error:
                pass
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.communicate()[0]
    done.set()
    sampler.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{output[-4000:]}")
    return {"cmd": " ".join(cmd), "wall_s": wall, "peak_rss_mb": peak / 2**20, "output": output}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--max-steps", type=int, default=None, help="cap training steps (smoke runs); default: 1 epoch")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()

    ctrzoo = [sys.executable, "-m", "ctrzoo"]
    parts = split_lines(synth_file("criteo", a.rows), a.parts)
    results = []
    for workers in (1, 2):
        out = WORK / f"scale_prepared_{a.rows}_w{workers}"
        r = run_measured([*ctrzoo, "prepare", "criteo", "--input", *map(str, parts), "--out", str(out),
                          "--workers", str(workers)])
        splits = json.loads((out / "dataset.json").read_text())["splits"]
        rows = sum(s["rows"] for s in splits.values())
        results.append({"step": "prepare", "processes": workers, "rows": rows, **r})
        print(f"prepare, {workers} worker(s): {r['wall_s']:.0f} s, peak RSS {r['peak_rss_mb']:,.0f} MB", flush=True)
    data = WORK / f"scale_prepared_{a.rows}_w1"
    train_rows = json.loads((data / "dataset.json").read_text())["splits"]["train"]["rows"]
    for nproc in (1, 2):
        out = WORK / f"scale_deepfm_{a.rows}_p{nproc}"
        cmd = [*ctrzoo, "train", "--model", "deepfm", "--data", str(data), "--out", str(out), "--epochs", "1",
               "--nproc", str(nproc)]
        if a.max_steps:
            cmd += ["--max-steps", str(a.max_steps)]
        r = run_measured(cmd)
        meta = json.loads((out / "bundle.json").read_text())
        hist = meta["history"][0]
        results.append({"step": "train 1 epoch", "processes": nproc, "rows": train_rows, **r,
                        "train_loop_samples_per_s": hist.get("samples_per_s"),
                        "test_auc": meta["metrics"]["test"]["auc"], "train_seconds": meta.get("train_seconds")})
        print(f"train, {nproc} process(es): {r['wall_s']:.0f} s, peak RSS {r['peak_rss_mb']:,.0f} MB, "
              f"test AUC {meta['metrics']['test']['auc']:.4f}", flush=True)

    print(f"\n{a.rows:,d} synthetic Criteo rows in {a.parts} files; DeepFM (emb 16, MLP 400-400-400, batch 4096)")
    print("| step | processes | wall s | rows/s | peak RSS (tree) MB | vs 1 process (wall) | test AUC |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base = {}
    for r in results:
        base.setdefault(r["step"], r["wall_s"])
        auc = f"{r['test_auc']:.4f}" if "test_auc" in r else ""
        print(f"| {r['step']} | {r['processes']} | {r['wall_s']:.1f} | {r['rows'] / r['wall_s']:,.0f} | "
              f"{r['peak_rss_mb']:,.0f} | {r['wall_s'] / base[r['step']]:.2f}x | {auc} |")
    for r in results:
        if "train_loop_samples_per_s" in r:
            print(f"train loop ({r['processes']} process(es)): {r['train_loop_samples_per_s']:,.0f} samples/s "
                  f"(all ranks together), train_seconds {r['train_seconds']}")
    if a.json:
        Path(a.json).write_text(json.dumps([{k: v for k, v in r.items() if k != "output"} for r in results], indent=1))


if __name__ == "__main__":
    main()
