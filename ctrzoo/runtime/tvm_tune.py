"""The TVM toolchain behind the ``tvm`` backend: import, tune, build, and the artefacts kept in the bundle.

The bundle's ``model.onnx`` is imported into Relax once per batch bucket with a FIXED batch (MetaSchedule in
apache-tvm 0.27 cannot tune a symbolic batch dimension); the bucket functions ``b1``, ``b16``, ... live in one
module and one library. The weights stay runtime inputs (one copy shared by every bucket); the library's
``bN_transform_params`` functions prepack them once at load into the layouts the tuned kernels chose.

    BUNDLE/tvm/model.so                       the compiled Relax VM executable (native code, no weights)
    BUNDLE/tvm/database_workload.json         MetaSchedule's JSON database: the tuned schedules, keyed by
    BUNDLE/tvm/database_tuning_record.json    the kernels' shapes (not the weights)
    BUNDLE/tvm/manifest.json                  what model.so was built from and how (see ``MANIFEST``)

Loading reuses ``model.so`` when the manifest matches (same onnx sha256, tvm version, target, buckets and
database), otherwise rebuilds it from the database without tuning (a re-exported model of the same shape
keeps its tuning), otherwise compiles untuned. ``model.so`` is native code: load bundles you trust only.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

from ctrzoo.bundle import Bundle, load_bundle
from ctrzoo.errors import BundleError, CtrzooError
from ctrzoo.features import TableLayout
from ctrzoo.runtime.tvm_dense import dense_space, is_dense

log = logging.getLogger("ctrzoo.runtime.tvm")

ARTIFACT_DIR = "tvm"
LIBRARY = "model.so"
MANIFEST = "manifest.json"
DB_WORKLOAD = "database_workload.json"
DB_RECORDS = "database_tuning_record.json"
MANIFEST_VERSION = 1
DEFAULT_BUCKETS = (1, 16, 128, 1024)
DEFAULT_TRIALS = 2000
DEFAULT_MINUTES = 10.0
INPUT_DTYPES = {"sparse": "int64", "dense": "float32", "seq": "int64"}
DATA_DEPENDENT_OPS = {"Unique", "NonZero"}
PER_ROUND = 32  # trials per tuning round of one task (the search costs seconds per round, whatever its size)
REJECT_FACTOR = 2.0  # a candidate slower than this times the task's best gets one timed run, not three
FOCUS_WEIGHT = 4.0
CONSTANT_MAX_ELEMENTS = 16  # initializers this small are compiled in as constants, not passed as weights  # output shapes depend on values: no fixed-batch kernels
# apache-tvm-ffi 0.1.15.post2 crashed while MetaSchedule saved records; 0.1.14.post0 works (pinned in the extra).
TESTED_TVM_FFI = "0.1.14"


def require_tvm():
    """``import tvm`` or a CtrzooError that says how to install it."""
    try:
        import tvm
        from tvm import relax  # noqa: F401  (fails on builds without Relax)
    except ImportError as exc:
        raise CtrzooError(f"the tvm backend needs `pip install 'ctrzoo[tvm]'` (apache-tvm 0.27): {exc}") from None
    return tvm


def host_target(cores: int | None = None) -> dict[str, Any]:
    """LLVM for this CPU: ``mcpu`` as LLVM names the host (e.g. znver4, sapphirerapids), else generic.

    apache-tvm 0.27 rejects ``llvm -mcpu=...`` strings; the dict form is the one that works.
    """
    tvm = require_tvm()
    target: dict[str, Any] = {"kind": "llvm", "num-cores": int(cores or _physical_cores())}
    try:
        cpu = str(tvm.get_global_func("target.llvm_get_system_cpu")())
        triple = str(tvm.get_global_func("target.llvm_get_system_triple")())
        if cpu and cpu != "generic" and tvm.get_global_func("target.llvm_is_valid_cpu")(cpu, triple):
            target["mcpu"] = cpu
    except Exception as exc:  # an LLVM without host detection: generic x86-64/aarch64 code still runs
        log.warning("tvm: cannot detect the host CPU for LLVM (%s); compiling for a generic CPU", exc)
    return target


def size_thread_pool(threads: int | None = None) -> int:
    """Size TVM's process-wide thread pool to ``threads`` (default: ``TVM_NUM_THREADS``, else the physical
    cores, as onnxruntime does), pinning nobody's threads; returns the size.

    TVM's own default on x86 is half the logical CPUs (it assumes 2-way SMT): ONE thread on a 2-core host
    without SMT, where every kernel ran on one core and tuning timed them there. ``config_threadpool`` cannot
    grow the pool past that maximum, which it reads from ``TVM_NUM_THREADS`` each time: so that is set first.
    TVM also binds its workers, and the calling thread, to cores: after a load the process's main thread (and
    every process it forks) was left on one core, which halved onnxruntime's speed in the same process.
    ``TVM_BIND_THREADS=0`` (unless the user set it) turns the binding off, and the caller's CPU set is
    restored in case this TVM binds anyway."""
    tvm = require_tvm()
    n = int(threads or os.environ.get("TVM_NUM_THREADS") or _physical_cores())
    os.environ["TVM_NUM_THREADS"] = str(n)
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    tvm.get_global_func("runtime.config_threadpool")(1, n)
    if allowed is not None and os.sched_getaffinity(0) != allowed:
        os.sched_setaffinity(0, allowed)
    return int(tvm.get_global_func("runtime.NumThreads")())


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# ONNX -> Relax -> library


def import_onnx(onnx_path: Path, layout: TableLayout, batches: tuple[int, ...]):
    """One Relax module with a function ``b{B}`` per batch, and the weights (a list of tensors) they take."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend import detach_params
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(onnx_path))
    dynamic = sorted({n.op_type for n in model.graph.node} & DATA_DEPENDENT_OPS)
    if dynamic:
        raise BundleError(f"{onnx_path}: has data-dependent ops {dynamic} (e.g. the training-time deduplicated "
                          "embedding lookup was exported); TVM compiles static shapes only: export under "
                          "torch.no_grad() / in eval mode")
    names = [i.name for i in model.graph.input]
    funcs, params = {}, None
    for b in batches:
        shapes = {"sparse": [b, layout.n_sparse], "dense": [b, layout.n_dense], "seq": [b, layout.n_seq, layout.seq_len]}
        with _quiet_fd(2):  # "Fast mode segfaults when there are out-of-bounds indices" (ids are checked at predict)
            mod = from_onnx(model, shape_dict={n: shapes[n] for n in names},
                            dtype_dict={n: INPUT_DTYPES[n] for n in names}, keep_params_in_input=True)
        mod, detached = detach_params(mod)
        # Scalars and shape-sized initializers become constants again: as runtime inputs `x ** two` is a
        # powf per element (FM's square: 0.35 ms of 2 ms at batch 128) where a constant 2.0 folds to x * x.
        func, values = mod["main"], list(detached["main"])
        n_in = int(func.attrs["num_input"])
        small = {v: tvm.runtime.tensor(t.numpy()) for v, t in zip(func.params[n_in:], values)
                 if _size(t) <= CONSTANT_MAX_ELEMENTS}
        func = relax.transform.BindParams("main", small)(tvm.IRModule({"main": func}))["main"]
        funcs[f"b{b}"] = func.with_attr("global_symbol", f"b{b}")
        if params is None:
            params = [t for t in values if _size(t) > CONSTANT_MAX_ELEMENTS]
    return tvm.IRModule(funcs), params, names


def _size(t) -> int:
    return int(math.prod(int(d) for d in t.shape))


def prepare(mod, target):
    """Legalize and fuse into TIR kernels (the form tuning extracts tasks from), weights marked layout-free."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    target = tvm.target.Target(target)
    with target, tvm.transform.PassContext(opt_level=3):
        passes = [
            *cpu.library_dispatch_passes(target),
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            *cpu.legalize_passes(target),  # LegalizeOps, AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR
            relax.transform.LiftTransformParams(),  # weight-only work (transposes) -> bN_transform_params, once
            relax.transform.AttachAttrLayoutFreeBuffers(),  # lets tuned schedules pick the weight layout
        ]
        with _quiet_fd(2):  # legalizing gathers warns that they do not bound-check (ids are checked at predict)
            return tvm.transform.Sequential(passes)(mod)


def build(prepared, target, database=None):
    """Compile a prepared module; kernels found in ``database`` get their tuned schedules, others stay naive.

    After applying the database, the weight layout rewrites the schedules chose are split out and lifted
    into ``bN_transform_params`` too: weights are prepacked once at load, not on every call.
    """
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    target = tvm.target.Target(target)
    with target, (database if database is not None else contextlib.nullcontext()), \
            tvm.transform.PassContext(opt_level=3):
        passes = []
        if database is not None:
            passes.append(relax.transform.MetaScheduleApplyDatabase(enable_warning=False))
        passes += [relax.transform.SplitLayoutRewritePreproc(), relax.transform.LiftTransformParams(),
                   relax.transform.FoldConstant()]
        mod = tvm.transform.Sequential(passes)(prepared)
        lower = tvm.transform.Sequential(cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))
        return relax.build(mod, target=target, relax_pipeline=lower)


def load_library(path: Path):
    """The exported executable as a Relax VM on the CPU (its loader's per-function warnings are dropped)."""
    import tvm
    from tvm import relax

    with _quiet_fd(2):
        lib = tvm.runtime.load_module(str(path))
    return relax.VirtualMachine(lib, tvm.cpu())


@contextlib.contextmanager
def _quiet_fd(fd: int):
    """Silence a C-level stream (TVM's C++ warnings bypass Python); lines that are not known noise are logged."""
    noise = ("Scope Loaded", "Fast mode segfaults")
    try:
        saved = os.dup(fd)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            sys.stderr.flush()
            os.dup2(tmp.fileno(), fd)
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                if line.strip() and not any(n in line for n in noise) and not line.lstrip().startswith("["):
                    log.warning("tvm: %s", line.strip())


# ---------------------------------------------------------------------------------------------------------
# artefacts


def artifact_dir(bundle: Bundle) -> Path:
    return bundle.path / ARTIFACT_DIR


def read_manifest(art: Path) -> dict | None:
    path = art / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_VERSION:
            raise ValueError(f"format {manifest.get('format') if isinstance(manifest, dict) else '?'!r}")
        return manifest
    except (ValueError, OSError) as exc:
        log.warning("tvm: %s is unreadable (%s); the library will be rebuilt", path, exc)
        return None


def open_database(art: Path):
    """The bundle's tuning database (None when it has none). A damaged one is refused, never silently dropped."""
    from tvm.s_tir import meta_schedule as ms

    workload, records = art / DB_WORKLOAD, art / DB_RECORDS
    if not workload.exists() and not records.exists():
        return None
    for path in (workload, records):
        if not path.exists():
            raise BundleError(f"{path}: missing (its companion {workload if path is records else records} exists); "
                              f"run `ctrzoo tune --bundle {art.parent}` again or delete {art}")
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            try:
                json.loads(line)
            except ValueError:
                raise BundleError(f"{path}:{lineno}: not a MetaSchedule record (corrupt tuning database); "
                                  f"run `ctrzoo tune --bundle {art.parent}` again or delete {art}") from None
    try:
        return ms.database.JSONDatabase(str(workload), str(records), allow_missing=False)
    except Exception as exc:
        raise BundleError(f"{records}: MetaSchedule cannot read the tuning database ({exc.__class__.__name__}: "
                          f"{str(exc)[:200]}); run `ctrzoo tune --bundle {art.parent}` again or delete {art}") from None


def database_digest(art: Path) -> str | None:
    records = art / DB_RECORDS
    return sha256_file(records) if records.exists() else None


def count_records(art: Path) -> int:
    records = art / DB_RECORDS
    return sum(1 for line in records.read_text().splitlines() if line.strip()) if records.exists() else 0


def build_key(onnx_sha: str, target: dict, buckets: tuple[int, ...], db_digest: str | None) -> dict:
    """What model.so depends on; a manifest with another key means the library is stale."""
    tvm = require_tvm()
    return {"onnx_sha256": onnx_sha, "tvm_version": tvm.__version__,
            "target": {k: v for k, v in target.items() if k != "num-cores"},  # threads are a runtime setting
            "buckets": list(buckets), "database_sha256": db_digest}


def build_library(bundle: Bundle, buckets: tuple[int, ...], target: dict, onnx_path: Path, onnx_sha: str,
                  tuning: dict | None = None) -> Path:
    """Compile every bucket into ``BUNDLE/tvm/model.so`` (from the database when there is one) + manifest."""
    art = artifact_dir(bundle)
    art.mkdir(exist_ok=True)
    database = open_database(art)
    t0 = time.perf_counter()
    mod, _, _ = import_onnx(onnx_path, bundle.spec.layout(), buckets)
    ex = build(prepare(mod, target), target, database)
    tmp = art / f".{LIBRARY}.tmp-{os.getpid()}"
    try:
        ex.export_library(str(tmp))
        os.replace(tmp, art / LIBRARY)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    previous = read_manifest(art) or {}
    manifest = {
        "format": MANIFEST_VERSION,
        **build_key(onnx_sha, target, buckets, database_digest(art)),
        "num_cores": target.get("num-cores"),
        "library": {"file": LIBRARY, "sha256": sha256_file(art / LIBRARY), "build_seconds": round(seconds, 2)},
        "database_records": count_records(art),
        "built_from": "database" if database is not None else "untuned",
        "tuning": tuning if tuning is not None else previous.get("tuning"),
    }
    write_json(art / MANIFEST, manifest)
    log.info("tvm: built %s for buckets %s from %s in %.1fs", art / LIBRARY, ",".join(map(str, buckets)),
             f"the tuning database ({manifest['database_records']} records)" if database is not None
             else "untuned kernels (no tuning database)", seconds)
    return art / LIBRARY


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------
# tuning


def tune_tvm(bundle_path: str | Path | Bundle, trials: int = DEFAULT_TRIALS, max_minutes: float = DEFAULT_MINUTES,
             buckets: tuple[int, ...] | None = None, focus: tuple[int, ...] = (), seed: int = 0,
             micro_kernels: bool = True) -> dict:
    """Tune every bucket's kernels with MetaSchedule within ``trials`` and ``max_minutes`` (both in total),
    save the database into the bundle, and rebuild ``model.so`` from it. Returns a summary.

    Trial allocation: every kernel (task) of every bucket is first timed untuned (~0.1 s each); then each
    round of 32 trials goes to the task whose tuning promises the largest cut of its bucket's latency
    *relative to that bucket's latency* (MetaSchedule's gradient rule, normalised per bucket so bucket
    1024 does not starve bucket 1, seeded with the untuned times so kernels too cheap to matter cost no
    round). Dense layers (matmul + bias + ReLU) are searched in ``tvm_dense``'s register-blocked micro-kernel
    space unless ``micro_kernels`` is False (then MetaSchedule's generic rules, for comparison). ``focus``
    names the batch sizes that matter most (e.g. the service's usual candidate count): the buckets serving
    them weigh ``FOCUS_WEIGHT`` times more. The embedding lookups stay untuned (random ids read out of bounds in measurement). Tuning
    stops when the chosen task's next round would end past the time budget; the database keeps all
    measured so far (also on an interrupt), and tuning again continues from it.
    """
    from ctrzoo.runtime.onnxruntime_backend import checked_onnx_path

    start = time.monotonic()
    deadline = start + max_minutes * 60.0
    bundle = bundle_path if isinstance(bundle_path, Bundle) else load_bundle(bundle_path)
    tvm = require_tvm()
    _check_tvm_ffi()
    buckets = normalize_buckets(buckets or _manifest_buckets(bundle) or DEFAULT_BUCKETS)
    onnx_path = checked_onnx_path(bundle)
    onnx_sha = sha256_file(onnx_path)
    target = host_target()
    art = artifact_dir(bundle)
    art.mkdir(exist_ok=True)
    open_database(art)  # refuse a damaged database before spending the budget
    layout = bundle.spec.layout()
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
            served = {min([b for b in buckets if b >= f] or [buckets[-1]]) for f in focus}
            bucket_weight = {b: FOCUS_WEIGHT if b in served else 1.0 for b in buckets}
            result = _tune(tasks, target, work_dir, trials, deadline, seed, bucket_weight, micro_kernels)
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


def normalize_buckets(buckets) -> tuple[int, ...]:
    out = tuple(sorted({int(b) for b in buckets}))
    if not out or out[0] < 1:
        raise CtrzooError(f"tvm buckets must be positive batch sizes, got {list(buckets)}")
    return out


def _manifest_buckets(bundle: Bundle) -> tuple[int, ...] | None:
    manifest = read_manifest(artifact_dir(bundle))
    return tuple(manifest["buckets"]) if manifest and manifest.get("buckets") else None


def _check_tvm_ffi() -> None:
    try:
        from importlib.metadata import version

        v = version("apache-tvm-ffi")
    except Exception:
        return
    if not v.startswith(TESTED_TVM_FFI):
        log.warning("tvm: apache-tvm-ffi %s is untested with MetaSchedule here (0.1.15.post2 crashed while saving "
                    "records); `pip install apache-tvm-ffi==0.1.14.post0` is known to work", v)


def _is_lookup(task) -> bool:
    """Embedding lookups (gathers by id): random ids in measurement are out of range, so they stay untuned."""
    return "take" in str(task.task_name)


def _host_intrinsics_only() -> None:
    """Register only the host CPU's tensor intrinsics before MetaSchedule imports them all.

    ``TuneContext`` imports ``tvm.s_tir.tensor_intrin``, which builds every CUDA/ROCm/Hexagon intrinsic:
    15-60 s per process on this machine, for a CPU tune that uses none of them. A CPU-only module of the
    same name is installed once per process; importing it again is then a no-op.
    """
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    import tvm.s_tir

    stub = types.ModuleType(name)
    stub.__path__ = [str(Path(tvm.s_tir.__path__[0]) / "tensor_intrin")]
    stub.__doc__ = "ctrzoo: host-CPU tensor intrinsics only (see ctrzoo.runtime.tvm_tune._host_intrinsics_only)"
    sys.modules[name] = stub
    machine = platform.machine().lower()
    sub = "x86" if machine in ("x86_64", "amd64", "i686") else "arm_cpu" if machine in ("aarch64", "arm64") else None
    if sub:
        try:
            importlib.import_module(f"{name}.{sub}")
        except Exception as exc:  # tuning still works without them (they serve int8 tensorization)
            log.debug("tvm: %s.%s not registered: %s", name, sub, exc)


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
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.s_tir.meta_schedule.runner import PyRunner
    from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

    _host_intrinsics_only()
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

    ms_log, restore = _metaschedule_logging(work_dir)
    try:
        rules = _schedule_rules()
        contexts, weights, spaces = [], [], []
        rand = seed
        for bucket, task in entries:
            rand += 1
            mod = task.dispatched[0]
            # dense layers get the micro-kernel space
            spaces.append("dense" if micro_kernels and is_dense(mod) else "generic")
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
        state: dict[str, int | None] = {"task": None}
        progress = _Progress([_untuned_seconds(task, tvm_target, evaluator) for _, task in entries])

        @derived_object
        class Record(PyMeasureCallback):
            def apply(self, _sched, task_id, _cands, _builds, results):
                progress.record(task_id, results)

        built: dict[str, Any] = {}

        @derived_object
        class InProcessBuilder(PyBuilder):
            """Compiles candidates in this process and keeps them in memory. MetaSchedule's LocalBuilder starts
            fresh workers for every batch, each paying the whole TVM import (tens of seconds on a loaded
            2-core machine) to compile for ~0.1 s, and its runner then links every candidate with the C
            compiler (~0.5 s each): together they spent most of a round."""

            def build(self, inputs):
                from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

                out = []
                for item in inputs:
                    try:
                        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(item.mod)
                        key = f"memory:{len(built)}:{id(mod)}"
                        built[key] = tvm.tirx.build(mod, target=item.target)
                        out.append(BuilderResult(key, None))
                    except Exception as exc:
                        out.append(BuilderResult(None, f"{exc.__class__.__name__}: {str(exc)[:2000]}"))
                return out

        @derived_object
        class InProcessRunner(PyRunner):
            """Times the in-memory candidates here with ``time_evaluator`` on random inputs: one run first,
            and only candidates within ``REJECT_FACTOR`` of the task's best get the full median of 3
            repeats of >= 10 ms (early random candidates of a 1024-row kernel take up to 0.5 s a run).
            The embedding lookups, whose random ids would read out of bounds, are never sent."""

            def run(self, inputs):
                from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture
                from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common, run_evaluator_common

                dev = tvm.cpu()
                fill = tvm.get_global_func("tvm.contrib.random.random_fill_for_measure", allow_missing=True)
                futures = []
                for item in inputs:
                    try:
                        mod = built.pop(str(item.artifact_path))
                        args = alloc_argument_common(fill, dev, [a.as_json() for a in item.args_info], 1)
                        costs = run_evaluator_common(mod, dev, probe, args)
                        best = progress.best[state["task"]] if state["task"] is not None else math.inf
                        if costs[0] < REJECT_FACTOR * best:  # a contender: time it properly
                            costs = run_evaluator_common(mod, dev, evaluator, args)
                        futures.append(LocalRunnerFuture(res=costs, error_message=None))
                    except Exception as exc:
                        futures.append(LocalRunnerFuture(res=None, error_message=f"{exc.__class__.__name__}: {exc}"))
                return futures

        buckets = [b for b, _ in entries]

        @derived_object
        class BudgetScheduler(PyTaskScheduler):
            """MetaSchedule's gradient rule normalised per bucket, seeded with every kernel's untuned latency
            (so kernels too cheap to matter never cost a round); stops when the chosen task's next round
            (timed from its previous one) would end past the deadline."""

            def __init__(self):
                super().__init__()
                self.current: int | None = None
                self.since = 0.0
                self.round_seconds: dict[int, float] = {}
                self.stopped_by = "trial budget"

            def next_task_id(self) -> int:
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
                i = progress.pick(alive, weights, buckets, bucket_weight)
                known = sorted(self.round_seconds.values())
                expected = self.round_seconds.get(i, known[len(known) // 2] if known else 3.0)
                if now + expected > deadline:
                    self.stopped_by = "time budget"
                    return -1
                self.current, self.since = i, now
                state["task"] = i
                return i

        scheduler = BudgetScheduler()
        database = ms.database.JSONDatabase(str(work_dir / DB_WORKLOAD), str(work_dir / DB_RECORDS),
                                            allow_missing=True)
        callbacks = [ms.measure_callback.AddToDatabase(), ms.measure_callback.UpdateCostModel(), Record()]
        if time.monotonic() < deadline:
            ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(work_dir), max_trials_global=trials,
                          max_trials_per_task=trials, num_trials_per_iter=PER_ROUND, builder=InProcessBuilder(),
                          runner=InProcessRunner(), database=database,
                          cost_model=ms.CostModel.create("xgb", num_tuning_cores=cores, tree_method="auto"),
                          measure_callbacks=callbacks, task_scheduler=scheduler)
            stopped_by = scheduler.stopped_by
        else:
            stopped_by = "time budget"
    finally:
        restore()
    tasks = [{"task": f"b{b}/{t.task_name}", "space": spaces[i], "weight": weights[i], "trials": progress.trials[i],
              "best_us": round(progress.best[i] * 1e6, 2) if math.isfinite(progress.best[i]) else None}
             for i, (b, t) in enumerate(entries)]
    return {"trials": sum(progress.trials), "tasks": tasks, "skipped": skipped, "stopped_by": stopped_by,
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


class _Progress:
    """Per-task measurements as they come in, and the allocation rule that uses them."""

    ALPHA, WINDOW = 0.2, 3  # MetaSchedule's gradient-scheduler constants

    def __init__(self, untuned: list[float]):
        n = len(untuned)
        self.trials = [0] * n
        self.untuned = list(untuned)
        self.best = list(untuned)  # a tuned kernel replaces the naive one only when it is faster
        self.history: list[list[float]] = [[u] for u in untuned]

    def record(self, task_id: int, results) -> None:
        for r in results:
            self.trials[task_id] += 1
            secs = list(r.run_secs) if r.run_secs is not None else []
            if not r.error_msg and secs:
                vals = sorted(float(s) for s in secs)
                self.best[task_id] = min(self.best[task_id], vals[len(vals) // 2])
        self.history[task_id].append(self.best[task_id])

    def pick(self, alive: list[int], weights: list[float], buckets: list[int], bucket_weight: dict[int, float]) -> int:
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


def _metaschedule_logging(work_dir: Path):
    """MetaSchedule's INFO chatter (tables, traces) goes to WORK/logs/metaschedule.log, not the console."""
    (work_dir / "logs").mkdir(exist_ok=True)
    handler = logging.FileHandler(work_dir / "logs" / "metaschedule.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    ms_logger = logging.getLogger("ctrzoo.runtime.tvm.metaschedule")
    tvm_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    saved = [(lg, lg.level, lg.propagate) for lg in (ms_logger, tvm_logger)]
    for lg in (ms_logger, tvm_logger):
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False

    def restore():
        for lg, level, propagate in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
        handler.close()

    return ms_logger, restore
