"""Where training and scoring run (``--device auto|cpu|cuda|cuda:N``) and in which precision.

One module decides, so the trainers, evaluation and comparison name a device the same way and fail the same
way: ``--device cuda`` on a machine without CUDA, or ``cuda:3`` on a machine with two GPUs, is one
``CtrzooError`` line before anything is read. The precision policy (``Precision``):

* CUDA training: bf16 autocast where the GPU has it (``torch.cuda.is_bf16_supported()``), else fp16
  autocast with a ``GradScaler`` (fp16's range needs loss scaling; bf16's does not);
* CPU training: bf16 autocast only where the CPU multiplies bf16 natively (``TrainConfig.bf16``), else fp32;
* scoring (validation, test, evaluate, compare, serving): fp32 everywhere, as every later consumer is.

Weights, losses and optimizer states stay fp32 in every case. Bundles hold CPU tensors, so one trained on a
GPU loads, exports and serves on a CPU-only machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ctrzoo.errors import CtrzooError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` -> a concrete device.

    Under torchrun (``local_rank`` given, default ``$LOCAL_RANK``) ``auto``/``cuda`` mean this process's own GPU,
    ``cuda:<local rank>``: one device per process, as DistributedDataParallel's ``device_ids`` expects. A fixed
    ``cuda:N`` with several local processes would put them all on one GPU, so it is refused then.
    """
    text = str(name if name is not None else "auto").strip().lower()
    if local_rank is None and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if text == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        text = "cuda"
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise CtrzooError(f"--device {name!r}: expected {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise CtrzooError(f"--device {name}: no CUDA device is available here (torch {torch.__version__}, "
                          f"CUDA build {torch.version.cuda or 'none'}); use --device cpu or auto")
    count = torch.cuda.device_count()
    if index and local_rank is not None:
        raise CtrzooError(f"--device {name}: names one GPU, but this is one of several training processes; "
                          "use --device cuda (each process takes the GPU of its local rank)")
    n = int(index) if index else (local_rank or 0)
    if n >= count:
        what = f"local rank {n}" if not index else f"cuda:{n}"
        raise CtrzooError(f"--device {name}: {what} is out of range: this machine has {count} CUDA device(s) "
                          f"(cuda:0..cuda:{count - 1})")
    return torch.device("cuda", n)


def device_name(name: str | torch.device | None = "auto") -> str:
    """The resolved device as text (``cpu``, ``cuda:0``): what a config or a bundle's record holds."""
    return str(resolve_device(name))


def bf16_default(device: torch.device) -> bool:
    """Whether bf16 autocast pays by default on ``device``: CUDA with bf16 support, or a CPU with native bf16
    dot products (AVX512-BF16 or AMX; elsewhere bf16 is emulated and slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(check() for check in checks if check is not None)


@dataclass(frozen=True)
class Precision:
    """How a training step runs: autocast ``dtype`` (None: fp32) on ``device``, with a loss scaler or not."""

    device: torch.device
    dtype: torch.dtype | None
    scaled: bool = False

    @classmethod
    def training(cls, device: torch.device, bf16: bool) -> Precision:
        """The policy of the module docstring: on CUDA ``bf16`` picks bf16 (True) or fp16 + GradScaler (False);
        on a CPU ``bf16`` picks bf16 autocast or fp32."""
        if device.type == "cuda":
            return cls(device, torch.bfloat16) if bf16 else cls(device, torch.float16, scaled=True)
        return cls(device, torch.bfloat16 if bf16 else None)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> AbstractContextManager:
        """The forward pass's autocast context (disabled for fp32)."""
        return torch.autocast(self.device.type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None)

    def scaler(self) -> torch.amp.GradScaler:
        """fp16's loss scaler; a disabled one (``scale`` returns its input, ``step`` just steps) otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.scaled)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters (CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """``obj`` on ``device``: a tensor, anything with ``.to(device, non_blocking=...)`` (``Batch``), or a tuple or
    list of those; other values as they are. On the device already: the same objects, nothing copied."""
    if isinstance(obj, torch.Tensor) or hasattr(obj, "to"):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(o, device, non_blocking) for o in obj)
    return obj


def copied_ahead(items: Iterable[Any], device: torch.device) -> Iterator[Any]:
    """``items`` on ``device``, the next one's copy started before the current one is handed out.

    On CUDA the copies are ``non_blocking`` (asynchronous from pinned memory), so batch i+1 travels while step
    i computes; on a CPU the moves are no-ops and the items pass through unchanged.
    """
    non_blocking = device.type == "cuda"
    it = iter(items)
    try:
        current = to_device(next(it), device, non_blocking)
    except StopIteration:
        return
    for item in it:
        upcoming = to_device(item, device, non_blocking)
        yield current
        current = upcoming
    yield current
