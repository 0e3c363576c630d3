"""DeepFM training speed: ctrzoo's Trainer vs DeepCTR-Torch 0.3.0 on the same rows, plus what each speed feature buys.

    python benchmarks/train_speed.py [--rows 1000000] [--repeat 2] [--variant-repeat 1] [--variants all|none|NAME,...]

Data: ``ctrzoo synth criteo`` rows (cached in ``benchmarks/_work``); train = the first 90%, test = the last
10% (time-ordered split, no validation rows), min count 2 for every categorical feature.
Settings for both: DeepFM, embedding 16, MLP 400-400-400, batch 4096, Adam lr 1e-3, one epoch, 2 threads.

* ours: ``ctrzoo prepare`` (order split 0.9/0/0.1, done once by the parent and cached; not timed), then
  ``Trainer`` for one epoch with its defaults, then test AUC in fp32.
* baseline: DeepCTR-Torch 0.3.0 in its own virtual environment (``_work/deepctr-venv``: torch 2.13.0,
  deepctr-torch 0.3.0, pandas; made once), on the same raw TSV rows read with pandas. Its encoding follows
  the usual recipe but with ours's choices, so both models see the same information: C1..C26 get ids fitted
  on the training rows with min count 2 (0 missing, 1 rare or unseen), I1..I13 get ctrzoo's ``criteo_log``
  transform (``log(x)^2`` for x > 2), standardization with training-row statistics, missing -> 0. Its DeepFM
  keeps the library's defaults otherwise (L2 1e-5 on embeddings and linear part, init std 1e-4, no dropout,
  dense features into the DNN and linear part, not into FM), ``compile("adam", "binary_crossentropy")``
  (Adam lr 1e-3), ``fit(batch_size=4096, epochs=1, verbose=0)`` (no per-batch metrics).

Reported per run, each in its own child process:
* samples/s: training rows / seconds of the training loop only (ours: the epoch loop of ``Trainer.fit``,
  including its block reads; DeepCTR: its ``fit`` call). Reading and encoding the raw rows is not included.
* time to first step: from the start of the training phase (model construction, with the data already
  prepared: ours as Parquet shards still to be read by the loader, DeepCTR's as encoded arrays in memory) to
  the end of the first optimizer step.
* test AUC on the last 10% of the rows.
* peak RSS: the child process's VmHWM (``_common.peak_rss_mb``), whole process, and the training phase alone
  (VmHWM reset just before the model is built; for DeepCTR after the raw DataFrame is dropped).

Each measurement runs ``--repeat`` times (variants ``--variant-repeat`` times); the best samples/s and time
to first step are kept, and the highest peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
EMB, MLP, BATCH, LR, THREADS, MIN_COUNT = 16, (400, 400, 400), 4096, 1e-3, 2, 2
DEEPCTR_PACKAGES = ["torch==2.13.0", "deepctr-torch==0.3.0", "pandas", "requests"]  # requests: imported, undeclared

# ours with one speed feature changed; keys other than TrainConfig fields are handled by _ours()
VARIANTS: dict[str, dict] = {
    "fp32 (no bf16 autocast)": {"bf16": False},
    "dense Adam on embeddings": {"sparse_updates": False},
    "torch SparseAdam instead of RowSparseAdam": {"torch_sparse_adam": True},
    "foreach Adam instead of fused": {"foreach": True},
    "before: fp32 + SparseAdam + eager table read": {"bf16": False, "torch_sparse_adam": True, "eager_read": True},
}


# -- children --------------------------------------------------------------------------------------
def _ours(data: Path, variant: dict) -> dict:
    import tempfile

    import torch
    from _common import peak_rss_mb, reset_peak_rss

    import ctrzoo.train.loop as loop_mod
    from ctrzoo.data.dataset import PreparedDataset
    from ctrzoo.data.loader import BatchLoader
    from ctrzoo.metrics import auc
    from ctrzoo.train.trainer import TrainConfig, Trainer, predict

    variant = dict(variant)
    torch.set_num_threads(THREADS)
    if variant.pop("torch_sparse_adam", False):
        loop_mod.RowSparseAdam = torch.optim.SparseAdam
    if variant.pop("foreach", False):
        loop_mod._dense_adam = lambda params, lr: torch.optim.Adam(params, lr=lr, foreach=True)
    eager_read = variant.pop("eager_read", False)
    ds = PreparedDataset.open(data)
    reset_peak_rss()
    t0 = time.perf_counter()
    cfg = TrainConfig(model="deepfm", hparams={"emb_dim": EMB, "mlp": list(MLP)}, epochs=1, batch_size=BATCH,
                      lr=LR, threads=THREADS, **variant)
    first_step: list[float] = []
    with tempfile.TemporaryDirectory() as work:
        trainer = Trainer(cfg, ds, Path(work) / "run", progress=False)
        if eager_read:  # the loader as it was: every row group converted before the first batch
            trainer.train_loader._cached = [trainer.train_loader._read([g]) for g in trainer.train_loader._groups]
        trainer.fit(on_step=lambda step: first_step.append(time.perf_counter()) if step == 1 else None)
    epoch = trainer.history[-1]
    labels, probs, _ = predict(trainer.model, BatchLoader(ds, "test", 65536, shuffle=False))
    return {
        "samples_per_s": len(trainer.train_loader) * BATCH / epoch["seconds"],
        "train_rows": len(trainer.train_loader) * BATCH,
        "first_step_s": first_step[0] - t0,
        "test_auc": auc(labels, probs),
        "test_rows": int(labels.size),
        "bf16": cfg.bf16,
        "phase_peak_rss_mb": peak_rss_mb(),
    }


def _deepctr(raw: Path, rows: int, n_train: int) -> dict:
    import gc

    import numpy as np
    import pandas as pd
    import torch
    from _common import peak_rss_mb, reset_peak_rss
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models import DeepFM
    from sklearn.metrics import roc_auc_score

    torch.set_num_threads(THREADS)
    ints, cats = [f"I{i}" for i in range(1, 14)], [f"C{i}" for i in range(1, 27)]
    df = pd.read_csv(raw, sep="\t", header=None, names=["label", *ints, *cats], nrows=rows)
    train, test, vocab = {}, {}, {}
    for c in cats:  # min count 2 on the training rows; 0 = missing, 1 = rare or unseen
        col = df[c]
        counts = col.iloc[:n_train].value_counts()
        kept = counts.index[counts >= MIN_COUNT]
        codes = pd.Categorical(col, categories=kept).codes.astype(np.int64) + 2  # -1 (not kept) -> 1
        codes[col.isna().to_numpy()] = 0
        train[c], test[c], vocab[c] = codes[:n_train], codes[n_train:], len(kept) + 2
    for c in ints:  # ctrzoo's criteo_log, standardized with training statistics, missing -> 0
        x = df[c].to_numpy(dtype=np.float64)
        x = np.where(x > 2, np.square(np.log(np.maximum(x, 2.0))), x)
        mean, std = np.nanmean(x[:n_train]), np.nanstd(x[:n_train]) or 1.0
        x = np.nan_to_num((x - mean) / std, nan=0.0).astype(np.float32)
        train[c], test[c] = x[:n_train], x[n_train:]
    y = df["label"].to_numpy(dtype=np.float32)
    y_train, y_test = y[:n_train], y[n_train:]
    del df, x, codes, col
    gc.collect()

    reset_peak_rss()
    t0 = time.perf_counter()
    columns = [SparseFeat(c, vocabulary_size=vocab[c], embedding_dim=EMB) for c in cats]
    columns += [DenseFeat(c, 1) for c in ints]
    model = DeepFM(columns, columns, dnn_hidden_units=MLP, task="binary", device="cpu")
    model.compile("adam", "binary_crossentropy")
    assert model.optim.param_groups[0]["lr"] == LR
    first_step: list[float] = []
    step = model.optim.step

    def timed_step(*a, **kw):
        out = step(*a, **kw)
        if not first_step:
            first_step.append(time.perf_counter())
        return out

    model.optim.step = timed_step
    t1 = time.perf_counter()
    model.fit(train, y_train, batch_size=BATCH, epochs=1, verbose=0)
    seconds = time.perf_counter() - t1
    probs = model.predict(test, batch_size=65536)
    return {
        "samples_per_s": n_train / seconds,
        "train_rows": n_train,
        "first_step_s": first_step[0] - t0,
        "test_auc": float(roc_auc_score(y_test, probs)),
        "test_rows": int(y_test.size),
        "phase_peak_rss_mb": peak_rss_mb(),
    }


def child(args: list[str]) -> None:
    from _common import peak_rss_mb

    if args[0] == "deepctr":
        result = _deepctr(Path(args[1]), int(args[2]), int(args[3]))
    else:
        result = _ours(Path(args[1]), json.loads(args[2]))
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


# -- parent ----------------------------------------------------------------------------------------
def _prepared(raw: Path, rows: int) -> Path:
    """The raw rows prepared with an order split 0.9/0/0.1 and min count 2 (cached beside the raw file)."""
    from _common import WORK

    from ctrzoo.data.formats import FORMATS
    from ctrzoo.data.prepare import PrepareOptions, prepare
    from ctrzoo.data.splits import SplitConfig

    out = WORK / f"train_speed_{rows}"
    meta_file = out / "dataset.json"
    if meta_file.exists() and json.loads(meta_file.read_text()).get("train_speed_source") == str(raw):
        return out
    from ctrzoo.features.spec_file import with_overrides

    spec = with_overrides(FORMATS["criteo"].default_spec(), min_count=MIN_COUNT)
    print(f"preparing {raw} -> {out}", file=sys.stderr)
    prepare("criteo", [raw], out, spec,
            PrepareOptions(split=SplitConfig("order", (0.9, 0.0, 0.1)), keep_raw_test=False))
    meta = json.loads(meta_file.read_text())
    meta["train_speed_source"] = str(raw)
    meta_file.write_text(json.dumps(meta, indent=1))
    return out


def _best(runs: list[dict]) -> dict:
    best = max(runs, key=lambda r: r["samples_per_s"])
    return best | {
        "first_step_s": min(r["first_step_s"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "phase_peak_rss_mb": max(r["phase_peak_rss_mb"] for r in runs),
        "runs": len(runs),
        "all_samples_per_s": [round(r["samples_per_s"]) for r in runs],
        "all_test_auc": [round(r["test_auc"], 5) for r in runs],
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    from _common import run_child, run_child_in, synth_file, venv_python

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows; the first 90%% train, the rest test")
    ap.add_argument("--repeat", type=int, default=2, help="runs of ours and of DeepCTR-Torch; the best is kept")
    ap.add_argument("--variant-repeat", type=int, default=1, help="runs of each variant of ours")
    ap.add_argument("--variants", default="all", help="'all', 'none' or a comma-separated list of variant names")
    ap.add_argument("--json", type=Path, default=None, help="also write all results to this file")
    a = ap.parse_args()

    started, load0 = time.perf_counter(), os.getloadavg()
    raw = synth_file("criteo", a.rows)
    data = _prepared(raw, a.rows)
    n_train = round(a.rows * 0.9)
    deepctr_python = venv_python("deepctr-venv", DEEPCTR_PACKAGES)

    res: dict[str, dict] = {}
    runs: dict[str, list[dict]] = {"DeepCTR-Torch 0.3.0": [], "ctrzoo": []}
    for _ in range(a.repeat):  # interleaved, so a busy spell on a shared machine hits both
        runs["DeepCTR-Torch 0.3.0"].append(
            run_child_in(deepctr_python, HERE, "deepctr", str(raw), str(a.rows), str(n_train)))
        runs["ctrzoo"].append(run_child(HERE, "ours", str(data), "{}"))
    res = {name: _best(r) for name, r in runs.items()}
    names = [] if a.variants == "none" else list(VARIANTS) if a.variants == "all" else a.variants.split(",")
    variants = {"ctrzoo (defaults)": res["ctrzoo"]}
    for name in names:
        variants[name] = _best([run_child(HERE, "ours", str(data), json.dumps(VARIANTS[name]))
                                for _ in range(a.variant_repeat)])

    base, ours = res["DeepCTR-Torch 0.3.0"], res["ctrzoo"]
    print(f"load average at start {load0[0]:.1f}, at end {os.getloadavg()[0]:.1f} ({os.cpu_count()} cpus; others' "
          "processes slow both sides, two OpenMP threads disproportionately)")
    print(f"DeepFM, one epoch on {base['train_rows']:,d} synthetic Criteo rows, test on {base['test_rows']:,d}; "
          f"emb {EMB}, MLP {'-'.join(map(str, MLP))}, batch {BATCH}, Adam {LR:g}, {THREADS} threads; "
          f"best of {a.repeat} runs each (bf16 autocast in ours: {ours['bf16']})")
    print(f"{'run':<22}{'samples/s':>11}{'test AUC':>10}{'peak RSS MB':>13}"
          f"{'train-phase RSS MB':>20}{'first step s':>14}")
    for name, r in res.items():
        print(f"{name:<22}{r['samples_per_s']:>11,.0f}{r['test_auc']:>10.4f}{r['peak_rss_mb']:>13.0f}"
              f"{r['phase_peak_rss_mb']:>20.0f}{r['first_step_s']:>14.2f}")
    speed = ours["samples_per_s"] / base["samples_per_s"]
    print(f"samples/s vs DeepCTR-Torch: {speed:.2f}x (goal >= 1.8x: {'met' if speed >= 1.8 else 'NOT met'})")
    d_auc = ours["test_auc"] - base["test_auc"]
    print(f"test AUC vs DeepCTR-Torch: {d_auc:+.4f} (goal >= 0: {'met' if d_auc >= 0 else 'NOT met'})")
    rss_met = ours["peak_rss_mb"] < base["peak_rss_mb"] and ours["phase_peak_rss_mb"] < base["phase_peak_rss_mb"]
    print(f"peak RSS vs DeepCTR-Torch: {ours['peak_rss_mb'] / base['peak_rss_mb']:.2f}x whole process, "
          f"{ours['phase_peak_rss_mb'] / base['phase_peak_rss_mb']:.2f}x training phase "
          f"(goal < 1: {'met' if rss_met else 'NOT met'})")
    print(f"time to first step vs DeepCTR-Torch: {ours['first_step_s'] / base['first_step_s']:.2f}x")
    if len(variants) > 1:
        print(f"\nvariants of ours (best of {a.variant_repeat} run(s) each; defaults: best of {a.repeat})")
        print(f"{'variant':<46}{'samples/s':>11}{'vs defaults':>13}{'test AUC':>10}{'first step s':>14}")
        for name, r in variants.items():
            print(f"{name:<46}{r['samples_per_s']:>11,.0f}{r['samples_per_s'] / ours['samples_per_s']:>12.2f}x"
                  f"{r['test_auc']:>10.4f}{r['first_step_s']:>14.2f}")
    print(f"\nwhole benchmark: {time.perf_counter() - started:.0f} s")
    if a.json:
        a.json.write_text(json.dumps({"main": res, "variants": variants}, indent=1))


if __name__ == "__main__":
    main()
