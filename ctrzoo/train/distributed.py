"""Several training processes (torchrun): one small context object instead of rank checks everywhere.

Data parallel: every rank holds the whole model (``FeatureEmbedding`` included) and reads a disjoint
part of the training row groups; DistributedDataParallel averages gradients (gloo on CPU, nccl on GPU);
rank 0 alone writes checkpoints and the bundle. Embedding tables that outgrow one process would instead
be sharded row-wise (TorchRec's ``ShardedEmbeddingBagCollection`` pattern: each rank owns a slice of
rows, ids are exchanged all-to-all before the lookup and embeddings after it); ``FeatureEmbedding`` is
the one module that would change, since every model reaches its table only through it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item())

    def all_reduce_min(self, value: int) -> int:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def gather_concat(self, arrays: list[np.ndarray | None]) -> list[np.ndarray | None]:
        """Concatenate each array across ranks (rank order), on every rank; None stays None."""
        if not self.enabled:
            return arrays
        everyone: list = [None] * self.world_size
        dist.all_gather_object(everyone, arrays)
        return [None if arrays[i] is None else np.concatenate([r[i] for r in everyone]) for i in range(len(arrays))]

    def gather_objects(self, obj) -> list:
        if not self.enabled:
            return [obj]
        everyone: list = [None] * self.world_size
        dist.all_gather_object(everyone, obj)
        return everyone

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_from_env() -> DistContext:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR...)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size())


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def relaunch_with_torchrun(argv: list[str], nproc: int) -> int:
    """``ctrzoo train ... --nproc N`` on one machine = ``torchrun --standalone --nproc_per_node N -m ctrzoo train``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "ctrzoo", *argv]
    return subprocess.call(cmd)
