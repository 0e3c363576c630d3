"""Schemathesis against a live service's ``/openapi.json``: no server errors, every answer as documented.

    pip install 'ctrzoo[fuzz]'
    python benchmarks/fuzz_api.py [--examples 200] [--work DIR] [--seed 0]

Builds small synthetic bundles (a DIN ranking bundle exported to ONNX, a retrieval bundle with a flat
index, so ``/recommend`` is mounted), serves them with uvicorn on 127.0.0.1 (the ``ctrzoo serve``
protocols, admin token set, bundle root set), then for ``POST /rank``, ``POST /recommend``, ``GET /model``
and ``POST /admin/reload`` draws ``--examples`` requests per operation (half valid by the schema, half not)
and checks each answer with ``not_a_server_error`` and ``response_schema_conformance`` (generated feature
names are mapped onto the model's, so values reach the encoders). Prints the counts per
operation and every distinct failure with a curl command; exits 1 on any failure. Loopback only.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

OPERATIONS = [("POST", "/rank"), ("POST", "/recommend"), ("GET", "/model"), ("POST", "/admin/reload")]
TOKEN = "fuzz-token"
# values at the edges of what a feature may hold (out of int64, huge floats, empty and odd strings, nesting):
# schemathesis' generators rarely produce them, and they are what made /recommend answer 500 before
EDGE_VALUES = [1e19, 1e300, -1e300, 2**63, -(2**63) - 1, 2**64, 1.5, -0.0, "", " ", "nan", "1e400", True, [],
               [1e300], ["1", None], [[]], {"a": 1}, "x" * 2000, "\u0000", 0]


def build_bundles(root: Path) -> tuple[Path, Path]:
    """(DIN bundle, retrieval bundle with its index) on 4000 synthetic Taobao rows; reused when present."""
    from ctrzoo.data.prepare import prepare
    from ctrzoo.export import export_onnx
    from ctrzoo.retrieval.retriever import index_catalogue
    from ctrzoo.retrieval.train import RetrievalConfig, train_retrieval
    from ctrzoo.synth import generate
    from ctrzoo.train.run import train_bundle

    din, retrieval = root / "bundles" / "din", root / "retrieval"
    if (din / "model.onnx").exists() and (retrieval / "index").exists():
        return din, retrieval
    root.mkdir(parents=True, exist_ok=True)
    generate("taobao", 4000, 7, root / "raw.csv")
    prepare("taobao", [root / "raw.csv"], root / "data")
    train_bundle("din", root / "data", din, progress=False, verbose=False,
                 overrides={"epochs": 1, "max_steps": 5, "seed": 1, "threads": 1,
                            "hparams": {"emb_dim": 8, "mlp": [16]}})
    export_onnx(din)
    train_retrieval(root / "data", retrieval, progress=False, verbose=False,
                    config=RetrievalConfig(epochs=1, max_steps=5, batch_size=256, recall_k=[10]))
    index_catalogue(retrieval, "flat-ip", log=None)
    return din, retrieval


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(din: Path, retrieval: Path):
    """A uvicorn server in a thread on a free loopback port; returns (base URL, server)."""
    import httpx
    import uvicorn

    from serving.app import create_app
    from serving.server import protocol_class

    app = create_app(str(din), retrieval=str(retrieval), admin_token=TOKEN, bundle_root=str(din.parent))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           http=protocol_class()))
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                return base, server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("the server did not become ready within 60 s")


def fuzz(base: str, examples: int, seed: int, item_columns: set[str]) -> tuple[dict, list]:
    """Per operation: counts of examples and statuses; and the distinct failures."""
    import requests
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    names = [f["raw_field"] for f in requests.get(f"{base}/model").json()["features"]]
    _name_features_like_the_model(schema, [n for n in names if n not in item_columns], names)
    session = requests.Session()
    session.headers["authorization"] = f"Bearer {TOKEN}"  # past the token check, into reload's own checks
    stats: dict[str, Counter] = {}
    failures: dict[tuple, str] = {}
    for method, path in OPERATIONS:
        key = f"{method} {path}"
        stats[key] = Counter()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            n = examples // 2 if mode is GenerationMode.POSITIVE else examples - examples // 2
            _fuzz_operation(schema[path][method], mode, n, seed, base, session, stats[key],
                            lambda status, title, text, key=key: failures.setdefault((key, status, title), text))
    return stats, [f"{k[0]} -> {k[1]}: {v}" for k, v in failures.items()]


def _item_columns(retrieval: Path) -> set[str]:
    """The catalogue's columns: item features, which /recommend takes from the catalogue, not the context."""
    import pyarrow.parquet as pq

    return set(pq.read_schema(next((retrieval / "index").glob("catalogue*.parquet"))).names)


def _name_features_like_the_model(schema, context_names: list[str], names: list[str]) -> None:
    """The schema cannot enumerate feature names (they are the model's), so generated feature dicts would
    name none of them and stop at the 422 for that; this hook renames generated keys to the model's raw
    features (context keys to user-side ones; a few to unknown names), so the generated values reach the
    encoders, and swaps a quarter of the values for ``EDGE_VALUES``, which the generators rarely make."""
    import zlib

    def renamer(pool: list[str]):
        pool = [*pool, *pool, "unknown_a"]

        def rename(features):
            if not isinstance(features, dict):
                return features
            out = {}
            for k, v in features.items():
                h = zlib.crc32(repr((k, v)).encode("utf-8", "replace"))
                out[pool[h % len(pool)]] = EDGE_VALUES[(h >> 8) % len(EDGE_VALUES)] if h >> 20 & 3 == 0 else v
            return out

        return rename

    in_context, in_candidates = renamer(context_names), renamer([n for n in names if n not in context_names])

    @schema.hook
    def map_body(context, body):
        if not isinstance(body, dict) or context.operation is None:
            return body
        if context.operation.path in ("/rank", "/recommend") and "context" in body:
            body = {**body, "context": in_context(body["context"])}
        if context.operation.path == "/rank" and isinstance(body.get("candidates"), list):
            body = {**body, "candidates": [in_candidates(c) for c in body["candidates"]]}
        return body


def _fuzz_operation(operation, mode, n: int, seed: int, base: str, session, counts: Counter, fail) -> None:
    """``n`` requests of ``mode`` (valid or not by the schema), each answer checked; the same every run."""
    import hypothesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call(base_url=base, session=session, timeout=30)
        counts["examples"] += 1
        counts[f"status {response.status_code}"] += 1
        if 400 <= response.status_code < 500:
            try:
                error = response.json()
                counts[f"why {response.status_code} {error['field']}: {error['error'][:60]}"] += 1
            except (ValueError, KeyError, TypeError):
                counts[f"why {response.status_code} (not the error shape)"] += 1
        try:
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        except (Exception, BaseExceptionGroup) as exc:  # FailureGroup is a BaseExceptionGroup: by first line
            counts["failures"] += 1
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            fail(response.status_code, (lines[0] if lines else type(exc).__name__)[:200],
                 f"{str(exc)[:1500]}\n    {case.as_curl_command()[:1500]}")

    try:
        hypothesis.seed(seed)(run)()
    except hypothesis.errors.Unsatisfiable:  # nothing to make invalid (GET /model takes no input)
        counts[f"no {mode.value} examples"] += 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=200, help="requests per operation (half valid, half not)")
    p.add_argument("--work", default=None, help="where the bundles are built (reused when present)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="the most frequent 4xx answers per operation")
    args = p.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ctrzoo-fuzz-"))
    t0 = time.time()
    din, retrieval = build_bundles(work)
    base, server = serve(din, retrieval)
    try:
        stats, failures = fuzz(base, args.examples, args.seed, _item_columns(retrieval))
    finally:
        server.should_exit = True
    total = sum(s["examples"] for s in stats.values())
    print(f"schemathesis on {base}/openapi.json: {len(stats)} operations, {total} examples, "
          f"{len(failures)} distinct failures, {time.time() - t0:.0f} s")
    for key, s in stats.items():
        statuses = ", ".join(f"{k.split()[1]}: {v}" for k, v in sorted(s.items()) if k.startswith("status"))
        statuses += "".join(f"; {k}" for k in s if k.startswith("no "))
        print(f"  {key:<22} {s['examples']:>5} examples  {s['failures']:>4} failed   ({statuses})")
        if args.verbose:
            whys = sorted(((v, k[4:]) for k, v in s.items() if k.startswith("why ")), reverse=True)
            for v, why in whys[:8]:
                print(f"      {v:>4}  {why}")
    for f in failures:
        print(f"\nFAILURE {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
