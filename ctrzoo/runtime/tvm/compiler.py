"""ONNX -> Relax -> a library: one fixed-batch function per bucket, weights as runtime inputs."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np

from ctrzoo.errors import BundleError
from ctrzoo.features import INPUT_DTYPES as FEATURE_INPUT_DTYPES
from ctrzoo.features import TableLayout
from ctrzoo.runtime.tvm.env import quiet_fd

INPUT_DTYPES = {name: np.dtype(t).name for name, t in FEATURE_INPUT_DTYPES.items()}  # TVM names dtypes
DATA_DEPENDENT_OPS = {"Unique", "NonZero"}  # output shapes depend on values: no fixed-batch kernels
CONSTANT_MAX_ELEMENTS = 16  # initializers this small are compiled in as constants, not passed as weights


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
        shapes = {"sparse": [b, layout.n_sparse], "dense": [b, layout.n_dense],
                  "seq": [b, layout.n_seq, layout.seq_len]}
        with quiet_fd(2):  # "Fast mode segfaults when there are out-of-bounds indices" (ids are checked at predict)
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
        with quiet_fd(2):  # legalizing gathers warns that they do not bound-check (ids are checked at predict)
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

    with quiet_fd(2):
        lib = tvm.runtime.load_module(str(path))
    return relax.VirtualMachine(lib, tvm.cpu())
