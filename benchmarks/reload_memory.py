"""Memory of a live ``ctrzoo serve`` across hot reloads: RSS after each reload, HTTP and SIGHUP alternating.

    python benchmarks/reload_memory.py [--rows 100000] [--reloads 30] [--code DIR] [--workdir DIR] [--json]

A DIN bundle is trained on ``ctrzoo synth taobao`` rows and exported, then served by a real ``ctrzoo serve``
process on loopback; each reload (``POST /admin/reload`` or ``kill -HUP``) is followed by a few /rank
requests, then the server's RSS is sampled. ``--code DIR`` runs every ctrzoo command (synth, prepare,
train, export, serve) from another checkout (e.g. an older commit unpacked with ``git archive``), so the
same script measures before and after a change. Growth per reload is the least-squares slope of RSS over
reloads 5..N (the first reloads also warm allocator arenas).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

TOKEN = "bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or "unknown"


def _run(env: dict, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "ctrzoo", *args], env=env, cwd=env["PYTHONPATH"], check=True,
                   stdout=subprocess.DEVNULL)


def _bundle(env: dict, work: Path, rows: int) -> Path:
    bundle = work / "din"
    if (bundle / "model.onnx").exists():
        return bundle
    raw = work / "taobao.csv"
    _run(env, "synth", "taobao", "--rows", str(rows), "--out", str(raw))
    _run(env, "prepare", "taobao", "--input", str(raw), "--out", str(work / "data"))
    _run(env, "train", "--model", "din", "--data", str(work / "data"), "--out", str(bundle), "--epochs", "1",
         "--max-steps", "30")
    _run(env, "export", "--bundle", str(bundle))
    return bundle


def _metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def measure(env: dict, bundle: Path, reloads: int) -> list[dict]:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "ctrzoo", "serve", "--bundle", str(bundle), "--port", str(port),
                             "--log-level", "warning"], env={**env, "CTRZOO_ADMIN_TOKEN": TOKEN}, cwd=env["PYTHONPATH"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise SystemExit("server not ready in 120 s")
            time.sleep(0.2)
        server = psutil.Process(proc.pid)
        body = {"context": {"userid": "1"}, "candidates": [{"adgroup_id": str(i)} for i in range(20)]}
        samples = [{"reload": 0, "via": "-", "rss_mb": server.memory_info().rss / 2**20, "seconds": 0.0}]
        ok = "ctrzoo_reloads_total{outcome=\"ok\"}"
        for i in range(1, reloads + 1):
            via = "http" if i % 2 else "sighup"
            t0 = time.perf_counter()
            if via == "http":
                r = httpx.post(f"{base}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, json={},
                               timeout=120)
                if r.status_code != 200:
                    raise SystemExit(f"reload {i}: {r.status_code} {r.text}")
            else:
                proc.send_signal(signal.SIGHUP)
                while _metric(base, ok) < i:
                    if time.perf_counter() - t0 > 120:
                        raise SystemExit(f"reload {i}: SIGHUP not done in 120 s")
                    time.sleep(0.05)
            seconds = time.perf_counter() - t0
            for _ in range(5):
                assert httpx.post(f"{base}/rank", json=body, timeout=30).status_code == 200
            time.sleep(0.2)
            samples.append({"reload": i, "via": via, "rss_mb": server.memory_info().rss / 2**20, "seconds": seconds})
            print(f"reload {i:3d} ({via:6s}) {seconds:5.2f}s  RSS {samples[-1]['rss_mb']:8.1f} MB", flush=True)
        return samples
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def summary(samples: list[dict]) -> dict:
    tail = [s for s in samples if s["reload"] >= 5]
    x = np.array([s["reload"] for s in tail], dtype=float)
    y = np.array([s["rss_mb"] for s in tail])
    slope = float(np.polyfit(x, y, 1)[0]) if len(tail) > 1 else float("nan")
    return {"reloads": samples[-1]["reload"], "rss_start_mb": round(samples[0]["rss_mb"], 1),
            "rss_after_5_mb": round(tail[0]["rss_mb"], 1), "rss_end_mb": round(samples[-1]["rss_mb"], 1),
            "mb_per_reload": round(slope, 2),
            "reload_seconds_median": round(float(np.median([s["seconds"] for s in samples[1:]])), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--reloads", type=int, default=30)
    p.add_argument("--code", default=str(Path(__file__).resolve().parents[1]), help="checkout to run ctrzoo from")
    p.add_argument("--workdir", default=None, help="where the data and bundle go (default: a temporary directory)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    import tempfile

    work = Path(args.workdir or tempfile.mkdtemp(prefix="reload-memory-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # ``python -m`` puts the working directory first on sys.path: children run in --code, or they would import
    # whatever checkout the script was started from
    env = {**os.environ, "PYTHONPATH": str(Path(args.code).resolve())}
    bundle = _bundle(env, work, args.rows)
    samples = measure(env, bundle, args.reloads)
    result = {"code": args.code, "cpu": _cpu(), "rows": args.rows, **summary(samples)}
    print(json.dumps(result) if args.json else
          f"{result['reloads']} reloads: RSS {result['rss_start_mb']} MB at start, {result['rss_after_5_mb']} after 5, "
          f"{result['rss_end_mb']} at the end: {result['mb_per_reload']} MB per reload "
          f"(median reload {result['reload_seconds_median']} s); {result['cpu']}")


if __name__ == "__main__":
    main()
