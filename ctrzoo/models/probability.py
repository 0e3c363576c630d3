"""The served form of any CTR model: click probabilities instead of logits."""

from __future__ import annotations

import torch
from torch import nn


class ProbabilityModel(nn.Module):
    """What every runtime serves and ONNX exports: ``sigmoid(model(sparse, dense, seq))``, shape ``[B]``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(sparse, dense, seq))
