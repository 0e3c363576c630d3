"""Same results before and after a change: prepare, train and score with two checkouts, compare digests.

    python benchmarks/same_results.py --base OLD        # OLD: e.g. `git worktree add OLD <commit>`

For each checkout (this one and ``--base``), in its own child process run from that checkout: synthesize
Criteo and Taobao rows (fixed seed), prepare them, train DeepFM, DIN, DCN and Wide&Deep for 30 steps with a
fixed seed, and digest what must not change: the raw-data fingerprint, ``spec.json``, the decoded contents of
every shard (not the file bytes: Parquet metadata may differ), the trained weights, the test AUC and
logloss, and the JSON answers of ``POST /rank`` (the service, in-process) to requests built from raw test rows
with context features, unknown values, missing keys and mixed types. Exit 1 if any digest differs. Used for
the no-behaviour-change restructure (issue 15).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MODELS = (("deepfm", "criteo"), ("din", "taobao"), ("dcn", "criteo"), ("wide_deep", "criteo"))


def digests(out: Path) -> dict:
    import pyarrow.parquet as pq
    import torch

    from ctrzoo.data.prepare import prepare
    from ctrzoo.synth import generate
    from ctrzoo.train.run import train_bundle

    res: dict = {}
    for kind in ("criteo", "taobao"):
        generate(kind, 20_000, 3, out / f"{kind}.raw")
        prepare(kind, [out / f"{kind}.raw"], out / kind)
        h = hashlib.sha256()
        for split in ("train", "valid", "test"):
            for shard in sorted((out / kind / split).glob("*.parquet")):
                table = pq.read_table(shard)
                for c in table.column_names:
                    h.update(c.encode())
                    h.update(str(table.column(c).to_pylist()).encode())
        # read from dataset.json (same keys before and after issue 15), not prepare's return value
        res[kind] = {"fingerprint": json.loads((out / kind / "dataset.json").read_text())["fingerprint"],
                     "spec": hashlib.sha256((out / kind / "spec.json").read_bytes()).hexdigest()[:16],
                     "shards": h.hexdigest()[:16]}
    for model, kind in MODELS:
        train_bundle(model, out / kind, out / model, progress=False, verbose=False,
                     overrides={"epochs": 1, "max_steps": 30, "seed": 3, "hparams": {"emb_dim": 8, "mlp": [32, 16]}})
        state = torch.load(out / model / "weights.pt", weights_only=True)
        test = json.loads((out / model / "bundle.json").read_text())["metrics"]["test"]
        res[model] = {"weights": hashlib.sha256(b"".join(v.numpy().tobytes() for _, v in sorted(state.items())))
                      .hexdigest()[:16], "test_auc": test["auc"], "test_logloss": test["logloss"],
                      "rank": _rank_answers(out / model, out / kind)}
    return res


def _rank_answers(bundle: Path, dataset: Path) -> str:
    """Digest of /rank's answers to requests made of raw test rows: half the features as context, odd values."""
    import pyarrow.parquet as pq
    from fastapi.testclient import TestClient

    from serving.app import create_app

    rows = pq.read_table(dataset / "raw" / "test.parquet").slice(0, 200).to_pylist()
    names = [k for k in rows[0] if k not in ("label", "clk", "click")]
    bodies = []
    for i in range(0, 200, 25):
        group = [dict(r) for r in rows[i:i + 25]]
        context = {k: group[0][k] for k in names[: len(names) // 3]}
        for j, r in enumerate(group):
            for k in context:
                r.pop(k, None)
            if j % 5 == 1:
                r[names[-1]] = "never-seen-value"
            if j % 5 == 2 and len(r) > 1:
                r.pop(next(iter(r)))
            if j % 7 == 3:
                r = {k: (str(v) if isinstance(v, int) else v) for k, v in r.items()}  # "7" is 7
            group[j] = r
        bodies.append({"context": context, "candidates": group})
    h = hashlib.sha256()
    with TestClient(create_app(bundle=str(bundle), backend="torch", threads=1)) as client:
        for body in bodies:
            r = client.post("/rank", json=body)
            answer = r.json()
            for varying in ("timing", "model"):  # timings; the model version is a training timestamp
                answer.pop(varying, None)
            h.update(f"{r.status_code} {json.dumps(answer, sort_keys=True)}".encode())
    return h.hexdigest()[:16]


def run(code: Path) -> dict:
    """``digests`` computed by ``code``'s ctrzoo in a child process started in ``code`` (``python -m`` and
    ``-c`` put the working directory first on sys.path)."""
    with tempfile.TemporaryDirectory(prefix="same-results-") as tmp:
        script = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); " \
                 "from same_results import digests; from pathlib import Path; " \
                 f"print(json.dumps(digests(Path({tmp!r}))))"
        env = {**os.environ, "PYTHONPATH": str(code)}
        done = subprocess.run([sys.executable, "-c", script], cwd=code, env=env, check=True, capture_output=True,
                              text=True)
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="the other checkout (e.g. the commit before a restructure)")
    args = ap.parse_args()
    here = Path(__file__).resolve().parents[1]
    a, b = run(Path(args.base).resolve()), run(here)
    differ = [f"{k}.{f}" for k in a for f in a[k] if a[k][f] != b.get(k, {}).get(f)]
    for k in a:
        print(f"{k:<10} " + "  ".join(f"{f}={b[k][f]}" for f in b[k]))
    print("identical" if not differ else f"DIFFERENT: {', '.join(differ)}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
