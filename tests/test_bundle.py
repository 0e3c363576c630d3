"""Bundle integrity: the manifest is checked on every load whatever the backend, golden rows are reproduced
by every backend, only regular files inside the bundle are opened, and old bundles load (with a warning)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctrzoo import runtime
from ctrzoo.bundle import GOLDEN_FILE, load_bundle, sha256_file
from ctrzoo.cli import main
from ctrzoo.errors import BundleError, SpecError
from ctrzoo.export import export_onnx
from ctrzoo.features import FeatureSpec
from serving.model_state import load_model


@pytest.fixture
def copy(serving_bundles, tmp_path):
    def make(name: str, as_name: str = "b"):
        out = tmp_path / as_name
        shutil.copytree(serving_bundles[name], out)
        return out

    return make


def _meta(b):
    return json.loads((b / "bundle.json").read_text())


def _write_meta(b, meta) -> None:
    (b / "bundle.json").write_text(json.dumps(meta))


def _agree(b, *names) -> None:
    """Make the manifest agree with the files as they are now (a consistent but wrong bundle)."""
    meta = _meta(b)
    for name in names:
        meta["files"][name] = sha256_file(b / name)
    _write_meta(b, meta)


def test_saved_bundle_records_every_file_and_golden_rows(serving_bundles):
    b = serving_bundles["din"]
    meta = _meta(b)
    assert meta["format_version"] == 2
    assert {"weights.pt", "spec.json", "golden.json", "model.onnx"} <= set(meta["files"])
    for name, digest in meta["files"].items():
        assert sha256_file(b / name) == digest, name
    golden = json.loads((b / GOLDEN_FILE).read_text())
    assert len(golden["rows"]) == len(golden["scores"]) == 8
    assert {} in golden["rows"] and len(set(golden["scores"])) > 1
    assert meta["artifacts"]["onnx"]["golden_max_abs_diff"] <= 1e-5


@pytest.mark.parametrize("damage", ["half", "empty"])
def test_truncated_or_empty_weights_are_refused_with_the_onnxruntime_backend(copy, damage):
    b = copy("deepfm")
    data = (b / "weights.pt").read_bytes()
    (b / "weights.pt").write_bytes(data[: len(data) // 2] if damage == "half" else b"")
    with pytest.raises(BundleError,
                       match=r"weights.pt: checksum differs from the one recorded in the bundle's manifest"):
        load_model(b, "onnxruntime")
    with pytest.raises(BundleError, match=r"weights.pt: checksum differs"):
        runtime.load(b, "onnxruntime")


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "onnxruntime-int8", "fused", "tvm"])
def test_every_backend_reproduces_the_golden_rows_or_refuses_the_bundle(copy, backend):
    if backend == "tvm":
        pytest.importorskip("tvm", reason="apache-tvm is not installed")
    b = copy("deepfm")
    load_model(b, backend)  # reproduces them
    golden = json.loads((b / GOLDEN_FILE).read_text())
    golden["scores"] = [s + 0.2 for s in golden["scores"]]
    (b / GOLDEN_FILE).write_text(json.dumps(golden))
    _agree(b, GOLDEN_FILE)
    with pytest.raises(BundleError, match=rf"{b}: does not reproduce its golden rows with the {backend} backend: "
                                          r"max \|diff\| 2\.0\de-01"):
        load_model(b, backend)


def test_weights_of_another_training_run_are_refused_even_with_a_consistent_manifest(copy, serving_bundles):
    b = copy("deepfm")
    shutil.copy(serving_bundles["deepfm2"] / "weights.pt", b / "weights.pt")
    _agree(b, "weights.pt")
    with pytest.raises(BundleError, match=r"does not reproduce its golden rows with the torch backend: max \|diff\|"):
        load_model(b, "torch")


def test_model_onnx_not_in_the_manifest_is_refused(copy):
    b = copy("deepfm")
    meta = _meta(b)
    del meta["files"]["model.onnx"]
    _write_meta(b, meta)
    with pytest.raises(BundleError, match=r"model.onnx: not recorded in the bundle's manifest .*ctrzoo export"):
        load_bundle(b)


def test_fifo_bundle_json_is_refused_at_once(tmp_path):
    b = tmp_path / "b"
    b.mkdir()
    os.mkfifo(b / "bundle.json")
    outcome: list = []

    def load() -> None:
        try:
            load_bundle(b)
        except BundleError as exc:
            outcome.append(exc)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(timeout=5)
    assert not t.is_alive(), "load_bundle blocked on a FIFO"
    assert len(outcome) == 1 and str(outcome[0]) == f"{b / 'bundle.json'}: not a regular file"


def test_fifo_in_place_of_a_bundle_file_is_refused(copy):
    b = copy("deepfm")
    (b / "weights.pt").unlink()
    os.mkfifo(b / "weights.pt")
    with pytest.raises(BundleError, match=r"weights.pt: not a regular file"):
        load_bundle(b)


def test_a_path_too_long_is_a_bundle_error_naming_it(tmp_path):
    path = tmp_path / ("x" * 5000)
    with pytest.raises(BundleError,
                       match=r"x+\.\.\.x+ \(\d+ characters\): cannot read the bundle \(File name too long\)"):
        load_bundle(path)


def _spec_with_vocab_file(rel: str) -> dict:
    return {"format_version": 1, "label": "label", "features": [
        {"kind": "categorical", "name": "city", "vocab": {"file": rel, "size": 1}}]}


@pytest.mark.parametrize("rel", ["../outside.parquet", "vocab/../../outside.parquet", "/etc/passwd", ""])
def test_vocabulary_path_must_stay_inside_the_directory(tmp_path, rel):
    root = tmp_path / "d"
    (root / "vocab").mkdir(parents=True)
    pq.write_table(pa.table({"value": ["a"], "count": [1]}), tmp_path / "outside.parquet")
    with pytest.raises(SpecError, match=r"must be a relative path inside") as info:
        FeatureSpec.from_dict(_spec_with_vocab_file(rel), root / "vocab")
    assert info.value.field == "city"


def test_vocabulary_symlink_out_of_the_directory_or_fifo_is_refused(tmp_path):
    root = tmp_path / "d"
    (root / "vocab").mkdir(parents=True)
    pq.write_table(pa.table({"value": ["a"], "count": [1]}), tmp_path / "outside.parquet")
    os.symlink(tmp_path / "outside.parquet", root / "vocab" / "city.parquet")
    with pytest.raises(SpecError, match=r"leads outside") as info:
        FeatureSpec.from_dict(_spec_with_vocab_file("vocab/city.parquet"), root / "vocab")
    assert info.value.field == "city"
    os.mkfifo(root / "vocab" / "fifo.parquet")
    with pytest.raises(SpecError, match=r"is not a regular file"):
        FeatureSpec.from_dict(_spec_with_vocab_file("vocab/fifo.parquet"), root / "vocab")
    pq.write_table(pa.table({"value": ["a"], "count": [1]}), root / "vocab" / "ok.parquet")
    assert len(FeatureSpec.from_dict(_spec_with_vocab_file("vocab/ok.parquet"), root / "vocab")["city"].vocab) == 1


def test_bundle_with_a_vocabulary_path_outside_is_refused(copy):
    b = copy("deepfm")
    spec = json.loads((b / "spec.json").read_text())
    spec["features"][0]["vocab"] = {"file": "../../etc/passwd", "size": 1}
    (b / "spec.json").write_text(json.dumps(spec))
    _agree(b, "spec.json")
    name = spec["features"][0]["name"]
    with pytest.raises(BundleError,
                       match=rf"bad feature spec: field '{name}': vocabulary file '../../etc/passwd' must"):
        load_bundle(b)


def test_format_1_bundle_loads_with_a_warning_and_export_upgrades_it(copy, caplog):
    b = copy("deepfm")
    meta = _meta(b)
    meta["format_version"] = 1
    del meta["files"]
    _write_meta(b, meta)
    (b / GOLDEN_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="ctrzoo.bundle"):
        bundle = load_bundle(b)
    assert bundle.golden() is None
    assert "bundle format 1 has no integrity manifest" in caplog.text and f"ctrzoo export --bundle {b}" in caplog.text
    load_model(b, "onnxruntime")  # served, unchecked
    record = export_onnx(b)
    meta = _meta(b)
    assert meta["format_version"] == 2 and record.golden_max_abs_diff <= 1e-5
    assert {"weights.pt", "spec.json", "golden.json", "model.onnx"} <= set(meta["files"])
    load_model(b, "onnxruntime")
    (b / "weights.pt").write_bytes(b"")
    with pytest.raises(BundleError, match="weights.pt: checksum differs"):
        load_bundle(b)


def test_serve_with_a_bad_setting_is_one_line_before_uvicorn_starts(copy, capsys, monkeypatch):
    import uvicorn

    def never(*args, **kwargs):
        raise AssertionError("uvicorn must not start")

    monkeypatch.setattr(uvicorn, "run", never)
    for name in ("CTRZOO_BUNDLE", "CTRZOO_BACKEND", "CTRZOO_THREADS", "CTRZOO_RETRIEVAL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CTRZOO_UNKNOWN_FEATURES", "rejct")
    assert main(["serve", "--bundle", str(copy("deepfm")), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ctrzoo serve: error: ") and "CTRZOO_UNKNOWN_FEATURES" in err and err.count("\n") == 1
    assert "CTRZOO_BUNDLE" not in os.environ  # nothing half-set


def test_serve_on_an_unexported_bundle_is_one_line(copy, capsys):
    b = copy("deepfm")
    (b / "model.onnx").unlink()
    meta = _meta(b)
    del meta["files"]["model.onnx"]
    del meta["artifacts"]
    _write_meta(b, meta)
    assert main(["serve", "--bundle", str(b), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err == (f"ctrzoo serve: error: {b} has no model.onnx: run `ctrzoo export --bundle {b}` or use "
                   "--backend torch\n")
    c = copy("deepfm", "c")
    (c / "model.onnx").unlink()  # still listed in the manifest
    assert main(["serve", "--bundle", str(c), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"model.onnx: missing; run `ctrzoo export --bundle {c}` first" in err


def test_load_recovers_a_bundle_renamed_away_by_a_writer_killed_mid_publish(copy, tmp_path):
    """Where the atomic exchange is unsupported, publishing renames the old bundle away first; a hard kill
    there leaves only ``.b.old-PID``: loading renames it back instead of reporting no bundle."""
    import subprocess
    import sys

    b = copy("deepfm")
    version = load_bundle(b).version
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    os.rename(b, tmp_path / f".b.old-{gone.pid}")
    assert load_bundle(b).version == version
    assert not (tmp_path / f".b.old-{gone.pid}").exists()


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: what a malicious weights.pt would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_payload_in_weights_never_runs(copy, tmp_path):
    """weights.pt is read with ``weights_only=True``: a payload, even one the manifest agrees with, is refused
    before any of its code runs."""
    import torch

    b = copy("deepfm")
    marker = tmp_path / "payload_ran"
    torch.save({"w": _Payload(marker)}, b / "weights.pt")
    _agree(b, "weights.pt")
    with pytest.raises(BundleError, match="weights.pt: cannot read weights"):
        load_bundle(b).build_model()
    with pytest.raises(BundleError):
        load_model(b, "torch")
    assert not marker.exists()
