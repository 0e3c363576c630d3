"""``ctrzoo demo``: the main job end to end on built-in synthetic data (no downloads).

Synthesize Criteo- and Taobao-format logs with known click probabilities, prepare them, train DeepFM
(Criteo) and DIN (Taobao), and evaluate each bundle next to the oracle AUC of the generator.
"""

from __future__ import annotations

import time
from pathlib import Path

DEMO_MODELS = {"criteo": "deepfm", "taobao": "din"}


def run_demo(out: Path, rows: int = 200_000, seed: int = 0, epochs: int = 2) -> None:
    from ctrzoo.bundle import load_bundle
    from ctrzoo.data.dataset import PreparedDataset
    from ctrzoo.data.prepare import prepare
    from ctrzoo.data.summary import format_summary
    from ctrzoo.evaluate import evaluate_bundle
    from ctrzoo.synth import generate
    from ctrzoo.train.run import train_bundle

    out.mkdir(parents=True, exist_ok=True)
    for kind, model in DEMO_MODELS.items():
        raw = out / f"{kind}.raw"
        t0 = time.perf_counter()
        summary = generate(kind, rows, seed, raw)
        print(f"[{kind}] synthesized {rows:,d} rows in {time.perf_counter() - t0:.1f}s "
              f"(base CTR {summary['base_ctr']:.3f}, oracle AUC {summary['oracle_auc']:.4f})")
        t0 = time.perf_counter()
        data = out / f"{kind}_data"
        prepare(kind, [raw], data)
        print(f"[{kind}] prepared in {time.perf_counter() - t0:.1f}s")
        print(format_summary(data))
        bundle_dir = out / f"{kind}_{model}"
        print(f"[{kind}] training {model} for up to {epochs} epoch(s)")
        train_bundle(model, data, bundle_dir, overrides={"epochs": epochs})
        m = evaluate_bundle(load_bundle(bundle_dir), PreparedDataset.open(data), "test")
        gauc = f", GAUC {m['gauc']:.4f}" if "gauc" in m else ""
        print(f"[{kind}] {model} test AUC {m['auc']:.4f} (oracle on all rows {summary['oracle_auc']:.4f}), "
              f"logloss {m['logloss']:.4f}{gauc}\n")
