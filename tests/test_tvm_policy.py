"""The tvm backend's pure decisions (no TVM needed): buckets, the tuning round allocation, the batch plan."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from ctrzoo.errors import CtrzooError
from ctrzoo.runtime.tvm.policy import (
    FOCUS_WEIGHT,
    TrialAllocator,
    bucket_weights,
    chunk_plan,
    chunks,
    normalize_buckets,
)


def test_buckets_are_sorted_unique_positive():
    assert normalize_buckets([128, 1, 16, 16]) == (1, 16, 128)
    with pytest.raises(CtrzooError, match="positive batch sizes"):
        normalize_buckets([0, 8])
    with pytest.raises(CtrzooError, match="positive batch sizes"):
        normalize_buckets([])


def test_focus_weighs_the_bucket_that_serves_it():
    assert bucket_weights((1, 16, 128, 1024), (100,)) == {1: 1.0, 16: 1.0, 128: FOCUS_WEIGHT, 1024: 1.0}
    assert bucket_weights((8, 64), (500,)) == {8: 1.0, 64: FOCUS_WEIGHT}  # past the largest: the largest
    assert bucket_weights((8, 64), ()) == {8: 1.0, 64: 1.0}


def test_chunk_plan_covers_every_batch_at_least_cost():
    plan = chunk_plan({1: 0.01, 16: 0.05, 128: 0.3})
    for n in range(1, 129):
        assert sum(plan[n]) >= n and sum(plan[n][:-1]) < n
    assert plan[100] == [128]  # one padded call beats seven small ones here
    assert plan[1] == [1]
    assert sorted(plan[17]) == [1, 16]


def test_chunks_split_large_batches_and_cover_every_row():
    plan = chunk_plan({8: 0.1, 64: 0.5})
    calls = list(chunks(200, plan))
    assert calls[:3] == [(64, 64)] * 3
    assert sum(rows for _, rows in calls) == 200
    assert all(rows <= b for b, rows in calls)


def _round(*secs, error=None):
    return [SimpleNamespace(run_secs=list(s) if s is not None else None, error_msg=error) for s in secs]


def test_allocator_keeps_the_best_median_and_counts_trials():
    a = TrialAllocator([1.0, 2.0])
    a.record(0, _round([0.5, 0.4, 0.9], [3.0, 3.0, 3.0]))
    assert a.trials == [2, 0] and a.best[0] == 0.5  # median of the better candidate
    a.record(1, _round([0.1], error="build failed"))
    assert a.best[1] == 2.0 and a.trials[1] == 1  # failed candidates count but never win


def test_allocator_prefers_the_task_that_dominates_its_bucket():
    # two buckets; in bucket 1 task 0 costs 90% of the latency, in bucket 2 the tasks are even
    a = TrialAllocator([9.0, 1.0, 5.0, 5.0])
    weights, buckets = [1.0] * 4, [1, 1, 2, 2]
    assert a.pick([0, 1, 2, 3], weights, buckets, {1: 1.0, 2: 1.0}) == 0
    assert a.pick([1, 2, 3], weights, buckets, {1: 1.0, 2: 1.0}) in (2, 3)
    # a focus weight turns the choice towards its bucket
    assert a.pick([1, 2], weights, buckets, {1: 100.0, 2: 1.0}) == 1


def test_allocator_never_picks_a_task_it_cannot_time():
    a = TrialAllocator([math.inf, 1e-6])
    assert a.pick([0, 1], [1.0, 1.0], [1, 1], {1: 1.0}) == 1
