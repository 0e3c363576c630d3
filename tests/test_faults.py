"""Faults on disk (full disk, damaged shards) and the edge cases a new user hits first."""

from __future__ import annotations

import errno
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import ctrzoo.train.trainer as trainer_mod
from ctrzoo.atomic import DiskError, disk_reason
from ctrzoo.bundle import load_bundle
from ctrzoo.cli import main
from ctrzoo.compare import compare
from ctrzoo.data.dataset import PreparedDataset, verify
from ctrzoo.data.loader import BatchLoader
from ctrzoo.data.prepare import PrepareOptions, prepare
from ctrzoo.data.splits import SplitConfig
from ctrzoo.errors import CtrzooError, DatasetError
from ctrzoo.evaluate import evaluate_bundle
from ctrzoo.synth import generate
from ctrzoo.train.run import train_bundle
from ctrzoo.train.trainer import TrainConfig, Trainer

SMALL = {"emb_dim": 8, "mlp": [16]}
TINY_RUN = {"epochs": 1, "max_steps": 2, "batch_size": 512, "hparams": SMALL}


def enospc(*_, **__):
    raise OSError(errno.ENOSPC, "No space left on device")


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith(f"ctrzoo {command}: error: ")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "criteo.tsv"
    generate("criteo", 3000, 7, path)
    return path


@pytest.fixture(scope="module")
def criteo_bundle(synth_prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults_bundle") / "b"
    train_bundle("deepfm", synth_prepared["criteo"], out, overrides=TINY_RUN, progress=False, verbose=False)
    return out


@pytest.fixture
def damaged(synth_prepared, tmp_path) -> Path:
    """A private copy of the prepared criteo dataset, to damage."""
    return Path(shutil.copytree(synth_prepared["criteo"], tmp_path / "ds"))


# -- a full disk -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "words"), [(errno.ENOSPC, "the disk is full"),
                                             (errno.EDQUOT, "quota"), (errno.EIO, "I/O error")])
def test_disk_faults_are_recognised_also_when_wrapped(code, words):
    assert words in disk_reason(OSError(code, "x"))
    assert words in disk_reason(DiskError("x", reason=disk_reason(OSError(code, "x"))))
    try:  # torch.save reports a failed write as a RuntimeError raised while handling the OSError
        try:
            raise OSError(code, "x")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None
    except RuntimeError as exc:
        exc.__suppress_context__ = False
        assert words in disk_reason(exc)
    assert disk_reason(OSError(errno.ENOENT, "x")) is None and disk_reason(ValueError("x")) is None


def test_full_disk_during_prepare_is_one_line_and_leaves_nothing(raw, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ds"
    monkeypatch.setattr(pq.ParquetWriter, "write_table", enospc)
    with pytest.raises(DiskError, match=rf"{out}: cannot write the prepared dataset \(the raw test rows "
                                        r"raw/test-00000.parquet\): the disk is full; .* was not created"):
        prepare("criteo", [raw], out)
    assert list(tmp_path.iterdir()) == []  # no temporary directory, no half-written shard
    assert main(["prepare", "criteo", "--input", str(raw), "--out", str(out)]) == 2
    assert "the disk is full" in one_line_error(capsys, "prepare")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_while_spilling_names_the_spill_file_and_keeps_the_old_dataset(raw, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    prepare("criteo", [raw], out, options=PrepareOptions(keep_raw_test=False))
    before = (out / "dataset.json").read_bytes()
    monkeypatch.setattr(pa.ipc.RecordBatchFileWriter, "write_table", enospc)
    with pytest.raises(DiskError, match=r"the spill file \(pass 1's parsed rows\) spill/file-00000/block-000000"
                                        r".arrow\): the disk is full; .* was left as it was"):
        prepare("criteo", [raw], out, options=PrepareOptions(spill=True))
    assert (out / "dataset.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def _torch_save_fills_the_disk(obj, f):
    """What torch.save does on a full disk: some bytes written, then a RuntimeError wrapping the OSError."""
    f.write(b"\0" * 4096)
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 512")  # noqa: B904


def test_full_disk_while_checkpointing_leaves_no_tmp_and_does_not_block_the_retry(synth_prepared, tmp_path,
                                                                                 monkeypatch, capsys):
    out = tmp_path / "b"
    args = ["train", "--model", "deepfm", "--data", str(synth_prepared["criteo"]), "--out", str(out),
            "--epochs", "1", "--max-steps", "2", "--emb-dim", "8", "--mlp", "16"]
    monkeypatch.setattr(trainer_mod.torch, "save", _torch_save_fills_the_disk)
    assert main(args) == 2
    line = one_line_error(capsys, "train")
    assert f"{out}.work/checkpoint.pt: cannot write the training checkpoint: the disk is full" in line
    assert not list((tmp_path / "b.work").glob("*checkpoint*")) and not out.exists()
    monkeypatch.undo()
    assert main(args) == 0  # space freed: the same command runs, no stale checkpoint in the way
    load_bundle(out)


def _torch_save_to_a_path_on_a_full_disk(obj, f):
    """torch.save to a path name on a full disk: a bare RuntimeError, the OS error lost."""
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1189760 vs 1189712")


@pytest.mark.parametrize("fault", ["OSError", "bare torch error"])
def test_full_disk_while_saving_the_bundle_keeps_the_checkpoint_for_resume(synth_prepared, tmp_path, monkeypatch,
                                                                           fault):
    import collections

    import ctrzoo.atomic as atomic
    import ctrzoo.bundle as bundle_mod

    class TorchWithFullDisk:  # torch.save fails in save_bundle only, not in the trainer's checkpoints
        save = staticmethod(enospc if fault == "OSError" else _torch_save_to_a_path_on_a_full_disk)

        def __getattr__(self, name):
            return getattr(torch, name)

    out = tmp_path / "b"
    monkeypatch.setattr(bundle_mod, "torch", TorchWithFullDisk())
    if fault != "OSError":  # recognised by the filesystem being (nearly) full
        usage = collections.namedtuple("usage", "total used free")
        monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: usage(1 << 30, 1 << 30, 4096))
    with pytest.raises(DiskError, match=rf"{out}: cannot write the model bundle: the disk is full.*"
                                        r"`--resume` continues from .*b.work/checkpoint.pt"):
        train_bundle("deepfm", synth_prepared["criteo"], out, overrides=TINY_RUN, progress=False, verbose=False)
    assert (tmp_path / "b.work" / "checkpoint.pt").exists() and not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    monkeypatch.undo()
    meta = train_bundle("deepfm", synth_prepared["criteo"], out, overrides=TINY_RUN, resume=True, progress=False,
                        verbose=False)
    assert len(meta.history) == 1  # the finished epoch was not trained again
    load_bundle(out).build_model()
    assert not (tmp_path / "b.work").exists()


# -- damaged datasets ------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "empty", "bit flip"])
def test_damaged_shard_is_named_by_loader_and_info_verify(damaged, damage, capsys):
    shard = PreparedDataset.open(damaged).shards("train")[0]
    data = bytearray(shard.read_bytes())
    if damage == "bit flip":  # the footer intact: caught by the page CRCs prepare writes
        data[len(data) // 3] ^= 0x10
        shard.write_bytes(data)
        with pytest.raises(DatasetError, match=rf"{shard}: damaged Parquet file, row group \d+ \("):
            for _ in BatchLoader(damaged, "train", shuffle=False):
                pass
    else:
        shard.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
        with pytest.raises(DatasetError, match=rf"{shard}: damaged Parquet file \("):
            BatchLoader(damaged, "train")
    assert main(["info", str(damaged)]) == 0  # plain info stays fast: reads dataset.json only
    capsys.readouterr()
    assert main(["info", "--verify", str(damaged)]) == 2
    out = capsys.readouterr()
    damaged_lines = [line for line in out.out.splitlines() if line.startswith("damaged: ")]
    assert len(damaged_lines) == 1 and damaged_lines[0].startswith(f"damaged: {shard}: damaged Parquet file")
    assert "1 damaged file(s)" in out.err


def test_info_verify_passes_a_sound_dataset_and_checks_row_counts(damaged, capsys):
    assert main(["info", "--verify", str(damaged)]) == 0
    assert "verified" in capsys.readouterr().out
    meta = json.loads((damaged / "dataset.json").read_text())
    meta["splits"]["valid"]["rows"] += 1
    (damaged / "dataset.json").write_text(json.dumps(meta))
    want = meta["splits"]["valid"]["rows"]
    assert verify(damaged) == [f"{damaged / 'valid'}: {want - 1} rows in the shards, dataset.json says {want}"]
    raw = damaged / "raw" / "test.parquet"
    t = pq.read_table(raw)
    pq.write_table(t.slice(0, t.num_rows - 5), raw)  # a sound file with rows missing
    assert verify(damaged)[1] == f"{raw}: {t.num_rows - 5} raw test rows, dataset.json says the test split has " \
                                 f"{t.num_rows}"
    assert main(["info", "--verify", str(damaged)]) == 2


def test_damaged_raw_test_file_is_named_by_evaluate_and_compare(damaged, criteo_bundle, tmp_path):
    raw = damaged / "raw" / "test.parquet"
    raw.write_bytes(raw.read_bytes()[:100])
    # the bundle's spec differs from this copy's only by path: force the raw path by changing the spec
    bundle = load_bundle(criteo_bundle)
    spec_json = json.loads((damaged / "spec.json").read_text())
    spec_json["features"] = [f for f in spec_json["features"] if f["name"] != "C3"]
    (damaged / "spec.json").write_text(json.dumps(spec_json))
    with pytest.raises(DatasetError, match=rf"{raw}: damaged Parquet file"):
        evaluate_bundle(bundle, PreparedDataset.open(damaged))
    with pytest.raises(DatasetError, match=rf"{raw}: damaged Parquet file"):
        compare([criteo_bundle, criteo_bundle], damaged, n_boot=10)


# -- a new user's edge cases -----------------------------------------------------------------------


def test_evaluate_of_a_criteo_bundle_on_avazu_data_is_one_clear_line(criteo_bundle, tmp_path, capsys):
    raw = tmp_path / "avazu.csv"
    generate("avazu", 1500, 1, raw)
    prepare("avazu", [raw], tmp_path / "avazu")
    with pytest.raises(CtrzooError, match=rf"bundle {criteo_bundle} was trained on criteo data, "
                                          rf"{tmp_path / 'avazu'} is avazu data"):
        evaluate_bundle(load_bundle(criteo_bundle), PreparedDataset.open(tmp_path / "avazu"))
    assert main(["evaluate", "--bundle", str(criteo_bundle), "--data", str(tmp_path / "avazu")]) == 2
    assert "evaluate it on data prepared from criteo logs" in one_line_error(capsys, "evaluate")


def test_five_row_file_warns_trains_without_early_stopping_and_leaves_nothing(sample_rows, tmp_path, capsys):
    five = tmp_path / "five.tsv"
    five.write_text("".join((sample_rows / "criteo_sample.tsv").read_text().splitlines(keepends=True)[:5]))
    assert main(["prepare", "criteo", "--input", str(five), "--out", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr()
    assert "ctrzoo prepare: warning: the valid split is empty: no early stopping" in out.err
    assert "ctrzoo prepare: warning: the test split is empty: no test metrics" in out.err
    assert "  warning: the valid split is empty" in out.out  # also in the summary (and `ctrzoo info`)
    bundle = tmp_path / "b"
    args = ["train", "--model", "deepfm", "--data", str(tmp_path / "ds"), "--out", str(bundle), "--epochs", "2",
            "--emb-dim", "4", "--mlp", "8"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "has no validation rows: no early stopping, every epoch runs" in out.err
    assert f"deepfm -> {bundle}: no test rows, no test metrics" in out.out
    assert load_bundle(bundle).meta.metrics.test == {"rows": 0}
    assert not (tmp_path / "b.work").exists()
    assert main(args) == 0  # and again, over the first bundle


def test_too_small_training_split_is_refused_before_anything_is_written(sample_rows, tmp_path, capsys):
    five = tmp_path / "five.tsv"
    five.write_text("".join((sample_rows / "criteo_sample.tsv").read_text().splitlines(keepends=True)[:5]))
    prepare("criteo", [five], tmp_path / "ds", options=PrepareOptions(split=SplitConfig("order", (0.2, 0.4, 0.4))))
    assert PreparedDataset.open(tmp_path / "ds").rows("train") == 1
    assert main(["train", "--model", "deepfm", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "b")]) == 2
    assert "the training split has 1 row(s); at least 2 are needed" in one_line_error(capsys, "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "five.tsv"]


def test_a_failed_train_does_not_block_the_retry(synth_prepared, tmp_path, monkeypatch):
    import ctrzoo.train.run as run_mod

    out = tmp_path / "b"

    def broken(*_, **__):
        raise ValueError("a bug after training")

    monkeypatch.setattr(run_mod, "save_bundle", broken)
    with pytest.raises(ValueError, match="a bug after training"):
        train_bundle("deepfm", synth_prepared["criteo"], out, overrides=TINY_RUN, progress=False, verbose=False)
    assert not (tmp_path / "b.work").exists()  # resuming would hit the same bug: nothing kept to block a retry
    monkeypatch.undo()
    train_bundle("deepfm", synth_prepared["criteo"], out, overrides=TINY_RUN, progress=False, verbose=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(CtrzooError, match="other exists and is not a model bundle: refusing to replace it"):
        train_bundle("deepfm", synth_prepared["criteo"], tmp_path / "other", overrides=TINY_RUN, progress=False)
    assert not (tmp_path / "other.work").exists()  # refused before training, not after


@pytest.fixture(scope="module")
def one_class_valid(tmp_path_factory) -> Path:
    """A dataset whose validation split (rows 80-90% in file order) has no clicks."""
    root = tmp_path_factory.mktemp("oneclass")
    raw = root / "c.tsv"
    generate("criteo", 3000, 9, raw)
    lines = raw.read_text().splitlines(keepends=True)
    lines[2400:2700] = ["0" + line[1:] for line in lines[2400:2700]]
    raw.write_text("".join(lines))
    prepare("criteo", [raw], root / "ds", options=PrepareOptions(split=SplitConfig("order", (0.8, 0.1, 0.1))))
    return root / "ds"


def test_one_class_validation_split_says_why_auc_is_undefined(one_class_valid, tmp_path, capsys):
    ds = PreparedDataset.open(one_class_valid)
    assert ds.rows("valid") == 300 and ds.meta.splits["valid"].positives == 0
    assert "the valid split has only negatives (no clicks): its AUC is undefined" in ds.meta.warnings
    assert main(["train", "--model", "deepfm", "--data", str(one_class_valid), "--out", str(tmp_path / "b"),
                 "--epochs", "2", "--batch-size", "512", "--emb-dim", "4", "--mlp", "8"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("valid AUC undefined: the validation split has only negatives (300 rows, no clicks) "
                         "(epochs ranked by valid logloss)") == 2
    assert "valid AUC nan" not in printed


def test_early_stopping_ranks_by_logloss_when_valid_auc_is_undefined(one_class_valid, tmp_path):
    cfg = TrainConfig(model="deepfm", hparams=SMALL, epochs=5, batch_size=512, patience=2)
    t = Trainer(cfg, PreparedDataset.open(one_class_valid), tmp_path / "w", progress=False)
    lossy = [0.30, 0.20, 0.25, 0.26, 0.10]
    stops = []
    for epoch, loss in enumerate(lossy):
        t.epoch = epoch
        stops.append(t.early_stopping({"auc": math.nan, "logloss": loss}))
    assert stops == [False, False, False, True, False]  # two epochs worse than 0.20: stop
    assert t.best["epoch"] == 4 and t.best["score"] == -0.10  # the last call improved again
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(cfg.lr * cfg.lr_decay**2)


def test_checkpoint_round_trips_the_best_score(one_class_valid, tmp_path):
    cfg = TrainConfig(model="deepfm", hparams=SMALL, epochs=2, batch_size=512, max_steps=3)
    first = Trainer(cfg, PreparedDataset.open(one_class_valid), tmp_path / "w", progress=False)
    first.fit()
    state = torch.load(tmp_path / "w" / "checkpoint.pt", weights_only=True)
    assert state["best_score"] == -first.history[0]["valid_logloss"]
    again = Trainer(cfg, PreparedDataset.open(one_class_valid), tmp_path / "w", progress=False)
    again._load_checkpoint()
    assert again.best["score"] == first.best["score"] and np.isfinite(again.best["score"])
