"""The training loop: block-loaded batches, sparse embedding updates, early stopping, exact resume.

Speed choices (LightSeq2's training ideas, where they pay on a CPU; ``benchmarks/train_speed.py`` measures
each one):
* embeddings produce sparse gradients and ``RowSparseAdam`` updates only the rows in the batch, instead of
  a dense Adam step over the whole table (and without ``SparseAdam``'s coalescing bookkeeping);
* the dense parameters step with one fused (or multi-tensor) Adam kernel;
* bf16 autocast for the matmuls where the CPU has native bf16 dot products (AVX512-BF16 or AMX), on by
  default there: weights, loss and optimizer state stay fp32, and validation and test scoring run in fp32;
* batches are slices of tensor blocks made once; metrics are computed once per epoch on the validation
  split, never per batch over the epoch.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ctrzoo.atomic import disk_errors, replace_file
from ctrzoo.data.dataset import PreparedDataset
from ctrzoo.data.loader import BatchLoader
from ctrzoo.errors import CtrzooError
from ctrzoo.metrics import auc, gauc, logloss
from ctrzoo.nn import RowSparseAdam, split_sparse_params
from ctrzoo.train.distributed import DistContext
from ctrzoo.train.regularization import mba_l2, plain_l2

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainConfig:
    model: str = "deepfm"
    hparams: dict[str, Any] = field(default_factory=dict)
    epochs: int = 1
    batch_size: int = 4096
    lr: float = 1e-3
    sparse_updates: bool = True
    regularization: str = "none"  # none | l2 | mba
    reg_lambda: float = 0.0
    patience: int = 2
    lr_decay: float = 0.1
    checkpoint_every: int = 0  # steps between checkpoints; 0 = at the end of each epoch only
    seed: int = 2024
    threads: int | None = None
    bf16: bool | None = None  # bf16 autocast while training; None: on where the CPU has native bf16 (bf16_native)
    eval_batch_size: int = 65536
    max_steps: int | None = None  # stop after this many steps in total (smoke runs)

    def __post_init__(self) -> None:
        if self.regularization not in ("none", "l2", "mba"):
            raise CtrzooError(f"regularization must be none, l2 or mba, got {self.regularization!r}")
        if self.batch_size < 1 or self.epochs < 1 or self.lr <= 0:
            raise CtrzooError("batch_size and epochs must be >= 1 and lr > 0")
        if self.bf16 is None:  # resolved here, so a checkpoint records what actually ran
            self.bf16 = bf16_native()

    @property
    def uses_sparse_updates(self) -> bool:
        # plain L2 over the whole table has a dense gradient by definition (the cost MBA avoids)
        return self.sparse_updates and self.regularization != "l2"


def bf16_native() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 autocast is emulated and
    slower."""
    checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(check() for check in checks if check is not None)


@torch.inference_mode()
def predict(model: nn.Module, loader: BatchLoader,
            bf16: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Labels, click probabilities and user ids (when the loader keeps them) for a whole split."""
    model.eval()
    labels, probs, users = [], [], []
    for b in loader:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(b.sparse, b.dense, b.seq)
        probs.append(torch.sigmoid(logits.float()).numpy())
        labels.append(b.label.numpy())
        if b.user_id is not None:
            users.append(b.user_id)
    if not labels:  # an empty split (or this rank's empty part of one)
        return np.zeros(0, np.float32), np.zeros(0, np.float32), (np.zeros(0, object) if loader.with_user else None)
    u = np.concatenate(users) if users else None
    return np.concatenate(labels), np.concatenate(probs), u


def auc_undefined_reason(labels: np.ndarray) -> str | None:
    """Why AUC is undefined on these labels (no rows, or a single class), or None when it is defined."""
    n, pos = int(labels.size), int(np.count_nonzero(labels))
    if n == 0:
        return "the split is empty"
    if pos == 0:
        return f"the split has only negatives ({n:,d} rows, no clicks)"
    if pos == n:
        return f"the split has only positives ({n:,d} rows, all clicks)"
    return None


def evaluate_arrays(labels: np.ndarray, probs: np.ndarray, users: np.ndarray | None) -> dict[str, float]:
    """AUC, logloss, rows (and GAUC with users); ``auc_undefined`` says why AUC is NaN when it is."""
    out = {"auc": auc(labels, probs), "logloss": logloss(labels, probs) if labels.size else float("nan"),
           "rows": int(labels.size)}
    reason = auc_undefined_reason(labels)
    if reason:
        out["auc_undefined"] = reason
    if users is not None:
        out["gauc"], info = gauc(labels, probs, users)
        out["gauc_users"], out["gauc_users_skipped"] = info["users"], info["users_skipped"]
    return out


class Trainer:
    def __init__(self, config: TrainConfig, dataset: PreparedDataset, workdir: Path, progress: bool | None = None,
                 dist: DistContext | None = None):
        self.cfg, self.ds, self.workdir = config, dataset, Path(workdir)
        self.dist = dist or DistContext()
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.dist.is_main
        torch.manual_seed(config.seed)  # thread count: the caller's scope (train_bundle: ctrzoo.threads)
        from ctrzoo.models import build_model

        hparams = dict(config.hparams)
        # several processes: dense gradients, which DistributedDataParallel averages with one all-reduce
        hparams["sparse_grad"] = config.uses_sparse_updates and not self.dist.enabled
        self.model = build_model(config.model, dataset.codec.layout, **hparams)
        self.forward_model: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.forward_model = DistributedDataParallel(self.model)  # broadcasts rank 0's initial weights
        sparse, dense = split_sparse_params(self.model)
        self.optimizers: list[torch.optim.Optimizer] = [_dense_adam(dense, config.lr)]
        if sparse:
            self.optimizers.append(RowSparseAdam(sparse, lr=config.lr))
        self.id_frequency = torch.from_numpy(dataset.codec.id_frequencies().astype(np.float32))
        rows = dataset.rows("train")
        if rows < 2:
            raise CtrzooError(f"{dataset.path}: the training split has {rows} row(s); at least 2 are needed")
        # the last partial batch is dropped (as usual): batch statistics (Dice, batch norm) need > 1 row
        rank, world = self.dist.rank, self.dist.world_size
        self.train_loader = BatchLoader(dataset, "train", config.batch_size, shuffle=True, seed=config.seed,
                                        drop_last=rows > config.batch_size * world, rank=rank, world_size=world)
        self.valid_loader = BatchLoader(dataset, "valid", config.eval_batch_size, shuffle=False,
                                        with_user=dataset.has_user_id, rank=rank, world_size=world)
        # every rank must run the same number of steps, or the gradient all-reduce waits forever
        self.steps_per_epoch = self.dist.all_reduce_min(len(self.train_loader))
        self.history: list[dict[str, Any]] = []
        # best validation score: AUC, or -logloss where AUC is undefined (a one-class validation split)
        self.best: dict[str, Any] = {"score": -math.inf, "epoch": -1, "state": None}
        self.bad_epochs = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self._loss_sum, self._n_seen = torch.zeros((), dtype=torch.float64), 0  # running epoch loss

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, resume: bool = False, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Train to the configured epochs or until early stopping; returns the best epoch's metrics."""
        with disk_errors("the training directory", self.workdir):
            self.workdir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:  # half-written checkpoints of a killed run
            for stale in self.workdir.glob(f".{CHECKPOINT_FILE}.tmp-*"):
                stale.unlink(missing_ok=True)
        if resume:
            self._load_checkpoint()
        elif (self.workdir / CHECKPOINT_FILE).exists():
            raise CtrzooError(f"{self.workdir / CHECKPOINT_FILE} exists: pass --resume to continue it, or remove it")
        cfg = self.cfg
        stopped = False
        while self.epoch < cfg.epochs and not stopped:
            t0 = time.perf_counter()
            loss_sum, n_seen = self._run_epoch(on_step)
            seconds = time.perf_counter() - t0
            loss_sum, n_seen = self.dist.all_reduce_sum(loss_sum), int(self.dist.all_reduce_sum(n_seen))
            # scored in fp32 even after bf16 training: the weights are fp32 and so is every later consumer
            metrics = self.evaluate(self.valid_loader) if self.dist.all_reduce_sum(self.valid_loader.rows) else {}
            record = {
                "epoch": self.epoch + 1,
                "train_logloss": loss_sum / max(n_seen, 1),
                **{f"valid_{k}": v for k, v in metrics.items()},
                "lr": self.optimizers[0].param_groups[0]["lr"],
                "seconds": round(seconds, 3),
                "samples_per_s": round(n_seen / seconds, 1) if seconds > 0 else None,
            }
            if self.dist.enabled:
                record["rank_weight_checksums"] = self._check_ranks_in_sync()
            self.history.append(record)
            if self.dist.is_main:
                with disk_errors("the training metrics", self.workdir / "metrics.jsonl"), \
                        open(self.workdir / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(record) + "\n")
            # no validation rows: no early stopping either, the last epoch's weights are the result
            stopped = (bool(metrics) and self._early_stopping(metrics)) or self._hit_max_steps()
            self.epoch += 1
            self.step_in_epoch = 0
            self._save_checkpoint()
        if self.best["state"] is not None:
            self.model.load_state_dict(self.best["state"])
        best = next((h for h in self.history if h["epoch"] == self.best["epoch"] + 1), self.history[-1])
        return best

    def evaluate(self, loader: BatchLoader) -> dict[str, float]:
        """Metrics over the whole split: each rank scores its part, the parts are gathered."""
        labels, probs, users = self.dist.gather_concat(list(predict(self.model, loader)))
        return evaluate_arrays(labels, probs, users)

    def _check_ranks_in_sync(self) -> list[float]:
        """A weight checksum per rank; data parallel training must keep them identical."""
        with torch.no_grad():
            local = float(sum(p.double().sum() for p in self.model.parameters()))
        sums = self.dist.gather_objects(local)
        if len(set(sums)) != 1:
            raise CtrzooError(f"ranks diverged: weight checksums {sums}")
        return sums

    def _run_epoch(self, on_step: Callable[[int], None] | None) -> tuple[float, int]:
        cfg = self.cfg
        self.model.train()
        self.train_loader.set_epoch(self.epoch)
        skip = self.step_in_epoch
        if skip == 0:
            self._loss_sum, self._n_seen = torch.zeros((), dtype=torch.float64), 0
        bar = tqdm(total=self.steps_per_epoch, initial=skip, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   disable=not self.progress, leave=False, unit="batch")
        for i, batch in enumerate(self.train_loader):
            if i >= self.steps_per_epoch:
                break
            if i < skip:
                continue
            loss = self._step(batch)
            self._loss_sum += loss.detach().double() * len(batch)
            self._n_seen += len(batch)
            self.step_in_epoch = i + 1
            self.global_step += 1
            bar.update(1)
            if self.progress and self.global_step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                self._save_checkpoint()
            if on_step is not None:
                on_step(self.global_step)
            if self._hit_max_steps():
                break
        bar.close()
        return float(self._loss_sum), self._n_seen

    def _step(self, batch) -> torch.Tensor:
        cfg = self.cfg
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = self.forward_model(batch.sparse, batch.dense, batch.seq)
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch.label)
        total = loss
        if cfg.regularization == "mba" and cfg.reg_lambda > 0:
            ids = [batch.sparse, batch.seq] if batch.seq.numel() else [batch.sparse]
            table = self.model.embedding.weight
            total = total + mba_l2(table, ids, self.id_frequency, cfg.reg_lambda,
                                   sparse=cfg.uses_sparse_updates) / len(batch)
        elif cfg.regularization == "l2" and cfg.reg_lambda > 0:
            total = total + plain_l2([self.model.embedding.weight], cfg.reg_lambda) / len(batch)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        total.backward()
        for opt in self.optimizers:
            opt.step()
        return loss

    def _hit_max_steps(self) -> bool:
        return self.cfg.max_steps is not None and self.global_step >= self.cfg.max_steps

    def _early_stopping(self, metrics: dict[str, float]) -> bool:
        """Keep the best weights; decay the learning rate on a plateau; stop after ``patience`` of them.

        AUC is undefined on a one-class validation split (the same split every epoch), so there the epochs
        are ranked by validation logloss instead: it still measures fit, and early stopping still works.
        """
        score = metrics["auc"] if not np.isnan(metrics["auc"]) else -metrics["logloss"]
        if score > self.best["score"] + 1e-6:
            self.best = {"score": score, "epoch": self.epoch, "state": copy.deepcopy(self.model.state_dict())}
            self.bad_epochs = 0
            return False
        self.bad_epochs += 1
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] *= self.cfg.lr_decay
        return self.bad_epochs >= self.cfg.patience

    # -- checkpoints -------------------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        rng_states = self.dist.gather_objects(torch.get_rng_state())  # dropout streams differ per rank
        if not self.dist.is_main:
            self.dist.barrier()
            return
        state = {
            "config": json.dumps(asdict(self.cfg), sort_keys=True),
            "model": self.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "loss_sum": self._loss_sum,
            "n_seen": self._n_seen,
            "rng": torch.get_rng_state(),
            "rng_per_rank": rng_states,
            "world_size": self.dist.world_size,
            "best_score": float(self.best["score"]),
            "best_epoch": int(self.best["epoch"]),
            "best_state": self.best["state"] or {},
            "bad_epochs": self.bad_epochs,
            "history": json.dumps(self.history),
        }
        # through a temporary file removed on any failure: a full disk leaves the last good checkpoint only
        replace_file(self.workdir / CHECKPOINT_FILE, lambda fh: torch.save(state, fh), "the training checkpoint")
        self.dist.barrier()

    def _load_checkpoint(self) -> None:
        path = self.workdir / CHECKPOINT_FILE
        if not path.exists():
            raise CtrzooError(f"{path}: no checkpoint to resume from")
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = json.loads(state["config"])
        current = asdict(self.cfg)
        diff = {k for k in current if k not in ("epochs", "max_steps") and saved.get(k) != current[k]}
        if diff:
            raise CtrzooError(f"{path}: checkpoint was made with other settings ({', '.join(sorted(diff))})")
        if state.get("world_size", 1) != self.dist.world_size:
            raise CtrzooError(f"{path}: checkpoint was made with {state.get('world_size', 1)} process(es), "
                              f"resume it with the same number (now {self.dist.world_size})")
        self.model.load_state_dict(state["model"])
        for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = state["global_step"]
        self._loss_sum, self._n_seen = state["loss_sum"], state["n_seen"]
        torch.set_rng_state(state["rng_per_rank"][self.dist.rank] if "rng_per_rank" in state else state["rng"])
        score = state["best_score"] if "best_score" in state else state["best_auc"]  # older checkpoints: AUC
        self.best = {"score": score, "epoch": state["best_epoch"], "state": state["best_state"] or None}
        self.bad_epochs = state["bad_epochs"]
        self.history = json.loads(state["history"])

    def clean_workdir(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _dense_adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """One fused Adam kernel for all dense parameters where this torch build has it, else multi-tensor."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, foreach=True)
