"""Several training processes (torchrun): one small context object instead of rank checks everywhere.

Data parallel: every rank holds the whole model (``FeatureEmbedding`` included) and reads a disjoint part of
the training row groups; rank 0 alone writes checkpoints and the bundle. The process group has gloo for CPU
tensors and, where CUDA is present, nccl for GPU tensors (``cpu:gloo,cuda:nccl``), each process on the GPU of
its local rank.

Gradients are exchanged in two parts, so that a step's communication grows with the rows it touches, not with
the table (``data_parallel``):

* the dense layers: DistributedDataParallel's bucketed all-reduce, as usual;
* the embedding tables with sparse gradients: left out of DDP (``_set_params_and_buffers_to_ignore_for_model``),
  and averaged by ``DistContext.average_row_grads`` after the backward pass: every rank's touched row ids are
  all-gathered, their union (sorted, identical everywhere) gets one ``[U, dim]`` buffer per table with this
  rank's rows filled in, and one all-reduce sums the buffers. Every rank then holds the same row-sparse
  gradient and steps the same ``RowSparseAdam`` on it, so the tables stay identical without ever being sent.

Why this option (``benchmarks/scale.py --comm`` measures them): a dense all-reduce of the table's gradient
costs the whole table every step, plus a dense Adam over it; gloo's own sparse all-reduce
(``dist.all_reduce`` of a COO tensor) exchanges about the same bytes but exists on gloo only (nccl has no
sparse collectives); all-gathering (ids, gradients) sends ``world x max rows`` gradient rows to every rank and
sums them per row with an ``index_add_`` whose float order differs on a GPU. The union all-reduce works on gloo
and nccl alike, sends each touched row once per rank, and gives bit-identical results on every rank.

Tables that outgrow one process would instead be sharded row-wise (TorchRec's sharded embedding collections:
each rank owns a slice of rows, ids are exchanged all-to-all before the lookup and embeddings after it);
``FeatureEmbedding`` is the one module that would change, since every model reaches its table only through it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ctrzoo.nn import split_sparse_params
from ctrzoo.nn.optim import row_sums


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

    def average_row_grads(self, params: Sequence[nn.Parameter]) -> None:
        """Replace each sparse table gradient by its mean over the ranks, as a row-sparse gradient over the
        union of the rows any rank touched (sorted, coalesced; identical on every rank). Three collectives per
        step whatever the number of tables: the row counts, the row ids, the summed rows. A no-op in one
        process. Every rank must call it with the same tables (a table without a gradient counts as no rows).
        """
        if not self.enabled or not params:
            return
        local = [_local_rows(p) for p in params]  # (rows [U_r], values [U_r, ...]) per table
        device = params[0].device
        counts = torch.tensor([len(rows) for rows, _ in local], dtype=torch.int64, device=device)
        all_counts = torch.stack(self._all_gather(counts))  # [world, tables]
        widths = all_counts.max(dim=0).values.tolist()
        padded = torch.cat([torch.nn.functional.pad(rows, (0, w - len(rows)), value=-1)
                            for (rows, _), w in zip(local, widths)])
        all_ids = torch.stack(self._all_gather(padded))  # [world, sum(widths)]
        unions, buffers, start = [], [], 0
        for (rows, values), w in zip(local, widths):
            ids = all_ids[:, start:start + w].reshape(-1)
            start += w
            union = torch.unique(ids[ids >= 0], sorted=True)
            buf = values.new_zeros((len(union), *values.shape[1:]))
            buf.index_copy_(0, torch.searchsorted(union, rows), values)  # distinct rows: no accumulation
            unions.append(union)
            buffers.append(buf)
        _all_reduce_flat(buffers)
        for p, union, buf in zip(params, unions, buffers):
            p.grad = torch.sparse_coo_tensor(union.unsqueeze(0), buf.div_(self.world_size), p.shape,
                                             is_coalesced=True, check_invariants=False)  # sorted, distinct

    def _all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return out


def _local_rows(p: nn.Parameter) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's (sorted distinct rows ``[U]``, summed gradient rows ``[U, ...]``) of ``p`` (none: empty)."""
    if p.grad is None:
        return (torch.zeros(0, dtype=torch.int64, device=p.device),
                torch.zeros((0, *p.shape[1:]), dtype=p.dtype, device=p.device))
    if not p.grad.is_sparse:
        raise RuntimeError("average_row_grads needs sparse gradients (nn.Embedding(..., sparse=True))")
    return row_sums(p.grad)


def _all_reduce_flat(tensors: list[torch.Tensor]) -> None:
    """Sum every tensor over the ranks, in place, with one all-reduce per dtype (one in practice)."""
    for dtype in {t.dtype for t in tensors}:
        group = [t for t in tensors if t.dtype == dtype]
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` (on ``device``) wrapped for data-parallel training: DistributedDataParallel over the dense
    parameters (one GPU per process: ``device_ids``), the sparse-gradient tables left to ``average_row_grads``.

    DDP broadcasts rank 0's initial weights of the parameters it manages; the tables it ignores are broadcast
    here, once, so that every rank starts from rank 0's tables too.
    """
    from torch.nn.parallel import DistributedDataParallel

    tables = {id(p) for p in split_sparse_params(model)[0]}
    ignored = [name for name, p in model.named_parameters() if id(p) in tables]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in ignored:
                dist.broadcast(p.data, src=0)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def init_from_env() -> DistContext:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR...): gloo
    for CPU tensors, plus nccl for GPU tensors where CUDA is present, with this process on the GPU of its
    local rank (``LOCAL_RANK``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda and local_rank < torch.cuda.device_count():  # more ranks than GPUs: resolve_device says so
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size())


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def relaunch_with_torchrun(argv: list[str], nproc: int) -> int:
    """``ctrzoo train ... --nproc N`` on one machine = ``torchrun --standalone --nproc_per_node N -m ctrzoo train``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "ctrzoo", *argv]
    return subprocess.call(cmd)
