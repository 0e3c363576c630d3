"""TVM in this process: the import check, the LLVM target of this CPU, the thread pool, and quieting TVM's
C-level chatter. Everything here changes or reads process-wide state, so it lives in one place."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import platform
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

from ctrzoo.errors import CtrzooError

log = logging.getLogger("ctrzoo.runtime.tvm")

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


def check_tvm_ffi() -> None:
    """Warn when apache-tvm-ffi is not the version MetaSchedule was seen to save records with."""
    try:
        from importlib.metadata import version

        v = version("apache-tvm-ffi")
    except Exception:
        return
    if not v.startswith(TESTED_TVM_FFI):
        log.warning("tvm: apache-tvm-ffi %s is untested with MetaSchedule here (0.1.15.post2 crashed while saving "
                    "records); `pip install apache-tvm-ffi==0.1.14.post0` is known to work", v)


def host_target(cores: int | None = None) -> dict[str, Any]:
    """LLVM for this CPU: ``mcpu`` as LLVM names the host (e.g. znver4, sapphirerapids), else generic.

    apache-tvm 0.27 rejects ``llvm -mcpu=...`` strings; the dict form is the one that works.
    """
    tvm = require_tvm()
    target: dict[str, Any] = {"kind": "llvm", "num-cores": int(cores or physical_cores())}
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
    n = int(threads or os.environ.get("TVM_NUM_THREADS") or physical_cores())
    os.environ["TVM_NUM_THREADS"] = str(n)
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    tvm.get_global_func("runtime.config_threadpool")(1, n)
    if allowed is not None and os.sched_getaffinity(0) != allowed:
        os.sched_setaffinity(0, allowed)
    return int(tvm.get_global_func("runtime.NumThreads")())


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def quiet_fd(fd: int):
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


def host_intrinsics_only() -> None:
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
    stub.__doc__ = "ctrzoo: host-CPU tensor intrinsics only (see ctrzoo.runtime.tvm.env.host_intrinsics_only)"
    sys.modules[name] = stub
    machine = platform.machine().lower()
    sub = "x86" if machine in ("x86_64", "amd64", "i686") else "arm_cpu" if machine in ("aarch64", "arm64") else None
    if sub:
        try:
            importlib.import_module(f"{name}.{sub}")
        except Exception as exc:  # tuning still works without them (they serve int8 tensorization)
            log.debug("tvm: %s.%s not registered: %s", name, sub, exc)


@contextlib.contextmanager
def metaschedule_logging(work_dir: Path):
    """MetaSchedule's INFO chatter (tables, traces) goes to WORK/logs/metaschedule.log, not the console;
    yields the logger to hand to MetaSchedule, restores both loggers on exit."""
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
    try:
        yield ms_logger
    finally:
        for lg, level, propagate in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
        handler.close()
