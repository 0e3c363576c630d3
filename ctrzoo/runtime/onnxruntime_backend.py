"""``onnxruntime`` (and its int8 dynamic-quantization variant) over the bundle's ``model.onnx``: ``[B]`` scores,
``[B, T]`` for a multi-task bundle (the file's output and recorded tasks are checked against the bundle's)."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import numpy as np

from ctrzoo.bundle import ONNX_FILE, Bundle, sha256_file
from ctrzoo.errors import BundleError, CtrzooError
from ctrzoo.runtime.base import Predictor

INT8_FILE = "model.int8.onnx"


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise CtrzooError("the onnxruntime backend needs `pip install onnxruntime` (extra: serving)") from None
    return ort


def checked_onnx_path(bundle: Bundle) -> Path:
    """``model.onnx``, present and matching the checksum that export recorded."""
    path = bundle.path / ONNX_FILE
    if not path.exists():
        raise BundleError(f"{path}: missing; run `ctrzoo export --bundle {bundle.path}` first")
    record = bundle.meta.artifacts.onnx
    digest = sha256_file(path)
    if record is not None and record.sha256 and record.sha256 != digest:
        raise BundleError(f"{path}: checksum differs from the one recorded at export (corrupt or replaced); "
                          "export again")
    return path


class OnnxRuntimePredictor(Predictor):
    backend = "onnxruntime"

    def __init__(self, bundle: Bundle, threads: int | None = None, quantized: bool = False):
        super().__init__(bundle)
        ort = _import_ort()
        path = checked_onnx_path(bundle)
        if quantized:
            path = self._quantized(path)
            self.backend = "onnxruntime-int8"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
            raise BundleError(f"{path}: onnxruntime cannot load it "
                              f"({exc.__class__.__name__}: {str(exc)[:200]})") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._check_output(path)
        self.warm_up()

    def _check_output(self, path: Path) -> None:
        """``model.onnx`` gives what the bundle's model gives: ``[B]``, or ``[B, T]`` with the same tasks."""
        shape = list(self.session.get_outputs()[0].shape)
        n = len(self.tasks)
        if len(shape) != (2 if n else 1) or (n and isinstance(shape[1], int) and shape[1] != n):
            want = f"[batch, {n}] (tasks {', '.join(self.tasks)})" if n else "[batch]"
            raise BundleError(f"{path}: outputs scores of shape {shape}, the bundle's model "
                              f"{self.bundle.model_name!r} gives {want}; export again")
        recorded = self.session.get_modelmeta().custom_metadata_map.get("ctrzoo.tasks")
        if recorded is not None and json.loads(recorded) != list(self.tasks):
            raise BundleError(f"{path}: exported for tasks {recorded}, the bundle's model learns "
                              f"{list(self.tasks)}; export again")

    def _quantized(self, path: Path) -> Path:
        """int8 weights for the MatMuls (dynamic activation quantization), cached beside model.onnx."""
        out = path.with_name(INT8_FILE)
        if not out.exists() or out.stat().st_mtime < path.stat().st_mtime:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            tmp = out.with_name(f".{INT8_FILE}.tmp")
            with _root_log_level(logging.ERROR):  # its "consider pre-processing" hint is not actionable here
                quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul", "Gemm"])
            tmp.replace(out)
        return out

    def _predict(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {name: arrays[name] for name in self.input_names}
        out = self.session.run(None, feeds)[0]
        return out.reshape(len(arrays["sparse"]), len(self.tasks)) if self.tasks else out.reshape(-1)


@contextlib.contextmanager
def _root_log_level(level: int):
    """onnxruntime's quantizer logs through the root logger: quiet it for the call only, then restore it
    (setting it for good silenced every ctrzoo warning after one int8 quantization)."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(before)
