"""The tvm backend: parity with torch for every model (padding and splitting included), a tuned bundle is
reused without tuning, and stale, corrupt or foreign artefacts are rebuilt or refused with a clear message.

Skipped as a whole when apache-tvm is not installed (``pip install 'ctrzoo[tvm]'``); CI installs it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest

try:
    import tvm
    from tvm import relax  # noqa: F401
except ImportError as exc:
    pytest.skip(f"apache-tvm is not installed ({exc}); `pip install 'ctrzoo[tvm]'` runs these tests",
                allow_module_level=True)

import torch

from ctrzoo import runtime
from ctrzoo.cli import main
from ctrzoo.errors import BundleError, CtrzooError
from ctrzoo.export import export_onnx
from ctrzoo.features import random_batch
from ctrzoo.runtime.tvm import policy
from ctrzoo.runtime.tvm.artifacts import DB_RECORDS, LIBRARY, MANIFEST
from ctrzoo.train.run import train_bundle

SMALL = {"emb_dim": 8, "mlp": [32, 16]}
MODELS = {"wide_deep": "criteo", "deepfm": "criteo", "dcn": "criteo", "din": "taobao"}
BUCKETS = (8, 64)  # small on purpose: batches 1 and 7 pad up to 8, batch 100 splits and pads
TOL = runtime.PARITY_TOLERANCE


@pytest.fixture(scope="module")
def bundles(synth_prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("tvm")
    out = {}
    for model, kind in MODELS.items():
        hp = dict(SMALL, crosses=[["C1", "C2"]]) if model == "wide_deep" else SMALL
        train_bundle(model, synth_prepared[kind], root / model, overrides={"epochs": 1, "max_steps": 20, "hparams": hp},
                     progress=False, verbose=False)
        with torch.no_grad():  # the inference graph (no training-time deduplicated lookups)
            export_onnx(root / model)
        out[model] = root / model
    return out


@pytest.fixture(scope="module")
def tuned(bundles, tmp_path_factory):
    """A deepfm bundle tuned through the CLI with a tiny budget (one round of one kernel)."""
    b = tmp_path_factory.mktemp("tuned") / "deepfm"
    shutil.copytree(bundles["deepfm"], b)
    assert main(["tune", "--bundle", str(b), "--trials", "16", "--minutes", "2", "--buckets", "8"]) == 0
    return b


def _agree(predictor, ref, sizes, seed=0):
    for n in sizes:
        x = random_batch(ref.layout, n, seed=n + seed).as_dict()
        got = predictor.predict(x)
        assert got.shape == (n,)
        np.testing.assert_allclose(got, ref.predict(x), rtol=0, atol=TOL)


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("ctrzoo.runtime.tvm")]


@pytest.mark.parametrize("model", list(MODELS))
def test_tvm_matches_torch(bundles, model):
    ref = runtime.load(bundles[model], "torch")
    cpus = os.sched_getaffinity(0)
    p = runtime.load(bundles[model], "tvm", threads=1, buckets=BUCKETS)
    assert os.sched_getaffinity(0) == cpus, "sizing TVM's thread pool must not pin the caller to a core"
    assert p.buckets == BUCKETS
    assert any(rows < b for b, rows in policy.chunks(7, p._plan)), "batch 7 must take the padding path"
    assert sum(rows for _, rows in policy.chunks(100, p._plan)) == 100
    _agree(p, ref, (1, 7, 100))


_THREADS_AFTER_PREDICT = """
import os, sys
from ctrzoo import runtime
from ctrzoo.features import random_batch
p = runtime.load(sys.argv[1], "tvm", threads=int(sys.argv[2]), buckets=(8,))
p.predict(random_batch(p.layout, 8).as_dict())
print(len(os.listdir("/proc/self/task")))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc (Linux)")
def test_thread_pool_is_sized_as_asked(bundles):
    """TVM's default on x86 is half the logical CPUs (no worker at all on a 2-core host without SMT); a load
    with ``threads`` must get that many, or the backend silently runs every kernel on one core. Counted as
    OS threads of a fresh process (the pool is process-wide): one more thread for one more in the pool."""
    import subprocess
    import sys

    def threads_after(n: int) -> int:
        out = subprocess.run([sys.executable, "-c", _THREADS_AFTER_PREDICT, str(bundles["deepfm"]), str(n)],
                             capture_output=True, text=True, timeout=300, check=True)
        return int(out.stdout.split()[-1])

    assert threads_after(2) == threads_after(1) + 1


def test_dense_space_schedules_dense_layers_exactly(bundles):
    """The micro-kernel space applies to the MLP's matmul+bias+relu kernels, not to other kernels, and a
    kernel it schedules computes what the unscheduled one does."""
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    from ctrzoo.runtime.tvm.compiler import import_onnx, prepare
    from ctrzoo.runtime.tvm.dense import dense_space, is_dense
    from ctrzoo.runtime.tvm.env import host_target

    b = runtime.load(bundles["deepfm"], "torch")
    target = host_target(1)
    mod, _, _ = import_onnx(bundles["deepfm"] / "model.onnx", b.layout, (8,))
    tasks = ms.relax_integration.extract_tasks(prepare(mod, target), tvm.target.Target(target))
    dense = [t.dispatched[0] for t in tasks if is_dense(t.dispatched[0])]
    assert len(dense) == 2, [t.task_name for t in tasks]  # hidden layers 32 and 16 (the 1-wide head is not)
    assert not any(is_dense(t.dispatched[0]) for t in tasks if "matmul" not in t.task_name)
    rng = np.random.default_rng(0)
    for fn in dense:
        sch = Schedule(fn)
        dense_space(sch)
        args = [tvm.runtime.tensor(rng.standard_normal([int(d) for d in info.as_json()[2]], dtype=np.float32))
                for info in ArgInfo.from_prim_func(fn["main"])]
        want = [tvm.runtime.tensor(a.numpy()) for a in args]
        tvm.tirx.build(sch.mod, target=target)(*args)
        tvm.tirx.build(fn, target=target)(*want)
        np.testing.assert_allclose(args[-1].numpy(), want[-1].numpy(), rtol=1e-5, atol=1e-5)
        assert "parallel" in str(sch.mod) and "vectorized" in str(sch.mod)


def test_tuned_bundle_is_reused_without_tuning(tuned, caplog, capsys):
    art = tuned / "tvm"
    manifest = json.loads((art / MANIFEST).read_text())
    assert manifest["built_from"] == "database" and manifest["buckets"] == [8]
    assert 0 < manifest["tuning"]["trials"] <= 16 and manifest["database_records"] >= 1
    spaces = {t["space"] for t in manifest["tuning"]["tasks"] if t["trials"]}
    assert spaces == {"dense"}, manifest["tuning"]["tasks"]  # the costliest kernel, a dense layer, got the round
    assert (art / LIBRARY).exists() and (art / DB_RECORDS).stat().st_size > 0
    with caplog.at_level(logging.INFO, logger="ctrzoo.runtime.tvm"):
        p = runtime.load(tuned, "tvm", threads=1)
    msgs = _messages(caplog)
    assert any("tuning trials performed: 0" in m for m in msgs), msgs
    assert not any("rebuilding" in m or "built " in m for m in msgs), msgs  # loaded, neither tuned nor compiled
    assert p.load_seconds < 10, p.load_seconds
    _agree(p, runtime.load(tuned, "torch"), (1, 7, 20), seed=5)


def test_time_budget_is_respected(bundles, tmp_path):
    from ctrzoo.runtime.tvm.tuning import tune_tvm

    b = tmp_path / "b"
    shutil.copytree(bundles["dcn"], b)
    # the generic rules only (the benchmark's ablation switch): a space that is never exhausted in 15 s
    s = tune_tvm(b, trials=10_000, max_minutes=0.25, buckets=(8,), micro_kernels=False)
    assert s["stopped_by"] == "time budget" and s["tuning_seconds"] < 45, s
    assert not s["micro_kernels"] and {t["space"] for t in s["tasks"]} == {"generic"}, s["tasks"]
    assert s["skipped_tasks"] and all("take" in t for t in s["skipped_tasks"])  # embedding lookups stay untuned


def test_corrupt_or_foreign_library_is_rebuilt(tuned, bundles, tmp_path, caplog):
    b = tmp_path / "corrupt"
    shutil.copytree(tuned, b)
    with open(b / "tvm" / LIBRARY, "r+b") as fh:  # flip bytes inside the library
        fh.seek(4096)
        fh.write(b"\xff" * 64)
    with caplog.at_level(logging.INFO, logger="ctrzoo.runtime.tvm"):
        p = runtime.load(b, "tvm", threads=1)
    msgs = _messages(caplog)
    assert any("does not match its recorded checksum (corrupt)" in m for m in msgs), msgs
    assert any("from the tuning database" in m for m in msgs) and any("trials performed: 0" in m for m in msgs)
    _agree(p, runtime.load(b, "torch"), (1, 9))

    # tvm/ copied from another model's bundle: built from another model.onnx -> rebuilt for this one
    other = tmp_path / "other"
    shutil.copytree(bundles["dcn"], other)
    shutil.rmtree(other / "tvm", ignore_errors=True)
    shutil.copytree(tuned / "tvm", other / "tvm")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ctrzoo.runtime.tvm"):
        p = runtime.load(other, "tvm", threads=1)
    assert any("built for another onnx_sha256" in m for m in _messages(caplog)), _messages(caplog)
    _agree(p, runtime.load(other, "torch"), (1, 9))

    # an unreadable manifest: rebuilt too
    (b / "tvm" / MANIFEST).write_text("{not json")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ctrzoo.runtime.tvm"):
        runtime.load(b, "tvm", threads=1, buckets=(8,))
    assert any("unreadable" in m for m in _messages(caplog))


def test_corrupt_database_is_refused(tuned, tmp_path):
    b = tmp_path / "db"
    shutil.copytree(tuned, b)
    with open(b / "tvm" / DB_RECORDS, "a") as fh:
        fh.write('[0, {"trace": \n')
    (b / "tvm" / LIBRARY).unlink()
    with pytest.raises(BundleError, match=r"database_tuning_record.json:\d+: not a MetaSchedule record"):
        runtime.load(b, "tvm")


def test_out_of_range_ids_are_rejected(bundles):
    p = runtime.load(bundles["deepfm"], "tvm", buckets=BUCKETS)
    x = random_batch(p.layout, 3).as_dict()
    x["sparse"][1, 2] = p.layout.num_embeddings
    with pytest.raises(CtrzooError, match="outside"):
        p.predict(x)
