"""Multi-task bundles from save to ONNX to the runtimes and the Python API: ``Bundle.tasks``, golden rows per
task, ONNX export of ``[B, T]`` with parity, onnxruntime equal to torch, fused and tvm refusing them, and
``predict`` giving one column per task. Bundles come from tests/multitask_rows.py (untrained models)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pandas as pd
import pytest
from multitask_rows import MULTITASK_MODELS, TASKS, raw_rows

import ctrzoo
from ctrzoo import runtime
from ctrzoo.bundle import GOLDEN_FILE, GOLDEN_TOLERANCE, check_golden, load_bundle
from ctrzoo.errors import BundleError, CtrzooError
from ctrzoo.export import PARITY_TOLERANCE, TASKS_KEY
from ctrzoo.models.registry import model_tasks
from ctrzoo.threads import torch_threads


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def bundles(multitask_bundles):
    return multitask_bundles


def _copy(bundles, name, tmp_path):
    return shutil.copytree(bundles[name], tmp_path / name)


def test_bundle_tasks_come_from_the_hyper_parameters(bundles):
    for name in MULTITASK_MODELS:
        assert load_bundle(bundles[name]).tasks == TASKS
    assert load_bundle(bundles["ple_other_tasks"]).tasks == ("click", "purchase")
    assert load_bundle(bundles["deepfm"]).tasks == ()
    # hyper-parameters that do not record them: the constructor's default, as build_model uses it
    assert model_tasks("mmoe", {}) == ("click", "conversion") and model_tasks("deepfm", {}) == ()


@pytest.mark.parametrize("name", MULTITASK_MODELS)
def test_export_records_the_tasks_and_onnxruntime_equals_torch_per_task(bundles, name):
    b = load_bundle(bundles[name])
    record = b.meta.artifacts.onnx
    assert record.parity_max_abs_diff <= PARITY_TOLERANCE and record.golden_max_abs_diff <= PARITY_TOLERANCE
    assert record.tasks == list(TASKS) and record.output_shape == ["batch", 2]
    written = json.loads((b.path / "bundle.json").read_text())["artifacts"]["onnx"]
    assert written["tasks"] == ["click", "converted"] and written["output_shape"] == ["batch", 2]
    proto = onnx.load(str(b.path / "model.onnx"), load_external_data=False)
    assert {p.key: p.value for p in proto.metadata_props}[TASKS_KEY] == '["click", "converted"]'
    assert [d.dim_value or d.dim_param for d in proto.graph.output[0].type.tensor_type.shape.dim][1] == 2

    torch_p, ort_p = runtime.load(b, "torch"), runtime.load(b, "onnxruntime")
    for n in (1, 37):
        batch = b.codec.random_batch(n, seed=n)
        want, got = torch_p.predict(batch), ort_p.predict(batch)
        assert want.shape == got.shape == (n, 2)
        assert np.abs(got - want).max() <= PARITY_TOLERANCE
        assert not np.allclose(want[:, 0], want[:, 1])  # two tasks, two different columns
    assert ort_p.predict(b.codec.random_batch(0)).shape == torch_p.predict(b.codec.random_batch(0)).shape == (0, 2)


def test_a_single_task_export_record_is_as_before(bundles):
    b = load_bundle(bundles["deepfm"])
    written = json.loads((b.path / "bundle.json").read_text())["artifacts"]["onnx"]
    assert "tasks" not in written and "output_shape" not in written
    assert b.meta.artifacts.onnx.output_shape == ["batch"]
    assert runtime.load(b, "onnxruntime").predict(b.codec.random_batch(5)).shape == (5,)
    proto = onnx.load(str(b.path / "model.onnx"), load_external_data=False)
    assert TASKS_KEY not in {p.key for p in proto.metadata_props}


def test_golden_rows_hold_one_score_per_task_and_are_checked_per_task(bundles, tmp_path):
    path = _copy(bundles, "mmoe", tmp_path)
    golden = json.loads((path / GOLDEN_FILE).read_text())
    assert golden["tasks"] == ["click", "converted"]
    assert np.asarray(golden["scores"]).shape == (len(golden["rows"]), 2)
    b = load_bundle(path)
    for backend in ("torch", "onnxruntime"):
        assert check_golden(b, b.codec, runtime.load(b, backend).predict) <= GOLDEN_TOLERANCE

    torch_p = runtime.load(b, "torch")
    with pytest.raises(BundleError, match=r"as shape \(8,\), expected \(8, 2\) \(one column per task: click, conv"):
        check_golden(b, b.codec, lambda batch: torch_p.predict(batch)[:, 0])  # a runtime that drops a task
    with pytest.raises(BundleError, match=r"as shape \(16,\), expected \(8, 2\)"):
        check_golden(b, b.codec, lambda batch: torch_p.predict(batch).reshape(-1))  # flattened: not reshaped back

    golden["scores"] = [[c, v + 0.2] for c, v in golden["scores"]]  # only task 2 is off
    (path / GOLDEN_FILE).write_text(json.dumps(golden))
    b = load_bundle(path, verify=False)
    with pytest.raises(BundleError, match=r"does not reproduce its golden rows \(task 'converted'\): max \|diff\| 2"):
        check_golden(b, b.codec, torch_p.predict)
    golden["scores"] = [c for c, _ in golden["scores"]]  # one score per row for a multi-task bundle
    (path / GOLDEN_FILE).write_text(json.dumps(golden))
    with pytest.raises(BundleError, match=r"golden scores of shape \(8,\) for tasks \['click', 'converted'\], "
                                          r"expected \(8, 2\)"):
        check_golden(b, b.codec, torch_p.predict)


@pytest.mark.parametrize("backend", ["fused", "tvm"])
def test_fused_and_tvm_refuse_a_multi_task_bundle_with_one_clear_line(bundles, backend):
    b = load_bundle(bundles["mmoe"])
    message = (rf"^the {backend} backend supports single-task models only; use onnxruntime \(or torch\): "
               rf"{b.path} is model 'mmoe' with tasks click, converted$")
    with pytest.raises(CtrzooError, match=message):
        runtime.load(b, backend)
    with pytest.raises(CtrzooError, match=message):
        ctrzoo.load(b.path, backend)
    if backend == "fused":  # the class itself refuses too, not only runtime.load
        from ctrzoo.runtime.torch_backend import FusedPredictor

        with pytest.raises(CtrzooError, match=message):
            FusedPredictor(b)
    assert runtime.supports(b, backend) is False and runtime.supports(b, "onnxruntime") is True
    assert runtime.supports(load_bundle(bundles["deepfm"]), backend) is True


def test_bench_defaults_skip_the_backends_a_bundle_cannot_use(bundles):
    from ctrzoo.runtime.bench import bench_inference

    rows = bench_inference(bundles["mmoe"], None, [4], seconds=0.0, min_runs=2)
    assert [r["backend"] for r in rows] == ["torch", "onnxruntime"]
    assert all(r["max_abs_diff"] <= PARITY_TOLERANCE for r in rows)
    with pytest.raises(CtrzooError, match="the fused backend supports single-task models only"):
        bench_inference(bundles["mmoe"], ["fused"], [4], seconds=0.0, min_runs=2)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_api_predict_gives_one_column_per_task(bundles, backend):
    model = ctrzoo.load(bundles["ple"], backend)
    assert model.tasks == TASKS
    rows = raw_rows(30, seed=5, label=False)
    b = load_bundle(bundles["ple"])
    want = runtime.load(b, "torch").predict(b.codec.encode(rows))
    frame = pd.DataFrame(rows, index=pd.RangeIndex(100, 160, 2))  # a filtered frame's index: kept
    got = model.predict(frame, chunk_rows=7)  # chunks are put back together row by row
    assert isinstance(got, pd.DataFrame) and list(got.columns) == ["click", "converted"]
    assert (got.index == frame.index).all() and (got.dtypes == np.float32).all()
    np.testing.assert_allclose(got.to_numpy(), want, rtol=0, atol=PARITY_TOLERANCE)
    joined = frame.join(got)  # lines up with the input's rows
    np.testing.assert_allclose(joined["converted"].to_numpy(), want[:, 1], rtol=0, atol=PARITY_TOLERANCE)
    listed = model.predict(rows)
    assert list(listed.index) == list(range(30))
    np.testing.assert_allclose(listed.to_numpy(), got.to_numpy(), rtol=0, atol=1e-7)
    empty = model.predict([])
    assert empty.shape == (0, 2) and list(empty.columns) == ["click", "converted"]


def test_api_predict_of_a_single_task_bundle_is_still_an_array(bundles):
    model = ctrzoo.load(bundles["deepfm"], "onnxruntime")
    got = model.predict(raw_rows(9, seed=5, label=False))
    assert model.tasks == () and isinstance(got, np.ndarray) and got.shape == (9,) and got.dtype == np.float32
