"""The TVM toolchain behind the ``tvm`` backend (``ctrzoo.runtime.tvm_backend``): import, tune, build, and
the artefacts kept in the bundle, one module per job.

The bundle's ``model.onnx`` is imported into Relax once per batch bucket with a FIXED batch (MetaSchedule in
apache-tvm 0.27 cannot tune a symbolic batch dimension); the bucket functions ``b1``, ``b16``, ... live in one
module and one library. The weights stay runtime inputs (one copy shared by every bucket); the library's
``bN_transform_params`` functions prepack them once at load into the layouts the tuned kernels chose.
Loading reuses ``BUNDLE/tvm/model.so`` when its manifest matches (same onnx sha256, tvm version, target,
buckets and database), otherwise rebuilds it from the database without tuning (a re-exported model of the
same shape keeps its tuning), otherwise compiles untuned. ``model.so`` is native code: load bundles you trust.

* ``env``: the import check, the host's LLVM target, the thread pool, quieting TVM's C-level output;
* ``compiler``: ONNX -> Relax -> TIR kernels -> library;
* ``artifacts``: the files in ``BUNDLE/tvm/``, the manifest and when a library is stale;
* ``policy``: pure decisions (buckets, the tuning round allocation, the batch-chunk plan), no TVM needed;
* ``dense``: the register-blocked micro-kernel design space for dense layers;
* ``search``: the MetaSchedule plug-ins (in-process builder and runner, budgeted scheduler);
* ``tuning``: ``tune_tvm``.

Importing this package does not import TVM; ``env.require_tvm()`` does, with an install hint.
"""

from ctrzoo.runtime.tvm.env import require_tvm
from ctrzoo.runtime.tvm.policy import DEFAULT_BUCKETS


def tune_tvm(*args, **kwargs) -> dict:
    """``ctrzoo.runtime.tvm.tuning.tune_tvm`` (imported on call: it needs the bundle and export modules)."""
    from ctrzoo.runtime.tvm.tuning import tune_tvm as tune

    return tune(*args, **kwargs)


__all__ = ["DEFAULT_BUCKETS", "require_tvm", "tune_tvm"]
