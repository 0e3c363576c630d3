"""Does the pooled click history help DeepFM? Synthetic Taobao logs, DeepFM with and without it, DeLong.

    python benchmarks/pooled_history.py [--rows 400000] [--epochs 2] [--out benchmarks/results/pooled_history.md]

The same raw rows are prepared twice: with the preset's spec (``click_sequence`` reaches DeepFM as a
mean-pooled field since issue 16) and with ``click_sequence`` dropped (what DeepFM saw before). DeepFM is
trained on each with the package's Taobao config and the same seed; ``ctrzoo compare`` then scores the same
raw test rows with each bundle's own codec: AUC with DeLong's paired 95% interval, logloss with a paired
bootstrap, and the oracle's AUC (the generator's true click probabilities of those rows) for scale.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    sys.path.insert(0, str(HERE))
    from _common import WORK, synth_file

    from ctrzoo.compare.run import compare
    from ctrzoo.data.formats import FORMATS
    from ctrzoo.data.prepare import prepare
    from ctrzoo.features.spec_file import with_overrides
    from ctrzoo.metrics import auc
    from ctrzoo.train.run import train_bundle

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--pooling", nargs="+", default=["mean", "sum"], help="pooling of the history, one run each")
    ap.add_argument("--out", default=str(HERE / "results" / "pooled_history.md"))
    a = ap.parse_args()

    raw = synth_file("taobao", a.rows)
    root = WORK / f"pooled_history_{a.rows}"
    spec = FORMATS["taobao"].default_spec()
    runs = {"deepfm_without_history": with_overrides(spec, drop=["click_sequence"])}
    for mode in a.pooling:  # the history as a field pooled this way
        runs[f"deepfm_history_{mode}"] = spec.replace_features(
            {"click_sequence": dataclasses.replace(spec["click_sequence"], pooling=mode)})
    bundles, seconds = [], {}
    for name, s in runs.items():
        data = root / f"data_{name}"
        if not (data / "dataset.json").exists():
            prepare("taobao", [raw], data, spec=s)
        t0 = time.perf_counter()
        train_bundle("deepfm", data, root / name, progress=False, verbose=False,
                     overrides={"epochs": a.epochs, "seed": a.seed})
        seconds[name] = time.perf_counter() - t0
        bundles.append(root / name)
    report = compare(bundles, root / "data_deepfm_without_history", baseline="deepfm_without_history")
    truth = _oracle(raw, root / "data_deepfm_without_history")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    lines = [f"Synthetic Taobao, {a.rows:,d} rows ({report['data']['rows']:,d} test rows), DeepFM with the "
             f"package's Taobao config, {a.epochs} epoch(s), seed {a.seed}; {cpu}.", "",
             "| run | test AUC | test logloss | training s |", "| --- | --- | --- | --- |"]
    for name, m in report["models"].items():
        lines.append(f"| {name} | {m['auc']:.4f} | {m['logloss']:.4f} | {seconds[name]:.0f} |")
    if truth is not None:
        lines.append(f"| oracle (true click probabilities) | {auc(truth[0], truth[1]):.4f} | - | - |")
    lines += ["", "| compared with DeepFM without the history | AUC difference | DeLong 95% CI | p | "
                  "logloss difference (95% CI) |", "| --- | --- | --- | --- | --- |"]
    for c in report["comparisons"]:
        d, ll = c["auc"], c["logloss"]
        lines.append(f"| {c['b']} | {d['diff']:+.4f} | [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] | "
                     f"{d['p_value']:.2g} | {ll['diff']:+.4f} [{ll['ci_low']:+.4f}, {ll['ci_high']:+.4f}] |")
    text = "\n".join(lines)
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text + "\n")
    Path(a.out).with_suffix(".json").write_text(json.dumps({k: v for k, v in report.items() if k != "curves"},
                                                           indent=1, default=str))


def _oracle(raw: Path, data: Path):
    """(labels, true click probabilities) of the test rows (``benchmarks/quality.py``'s alignment)."""
    from quality import test_truth

    return test_truth(data, raw) if Path(f"{raw}.truth.parquet").exists() else None


if __name__ == "__main__":
    main()
