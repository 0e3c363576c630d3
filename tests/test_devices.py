"""Devices (ctrzoo.devices): naming a device, its one-line errors, the precision policy, batches copied ahead,
and the device-aware paths of the training loop, evaluation and bundles, exercised on a CPU (no test needs a
GPU: on a machine without one, the GPU itself is not exercised)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ctrzoo.bundle import load_bundle
from ctrzoo.cli import main
from ctrzoo.data.dataset import PreparedDataset
from ctrzoo.data.loader import Batch, BatchLoader
from ctrzoo.devices import Precision, bf16_default, copied_ahead, resolve_device, to_device
from ctrzoo.errors import CtrzooError
from ctrzoo.evaluate import evaluate_bundle
from ctrzoo.train.loop import TrainingLoop
from ctrzoo.train.run import train_bundle
from ctrzoo.train.trainer import TrainConfig, Trainer

SMALL = {"emb_dim": 8, "mlp": [16]}
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine-without-CUDA errors")


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine that says it has two CUDA devices (only names are resolved: nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


def test_device_names_resolve(two_gpus, monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("CUDA:1") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # under torchrun: each process its local rank's GPU
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 1)
    with pytest.raises(CtrzooError, match="names one GPU, but this is one of several training processes"):
        resolve_device("cuda:0")


def test_a_gpu_index_out_of_range_is_one_line(two_gpus, monkeypatch):
    with pytest.raises(CtrzooError) as err:
        resolve_device("cuda:2")
    assert str(err.value) == ("--device cuda:2: cuda:2 is out of range: this machine has 2 CUDA device(s) "
                              "(cuda:0..cuda:1)")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(CtrzooError, match="local rank 2 is out of range"):
        resolve_device("cuda")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda:-1", "mps"])
def test_unknown_device_names_are_refused(name):
    with pytest.raises(CtrzooError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device(name)


@no_cuda
def test_without_cuda_auto_is_the_cpu_and_cuda_fails(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(CtrzooError, match=f"--device {name}: no CUDA device is available here"):
            resolve_device(name)
    with pytest.raises(CtrzooError, match="no CUDA device"):
        TrainConfig(device="cuda")  # before any data is read


@no_cuda
@pytest.mark.parametrize("command", ["train", "evaluate", "compare", "train-retrieval"])
def test_every_command_fails_in_one_line_on_a_missing_gpu(command, synth_prepared, tmp_path, capsys):
    data = str(synth_prepared["criteo" if command != "train-retrieval" else "taobao"])
    argv = {"train": ["train", "--model", "deepfm", "--data", data, "--out", str(tmp_path / "b")],
            "evaluate": ["evaluate", "--bundle", str(tmp_path / "b"), "--data", data],
            "compare": ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--data", data,
                        "--report", str(tmp_path / "r")],
            "train-retrieval": ["train-retrieval", "--data", data, "--out", str(tmp_path / "t")]}[command]
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ctrzoo {command}: error: --device cuda: no CUDA device is available here "
                   f"(torch {torch.__version__}, CUDA build none); use --device cpu or auto"]
    assert not (tmp_path / "b").exists() and not (tmp_path / "t").exists()


def test_precision_policy(monkeypatch):
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert Precision.training(cuda, True) == Precision(cuda, torch.bfloat16, scaled=False)
    assert Precision.training(cuda, False) == Precision(cuda, torch.float16, scaled=True)  # fp16 needs loss scaling
    assert Precision.training(cpu, True).name == "bf16" and not Precision.training(cpu, True).scaled
    assert Precision.training(cpu, False).name == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert bf16_default(cuda) is False  # an older GPU: fp16 + GradScaler by default
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert bf16_default(cuda) is True
    assert not Precision.training(cpu, False).scaler().is_enabled()


def test_batches_are_copied_one_ahead_of_the_step():
    pulled: list[int] = []

    def produce():
        for i in range(4):
            pulled.append(i)
            yield torch.full((2,), i)

    seen = []
    for t in copied_ahead(produce(), torch.device("cpu")):
        seen.append((int(t[0]), len(pulled)))
    assert seen == [(0, 2), (1, 3), (2, 4), (3, 4)]  # batch i+1 is already on its way while i is used
    assert list(copied_ahead(iter([]), torch.device("cpu"))) == []


def test_a_batch_moves_as_a_whole_and_stays_put_on_its_device():
    b = Batch(torch.ones(3, 2, dtype=torch.long), torch.ones(3, 1), torch.zeros(3, 0, 0, dtype=torch.long),
              torch.ones(3), np.array(["u1", "u2", "u3"], dtype=object))
    moved = to_device(b, torch.device("cpu"))
    assert moved.sparse is b.sparse and moved.user_id is b.user_id  # on its device already: nothing copied
    assert to_device((b.label, "x"), torch.device("cpu"))[1] == "x"
    as_double = b.to(torch.float64)  # Batch.to forwards to every tensor (a device or dtype)
    assert as_double.dense.dtype == torch.float64 and as_double.user_id is b.user_id


class Recorded:
    """A batch that records where the loop moved it."""

    def __init__(self, i):
        self.i, self.moved_to = i, None

    def to(self, device, non_blocking=False):
        self.moved_to = (device, non_blocking)
        return self


class ScaledToy(TrainingLoop):
    def __init__(self, precision):
        torch.manual_seed(0)
        model = nn.ModuleDict({"table": nn.Embedding(20, 8, sparse=True), "out": nn.Linear(8, 1)})
        super().__init__(model, epochs=1, lr=0.05, patience=1, progress=False, precision=precision)
        self.steps_per_epoch, self.seen = 5, []

    def batches(self):
        return (Recorded(i) for i in range(5))

    def loss(self, batch):
        self.seen.append(batch)
        ids = torch.arange(4) + 4 * batch.i
        with self.precision.autocast():
            pred = self.model["out"](self.model["table"](ids)).squeeze(-1)
        loss = ((pred.float() - 1.0) ** 2).mean()
        return loss, loss, 4

    def validate(self):
        return {}

    def score(self, metrics):
        return None

    def record(self, epoch, loss_sum, n_seen, steps, seconds, metrics):
        return {"epoch": epoch, "loss": loss_sum / n_seen}


def test_the_loop_moves_every_batch_and_steps_through_a_loss_scaler():
    cpu = torch.device("cpu")
    plain = ScaledToy(Precision(cpu, None))
    plain.fit()
    assert [b.moved_to for b in plain.seen] == [(cpu, False)] * 5  # every batch, by the loop, before its step
    # fp16 autocast with a GradScaler, the CUDA fallback's path, here on the CPU. At the default scale (2^16) the
    # first backward passes overflow fp16: those steps are skipped (nothing changes) and the scale halves
    overflowing = ScaledToy(Precision(cpu, torch.float16, scaled=True))
    overflowing.fit()
    assert overflowing.scaler.get_scale() == 2.0**14  # two steps skipped
    assert overflowing.loop_state()["scaler"]["scale"] == 2.0**14  # checkpoints keep the scale
    # at a scale that does not overflow, the sparse table's gradient is unscaled before RowSparseAdam steps: the
    # weights follow the fp32 run to fp16's precision
    scaled = ScaledToy(Precision(cpu, torch.float16, scaled=True))
    scaled.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    scaled.fit()
    assert scaled.scaler.get_scale() == 256.0
    for name, want in plain.model.state_dict().items():
        got = scaled.model.state_dict()[name]
        assert torch.allclose(got, want, atol=1e-3, rtol=0), name
    assert not torch.equal(scaled.model["table"].weight, ScaledToy(Precision(cpu, None)).model["table"].weight)


def test_a_cpu_run_through_the_device_paths_writes_a_bundle_that_loads_and_scores_the_same(synth_prepared, tmp_path):
    data = synth_prepared["criteo"]
    ds = PreparedDataset.open(data)
    cfg = TrainConfig(model="deepfm", hparams=SMALL, batch_size=512, max_steps=8, device="cpu", bf16=False)
    assert cfg.device == "cpu"
    trainer = Trainer(cfg, ds, tmp_path / "work", progress=False)
    trainer.fit()
    assert trainer.device == torch.device("cpu") and not trainer.train_loader.pin_memory  # pinned: CUDA only
    meta = train_bundle("deepfm", data, tmp_path / "b", overrides={"max_steps": 8, "batch_size": 512, "device": "cpu",
                                                                    "hparams": SMALL}, progress=False, verbose=False)
    assert meta.train["device"] == "cpu"  # the bundle records where it was trained
    weights = torch.load(tmp_path / "b" / "weights.pt", weights_only=True)  # no map_location needed
    assert all(t.device.type == "cpu" for t in weights.values())
    bundle = load_bundle(tmp_path / "b")
    model = bundle.build_model()
    loader = BatchLoader(ds, "test", 4096, shuffle=False)
    batch = next(iter(loader))
    moved = to_device(model, torch.device("cpu"))  # a model moved around is still the saved one
    with torch.inference_mode():
        assert torch.equal(moved(batch.sparse, batch.dense, batch.seq), model(batch.sparse, batch.dense, batch.seq))
    m = evaluate_bundle(bundle, ds, device="cpu")
    assert m["rows"] == ds.rows("test") and m["auc"] == pytest.approx(meta.metrics.test["auc"], abs=1e-6)


def test_a_batch_keeps_its_sample_weights_when_moved():
    import torch

    from ctrzoo.data.loader import Batch

    b = Batch(torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 1), torch.zeros(3, 0, 0, dtype=torch.long),
              torch.ones(3), None, torch.tensor([1.0, 2.0, 3.0]))
    moved = b.to("cpu")
    assert moved.weight is not None and moved.weight.tolist() == [1.0, 2.0, 3.0]
