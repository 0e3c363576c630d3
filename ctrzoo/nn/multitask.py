"""Multi-task layers: experts mixed per task by softmax gates (MMoE, PLE's CGC) and one tower per task.

Shapes: ``B`` rows, ``T`` tasks, ``E`` experts, ``D`` input width, ``H`` an expert's output width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctrzoo.errors import CtrzooError
from ctrzoo.nn.mlp import MLP


def _experts(n: int, in_dim: int, hidden: Sequence[int], dropout: float, activation: str,
             batch_norm: bool) -> nn.ModuleList:
    if n < 1:
        raise CtrzooError(f"a mixture needs at least one expert, got {n}")
    if not hidden:
        raise CtrzooError("experts need at least one hidden layer (expert_mlp)")
    return nn.ModuleList(MLP(in_dim, hidden, dropout, activation, batch_norm) for _ in range(n))


class MixtureOfExperts(nn.Module):
    """MMoE (Ma et al., KDD 2018): ``E`` expert MLPs see the same input; task ``t`` mixes them with its own
    gate, ``out_t = sum_e softmax(W_t x)_e * expert_e(x)``.

    ``x [B, D] -> [B, T, H]``; ``gate_weights(x) [B, T, E]`` (each row sums to 1).
    """

    def __init__(self, in_dim: int, num_tasks: int, num_experts: int, expert_mlp: Sequence[int],
                 dropout: float = 0.0, activation: str = "relu", batch_norm: bool = False) -> None:
        super().__init__()
        self.num_tasks, self.num_experts = num_tasks, num_experts
        self.experts = _experts(num_experts, in_dim, expert_mlp, dropout, activation, batch_norm)
        self.gates = nn.Linear(in_dim, num_tasks * num_experts)  # all tasks' gates in one matmul
        self.out_dim = self.experts[0].out_dim

    def gate_weights(self, x: Tensor) -> Tensor:
        return torch.softmax(self.gates(x).view(-1, self.num_tasks, self.num_experts), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # [B, E, H]
        return torch.bmm(self.gate_weights(x), experts)  # [B, T, H]


class CustomizedGateControl(nn.Module):
    """One level of PLE (Tang et al., RecSys 2020): each task owns ``task_experts`` experts and all tasks
    share ``shared_experts``; task ``t``'s gate mixes its own and the shared experts (over its own input),
    and, below the last level, a shared gate mixes every expert for the next level's shared input.

    ``inputs [B, T + 1, D]`` (the tasks' inputs, then the shared one; the first level repeats ``x``) ->
    ``[B, T + 1, H]`` with the shared gate, ``[B, T, H]`` without it.
    """

    def __init__(self, in_dim: int, num_tasks: int, shared_experts: int, task_experts: int,
                 expert_mlp: Sequence[int], dropout: float = 0.0, activation: str = "relu",
                 batch_norm: bool = False, shared_gate: bool = True) -> None:
        super().__init__()
        self.num_tasks, self.n_shared, self.n_task = num_tasks, shared_experts, task_experts
        args = (in_dim, expert_mlp, dropout, activation, batch_norm)
        self.task_experts = nn.ModuleList(_experts(task_experts, *args) for _ in range(num_tasks))
        self.shared_experts = _experts(shared_experts, *args)
        self.task_gates = nn.ModuleList(nn.Linear(in_dim, task_experts + shared_experts) for _ in range(num_tasks))
        self.shared_gate = nn.Linear(in_dim, num_tasks * task_experts + shared_experts) if shared_gate else None
        self.out_dim = self.shared_experts[0].out_dim

    def task_gate_weights(self, inputs: Tensor) -> Tensor:
        """``[B, T, task_experts + shared_experts]``: task t's mixture weights (its own experts first)."""
        return torch.stack([torch.softmax(g(inputs[:, t]), dim=-1) for t, g in enumerate(self.task_gates)], dim=1)

    def forward(self, inputs: Tensor) -> Tensor:
        shared_in = inputs[:, self.num_tasks]
        shared = [e(shared_in) for e in self.shared_experts]
        own = [[e(inputs[:, t]) for e in experts] for t, experts in enumerate(self.task_experts)]
        weights = self.task_gate_weights(inputs)
        outs = [torch.bmm(weights[:, t : t + 1], torch.stack(own[t] + shared, dim=1)) for t in range(self.num_tasks)]
        if self.shared_gate is not None:
            every = torch.stack([e for task in own for e in task] + shared, dim=1)  # [B, T*task + shared, H]
            outs.append(torch.bmm(torch.softmax(self.shared_gate(shared_in), dim=-1).unsqueeze(1), every))
        return torch.cat(outs, dim=1)


class TaskTowers(nn.Module):
    """One MLP and one logit per task: ``[B, T, H] -> [B, T]`` (task ``t``'s tower reads slot ``t``)."""

    def __init__(self, in_dim: int, num_tasks: int, tower_mlp: Sequence[int], dropout: float = 0.0,
                 activation: str = "relu", batch_norm: bool = False) -> None:
        super().__init__()
        self.towers = nn.ModuleList(MLP(in_dim, tower_mlp, dropout, activation, batch_norm) for _ in range(num_tasks))
        self.heads = nn.ModuleList(nn.Linear(t.out_dim, 1) for t in self.towers)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([h(t(x[:, i])) for i, (t, h) in enumerate(zip(self.towers, self.heads))], dim=1)


def product_logit(a: Tensor, b: Tensor) -> Tensor:
    """``logit(sigmoid(a) * sigmoid(b))`` without cancellation (ESMM's pCTCVR = pCTR x pCVR as a logit):
    ``log(p q) - log(1 - p q)`` with ``1 - p q = sigmoid(-a) + sigmoid(a) sigmoid(-b)``, a sum of positive
    terms. Any shape; ONNX-exportable (no expm1)."""
    log_pq = nn.functional.logsigmoid(a) + nn.functional.logsigmoid(b)
    one_minus = torch.sigmoid(-a) + torch.sigmoid(a) * torch.sigmoid(-b)
    return log_pq - torch.log(one_minus.clamp_min(1e-30))


def check_tasks(tasks: Sequence[str], model: str, exactly: int | None = None) -> tuple[str, ...]:
    """The task (label) names as a tuple: at least two, distinct, ``exactly`` many when the model says so."""
    tasks = tuple(str(t) for t in tasks)
    if len(set(tasks)) != len(tasks):
        raise CtrzooError(f"{model}: task names must be distinct, got {list(tasks)}")
    if exactly is not None and len(tasks) != exactly:
        raise CtrzooError(f"{model} learns exactly {exactly} tasks (labels), got {list(tasks)}")
    if len(tasks) < 2:
        raise CtrzooError(f"{model} is a multi-task model and needs at least two labels, got {list(tasks)}: "
                          "train a single-task model, or prepare data with several labels")
    return tasks
