"""The publish of a dataset or bundle directory: a crash at any step leaves the old or the new one, whole.

Hard kills are real: a child process exits with ``os._exit`` (no cleanup, no ``finally``) at the step.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ctrzoo.atomic as atomic
from ctrzoo.bundle import load_bundle, save_bundle
from ctrzoo.data.dataset import PreparedDataset
from ctrzoo.data.prepare import prepare
from ctrzoo.metadata import ModelBundleMeta, ModelInfo
from ctrzoo.synth import generate

SMALL = {"emb_dim": 4, "mlp": [8]}


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too), by relative path: equal snapshots are equal bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def raws(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("atomic")
    out = {}
    for name, seed in (("old", 1), ("new", 2)):
        out[name] = root / f"{name}.tsv"
        generate("criteo", 600, seed, out[name])
    return out


# A child that publishes a dataset (prepare) or a bundle (save_bundle) and is killed at one step.
CHILD = textwrap.dedent("""
    import os, shutil, sys
    from pathlib import Path
    import ctrzoo.atomic as atomic

    step, what, out, src, ref = sys.argv[1:6]
    out = Path(out)
    real_exchange, real_rename = atomic.exchange, os.rename

    def killed(*_):
        os._exit(9)

    if step == "before-exchange":
        atomic.exchange = killed
    elif step == "after-exchange":  # the new directory is in place, the old one not yet removed
        def exchange(a, b):
            shutil.copytree(a, ref)  # what is about to be published, for the parent to compare
            assert real_exchange(a, b)
            killed()
        atomic.exchange = exchange
    elif step == "between-renames":  # the fallback without an exchange: old renamed away, new not yet in
        atomic.exchange = lambda a, b: False
        def rename(a, b):
            if Path(b) == out:
                killed()
            real_rename(a, b)
        atomic.os.rename = rename
    if what == "dataset":
        from ctrzoo.data.prepare import prepare
        prepare("criteo", [src], out)
    else:
        from ctrzoo.bundle import load_bundle, save_bundle
        from ctrzoo.metadata import ModelBundleMeta, ModelInfo
        from ctrzoo.models import build_model
        b = load_bundle(out)
        model = build_model("deepfm", b.spec.compile().layout, emb_dim=4, mlp=[8])
        save_bundle(out, model, b.spec, ModelBundleMeta(model=ModelInfo(name="deepfm", hparams=model.hparams),
                                                        extra={"note": "new"}))
    sys.exit(3)  # not killed: the step was never reached
""")


def run_child(tmp_path: Path, step: str, what: str, out: Path, src: Path | str = "-") -> Path:
    ref = tmp_path / "published"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, str(script), step, what, str(out), str(src), str(ref)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr[-2000:]
    return ref


@pytest.mark.parametrize("step", ["before-exchange", "after-exchange", "between-renames"])
def test_kill_during_dataset_publish_leaves_old_or_new_dataset(raws, tmp_path, step):
    out = tmp_path / "ds"
    prepare("criteo", [raws["old"]], out)
    old = snapshot(out)
    ref = run_child(tmp_path, step, "dataset", out, raws["new"])
    ds = PreparedDataset.open(out)  # loads; between the renames this renames the old dataset back
    expected = snapshot(ref) if step == "after-exchange" else old
    assert snapshot(out) == expected  # shards, spec, vocabularies, dataset.json: byte for byte
    assert ds.rows("train") + ds.rows("valid") + ds.rows("test") == 600
    assert leftovers(out)  # the killed child left its temporary directories ...
    prepare("criteo", [raws["new"]], out)  # ... which the next publish beside them removes
    assert leftovers(out) == []


@pytest.mark.parametrize("step", ["before-exchange", "after-exchange"])
def test_kill_during_bundle_publish_leaves_old_or_new_bundle(raws, tmp_path, step):
    from ctrzoo.models import build_model

    prepare("criteo", [raws["old"]], tmp_path / "ds")
    spec = PreparedDataset.open(tmp_path / "ds").spec
    out = tmp_path / "bundle"
    model = build_model("deepfm", spec.compile().layout, **SMALL)
    save_bundle(out, model, spec, ModelBundleMeta(model=ModelInfo(name="deepfm", hparams=model.hparams),
                                                  extra={"note": "old"}))
    old = snapshot(out)
    ref = run_child(tmp_path, step, "bundle", out)
    bundle = load_bundle(out)
    assert bundle.meta.extra["note"] == ("new" if step == "after-exchange" else "old")
    assert snapshot(out) == (snapshot(ref) if step == "after-exchange" else old)
    bundle.build_model()


def test_interrupt_between_fallback_renames_puts_the_old_dataset_back(raws, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    prepare("criteo", [raws["old"]], out)
    old = snapshot(out)
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    real_rename, interrupted = os.rename, []

    def rename(a, b):
        if Path(b) == out and not interrupted:
            interrupted.append(a)
            raise KeyboardInterrupt  # Ctrl-C between the two renames
        real_rename(a, b)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        prepare("criteo", [raws["new"]], out)
    monkeypatch.undo()
    assert interrupted and snapshot(out) == old
    assert leftovers(out) == []


def test_without_exchange_the_fallback_still_replaces(raws, tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_RENAMEAT2", None)  # another OS, or a filesystem without RENAME_EXCHANGE
    out = tmp_path / "ds"
    prepare("criteo", [raws["old"]], out)
    prepare("criteo", [raws["new"]], out)
    assert PreparedDataset.open(out).meta.inputs[0].path == str(raws["new"].resolve())
    assert leftovers(out) == []


def test_exchange_swaps_directories_atomically(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("A")
    (b / "f").write_text("B")
    if not atomic.exchange(a, b):
        pytest.skip("this filesystem or kernel has no RENAME_EXCHANGE")
    assert (a / "f").read_text() == "B" and (b / "f").read_text() == "A"


def test_stale_temporaries_of_dead_processes_are_removed_live_ones_kept(raws, tmp_path):
    out = tmp_path / "ds"
    prepare("criteo", [raws["old"]], out)
    gone = dead_pid()
    for name in (f".ds.tmp-{gone}", f".ds.old-{gone}"):
        (tmp_path / name / "train").mkdir(parents=True)
        (tmp_path / name / "train" / "part-00000-000.parquet").write_bytes(b"x" * 1000)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f".ds.tmp-{live.pid}").mkdir()  # a concurrent prepare of the same output
        (tmp_path / ".ds.tmp-notapid").mkdir()  # not ours: never touched
        prepare("criteo", [raws["new"]], out)
        assert leftovers(out) == [f".ds.tmp-{live.pid}", ".ds.tmp-notapid"]
    finally:
        live.kill()
        live.wait()
    assert atomic.clean_stale(out) == [tmp_path / f".ds.tmp-{live.pid}"]


def test_reader_recovers_a_dataset_renamed_away_by_a_dead_writer(raws, tmp_path):
    out = tmp_path / "ds"
    prepare("criteo", [raws["old"]], out)
    old = snapshot(out)
    gone = dead_pid()
    os.rename(out, tmp_path / f".ds.old-{gone}")  # what the fallback's first rename leaves on a hard kill
    (tmp_path / f".ds.tmp-{gone}").mkdir()  # and its unfinished new directory (no dataset.json)
    assert snapshot(PreparedDataset.open(out).path) == old
    assert leftovers(out) == [f".ds.tmp-{gone}"]
