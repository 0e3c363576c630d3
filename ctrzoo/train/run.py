"""``ctrzoo train``: resolve settings, fit, score the test split, write the bundle.

Under torchrun (``--nproc N`` or ``torchrun --nproc_per_node N -m ctrzoo train ...``) every rank trains
on its part of the data; rank 0 alone writes the bundle.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ctrzoo.bundle import save_bundle
from ctrzoo.data.dataset import PreparedDataset
from ctrzoo.data.loader import BatchLoader
from ctrzoo.train.config import resolve_config
from ctrzoo.train.distributed import init_from_env, shutdown
from ctrzoo.train.trainer import Trainer


def train_bundle(model: str, data: str | Path, out: str | Path, config_file: str | None = None,
                 overrides: dict[str, Any] | None = None, resume: bool = False, progress: bool | None = None,
                 on_step=None, verbose: bool = True) -> dict[str, Any]:
    ds = PreparedDataset.open(data)
    cfg = resolve_config(model, ds.meta.get("kind"), config_file, dict(overrides or {}))
    out = Path(out)
    workdir = out.parent / f"{out.name}.work"
    dist = init_from_env()
    try:
        t0 = time.perf_counter()
        trainer = Trainer(cfg, ds, workdir, progress=progress, dist=dist)
        best = trainer.fit(resume=resume, on_step=on_step)
        test_loader = BatchLoader(ds, "test", cfg.eval_batch_size, shuffle=False, with_user=ds.has_user_id,
                                  rank=dist.rank, world_size=dist.world_size)
        test = trainer.evaluate(test_loader)  # fp32, like every later consumer
        meta = {
            "data": {"path": str(ds.path.resolve()), "kind": ds.meta.get("kind"), "fingerprint": ds.fingerprint},
            "train": {**asdict(cfg), "processes": dist.world_size},
            "metrics": {"valid": best, "test": test},
            "history": trainer.history,
            "train_seconds": round(time.perf_counter() - t0, 2),
        }
        if dist.is_main:
            save_bundle(out, trainer.model, cfg.model, ds.spec, meta)
            trainer.clean_workdir()
        dist.barrier()
    finally:
        shutdown(dist)
    if verbose and dist.is_main:
        for h in trainer.history:
            valid = (f"valid AUC {h['valid_auc']:.4f}  valid logloss {h['valid_logloss']:.4f}" if "valid_auc" in h
                     else "no valid rows")
            print(f"epoch {h['epoch']}: train logloss {h['train_logloss']:.4f}  {valid}  "
                  f"{h['samples_per_s'] or 0:,.0f} samples/s")
        line = f"{cfg.model} -> {out}: test AUC {test['auc']:.4f}  logloss {test['logloss']:.4f}"
        if "gauc" in test:
            line += f"  GAUC {test['gauc']:.4f}"
        print(line)
    return meta
