"""``ctrzoo bench inference``: latency percentiles and throughput per backend and batch size."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ctrzoo.bundle import load_bundle
from ctrzoo.features import random_batch
from ctrzoo.runtime import load, supports

DEFAULT_BACKENDS = ("torch", "onnxruntime", "fused")


def bench_inference(bundle: str | Path, backends: list[str] | None, batch_sizes: list[int], seconds: float = 1.0,
                    min_runs: int = 20, threads: int | None = None) -> list[dict]:
    """One row per (backend, batch size): p50/p99 latency (ms), rows/s, max |diff| to torch (over every task).

    ``backends=None``: ``DEFAULT_BACKENDS`` that can serve the bundle (a multi-task bundle skips ``fused``);
    a backend named explicitly that cannot is refused by ``load``."""
    b = load_bundle(bundle)
    if backends is None:
        backends = [name for name in DEFAULT_BACKENDS if supports(b, name)]
    inputs = {n: random_batch(b.codec.layout, n, seed=n) for n in batch_sizes}
    reference = load(b, "torch", threads)
    expected = {n: reference.predict(x) for n, x in inputs.items()}
    rows = []
    for backend in backends:
        predictor = reference if backend == "torch" else load(b, backend, threads)
        for n, x in inputs.items():
            diff = float(np.abs(predictor.predict(x) - expected[n]).max())
            times = []
            deadline = time.perf_counter() + seconds
            while len(times) < min_runs or time.perf_counter() < deadline:
                t0 = time.perf_counter()
                predictor.predict(x)
                times.append(time.perf_counter() - t0)
            t = np.array(times) * 1e3
            rows.append({"backend": backend, "batch": n, "p50_ms": float(np.percentile(t, 50)),
                         "p99_ms": float(np.percentile(t, 99)), "rows_per_s": n / (float(np.mean(t)) / 1e3),
                         "runs": len(times), "max_abs_diff": diff})
    base = {r["batch"]: r["p50_ms"] for r in rows if r["backend"] == "onnxruntime"}
    for r in rows:
        r["p50_vs_onnxruntime"] = r["p50_ms"] / base[r["batch"]] if r["batch"] in base else float("nan")
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'backend':<18}{'batch':>6}{'p50 ms':>10}{'p99 ms':>10}{'rows/s':>12}{'p50 / ort':>11}{'max|diff|':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['backend']:<18}{r['batch']:>6}{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}{r['rows_per_s']:>12,.0f}"
                     f"{r['p50_vs_onnxruntime']:>11.2f}{r['max_abs_diff']:>11.1e}")
    return "\n".join(lines)
