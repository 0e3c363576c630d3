"""Same results before and after a change: prepare, train and score with two checkouts, compare digests.

    python benchmarks/same_results.py --base OLD        # OLD: e.g. `git worktree add OLD <commit>`

For each checkout (this one and ``--base``), in its own child process run from that checkout: synthesize
Criteo and Taobao rows (fixed seed), prepare them, train DeepFM, DIN, DCN and Wide&Deep for 30 steps with a
fixed seed, and digest what must not change: the raw-data fingerprint, ``spec.json``, the decoded contents of
every shard (not the file bytes: Parquet metadata may differ), the trained weights, and the test AUC and
logloss. Exit 1 if any digest differs. Used for the no-behaviour-change restructure (issue 15).
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
                      .hexdigest()[:16], "test_auc": test["auc"], "test_logloss": test["logloss"]}
    return res


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
