"""The /rank service under load on loopback: latency percentiles and throughput, next to the floor.

    python benchmarks/serve.py [--requests 10000] [--candidates 100] [--workers 1] [--threads 1]

A real ``ctrzoo serve`` process (uvicorn) serves a DeepFM bundle of the benchmark shape; an asyncio
client sends pre-serialized requests of 100 Criteo candidates at concurrency 1, 8 and 32 (bounded in
count and time). The floor is the same request encoded and predicted in-process: no HTTP, no JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
from _common import bench_bundle


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _requests(data_dir, n_candidates: int, pool: int = 50) -> list[dict]:
    import pyarrow.parquet as pq

    from ctrzoo.data.dataset import PreparedDataset

    raw = pq.read_table(PreparedDataset.open(data_dir).raw_path("test")).slice(0, n_candidates * pool).to_pylist()
    rows = [{k: v for k, v in r.items() if k != "label"} for r in raw]
    return [{"candidates": rows[i * n_candidates:(i + 1) * n_candidates]} for i in range(pool)]


def _floor(bundle, bodies: list[dict], backend: str, threads: int, runs: int = 300) -> float:
    from serving.model_state import load_model

    m = load_model(bundle, backend, threads)
    codec = m.codec if hasattr(m, "codec") else m.encoder  # (an older checkout, in A/B runs)
    times = []
    for i in range(runs):
        body = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        m.predictor.predict(codec.encode_request(body.get("context", {}), body["candidates"]))
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


class _Connection:
    """A minimal HTTP/1.1 keep-alive client for one connection: pre-built request bytes out, one response in.

    The load generator shares the 2 cores with the server, so it must be cheap: an httpx client spent
    about as much CPU per request as the server's whole /rank handler.
    """

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await self.reader.readexactly(length)
        if b"connection: close" in head.lower():
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _http_request(host: str, port: int, body: bytes) -> bytes:
    return (f"POST /rank HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


async def _load(host: str, port: int, payloads: list[bytes], concurrency: int, total: int, max_seconds: float) -> dict:
    latencies, server_ms, errors = [], [], 0
    sent = 0
    deadline = time.perf_counter() + max_seconds
    requests = [_http_request(host, port, p) for p in payloads]

    async def worker(k: int) -> None:
        nonlocal sent, errors
        conn = _Connection(host, port)
        try:
            while sent < total and time.perf_counter() < deadline:
                sent += 1
                req = requests[(k * 7919 + sent) % len(requests)]
                t0 = time.perf_counter()
                try:
                    status, body = await conn.post(req)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    status, body = 0, b""
                    conn.close()
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    errors += 1
                else:
                    server_ms.append(json.loads(body)["timing"]["total_ms"])
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1e3
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors, "rps": len(latencies) / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "server_p50_ms": float(np.median(server_ms)) if server_ms else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10_000, help="in total over the three concurrency levels")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="inference threads per server worker")
    ap.add_argument("--backend", default="onnxruntime", help="e.g. onnxruntime-int8 (not exact; see BENCHMARKS.md)")
    ap.add_argument("--max-seconds", type=float, default=90, help="per concurrency level")
    a = ap.parse_args()

    bundle, data = bench_bundle("deepfm", "criteo")
    bodies = _requests(data, a.candidates)
    payloads = [json.dumps(b).encode() for b in bodies]
    floor_ms = _floor(bundle, bodies, a.backend, a.threads)

    port = _free_port()
    env = dict(os.environ, CTRZOO_THREADS=str(a.threads))
    server = subprocess.Popen([sys.executable, "-m", "ctrzoo", "serve", "--bundle", str(bundle), "--port", str(port),
                               "--workers", str(a.workers), "--backend", a.backend, "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        share = {1: 0.2, 8: 0.4, 32: 0.4}
        rows = [asyncio.run(_load("127.0.0.1", port, payloads, c, int(a.requests * f), a.max_seconds))
                for c, f in share.items()]
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)

    print(f"DeepFM (Criteo layout, emb 16, MLP 400-400-400), {a.candidates} candidates per request, "
          f"{a.workers} uvicorn worker(s), backend {a.backend}, {a.threads} inference thread(s)")
    print(f"in-process floor (encode + predict, no HTTP/JSON): p50 {floor_ms:.2f} ms")
    print(f"{'concurrency':>11}{'requests':>10}{'errors':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'server p50':>12}")
    for r in rows:
        print(f"{r['concurrency']:>11}{r['requests']:>10}{r['errors']:>8}{r['rps']:>9.1f}{r['p50_ms']:>9.2f}"
              f"{r['p99_ms']:>9.2f}{r['server_p50_ms']:>12.2f}")
    c1 = rows[0]
    c8 = next(r for r in rows if r["concurrency"] == 8)
    errors = sum(r["errors"] for r in rows)
    total = sum(r["requests"] for r in rows)
    print(f"goal p99 at concurrency 8 < 20 ms: {c8['p99_ms']:.2f} ms -> {'met' if c8['p99_ms'] < 20 else 'NOT met'}")
    print(f"goal 0 errors over {total:,d} requests: {errors} -> "
          f"{'met' if errors == 0 and total >= 10_000 else 'NOT met'}")
    ratio = c1["server_p50_ms"] / floor_ms
    print(f"goal server p50 at concurrency 1 <= 2x floor: {ratio:.2f}x -> {'met' if ratio <= 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
