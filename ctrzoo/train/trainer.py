"""Training the ranking models: block-loaded batches, click-through loss, exact resume, in the shared loop.

The epochs, optimizers, early stopping and progress are ``ctrzoo.train.loop``'s (the retrieval towers train
in the same loop); this module adds the ranking side: the loss and its penalties, validation AUC,
checkpoints, torchrun ranks. Speed choices (LightSeq2's training ideas, where they pay on a CPU;
``benchmarks/train_speed.py`` measures each one):
* embeddings produce sparse gradients and ``RowSparseAdam`` updates only the rows in the batch, instead of
  a dense Adam step over the whole table (and without ``SparseAdam``'s coalescing bookkeeping);
* the dense parameters step with one fused (or multi-tensor) Adam kernel (both: ``loop.make_optimizers``);
* bf16 autocast for the matmuls where the CPU has native bf16 dot products (AVX512-BF16 or AMX), on by
  default there: weights, loss and optimizer state stay fp32, and validation and test scoring run in fp32;
  on a GPU (``device``, ``ctrzoo.devices``) bf16 where it has it, else fp16 with a loss scaler;
* batches are slices of tensor blocks made once; metrics are computed once per epoch on the validation
  split, never per batch over the epoch.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctrzoo.atomic import disk_errors, replace_file
from ctrzoo.data.dataset import PreparedDataset
from ctrzoo.data.loader import BatchLoader
from ctrzoo.devices import Precision, bf16_default, copied_ahead, device_name, model_device
from ctrzoo.errors import CtrzooError
from ctrzoo.metrics import auc, gauc, logloss
from ctrzoo.models.registry import is_multitask
from ctrzoo.train import sharded
from ctrzoo.train.distributed import DistContext, data_parallel
from ctrzoo.train.loop import TrainingLoop
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
    bf16: bool | None = None  # bf16 autocast while training; None: on where the device has it natively (bf16_default)
    eval_batch_size: int = 65536
    max_steps: int | None = None  # stop after this many steps in total (smoke runs)
    device: str = "auto"  # auto | cpu | cuda | cuda:N, resolved to the device that runs (ctrzoo.devices)
    label: str | None = None  # which of the dataset's labels to learn (None: the first)
    shard_embeddings: bool = False  # the table row-wise over the ranks with TorchRec (ctrzoo.train.sharded)
    # the sharded table's row-wise Adagrad learning rate: Adagrad's steps shrink as a row's squared gradients
    # add up, so it wants a larger rate than Adam's ``lr`` (ctrzoo.train.sharded.ADAGRAD_LR)
    shard_lr: float | None = None

    def __post_init__(self) -> None:
        if self.regularization not in ("none", "l2", "mba"):
            raise CtrzooError(f"regularization must be none, l2 or mba, got {self.regularization!r}")
        if self.batch_size < 1 or self.epochs < 1 or self.lr <= 0:
            raise CtrzooError("batch_size and epochs must be >= 1 and lr > 0")
        self.device = device_name(self.device)  # a missing GPU fails here, in one line, before any work
        if self.shard_embeddings and self.regularization != "none":
            raise CtrzooError(f"--shard-embeddings: regularization {self.regularization!r} needs the whole table "
                              "in every process; use --reg none with sharded embeddings")
        if self.shard_lr is not None and self.shard_lr <= 0:
            raise CtrzooError(f"shard_lr must be > 0, got {self.shard_lr}")
        if self.shard_embeddings and self.checkpoint_every:
            raise CtrzooError("--shard-embeddings: checkpoints are not written for a sharded table yet "
                              "(no --checkpoint-every, no --resume)")
        if self.bf16 is None:  # resolved here, so a checkpoint records what actually ran
            self.bf16 = bf16_default(torch.device(self.device))

    @property
    def uses_sparse_updates(self) -> bool:
        # plain L2 over the whole table has a dense gradient by definition (the cost MBA avoids)
        return self.sparse_updates and self.regularization != "l2"


def bf16_native() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 autocast is emulated and
    slower."""
    return bf16_default(torch.device("cpu"))


@torch.inference_mode()
def predict(model: nn.Module, loader: BatchLoader, bf16: bool = False,
            lockstep: Callable[[Iterable, int], Iterable[tuple[Any, bool]]] | None = None,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Labels, click probabilities and user ids (when the loader keeps them) for a whole split, scored on the
    model's device (batches copied there ahead of use; results back as NumPy arrays). A multi-task model
    (loader asked for its labels) gives labels and probabilities ``[N, T]``, else ``[N]``.

    ``lockstep(batches, n)`` (a sharded table, whose lookups are collectives): yields ``(batch, keep)``, with
    filler batches (``keep`` False, scores dropped) so that every rank runs as many forwards."""
    model.eval()
    device = model_device(model)
    labels, probs, users = [], [], []
    batches = copied_ahead(loader, device)
    paired = lockstep(batches, len(loader)) if lockstep is not None else ((b, True) for b in batches)
    for b, keep in paired:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(b.sparse, b.dense, b.seq)
        if not keep:
            continue
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
        labels.append(b.label.cpu().numpy())
        if b.user_id is not None:
            users.append(b.user_id)
    if not labels:  # an empty split (or this rank's empty part of one)
        shape = (0, len(loader.label_column)) if isinstance(loader.label_column, list) else (0,)
        return (np.zeros(shape, np.float32), np.zeros(shape, np.float32),
                (np.zeros(0, object) if loader.with_user else None))
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


def evaluate_arrays(labels: np.ndarray, probs: np.ndarray, users: np.ndarray | None,
                    tasks: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """AUC, logloss, rows (and GAUC with users); ``auc_undefined`` says why AUC is NaN when it is.

    Several tasks (labels and probabilities ``[N, T]``, ``tasks`` their names): the same metrics per task
    under ``tasks``, the first task's also at the top level (the primary label, as a single-task model's),
    and ``mean_auc`` over the tasks whose AUC is defined (what early stopping ranks epochs by)."""
    if tasks:
        if labels.ndim != 2 or labels.shape[1] != len(tasks):
            raise CtrzooError(f"internal: {len(tasks)} task(s) {list(tasks)} but labels of shape {labels.shape}")
        per_task = {t: evaluate_arrays(labels[:, i], probs[:, i], users) for i, t in enumerate(tasks)}
        aucs = [m["auc"] for m in per_task.values() if not np.isnan(m["auc"])]
        return {**per_task[tasks[0]], "mean_auc": float(np.mean(aucs)) if aucs else float("nan"),
                "tasks": per_task}
    out = {"auc": auc(labels, probs), "logloss": logloss(labels, probs) if labels.size else float("nan"),
           "rows": int(labels.size)}
    reason = auc_undefined_reason(labels)
    if reason:
        out["auc_undefined"] = reason
    if users is not None:
        out["gauc"], info = gauc(labels, probs, users)
        out["gauc_users"], out["gauc_users_skipped"] = info["users"], info["users_skipped"]
    return out


class Trainer(TrainingLoop):
    """The ranking models' training: click-through loss over block-loaded batches, in the shared loop
    (``ctrzoo.train.loop``), plus what only ranking has: checkpoints with exact resume, torchrun ranks,
    ``metrics.jsonl`` in the work directory."""

    def __init__(self, config: TrainConfig, dataset: PreparedDataset, workdir: Path, progress: bool | None = None,
                 dist: DistContext | None = None):
        self.cfg, self.ds, self.workdir = config, dataset, Path(workdir)
        dist = dist or DistContext()
        torch.manual_seed(config.seed)  # thread count: the loop's scope (ctrzoo.threads)
        from ctrzoo.models import build_model

        hparams = dict(config.hparams)
        if is_multitask(config.model):  # it learns several labels: the dataset's, unless its hparams name them
            if config.label is not None:
                raise CtrzooError(f"--label {config.label!r}: {config.model} is a multi-task model and learns "
                                  "every label in its 'tasks' hyper-parameter (default: all of the dataset's "
                                  f"labels, {', '.join(dataset.labels)}); --label is for single-task models")
            hparams.setdefault("tasks", list(dataset.labels))
        # several processes too: the tables' touched rows are averaged apart from DDP (distributed.data_parallel)
        hparams["sparse_grad"] = config.uses_sparse_updates
        device = torch.device(config.device)
        self.precision = Precision.training(device, config.bf16)
        model = build_model(config.model, dataset.codec.layout, **hparams).to(device)
        self.forward_model: nn.Module = model
        self.tasks: tuple[str, ...] = tuple(model.tasks)
        # a multi-task model reads its tasks' labels ([B, T]); an unknown task name fails here, listing the labels
        label = list(self.tasks) if self.tasks else config.label
        self.sharded = config.shard_embeddings
        fused: list[torch.optim.Optimizer] = []
        if self.sharded:  # the table row-wise over the ranks, its own fused optimizer (ctrzoo.train.sharded)
            shard_lr = config.shard_lr or sharded.ADAGRAD_LR
            self.forward_model = sharded.shard_embedding(model, dist, shard_lr, device)
            fused = [self.forward_model.fused_optimizer]
            sharded.note(model, dist, shard_lr)
        elif dist.enabled:  # broadcasts rank 0's initial weights
            self.forward_model = data_parallel(model, device)
        super().__init__(model, epochs=config.epochs, lr=config.lr, patience=config.patience,
                         lr_decay=config.lr_decay, max_steps=config.max_steps, threads=config.threads,
                         progress=progress, dist=dist, precision=self.precision, fused_optimizers=fused)
        self.id_frequency = torch.from_numpy(dataset.codec.id_frequencies().astype(np.float32)).to(device)
        rows = dataset.rows("train")
        if rows < 2:
            raise CtrzooError(f"{dataset.path}: the training split has {rows} row(s); at least 2 are needed")
        # the last partial batch is dropped (as usual): batch statistics (Dice, batch norm) need > 1 row
        rank, world = dist.rank, dist.world_size
        pin = device.type == "cuda"  # page-locked blocks: batches copy to the GPU while the previous step runs
        # sample weights (when the dataset has them) weigh each row's loss; metrics stay unweighted
        self.train_loader = BatchLoader(dataset, "train", config.batch_size, shuffle=True, seed=config.seed,
                                        drop_last=rows > config.batch_size * world, rank=rank, world_size=world,
                                        label=label, with_weight=True, pin_memory=pin)
        self.valid_loader = BatchLoader(dataset, "valid", config.eval_batch_size, shuffle=False,
                                        with_user=dataset.has_user_id, rank=rank, world_size=world,
                                        label=label, pin_memory=pin)
        # every rank must run the same number of steps, or the gradient all-reduce waits forever
        self.steps_per_epoch = dist.all_reduce_min(len(self.train_loader))

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, resume: bool = False, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Train to the configured epochs or until early stopping; returns the best epoch's metrics."""
        with disk_errors("the training directory", self.workdir):
            self.workdir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:  # half-written checkpoints of a killed run
            for stale in self.workdir.glob(f".{CHECKPOINT_FILE}.tmp-*"):
                stale.unlink(missing_ok=True)
        if resume and self.sharded:
            raise CtrzooError("--resume: checkpoints are not written for a sharded table (--shard-embeddings) yet")
        if resume:
            self._load_checkpoint()
        elif (self.workdir / CHECKPOINT_FILE).exists():
            raise CtrzooError(f"{self.workdir / CHECKPOINT_FILE} exists: pass --resume to continue it, or remove it")
        return super().fit(on_step)

    def start_epoch(self, epoch: int) -> None:
        self.train_loader.set_epoch(epoch)

    def batches(self) -> BatchLoader:
        return self.train_loader

    def loss(self, batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Binary cross-entropy of the logits (bf16 autocast when configured; each row's term times its sample
        weight when the dataset has weights, averaged over the batch) plus the configured penalty. A
        multi-task model's loss is the sum over its tasks of each task's mean (logits and labels ``[B, T]``),
        as MMoE, PLE and ESMM train."""
        cfg = self.cfg
        with self.precision.autocast():
            logits = self.forward_model(batch.sparse, batch.dense, batch.seq)
        weight = batch.weight
        if self.tasks and weight is not None:
            weight = weight.unsqueeze(1)
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch.label, weight=weight)
        if self.tasks:
            loss = loss * len(self.tasks)
        total = loss
        if cfg.regularization == "mba" and cfg.reg_lambda > 0:
            ids = [batch.sparse, batch.seq] if batch.seq.numel() else [batch.sparse]
            table = self.model.embedding.weight
            total = total + mba_l2(table, ids, self.id_frequency, cfg.reg_lambda,
                                   sparse=cfg.uses_sparse_updates) / len(batch)
        elif cfg.regularization == "l2" and cfg.reg_lambda > 0:
            total = total + plain_l2([self.model.embedding.weight], cfg.reg_lambda) / len(batch)
        aux = self.model.auxiliary_loss()  # a model's own extra objective (CTRModel.auxiliary_loss), weighted
        if aux is not None:
            total = total + aux.float()
        return total, loss, len(batch)

    def validate(self) -> dict[str, Any]:
        # scored in fp32 even after bf16 training: the weights are fp32 and so is every later consumer
        return self.evaluate(self.valid_loader) if self.dist.all_reduce_sum(self.valid_loader.rows) else {}

    def score(self, metrics: dict[str, Any]) -> float | None:
        """Validation AUC (a multi-task model's: the mean over its tasks), or -logloss where AUC is undefined
        (a one-class validation split, the same split every epoch: logloss still measures fit, so early
        stopping still works); None without validation."""
        if not metrics:
            return None
        if "tasks" in metrics:
            if not np.isnan(metrics["mean_auc"]):
                return metrics["mean_auc"]
            return -float(np.mean([m["logloss"] for m in metrics["tasks"].values()]))
        return metrics["auc"] if not np.isnan(metrics["auc"]) else -metrics["logloss"]

    def record(self, epoch: int, loss_sum: float, n_seen: int, steps: int, seconds: float,
               metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "train_logloss": loss_sum / max(n_seen, 1),
            **{f"valid_{k}": v for k, v in metrics.items()},
            "lr": self.lr,
            "seconds": round(seconds, 3),
            "samples_per_s": round(n_seen / seconds, 1) if seconds > 0 else None,
        }

    def on_record(self, record: dict[str, Any]) -> None:
        if self.dist.enabled:
            record["rank_weight_checksums"] = self._check_ranks_in_sync()
        if self.sharded:  # each rank's share of the table: its shard's rows (about rows / ranks)
            record["rank_table_rows"] = self.dist.gather_objects(
                sum(t.shape[0] for _, t in sharded.local_shards(self.model)))
        if self.dist.is_main:
            with disk_errors("the training metrics", self.workdir / "metrics.jsonl"), \
                    open(self.workdir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def after_step(self) -> None:
        if self.cfg.checkpoint_every and not self.sharded and self.global_step % self.cfg.checkpoint_every == 0:
            self._save_checkpoint()

    def after_epoch(self) -> None:
        if not self.sharded:  # a checkpoint of rank 0 would hold its shard only
            self._save_checkpoint()

    def snapshot(self) -> dict[str, Any]:
        return sharded.snapshot(self.model) if self.sharded else super().snapshot()

    def restore(self, state: dict[str, Any]) -> None:
        return sharded.restore(self.model, state) if self.sharded else super().restore(state)

    def gather_embeddings(self) -> None:
        """A sharded table gathered into rank 0's model (a collective), before the bundle is written."""
        sharded.gather_table(self.model, self.dist)  # a no-op for a plain table

    def evaluate(self, loader: BatchLoader) -> dict[str, float]:
        """Metrics over the whole split: each rank scores its part, the parts are gathered."""
        def lockstep(batches, n):  # a sharded table's lookups are collectives: equal forwards on every rank
            return sharded.in_lockstep(batches, n, self.dist, self.ds.codec.layout)

        scored = predict(self.model, loader, lockstep=lockstep if self.sharded else None)
        labels, probs, users = self.dist.gather_concat(list(scored))
        return evaluate_arrays(labels, probs, users, self.tasks)

    def _check_ranks_in_sync(self) -> list[float]:
        """A weight checksum per rank; data parallel training must keep them identical (a sharded table's
        shards, different by design, are left out)."""
        skip = sharded.sharded_parameter_ids(self.model)  # empty without a sharded table
        with torch.no_grad():
            local = float(sum(p.double().sum() for p in self.model.parameters() if id(p) not in skip))
        sums = self.dist.gather_objects(local)
        if len(set(sums)) != 1:
            raise CtrzooError(f"ranks diverged: weight checksums {sums}")
        return sums

    # -- checkpoints -------------------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        rng_states = self.dist.gather_objects(torch.get_rng_state())  # dropout streams differ per rank
        if not self.dist.is_main:
            self.dist.barrier()
            return
        state = {
            "config": json.dumps(asdict(self.cfg), sort_keys=True),
            **self.loop_state(),
            "rng": torch.get_rng_state(),
            "rng_per_rank": rng_states,
            "world_size": self.dist.world_size,
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
        # another device may resume (weights and optimizer states follow the model's; bf16 must still match)
        diff = {k for k in current if k not in ("epochs", "max_steps", "device") and saved.get(k) != current[k]}
        if diff:
            raise CtrzooError(f"{path}: checkpoint was made with other settings ({', '.join(sorted(diff))})")
        if state.get("world_size", 1) != self.dist.world_size:
            raise CtrzooError(f"{path}: checkpoint was made with {state.get('world_size', 1)} process(es), "
                              f"resume it with the same number (now {self.dist.world_size})")
        self.load_loop_state(state)
        torch.set_rng_state(state["rng_per_rank"][self.dist.rank] if "rng_per_rank" in state else state["rng"])

    def clean_workdir(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
