"""The tvm backend's decisions that need no TVM: bucket sets, which tuning task gets the next round, and how
a batch is split into bucket calls. Pure Python, tested without TVM installed."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from ctrzoo.errors import CtrzooError

DEFAULT_BUCKETS = (1, 16, 128, 1024)
FOCUS_WEIGHT = 4.0  # how much more the buckets serving the ``focus`` batch sizes weigh in tuning


def normalize_buckets(buckets) -> tuple[int, ...]:
    out = tuple(sorted({int(b) for b in buckets}))
    if not out or out[0] < 1:
        raise CtrzooError(f"tvm buckets must be positive batch sizes, got {list(buckets)}")
    return out


def bucket_weights(buckets: tuple[int, ...], focus: Sequence[int]) -> dict[int, float]:
    """``FOCUS_WEIGHT`` for each bucket that serves a focus batch size (the smallest bucket >= it, else the
    largest), 1 for the others."""
    served = {min([b for b in buckets if b >= f] or [buckets[-1]]) for f in focus}
    return {b: FOCUS_WEIGHT if b in served else 1.0 for b in buckets}


class TrialAllocator:
    """Per-task measurements as they come in, and the rule that picks the task of the next tuning round.

    MetaSchedule's gradient rule (a task's recent and average improvement), normalised by the latency of the
    task's bucket so bucket 1024 does not starve bucket 1, weighted by the bucket weights, and seeded with
    every kernel's untuned latency so kernels too cheap to matter never cost a round.
    """

    ALPHA, WINDOW = 0.2, 3  # MetaSchedule's gradient-scheduler constants

    def __init__(self, untuned: list[float]):
        n = len(untuned)
        self.trials = [0] * n
        self.untuned = list(untuned)
        self.best = list(untuned)  # a tuned kernel replaces the naive one only when it is faster
        self.history: list[list[float]] = [[u] for u in untuned]

    def record(self, task_id: int, results) -> None:
        """``results``: MetaSchedule runner results (``run_secs``, ``error_msg``) of one round of the task."""
        for r in results:
            self.trials[task_id] += 1
            secs = list(r.run_secs) if r.run_secs is not None else []
            if not r.error_msg and secs:
                vals = sorted(float(s) for s in secs)
                self.best[task_id] = min(self.best[task_id], vals[len(vals) // 2])
        self.history[task_id].append(self.best[task_id])

    def pick(self, alive: list[int], weights: list[float], buckets: list[int], bucket_weight: dict[int, float]) -> int:
        """The task among ``alive`` whose next round promises the largest relative cut of its bucket's latency."""
        bucket_latency: dict[int, float] = {}
        for i, b in enumerate(buckets):
            if math.isfinite(self.best[i]):
                bucket_latency[b] = bucket_latency.get(b, 0.0) + weights[i] * self.best[i]
        scores = []
        for i in alive:
            hist = self.history[i]
            if not math.isfinite(hist[-1]):
                scores.append(-math.inf)
                continue
            n, best = len(hist), hist[-1]
            g1 = (hist[n - 1 - self.WINDOW] - best) / self.WINDOW if n >= 1 + self.WINDOW else 0.0
            g2 = best / n
            g = self.ALPHA * g1 + (1 - self.ALPHA) * g2
            scores.append(g * weights[i] * bucket_weight.get(buckets[i], 1.0)
                          / max(bucket_latency.get(buckets[i], 1.0), 1e-12))
        return alive[max(range(len(alive)), key=lambda k: scores[k])]


def chunk_plan(bucket_ms: dict[int, float]) -> list[list[int]]:
    """For every batch size up to the largest bucket, the bucket calls of least total measured latency."""
    top = max(bucket_ms)
    cost = [0.0] + [float("inf")] * top
    choice = [0] * (top + 1)
    for n in range(1, top + 1):
        for b, ms in bucket_ms.items():
            c = ms + cost[max(0, n - b)]
            if c < cost[n]:
                cost[n], choice[n] = c, b
    plan: list[list[int]] = [[] for _ in range(top + 1)]
    for n in range(1, top + 1):
        b = choice[n]
        plan[n] = [b, *plan[max(0, n - b)]]
    return plan


def chunks(n: int, plan: list[list[int]]) -> Iterator[tuple[int, int]]:
    """``(bucket, rows)`` calls covering a batch of ``n`` rows: full largest buckets, then ``plan``'s best set."""
    top = len(plan) - 1
    while n > top:
        yield top, top
        n -= top
    for b in plan[n]:
        rows = min(b, n)
        yield b, rows
        n -= rows
