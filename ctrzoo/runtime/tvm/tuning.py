"""``ctrzoo tune``: MetaSchedule tuning of every bucket's kernels within a trial and time budget, the
database saved into the bundle and the library rebuilt from it."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from ctrzoo.bundle import Bundle, load_bundle
from ctrzoo.runtime.tvm.artifacts import (
    DB_RECORDS,
    DB_WORKLOAD,
    artifact_dir,
    build_library,
    manifest_buckets,
    open_database,
    sha256_file,
)
from ctrzoo.runtime.tvm.compiler import import_onnx, prepare
from ctrzoo.runtime.tvm.dense import dense_space, is_dense
from ctrzoo.runtime.tvm.env import (
    check_tvm_ffi,
    host_intrinsics_only,
    host_target,
    metaschedule_logging,
    require_tvm,
    size_thread_pool,
)
from ctrzoo.runtime.tvm.policy import DEFAULT_BUCKETS, TrialAllocator, bucket_weights, normalize_buckets

log = logging.getLogger("ctrzoo.runtime.tvm")

DEFAULT_TRIALS = 2000
DEFAULT_MINUTES = 10.0
PER_ROUND = 32  # trials per tuning round of one task (the search costs seconds per round, whatever its size)


def tune_tvm(bundle_path: str | Path | Bundle, trials: int = DEFAULT_TRIALS, max_minutes: float = DEFAULT_MINUTES,
             buckets: tuple[int, ...] | None = None, focus: tuple[int, ...] = (), seed: int = 0,
             micro_kernels: bool = True) -> dict:
    """Tune every bucket's kernels with MetaSchedule within ``trials`` and ``max_minutes`` (both in total),
    save the database into the bundle, and rebuild ``model.so`` from it. Returns a summary.

    Trial allocation (``policy.TrialAllocator``): every kernel (task) of every bucket is first timed untuned
    (~0.1 s each); then each round of 32 trials goes to the task whose tuning promises the largest cut of its
    bucket's latency *relative to that bucket's latency*. Dense layers (matmul + bias + ReLU) are searched in
    ``dense``'s register-blocked micro-kernel space unless ``micro_kernels`` is False (then MetaSchedule's
    generic rules, for comparison). ``focus`` names the batch sizes that matter most (e.g. the service's usual
    candidate count): the buckets serving them weigh ``FOCUS_WEIGHT`` times more. The embedding lookups stay
    untuned (random ids read out of bounds in measurement). Tuning stops when the chosen task's next round
    would end past the time budget; the database keeps all measured so far (also on an interrupt), and
    tuning again continues from it.
    """
    from ctrzoo.runtime.base import require_single_task
    from ctrzoo.runtime.onnxruntime_backend import checked_onnx_path

    start = time.monotonic()
    deadline = start + max_minutes * 60.0
    bundle = bundle_path if isinstance(bundle_path, Bundle) else load_bundle(bundle_path)
    require_single_task(bundle, "tvm")  # refused before the budget is spent
    tvm = require_tvm()
    check_tvm_ffi()
    buckets = normalize_buckets(buckets or manifest_buckets(bundle) or DEFAULT_BUCKETS)
    onnx_path = checked_onnx_path(bundle)
    onnx_sha = sha256_file(onnx_path)
    target = host_target()
    art = artifact_dir(bundle)
    art.mkdir(exist_ok=True)
    open_database(art)  # refuse a damaged database before spending the budget
    layout = bundle.codec.layout
    with tempfile.TemporaryDirectory(prefix="ctrzoo-tune-") as work:
        work_dir = Path(work)
        for name in (DB_WORKLOAD, DB_RECORDS):
            if (art / name).exists():
                shutil.copy(art / name, work_dir / name)
        tasks = []
        for b in buckets:
            mod, _, _ = import_onnx(onnx_path, layout, (b,))
            tasks.append((b, prepare(mod, target)))
        try:
            result = _tune(tasks, target, work_dir, trials, deadline, seed, bucket_weights(buckets, focus),
                           micro_kernels)
        finally:
            if (work_dir / DB_RECORDS).exists():  # the whole database replaces the bundle's, one rename each
                for name in (DB_WORKLOAD, DB_RECORDS):
                    tmp = art / f".{name}.tmp-{os.getpid()}"
                    shutil.copy(work_dir / name, tmp)
                    os.replace(tmp, art / name)
            if os.environ.get("CTRZOO_TVM_KEEP_TUNING_LOGS") and (work_dir / "logs").exists():
                shutil.copytree(work_dir / "logs", art / "tuning_logs", dirs_exist_ok=True)
    tuning_seconds = time.monotonic() - start
    summary = {
        "trials": result["trials"], "trials_budget": trials, "max_minutes": max_minutes,
        "tuning_seconds": round(tuning_seconds, 1), "buckets": list(buckets), "target": target,
        "tvm_version": tvm.__version__, "tasks": result["tasks"], "skipped_tasks": result["skipped"],
        "stopped_by": result["stopped_by"], "focus": list(focus), "bucket_weights": result["bucket_weights"],
        "micro_kernels": micro_kernels,
    }
    build_library(bundle, buckets, target, onnx_path, onnx_sha, tuning=summary)
    summary["build_seconds"] = round(time.monotonic() - start - tuning_seconds, 1)
    log.info("tvm: tuning trials performed: %d (%.0fs, stopped by %s); database %s", result["trials"],
             tuning_seconds, result["stopped_by"], art / DB_RECORDS)
    return summary


def _is_lookup(task) -> bool:
    """Embedding lookups (gathers by id): random ids in measurement are out of range, so they stay untuned."""
    return "take" in str(task.task_name)


def _schedule_rules():
    """LLVM's default rules with explicit unrolling capped at 64 steps instead of 512: fully unrolled long
    reductions are slow to compile (LLVM), and a fixed time budget buys more trials without them. A speed
    choice, not an A/B-tested quality one."""
    from tvm.s_tir import meta_schedule as ms

    rules = []
    for rule in ms.ScheduleRule.create("llvm"):
        if isinstance(rule, ms.schedule_rule.ParallelizeVectorizeUnroll):
            rule = ms.schedule_rule.ParallelizeVectorizeUnroll(
                max_jobs_per_core=16, max_vectorize_extent=64, unroll_max_steps=[0, 16, 64], unroll_explicit=True)
        rules.append(rule)
    return rules


def _tune(bucket_mods: list, target: dict, work_dir: Path, trials: int, deadline: float, seed: int,
          bucket_weight: dict[int, float], micro_kernels: bool = True) -> dict:
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from ctrzoo.runtime.tvm import search

    host_intrinsics_only()
    tvm_target = tvm.target.Target(target)
    cores = int(target.get("num-cores", 1))
    size_thread_pool(cores)  # candidates are timed on as many threads as the library will run with
    entries, skipped = [], []
    for bucket, prepared in bucket_mods:
        serving = tvm.IRModule({gv: f for gv, f in prepared.functions_items()  # not the run-once weight transforms
                                if not gv.name_hint.endswith("_transform_params")})
        for task in ms.relax_integration.extract_tasks(serving, tvm_target):
            (skipped if _is_lookup(task) else entries).append((bucket, task))
    skipped = sorted({f"b{b}/{t.task_name}" for b, t in skipped})
    if not entries:
        return {"trials": 0, "tasks": [], "skipped": skipped, "stopped_by": "no tunable tasks",
                "bucket_weights": bucket_weight}

    with metaschedule_logging(work_dir) as ms_log:
        rules = _schedule_rules()
        contexts, weights, spaces = [], [], []
        rand = seed
        for bucket, task in entries:
            rand += 1
            mod = task.dispatched[0]
            spaces.append("dense" if micro_kernels and is_dense(mod) else "generic")  # dense layers: micro-kernels
            space = (ms.space_generator.ScheduleFn(dense_space) if spaces[-1] == "dense"
                     else ms.space_generator.PostOrderApply(sch_rules=rules))
            contexts.append(ms.TuneContext(
                mod=mod, target=tvm_target, task_name=f"b{bucket}/{task.task_name}", space_generator=space,
                search_strategy=ms.search_strategy.EvolutionarySearch(population_size=192, init_min_unmeasured=24,
                                                                      genetic_num_iters=2),
                logger=ms_log, rand_state=rand, num_threads=cores,
            ).clone())
            weights.append(float(task.weight))

        evaluator = ms.runner.EvaluatorConfig(number=1, repeat=3, min_repeat_ms=10, enable_cpu_cache_flush=False)
        probe = ms.runner.EvaluatorConfig(number=1, repeat=1, min_repeat_ms=0, enable_cpu_cache_flush=False)
        allocator = TrialAllocator([_untuned_seconds(task, tvm_target, evaluator) for _, task in entries])
        state = search.SearchState(allocator, weights, [b for b, _ in entries], bucket_weight, deadline,
                                   evaluator, probe)
        scheduler = search.BudgetScheduler(state)
        database = ms.database.JSONDatabase(str(work_dir / DB_WORKLOAD), str(work_dir / DB_RECORDS),
                                            allow_missing=True)
        callbacks = [ms.measure_callback.AddToDatabase(), ms.measure_callback.UpdateCostModel(),
                     search.RecordResults(state)]
        if time.monotonic() < deadline:
            ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(work_dir), max_trials_global=trials,
                          max_trials_per_task=trials, num_trials_per_iter=PER_ROUND,
                          builder=search.InProcessBuilder(state), runner=search.InProcessRunner(state),
                          database=database,
                          cost_model=ms.CostModel.create("xgb", num_tuning_cores=cores, tree_method="auto"),
                          measure_callbacks=callbacks, task_scheduler=scheduler)
            stopped_by = scheduler.stopped_by
        else:
            stopped_by = "time budget"
    tasks = [{"task": f"b{b}/{t.task_name}", "space": spaces[i], "weight": weights[i], "trials": allocator.trials[i],
              "best_us": round(allocator.best[i] * 1e6, 2) if math.isfinite(allocator.best[i]) else None}
             for i, (b, t) in enumerate(entries)]
    return {"trials": sum(allocator.trials), "tasks": tasks, "skipped": skipped, "stopped_by": stopped_by,
            "bucket_weights": bucket_weight}


def _untuned_seconds(task, target, evaluator) -> float:
    """The kernel as compiled without a schedule (what the library gets if it stays untuned), timed like a
    tuning candidate; inf when it cannot be timed."""
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common, run_evaluator_common

    try:
        mod = task.dispatched[0]
        lib = tvm.tirx.build(mod, target=target)  # a runtime module, timed in place (no linking)
        dev = tvm.cpu()
        fill = tvm.get_global_func("tvm.contrib.random.random_fill_for_measure", allow_missing=True)
        info = [a.as_json() for a in ArgInfo.from_prim_func(mod["main"])]
        costs = run_evaluator_common(lib, dev, evaluator, alloc_argument_common(fill, dev, info, 1))
        return sorted(costs)[len(costs) // 2]
    except Exception as exc:
        log.debug("tvm: cannot time the untuned %s: %s", task.task_name, exc)
        return math.inf
