"""The training loop every model uses: epochs of steps, the optimizers, early stopping, progress, limits.

One loop, so both models (the ranking ``Trainer`` and the two towers' ``RetrievalTrainer``) stop, keep their
best weights, step their optimizers and report progress the same way. A subclass says what differs, its
batches, loss, validation and history record, by implementing the methods under "the model's part":

    start_epoch(epoch)  before an epoch's batches (reshuffling, hard-negative mining)
    batches()           the epoch's training batches (at most ``steps_per_epoch`` are taken)
    loss(batch)         (objective to minimize, data loss to report, its weight in the epoch's mean)
    validate()          metrics on the validation split ({} without one)
    score(metrics)      higher is better; None when there is nothing to compare (no early stopping then)
    record(...)         the epoch's history line

The loop owns: the optimizers (dense parameters: one fused Adam; sparse-gradient embedding tables: the
row-sparse Adam of ``ctrzoo.nn.optim``, see ``ctrzoo.train.trainer`` for why), the epoch/step counters, early
stopping (the best weights kept, the learning rate decayed on a plateau, stop after ``patience`` of them),
``max_steps``, the progress bar and the thread count (``ctrzoo.threads``: for this call only). Data-parallel
reductions go through ``dist`` (a single process: no-ops), the sparse tables' touched rows included
(``DistContext.average_row_grads``, between the backward pass and the optimizer steps).

Devices (``ctrzoo.devices``): the model is moved to ``precision.device`` before its optimizers are made, and
every batch ``batches()`` yields is moved there too, the next one copied ahead of the current step
(``copied_ahead``; no-ops on a CPU). ``precision``'s loss scaler (fp16 on CUDA) scales the backward pass and
steps the optimizers; a disabled one (every other case) just steps them.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ctrzoo.devices import Precision, copied_ahead
from ctrzoo.nn import RowSparseAdam, split_sparse_params
from ctrzoo.threads import torch_threads
from ctrzoo.train.distributed import DistContext

MIN_DELTA = 1e-6  # a validation score must beat the best by more than this to count as better


class TrainingLoop:
    """Fit ``model`` (see the module docstring for what a subclass provides)."""

    steps_per_epoch: int  # set by the subclass once its data is loaded

    def __init__(self, model: nn.Module, *, epochs: int, lr: float, patience: int, lr_decay: float = 1.0,
                 max_steps: int | None = None, threads: int | None = None, progress: bool | None = None,
                 dist: DistContext | None = None, sparse_optimizer: type[torch.optim.Optimizer] | None = None,
                 precision: Precision | None = None, fused_optimizers: list[torch.optim.Optimizer] | None = None):
        self.precision = precision or Precision(torch.device("cpu"), None)
        self.device = self.precision.device
        self.model = model.to(self.device)  # before the optimizers: their state lives where the weights do
        self.scaler = self.precision.scaler()
        self.epochs, self.patience, self.lr_decay, self.max_steps, self.threads = (epochs, patience, lr_decay,
                                                                                   max_steps, threads)
        self.dist = dist or DistContext()
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.dist.is_main
        # fused_optimizers: parameters another optimizer updates inside the backward pass (a TorchRec table,
        # ctrzoo.train.sharded); kept out of the ones made here, stepped with them (their lr decays too)
        fused = fused_optimizers or []
        owned = {id(p) for opt in fused for group in opt.param_groups for p in group["params"]}
        self.optimizers = make_optimizers(model, lr, sparse_optimizer, exclude=owned) + fused
        self.sparse_params = split_sparse_params(model)[0]
        self.history: list[dict[str, Any]] = []
        # best validation score, the epoch it was reached in (0-based) and a copy of the weights then
        self.best: dict[str, Any] = {"score": -math.inf, "epoch": -1, "state": None}
        self.bad_epochs = 0
        self.epoch = 0  # epochs done
        self.step_in_epoch = 0
        self.global_step = 0
        self._loss_sum, self._n_seen = torch.zeros((), dtype=torch.float64), 0  # running epoch loss

    # -- the model's part --------------------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        """Prepare epoch ``epoch`` (0-based) before its batches are drawn."""

    def batches(self) -> Iterable[Any]:
        raise NotImplementedError

    def loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
        raise NotImplementedError

    def validate(self) -> dict[str, Any]:
        raise NotImplementedError

    def score(self, metrics: dict[str, Any]) -> float | None:
        raise NotImplementedError

    def record(self, epoch: int, loss_sum: float, n_seen: int, steps: int, seconds: float,
               metrics: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    # -- hooks for what a trainer adds (checkpoints, logs) ----------------------------------------------
    def after_step(self) -> None:
        """After every optimizer step (counters already advanced)."""

    def on_record(self, record: dict[str, Any]) -> None:
        """An epoch's record, before it joins the history."""

    def after_epoch(self) -> None:
        """After an epoch's record and the early-stopping decision (counters already advanced)."""

    # -- the loop ------------------------------------------------------------------------------------------
    def fit(self, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Train to ``epochs`` or until early stopping (or ``max_steps``); the best epoch's weights are kept
        and its history record returned (the last epoch's when nothing was validated)."""
        with torch_threads(self.threads):
            stopped = False
            while self.epoch < self.epochs and not stopped:
                t0 = time.perf_counter()
                loss_sum, n_seen, steps = self._run_epoch(on_step)
                seconds = time.perf_counter() - t0
                loss_sum, n_seen = self.dist.all_reduce_sum(loss_sum), int(self.dist.all_reduce_sum(n_seen))
                metrics = self.validate()
                record = self.record(self.epoch + 1, loss_sum, n_seen, steps, seconds, metrics)
                self.on_record(record)
                self.history.append(record)
                stopped = self.early_stopping(metrics) or self.hit_max_steps()
                self.epoch += 1
                self.step_in_epoch = 0
                self.after_epoch()
            if self.best["state"] is not None:
                self.restore(self.best["state"])
        return next((h for h in self.history if h["epoch"] == self.best["epoch"] + 1), self.history[-1])

    def _run_epoch(self, on_step: Callable[[int], None] | None) -> tuple[float, int, int]:
        """One epoch's steps, from ``step_in_epoch`` on (a resumed epoch skips the batches it already took);
        returns the epoch's weighted loss sum, its weight (rows, or steps) and the steps taken."""
        self.start_epoch(self.epoch)
        self.model.train()
        skip = self.step_in_epoch
        if skip == 0:
            self._loss_sum, self._n_seen = torch.zeros((), dtype=torch.float64), 0
        bar = tqdm(total=self.steps_per_epoch, initial=skip, desc=f"epoch {self.epoch + 1}/{self.epochs}",
                   disable=not self.progress, leave=False, unit="batch")
        for i, batch in enumerate(copied_ahead(self.batches(), self.device)):
            if i >= self.steps_per_epoch:
                break
            if i < skip:
                continue
            reported, weight = self.step(batch)
            self._loss_sum += reported.detach().double() * weight
            self._n_seen += weight
            self.step_in_epoch = i + 1
            self.global_step += 1
            bar.update(1)
            if self.progress and self.global_step % 20 == 0:
                bar.set_postfix(loss=f"{reported.item():.4f}")
            self.after_step()
            if on_step is not None:
                on_step(self.global_step)
            if self.hit_max_steps():
                break
        bar.close()
        return float(self._loss_sum), self._n_seen, self.step_in_epoch - skip

    def step(self, batch: Any) -> tuple[torch.Tensor, int]:
        """One optimizer step on ``batch``; returns the data loss to report and its weight."""
        objective, reported, weight = self.loss(batch)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.scaler.scale(objective).backward()
        self.dist.average_row_grads(self.sparse_params)  # several processes: the touched rows only
        for opt in self.optimizers:
            self.scaler.step(opt)
        self.scaler.update()
        return reported, weight

    def snapshot(self) -> dict[str, Any]:
        """A copy of the weights that :meth:`restore` comes back to (the best epoch's)."""
        return copy.deepcopy(self.model.state_dict())

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)

    def hit_max_steps(self) -> bool:
        return self.max_steps is not None and self.global_step >= self.max_steps

    def early_stopping(self, metrics: dict[str, Any]) -> bool:
        """Keep the best weights; decay the learning rate on a plateau; True after ``patience`` of them.

        Without a score (no validation rows) nothing is compared: every epoch runs and the last one's weights
        are the result."""
        score = self.score(metrics)
        if score is None:
            return False
        if score > self.best["score"] + MIN_DELTA:
            self.best = {"score": score, "epoch": self.epoch, "state": self.snapshot()}
            self.bad_epochs = 0
            return False
        self.bad_epochs += 1
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] *= self.lr_decay
        return self.bad_epochs >= self.patience

    @property
    def lr(self) -> float:
        """The dense optimizer's current learning rate (after any decay)."""
        return self.optimizers[0].param_groups[0]["lr"]

    # -- checkpoint state --------------------------------------------------------------------------------
    def loop_state(self) -> dict[str, Any]:
        """What resuming needs of the loop: weights, optimizer states, counters, the best epoch, history."""
        return {
            "model": self.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "scaler": self.scaler.state_dict(),  # {} unless fp16 on CUDA
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "loss_sum": self._loss_sum,
            "n_seen": self._n_seen,
            "best_score": float(self.best["score"]),
            "best_epoch": int(self.best["epoch"]),
            "best_state": self.best["state"] or {},
            "bad_epochs": self.bad_epochs,
            "history": json.dumps(self.history),
        }

    def load_loop_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = state["global_step"]
        self._loss_sum, self._n_seen = state["loss_sum"], state["n_seen"]
        score = state["best_score"] if "best_score" in state else state["best_auc"]  # older checkpoints: AUC
        self.best = {"score": score, "epoch": state["best_epoch"], "state": state["best_state"] or None}
        self.bad_epochs = state["bad_epochs"]
        self.history = json.loads(state["history"])


def make_optimizers(model: nn.Module, lr: float, sparse_optimizer: type[torch.optim.Optimizer] | None = None,
                    exclude: set[int] | None = None) -> list[torch.optim.Optimizer]:
    """[Adam over the dense parameters, ``sparse_optimizer`` (default ``RowSparseAdam``) over the tables with
    sparse gradients, when there are any]; parameters whose ``id`` is in ``exclude`` are left out."""
    sparse, dense = split_sparse_params(model)
    if exclude:
        dense = [p for p in dense if id(p) not in exclude]
    optimizers = [_dense_adam(dense, lr)]
    if sparse:
        optimizers.append((sparse_optimizer or RowSparseAdam)(sparse, lr=lr))
    return optimizers


def _dense_adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """One fused Adam kernel for all dense parameters where this torch build has it, else multi-tensor."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, foreach=True)
