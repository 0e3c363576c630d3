"""MetaSchedule plug-ins for tuning on a small CPU host: an in-process builder and runner, a budgeted task
scheduler and a measurement callback, sharing one ``SearchState``. Imported only when tuning (needs TVM)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
from tvm.s_tir.meta_schedule.runner import PyRunner
from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

from ctrzoo.runtime.tvm.policy import TrialAllocator

REJECT_FACTOR = 2.0  # a candidate slower than this times the task's best gets one timed run, not three


@dataclass
class SearchState:
    """What the plug-ins share during one tuning run."""

    allocator: TrialAllocator
    weights: list[float]  # per task: how often its kernel runs in its bucket's function
    buckets: list[int]  # per task: its bucket
    bucket_weight: dict[int, float]
    deadline: float  # time.monotonic() by which tuning ends
    evaluator: Any  # ms.runner.EvaluatorConfig of a full timing
    probe: Any  # ms.runner.EvaluatorConfig of the one-run first look
    built: dict[str, Any] = field(default_factory=dict)  # builder -> runner, in memory
    task: int | None = None  # the task whose round is being measured


@derived_object
class RecordResults(PyMeasureCallback):
    def __init__(self, state: SearchState):
        self.state = state

    def apply(self, _sched, task_id, _cands, _builds, results):
        self.state.allocator.record(task_id, results)


@derived_object
class InProcessBuilder(PyBuilder):
    """Compiles candidates in this process and keeps them in memory. MetaSchedule's LocalBuilder starts fresh
    workers for every batch, each paying the whole TVM import (tens of seconds on a loaded 2-core machine) to
    compile for ~0.1 s, and its runner then links every candidate with the C compiler (~0.5 s each): together
    they spent most of a round."""

    def __init__(self, state: SearchState):
        self.state = state

    def build(self, inputs):
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        out = []
        for item in inputs:
            try:
                mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(item.mod)
                key = f"memory:{len(self.state.built)}:{id(mod)}"
                self.state.built[key] = tvm.tirx.build(mod, target=item.target)
                out.append(BuilderResult(key, None))
            except Exception as exc:
                out.append(BuilderResult(None, f"{exc.__class__.__name__}: {str(exc)[:2000]}"))
        return out


@derived_object
class InProcessRunner(PyRunner):
    """Times the in-memory candidates here with ``time_evaluator`` on random inputs: one run first, and only
    candidates within ``REJECT_FACTOR`` of the task's best get the full median of 3 repeats of >= 10 ms (early
    random candidates of a 1024-row kernel take up to 0.5 s a run). The embedding lookups, whose random ids
    would read out of bounds, are never sent."""

    def __init__(self, state: SearchState):
        self.state = state

    def run(self, inputs):
        from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture
        from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common, run_evaluator_common

        s = self.state
        dev = tvm.cpu()
        fill = tvm.get_global_func("tvm.contrib.random.random_fill_for_measure", allow_missing=True)
        futures = []
        for item in inputs:
            try:
                mod = s.built.pop(str(item.artifact_path))
                args = alloc_argument_common(fill, dev, [a.as_json() for a in item.args_info], 1)
                costs = run_evaluator_common(mod, dev, s.probe, args)
                best = s.allocator.best[s.task] if s.task is not None else math.inf
                if costs[0] < REJECT_FACTOR * best:  # a contender: time it properly
                    costs = run_evaluator_common(mod, dev, s.evaluator, args)
                futures.append(LocalRunnerFuture(res=costs, error_message=None))
            except Exception as exc:
                futures.append(LocalRunnerFuture(res=None, error_message=f"{exc.__class__.__name__}: {exc}"))
        return futures


@derived_object
class BudgetScheduler(PyTaskScheduler):
    """``TrialAllocator``'s rule picks the next task; stops when the chosen task's next round (timed from its
    previous one) would end past the deadline."""

    def __init__(self, state: SearchState):
        super().__init__()
        self.state = state
        self.current: int | None = None
        self.since = 0.0
        self.round_seconds: dict[int, float] = {}
        self.stopped_by = "trial budget"

    def next_task_id(self) -> int:
        s = self.state
        sched = self._outer()
        n = len(sched.tasks_)
        for i in range(n):  # the runner measures synchronously: every round sent is complete
            sched.touch_task(i)
        now = time.monotonic()
        if self.current is not None:
            self.round_seconds[self.current] = now - self.since
        alive = [i for i in range(n) if not sched.tasks_[i].is_terminated]
        if not alive:
            self.stopped_by = "search space exhausted"
            return -1
        i = s.allocator.pick(alive, s.weights, s.buckets, s.bucket_weight)
        known = sorted(self.round_seconds.values())
        expected = self.round_seconds.get(i, known[len(known) // 2] if known else 3.0)
        if now + expected > s.deadline:
            self.stopped_by = "time budget"
            return -1
        self.current, self.since = i, now
        s.task = i
        return i
