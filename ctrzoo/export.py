"""``ctrzoo export``: the bundle's model as ONNX (named inputs of the fixed layout, output = probability).

A single-task model's output is ``prob [B]``; a multi-task model's is ``prob [B, T]``, column ``t`` the
probability of task ``t``. The tasks are written into the file (``metadata_props["ctrzoo.tasks"]``, a JSON
list) and into the bundle's export record (``OnnxRecord.tasks``, ``output_shape ["batch", T]``), so neither
an ONNX consumer nor a runtime has to guess which column is which.

Export verifies itself before anything is written: the ONNX checker, then a parity run of onnxruntime
against torch on random in-range inputs at two batch sizes (so the dynamic batch axis really is dynamic),
then the bundle's golden rows (raw values -> encoder -> onnxruntime) against their recorded scores. The new
``model.onnx`` enters the bundle's integrity manifest; a format-1 bundle gets its golden rows and manifest.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ctrzoo.bundle import (
    BUNDLE_FORMAT_VERSION,
    GOLDEN_TOLERANCE,
    ONNX_FILE,
    Bundle,
    check_golden,
    load_bundle,
    sha256_file,
    write_golden,
)
from ctrzoo.errors import BundleError
from ctrzoo.features import INPUT_NAMES, TableLayout, random_batch
from ctrzoo.metadata import OnnxRecord
from ctrzoo.models.probability import ProbabilityModel

OUTPUT_NAME = "prob"
PARITY_TOLERANCE = 1e-5
TASKS_KEY = "ctrzoo.tasks"  # model.onnx metadata: the tasks of the output's columns (a JSON list)


def write_onnx(model: nn.Module, layout: TableLayout, path: Path) -> float:
    """``ProbabilityModel(model)`` as ONNX at ``path`` (dynamo; inputs ``INPUT_NAMES`` with a dynamic batch axis,
    output ``prob [B]``, or ``[B, T]`` with the tasks in the file's metadata for a multi-task model), checked
    by the ONNX checker; returns onnxruntime's max |diff| to torch on random in-range inputs at batch 1 and
    37 (over every task)."""
    import onnx

    wrapped = model if isinstance(model, ProbabilityModel) else ProbabilityModel(model)
    wrapped.eval()
    example = {k: torch.from_numpy(v) for k, v in random_batch(layout, 4).as_dict().items()}
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    # no_grad: the inference graph (FeatureEmbedding.lookup's training-time id dedup, a Unique op that cost
    # onnxruntime ~60% at batch 100, is taken only when gradients are on)
    with warnings.catch_warnings(), _quiet_exporter(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapped, tuple(example[k] for k in INPUT_NAMES), dynamo=True,
            input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
            dynamic_shapes={name: {0: batch} for name in INPUT_NAMES}, verbose=False,
        )
    program.save(str(path))
    tasks = tuple(getattr(wrapped.model, "tasks", ()))
    if tasks:
        proto = onnx.load(str(path))
        onnx.helper.set_model_props(proto, {TASKS_KEY: json.dumps(list(tasks))})
        onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return _parity(wrapped, path, layout, len(tasks))


def export_onnx(bundle: str | Path | Bundle, tolerance: float = PARITY_TOLERANCE) -> OnnxRecord:
    """Write ``model.onnx`` into the bundle and record it in ``bundle.json``; returns the record."""
    import onnx

    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    tmp = b.path / f".{ONNX_FILE}.tmp-{os.getpid()}"
    try:
        max_diff = write_onnx(b.build_model(), b.codec.layout, tmp)
        if max_diff > tolerance:
            raise BundleError(f"{b.path}: ONNX export differs from torch by {max_diff:.2e} (> {tolerance:.0e})")
        upgrade = b.meta.format_version == 1  # a bundle from before golden rows and the manifest
        if upgrade:
            write_golden(b, b.meta.data.path)
        golden_diff = _golden_parity(b, tmp)
        os.replace(tmp, b.path / ONNX_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    record = OnnxRecord(
        file=ONNX_FILE,
        sha256=sha256_file(b.path / ONNX_FILE),
        opset=int(onnx.load(str(b.path / ONNX_FILE), load_external_data=False).opset_import[0].version),
        parity_max_abs_diff=max_diff,
        golden_max_abs_diff=golden_diff,
    )
    if b.tasks:
        record.tasks, record.output_shape = list(b.tasks), ["batch", len(b.tasks)]
    b.meta.artifacts.onnx = record
    if upgrade:
        b.meta.files = b.manifest()
        b.meta.format_version = BUNDLE_FORMAT_VERSION
    else:
        b.meta.files = {**b.meta.files, ONNX_FILE: record.sha256}
    b.write_meta()
    return record


def _golden_parity(b: Bundle, onnx_path: Path) -> float:
    """The bundle's golden rows, encoded from raw values and scored by onnxruntime, give their recorded scores."""
    import onnxruntime as ort

    from ctrzoo.runtime.base import as_arrays

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    layout = b.codec.layout

    def predict(batch):
        arrays = as_arrays(batch, layout)
        return session.run(None, {i.name: arrays[i.name] for i in session.get_inputs()})[0]

    return check_golden(b, b.codec, predict, GOLDEN_TOLERANCE, " with the exported model.onnx")


@torch.inference_mode()
def _parity(model: nn.Module, path: Path, layout: TableLayout, n_tasks: int = 0) -> float:
    """Max |diff| of onnxruntime to torch at batch 1 and 37; both must give ``[B]`` (``[B, T]`` for
    ``n_tasks`` tasks), so a dropped or transposed task axis is an error, not a broadcast."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 37):
        inputs = random_batch(layout, batch, seed=batch).as_dict()
        got = session.run(None, inputs)[0]
        want = model(*(torch.from_numpy(inputs[k]) for k in INPUT_NAMES)).numpy()
        shape = (batch, n_tasks) if n_tasks else (batch,)
        if got.shape != shape or want.shape != shape:
            raise BundleError(f"{path}: scores of shape {got.shape} (onnxruntime) and {want.shape} (torch) for "
                              f"a batch of {batch}, expected {shape}")
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


class _quiet_exporter:
    """The dynamo exporter logs progress at INFO on stdout; a CLI command should print one line."""

    def __enter__(self):
        self._loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "torch.export")]
        self._levels = [lg.level for lg in self._loggers]
        for lg in self._loggers:
            lg.setLevel(logging.ERROR)
        import contextlib
        import io

        self._redirect = contextlib.redirect_stdout(io.StringIO())
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc):
        self._redirect.__exit__(*exc)
        for lg, level in zip(self._loggers, self._levels):
            lg.setLevel(level)
        return False
