"""``ctrzoo.runtime.load(bundle, backend=...)``: one ``predict(batch)`` over torch, onnxruntime, TVM or fused.

Every backend must agree with ``torch`` to ``PARITY_TOLERANCE`` (checked in tests); the int8 variant is
the exception and is judged by its AUC cost instead. A multi-task bundle's scores are ``[B, T]`` on torch and
onnxruntime; ``fused`` and ``tvm`` refuse it (``supports``, ``SINGLE_TASK_ONLY``).
"""

from __future__ import annotations

from pathlib import Path

from ctrzoo.bundle import Bundle, load_bundle
from ctrzoo.errors import CtrzooError
from ctrzoo.runtime.base import SINGLE_TASK_ONLY, Predictor, as_arrays, require_single_task, supports

BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8", "fused", "tvm")
PARITY_TOLERANCE = 1e-5


def load(bundle: str | Path | Bundle, backend: str = "onnxruntime", threads: int | None = None, **options) -> Predictor:
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if backend in SINGLE_TASK_ONLY:
        require_single_task(b, backend)  # before importing or compiling anything
    if backend == "torch":
        from ctrzoo.runtime.torch_backend import TorchPredictor

        return TorchPredictor(b, threads)
    if backend == "fused":
        from ctrzoo.runtime.torch_backend import FusedPredictor

        return FusedPredictor(b, threads)
    if backend in ("onnxruntime", "onnxruntime-int8"):
        from ctrzoo.runtime.onnxruntime_backend import OnnxRuntimePredictor

        return OnnxRuntimePredictor(b, threads, quantized=backend == "onnxruntime-int8")
    if backend == "tvm":
        try:
            from ctrzoo.runtime.tvm_backend import TvmPredictor
        except ImportError as exc:
            raise CtrzooError(f"the tvm backend is not available: {exc}") from None
        return TvmPredictor(b, threads, **options)
    raise CtrzooError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "PARITY_TOLERANCE", "SINGLE_TASK_ONLY", "Predictor", "as_arrays", "load", "supports"]
