"""Fully connected stacks and the activations CTR models use (ReLU, PReLU, DIN's Dice).

Every layer here acts on the last dimension, so the same MLP serves ``[B, C]`` inputs (the main tower)
and ``[B, T, C]`` inputs (DIN's activation unit, one row per history position).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctrzoo.errors import CtrzooError

ACTIVATIONS = ("relu", "prelu", "dice", "sigmoid")


class LastDim(nn.Module):
    """Apply a per-channel module (BatchNorm1d, PReLU) to the last dim of ``[..., C]``.

    Those modules treat dim 1 as channels; flattening the leading dims to ``[N, C]`` first makes
    ``[B, T, C]`` inputs use the right channel axis (and pools statistics over all ``B * T`` rows).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return self.module(x)
        return self.module(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class Dice(nn.Module):
    """Data-adaptive activation from the DIN paper (Zhou et al., 2018).

    ``p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps))`` and ``f(s) = p(s) * s + (1 - p(s)) * alpha * s``:
    a PReLU whose switch point follows the input distribution instead of sitting at 0. ``E``/``Var`` are
    batch statistics while training and running statistics in eval (a ``BatchNorm1d(affine=False)``),
    ``alpha`` is learned per feature (init 0, i.e. starts as a smooth ReLU-like gate).

    Input ``[B, C]`` or ``[B, T, C]`` -> same shape; for 3-d inputs statistics pool over ``B * T``.
    ``momentum`` follows the PyTorch convention (weight of the new batch in the running average).
    """

    def __init__(self, num_features: int, eps: float = 1e-8, momentum: float = 0.1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum, affine=False)
        self.alpha = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        p = torch.sigmoid(self.bn(x.reshape(-1, x.shape[-1]))).reshape(x.shape)
        return p * x + (1.0 - p) * self.alpha * x


def make_activation(name: str, num_features: int) -> nn.Module:
    """Activation module by name (``relu``, ``prelu``, ``dice``, ``sigmoid``), acting on the last dim."""
    if name == "relu":
        return nn.ReLU()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "prelu":
        return LastDim(nn.PReLU(num_features))
    if name == "dice":
        return Dice(num_features)
    raise CtrzooError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")


class MLP(nn.Module):
    """``Linear -> [BatchNorm] -> activation -> [Dropout]`` per hidden size; input ``[..., in_dim]``.

    The output is the last hidden layer ``[..., out_dim]`` (``out_dim = hidden[-1]``, or ``in_dim`` when
    ``hidden`` is empty, i.e. the identity); models add their own final ``Linear`` so towers can be
    concatenated before it (DCN) or summed after it (Wide&Deep).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise CtrzooError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        dim = in_dim
        for size in hidden:
            if int(size) <= 0:
                raise CtrzooError(f"hidden layer sizes must be positive, got {list(hidden)}")
            layers.append(nn.Linear(dim, int(size)))
            if batch_norm:
                layers.append(LastDim(nn.BatchNorm1d(int(size))))
            layers.append(make_activation(activation, int(size)))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            dim = int(size)
        self.layers = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.out_dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
