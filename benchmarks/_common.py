"""Shared helpers for benchmarks: cached synthetic inputs and child-process measurements.

Each measured run happens in its own child process so its peak RSS is its own; the parent compares runs
made by the same script on the same machine, as ratios.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WORK = Path(__file__).resolve().parent / "_work"


def synth_file(kind: str, rows: int, seed: int = 1) -> Path:
    """A cached ``ctrzoo synth`` output (generated once per (kind, rows, seed))."""
    from ctrzoo.synth import generate

    WORK.mkdir(exist_ok=True)
    ext = "tsv" if kind == "criteo" else "csv"
    path = WORK / f"{kind}_{rows}_{seed}.{ext}"
    if not (path.exists() and Path(f"{path}.synth.json").exists()):
        print(f"generating {rows:,d} {kind} rows -> {path}", file=sys.stderr)
        generate(kind, rows, seed, path, progress=sys.stderr.isatty())
    return path


def run_child(script: Path, *args: str) -> dict:
    """Run ``script --child ARGS`` and parse the JSON line it prints last."""
    out = subprocess.run([sys.executable, str(script), "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """VmHWM of this process (unlike ru_maxrss it is not inherited from the parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_child_in(python: str | Path, script: Path, *args: str) -> dict:
    """``run_child`` with another interpreter, e.g. a baseline library's own virtual environment."""
    out = subprocess.run([str(python), str(script), "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def venv_python(name: str, packages: list[str]) -> Path:
    """The interpreter of a cached virtual environment ``_work/NAME`` holding ``packages`` (pip specs).

    Made once (``python -m venv`` + ``pip install``) and remade only when the package list changes; it
    keeps a baseline library and its pinned dependencies out of ctrzoo's own environment.
    """
    import shutil

    path = WORK / name
    marker = path / "benchmark-packages.txt"
    wanted = "\n".join(packages) + "\n"
    if not (marker.exists() and marker.read_text() == wanted):
        print(f"creating {path} with {' '.join(packages)}", file=sys.stderr)
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(path / "bin" / "python"), "-m", "pip", "install", "-q", *packages], check=True)
        marker.write_text(wanted)
    return path / "bin" / "python"


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so a later ``peak_rss_mb()`` is the peak of what follows."""
    Path("/proc/self/clear_refs").write_text("5")


def bench_bundle(model: str, kind: str, rows: int = 50_000, steps: int | None = 5) -> tuple[Path, Path]:
    """A bundle of the benchmark shape (default config of ``kind``), briefly trained and exported.

    Latency does not depend on the weights, so a few steps suffice; cached in ``_work``.
    """
    from ctrzoo.data.prepare import prepare
    from ctrzoo.export import export_onnx
    from ctrzoo.train.run import train_bundle

    data = WORK / f"{kind}_{rows}_prepared"
    if not (data / "dataset.json").exists():
        prepare(kind, [synth_file(kind, rows)], data)
    out = WORK / f"bundle_{model}_{kind}_{rows}_{steps}"
    if not (out / "model.onnx").exists():
        train_bundle(model, data, out, overrides={"epochs": 1, "max_steps": steps}, progress=False, verbose=False)
        export_onnx(out)
    return out, data


def isolated_bench(script: Path, bundle: Path, backends: list[str], batch_sizes: list[int], seconds: float,
                   threads: int, rounds: int) -> list[dict]:
    """Each backend timed alone in its own child process (``script --child``), ``rounds`` times in alternating order.

    In one process the idle thread pool of one backend (onnxruntime's and TVM's spin-wait) steals the cores
    from the next, and sequential cells drift with the machine's load. Reported: the median over rounds of
    each cell's p50/p99, and every round's ratio to onnxruntime's p50 in the same round.
    """
    import statistics

    per: dict[tuple[str, int], list[dict]] = {}
    order = list(backends)
    for _ in range(rounds):
        for backend in order:
            for r in run_child(script, str(bundle), backend, str(seconds), str(threads),
                               *map(str, batch_sizes))["rows"]:
                per.setdefault((backend, r["batch"]), []).append(r)
        order.reverse()
    rows = []
    for (backend, n), rs in per.items():
        rows.append({"backend": backend, "batch": n, "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                     "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                     "rows_per_s": statistics.median(r["rows_per_s"] for r in rs), "runs": sum(r["runs"] for r in rs),
                     "max_abs_diff": max(r["max_abs_diff"] for r in rs),
                     "round_p50_ms": [round(r["p50_ms"], 4) for r in rs]})
    base = {r["batch"]: r for r in rows if r["backend"] == "onnxruntime"}
    for r in rows:
        b = base.get(r["batch"])
        r["p50_vs_onnxruntime"] = r["p50_ms"] / b["p50_ms"] if b else float("nan")
        r["round_ratios"] = [round(t / o, 3) for t, o in zip(r["round_p50_ms"], b["round_p50_ms"])] if b else []
    return sorted(rows, key=lambda r: (backends.index(r["backend"]), r["batch"]))


def child_bench(argv: list[str]) -> None:
    """The child side of ``isolated_bench``: ``BUNDLE BACKEND SECONDS THREADS SIZE...`` -> one JSON line."""
    from ctrzoo.runtime.bench import bench_inference

    bundle, backend, seconds, threads, *sizes = argv
    rows = bench_inference(bundle, [backend], [int(x) for x in sizes], float(seconds), threads=int(threads))
    print(json.dumps({"rows": rows}))


def cpu_name() -> str:
    """The host CPU's model name (every benchmark states it: hosts vary between sessions)."""
    import platform

    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor())


def median_latency_ms(predictor, batches: list, iters: int) -> float:
    """Median milliseconds of ``predictor.predict`` over ``iters`` calls cycling through ``batches``."""
    import time

    import numpy as np

    times = []
    for i in range(iters):
        x = batches[i % len(batches)]
        t0 = time.perf_counter()
        predictor.predict(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)
