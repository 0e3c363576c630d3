"""``ctrzoo train``: resolve settings, fit, score the test split, write the bundle.

Under torchrun (``--nproc N`` or ``torchrun --nproc_per_node N -m ctrzoo train ...``) every rank trains
on its part of the data; rank 0 alone writes the bundle.

Everything that can be checked before training is (split sizes, the output path), so a doomed run writes
nothing. A run that fails after it started keeps its checkpoint only when resuming can help (interrupted,
disk full); after any other error the work directory is removed, since a resume would fail the same way
and a stale checkpoint would only block the retry.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ctrzoo.atomic import DiskError, disk_errors, disk_reason
from ctrzoo.bundle import META_FILE as BUNDLE_META
from ctrzoo.bundle import Bundle, check_replaceable, save_bundle
from ctrzoo.data.dataset import PreparedDataset
from ctrzoo.data.loader import BatchLoader
from ctrzoo.errors import CtrzooError
from ctrzoo.metadata import DataRef, Metrics, ModelBundleMeta, ModelInfo
from ctrzoo.threads import torch_threads
from ctrzoo.train.config import resolve_config
from ctrzoo.train.distributed import init_from_env, shutdown
from ctrzoo.train.trainer import CHECKPOINT_FILE, Trainer


def train_bundle(model: str, data: str | Path, out: str | Path, config_file: str | None = None,
                 overrides: dict[str, Any] | None = None, resume: bool = False, progress: bool | None = None,
                 on_step=None, verbose: bool = True) -> ModelBundleMeta:
    """Train ``model`` on the prepared dataset ``data`` and write the bundle ``out``; returns its metadata."""
    ds = PreparedDataset.open(data)
    cfg = resolve_config(model, ds.meta.kind, config_file, dict(overrides or {}))
    out = Path(out)
    workdir = out.parent / f"{out.name}.work"
    notes = _preflight(ds, out, cfg.label)
    dist = init_from_env()
    if verbose and dist.is_main:
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    trainer = None
    had_checkpoint = (workdir / CHECKPOINT_FILE).exists()  # another run's: never removed here
    with torch_threads(cfg.threads):  # config.threads for this call only; the caller's count comes back after
        try:
            t0 = time.perf_counter()
            trainer = Trainer(cfg, ds, workdir, progress=progress, dist=dist)
            best = trainer.fit(resume=resume, on_step=on_step)
            if ds.rows("test"):
                test_loader = BatchLoader(ds, "test", cfg.eval_batch_size, shuffle=False, with_user=ds.has_user_id,
                                          rank=dist.rank, world_size=dist.world_size,
                                          label=list(trainer.tasks) or cfg.label)
                test = trainer.evaluate(test_loader)  # fp32, like every later consumer
            else:
                test = {"rows": 0}
            trainer.gather_embeddings()  # a sharded table: whole again on rank 0, for the bundle
            meta = ModelBundleMeta(
                model=ModelInfo(name=cfg.model, hparams=trainer.model.hparams),
                data=DataRef(path=str(ds.path.resolve()), kind=ds.meta.kind, fingerprint=ds.fingerprint),
                train={**asdict(cfg), "processes": dist.world_size},
                metrics=Metrics(valid=best, test=test),
                history=trainer.history,
                train_seconds=round(time.perf_counter() - t0, 2),
            )
            if dist.is_main:
                # the bundle's spec names the label it learned (its column in the raw rows it is scored on)
                spec = replace(ds.spec, label=cfg.label) if cfg.label else ds.spec
                with disk_errors("the model bundle", out):
                    meta = save_bundle(out, trainer.model, spec, meta).meta
                trainer.clean_workdir()
            dist.barrier()
        except BaseException as exc:
            if dist.is_main and trainer is not None:
                exc = _after_failure(exc, workdir, keep=resume or had_checkpoint)
            raise exc
        finally:
            shutdown(dist)
    if verbose and dist.is_main:
        for h in trainer.history:
            print(f"epoch {h['epoch']}: train logloss {h['train_logloss']:.4f}  {format_valid(h)}  "
                  f"{h['samples_per_s'] or 0:,.0f} samples/s")
        note = early_stopping_note(trainer.history, best, cfg.epochs)
        if note:
            print(note)
        if test["rows"]:
            line = f"{cfg.model} -> {out}: test {format_auc(test)}  logloss {test['logloss']:.4f}"
            if "gauc" in test:
                line += f"  GAUC {test['gauc']:.4f}"
            for task, m in test.get("tasks", {}).items():  # a multi-task model: every task's own line
                line += f"\n  task {task}: test {format_auc(m)}  logloss {m['logloss']:.4f}"
        else:
            line = f"{cfg.model} -> {out}: no test rows, no test metrics"
        print(line)
    return meta


def format_auc(m: dict[str, Any], split: str = "test") -> str:
    """``AUC 0.7512``, or why it is undefined (``AUC undefined: the test split has only negatives ...``)."""
    if "auc_undefined" in m:
        return f"AUC undefined: {m['auc_undefined'].replace('the split', f'the {split} split')}"
    return f"AUC {m['auc']:.4f}"


def early_stopping_note(history: list[dict[str, Any]], best: dict[str, Any], epochs: int) -> str | None:
    """One line when the weights kept are of an earlier epoch than the last one run (None otherwise):
    ``early stopping: kept epoch 2 (valid AUC 0.7412); epochs 3-4 did not improve``."""
    if not history or best.get("epoch", history[-1]["epoch"]) >= history[-1]["epoch"]:
        return None
    kept, last = best["epoch"], history[-1]["epoch"]
    score = (f"valid mean AUC over tasks {best['valid_mean_auc']:.4f}" if "valid_mean_auc" in best
             else f"valid AUC {best['valid_auc']:.4f}" if "valid_auc_undefined" not in best and "valid_auc" in best
             else f"valid logloss {best.get('valid_logloss', float('nan')):.4f}")
    worse = f"epoch {last} did" if last == kept + 1 else f"epochs {kept + 1}-{last} did"
    stopped = f" (stopped after {last} of {epochs} epochs)" if last < epochs else ""
    return f"early stopping: kept epoch {kept} ({score}); {worse} not improve{stopped}"


def format_valid(h: dict[str, Any]) -> str:
    if "valid_auc" not in h:
        return "no valid rows"
    if "valid_auc_undefined" in h:
        auc = f"valid AUC undefined: {h['valid_auc_undefined'].replace('the split', 'the validation split')}"
        return f"{auc} (epochs ranked by valid logloss)  valid logloss {h['valid_logloss']:.4f}"
    if "valid_tasks" in h:  # a multi-task model: every task's AUC and logloss
        return "  ".join(f"valid {t}: AUC {m['auc']:.4f} logloss {m['logloss']:.4f}"
                         for t, m in h["valid_tasks"].items())
    return f"valid AUC {h['valid_auc']:.4f}  valid logloss {h['valid_logloss']:.4f}"


def _preflight(ds: PreparedDataset, out: Path, label: str | None = None) -> list[str]:
    """Refuse what would fail only after training (an output path the bundle may not replace, too few
    training rows); return notes on what training will do differently (no validation or test rows)."""
    rows = {split: ds.rows(split) for split in ("train", "valid", "test")}
    ds.label_column(label)  # an unknown label fails here, naming the dataset's labels
    if rows["train"] < 2:
        raise CtrzooError(f"{ds.path}: the training split has {rows['train']} row(s); at least 2 are needed "
                          "(prepare more rows, or other --ratios)")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / BUNDLE_META).exists())):
        raise CtrzooError(f"{out} exists and is not a model bundle: refusing to replace it (choose another --out)")
    check_replaceable(out, Bundle)  # a retrieval bundle there
    notes = []
    if rows["valid"] == 0:
        notes.append(f"{ds.path} has no validation rows: no early stopping, every epoch runs and the last "
                     "epoch's weights are kept (prepare with a validation ratio > 0 for early stopping)")
    if rows["test"] == 0:
        notes.append(f"{ds.path} has no test rows: the bundle will have no test metrics")
    return notes


def _after_failure(exc: BaseException, workdir: Path, keep: bool) -> BaseException:
    """Keep the checkpoint where ``--resume`` can finish the run (interrupted, disk full), and say so;
    otherwise remove this run's work directory so that the retry is not refused by a stale checkpoint."""
    checkpoint = workdir / CHECKPOINT_FILE
    resumable = isinstance(exc, (KeyboardInterrupt, SystemExit)) or disk_reason(exc) is not None
    if resumable:
        if isinstance(exc, DiskError) and checkpoint.exists():
            return DiskError(f"{exc}; the last checkpoint is kept: `--resume` continues from {checkpoint}")
        return exc
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return exc
