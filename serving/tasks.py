"""How a multi-task model's ``[B, T]`` probabilities become the one score ``/rank`` orders by.

Two settings (``serving.settings``): ``rank_by``, a task name (default: the model's first task), or
``task_weights``, task -> weight, for ``score = sum_t w_t * p_t`` (a task left out weighs 0; the response's
``ranked_by`` is then ``"weighted"``). They are checked against the bundle's tasks whenever a bundle is
loaded (startup, reload): an unknown task, a negative or non-finite weight, weights that are all zero, both
settings at once, or either one for a single-task bundle is a ``SettingsError`` naming the setting, and the
bundle is refused (on reload the old model keeps serving).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from serving.settings import SettingsError

WEIGHTED = "weighted"  # ``ranked_by`` of a weighted sum


@dataclass(frozen=True, eq=False)
class TaskRanking:
    """A multi-task bundle's tasks and how they combine into the ranking score."""

    tasks: tuple[str, ...]
    ranked_by: str  # a task name, or WEIGHTED
    weights: np.ndarray  # [T] float64: one-hot for a task, the settings' weights for WEIGHTED

    def score(self, probs: np.ndarray) -> np.ndarray:
        """``probs [B, T]`` -> the ranking score ``[B]`` (float64): task ``ranked_by``'s column, exactly, or the
        weighted sum."""
        if self.ranked_by == WEIGHTED:
            return probs.astype(np.float64) @ self.weights
        return probs[:, self.tasks.index(self.ranked_by)].astype(np.float64)

    def task_scores(self, probs: np.ndarray) -> dict[str, np.ndarray]:
        """``probs [B, T]`` -> task -> ``[B]`` probabilities (contiguous float64: orjson writes them as lists)."""
        columns = np.ascontiguousarray(probs.T, dtype=np.float64)
        return dict(zip(self.tasks, columns))


def task_ranking(tasks: tuple[str, ...], rank_by: str | None, task_weights: Mapping[str, float] | None,
                 what: str = "the bundle") -> TaskRanking | None:
    """The ranking for a bundle with ``tasks`` under these settings; None for a single-task bundle.

    Raises ``SettingsError`` (naming ``rank_by`` or ``task_weights`` and its ``CTRZOO_*`` variable) for a
    setting that does not fit ``tasks``; ``what`` names the bundle in the message."""
    if not tasks:
        for name, value in (("rank_by", rank_by), ("task_weights", task_weights)):
            if value is not None:
                raise SettingsError(f"{_setting(name)} is set ({value!r}) but {what} is a single-task model: "
                                    "unset it (it applies to multi-task models only)", name)
        return None
    known = ", ".join(tasks)
    if rank_by is not None and task_weights is not None:
        raise SettingsError(f"{_setting('rank_by')} and {_setting('task_weights')} are both set: give one (a task "
                            "to rank by, or weights for a weighted sum)", "task_weights")
    if task_weights is None:
        task = tasks[0] if rank_by is None else rank_by
        if task not in tasks:
            raise SettingsError(f"{_setting('rank_by')}: unknown task {task!r}; {what} learns {known}", "rank_by")
        return TaskRanking(tasks, task, (np.asarray(tasks) == task).astype(np.float64))
    weights = np.zeros(len(tasks), dtype=np.float64)
    for task, weight in task_weights.items():
        if task not in tasks:
            raise SettingsError(f"{_setting('task_weights')}: unknown task {task!r}; {what} learns {known}",
                                "task_weights")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) \
                or weight < 0:
            raise SettingsError(f"{_setting('task_weights')}: the weight of {task!r} must be a finite number >= 0, "
                                f"got {weight!r}", "task_weights")
        weights[tasks.index(task)] = float(weight)
    if not weights.any():
        raise SettingsError(f"{_setting('task_weights')}: every weight is 0 ({dict(task_weights)!r}), so every "
                            "candidate would score 0: give at least one task a positive weight", "task_weights")
    return TaskRanking(tasks, WEIGHTED, weights)


def _setting(name: str) -> str:
    return f"{name} (CTRZOO_{name.upper()})"
