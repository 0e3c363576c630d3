"""Same speed before and after a change: prepare and /rank measured with two checkouts, alternating.

    python benchmarks/ab_speed.py --base OLD [--rounds 3] [--rows 1000000]   # OLD: `git worktree add OLD <commit>`

Each round runs, for both checkouts (the order swaps every round, so drift in the machine's load hits both):
``prepare criteo`` of the same synthetic file (what ``benchmarks/prepare.py`` times), the in-process floor
of ``benchmarks/serve.py`` (100-candidate Criteo requests: encode, and encode + predict, onnxruntime) and a
live ``ctrzoo serve`` under ``benchmarks/serve.py``'s load at concurrency 8. Every measurement runs in a child
process started in that checkout (``python -m`` and ``-c`` put the working directory first on sys.path).
Prints the medians over rounds and the ratios new/old.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _child(code: Path, expr: str) -> dict:
    """Evaluate ``expr`` (a call of this module) in a child process running ``code``'s ctrzoo."""
    script = f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import ab_speed; print(json.dumps({expr}))"
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, "-c", script], cwd=code, env=env, check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_prepare(raw: str) -> dict:
    from ctrzoo.data.prepare import prepare

    out = Path(tempfile.mkdtemp(prefix="ab-prepare-"))
    try:
        t0 = time.perf_counter()
        prepare("criteo", [Path(raw)], out / "d")
        return {"seconds": time.perf_counter() - t0}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def measure_floor(bundle: str, bodies_path: str, runs: int = 400) -> dict:
    from serving.model_state import load_model

    bodies = json.loads(Path(bodies_path).read_text())
    m = load_model(bundle, "onnxruntime", 1)
    codec = m.codec if hasattr(m, "codec") else m.encoder  # the older checkout calls it the encoder
    encode, total = [], []
    for i in range(runs):
        body = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        batch = codec.encode_request(body.get("context", {}), body["candidates"])
        t1 = time.perf_counter()
        m.predictor.predict(batch)
        t2 = time.perf_counter()
        encode.append(t1 - t0)
        total.append(t2 - t0)
    return {"encode_ms": float(np.median(encode) * 1e3), "floor_ms": float(np.median(total) * 1e3)}


def measure_http(code: Path, bundle: Path, payloads: list[bytes], requests: int) -> dict:
    from serve import _free_port, _load

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(code), "CTRZOO_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "ctrzoo", "serve", "--bundle", str(bundle), "--port", str(port),
                               "--backend", "onnxruntime", "--log-level", "warning"], cwd=code, env=env)
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        asyncio.run(_load("127.0.0.1", port, payloads, 8, 200, 30))  # warm-up
        r = asyncio.run(_load("127.0.0.1", port, payloads, 8, requests, 120))
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    return {"c8_p50_ms": r["p50_ms"], "c8_p99_ms": r["p99_ms"], "c8_rps": r["rps"], "errors": r["errors"]}


def main() -> None:
    sys.path.insert(0, str(HERE))
    from _common import bench_bundle, synth_file
    from serve import _requests

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="the other checkout (e.g. the commit before a change)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1_000_000, help="synthetic Criteo rows to prepare")
    ap.add_argument("--requests", type=int, default=2000, help="HTTP requests per measurement at concurrency 8")
    a = ap.parse_args()
    new, old = HERE.parent, Path(a.base).resolve()
    raw = synth_file("criteo", a.rows)
    bundle, data = bench_bundle("deepfm", "criteo")
    bodies = _requests(data, 100)
    bodies_path = HERE / "_work" / "ab_bodies.json"
    bodies_path.write_text(json.dumps(bodies))
    payloads = [json.dumps(b).encode() for b in bodies]
    results: dict[str, list[dict]] = {"old": [], "new": []}
    for r in range(a.rounds):
        order = [("old", old), ("new", new)] if r % 2 == 0 else [("new", new), ("old", old)]
        for name, code in order:
            row = _child(code, f"ab_speed.measure_prepare({str(raw)!r})")
            row |= _child(code, f"ab_speed.measure_floor({str(bundle)!r}, {str(bodies_path)!r})")
            row |= measure_http(code, bundle, payloads, a.requests)
            results[name].append(row)
            print(f"round {r + 1} {name}: " + "  ".join(f"{k}={v:.3f}" for k, v in row.items()), flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"\n{cpu}, {os.cpu_count()} cores; {a.rounds} alternating rounds; medians")
    print(f"{'measure':<16}{'old':>10}{'new':>10}{'new/old':>9}{'paired':>9}")
    for key in results["new"][0]:
        o = float(np.median([x[key] for x in results["old"]]))
        n = float(np.median([x[key] for x in results["new"]]))
        # the median of each round's own ratio: the machine's drift between rounds cancels out
        paired = float(np.median([b[key] / a[key] if a[key] else np.nan
                                  for a, b in zip(results["old"], results["new"])]))
        print(f"{key:<16}{o:>10.3f}{n:>10.3f}{(n / o if o else float('nan')):>9.2f}{paired:>9.2f}")


if __name__ == "__main__":
    main()
