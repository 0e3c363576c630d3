"""The command line: choices from the registries, list options, --version, help on every option, ``info``
on datasets and bundles, the early-stopping line, and no import cycle through the CLI."""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ctrzoo
from ctrzoo.cli import ListOf, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--model", "deepfm", "--data", "d", "--out", "o"]
TINY = {"emb_dim": 4, "mlp": [8]}


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _refused(argv: list[str], capsys) -> str:
    """argparse's refusal: exit status 2 and the message on stderr."""
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small criteo dataset and a tiny deepfm bundle trained on it (not exported)."""
    from ctrzoo.data.prepare import prepare
    from ctrzoo.synth import generate
    from ctrzoo.train.run import train_bundle

    root = tmp_path_factory.mktemp("cli")
    generate("criteo", 3_000, 1, root / "c.raw")
    prepare("criteo", [root / "c.raw"], root / "data")
    train_bundle("deepfm", root / "data", root / "bundle", overrides={"epochs": 1, "max_steps": 4, "hparams": TINY},
                 progress=False, verbose=False)
    return root


# -- papercuts -----------------------------------------------------------------------------------
def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"ctrzoo {ctrzoo.__version__}\n"


def test_every_argument_of_every_command_has_help_and_every_help_renders():
    parser = build_parser()
    subs = _subparsers(parser)
    assert {"synth", "prepare", "info", "train", "serve", "bench", "index", "tune", "demo"} <= set(subs)
    missing = [f"ctrzoo {'--' if a.option_strings else ''}{'/'.join(a.option_strings) or a.dest}"
               for a in parser._actions if not a.help]
    for name, sub in subs.items():
        missing += [f"ctrzoo {name} {'/'.join(a.option_strings) or a.dest}" for a in sub._actions if not a.help]
        text = sub.format_help()  # expands %(choices)s / %(known)s: a registry that cannot be listed fails here
        assert "%(" not in text, name
    assert missing == []


@pytest.mark.parametrize("values", [["400,400"], ["400 400"], ["400", "400"], ["400,", " 400"], ["400, 400"]])
def test_mlp_takes_commas_spaces_and_one_quoted_argument(values):
    assert _parse([*TRAIN, "--mlp", *values]).mlp == [400, 400]


@pytest.mark.parametrize("values", [["torch,onnxruntime"], ["torch", "onnxruntime"], ["torch onnxruntime"]])
def test_backends_take_commas_and_spaces(values):
    assert _parse(["bench", "inference", "--backends", *values]).backends == ["torch", "onnxruntime"]


def test_every_list_option_uses_the_one_helper():
    """A list option (nargs + or a fixed count) is a ListOf, but for file paths (names may hold commas)."""
    paths = {("prepare", "input"), ("schema", "input"), ("compare", "bundles")}
    for name, sub in _subparsers(build_parser()).items():
        for a in sub._actions:
            if a.nargs in ("+", "*") or (isinstance(a.nargs, int) and a.nargs > 1):
                assert isinstance(a, ListOf) or (name, a.dest) in paths, (name, a.dest)


def test_list_options_parse_every_form():
    args = _parse(["prepare", "criteo", "--input", "a,b.tsv", "c.tsv", "--out", "o", "--ratios", "0.7,0.2,0.1",
                   "--drop", "C1,C2", "C3"])
    assert args.input == ["a,b.tsv", "c.tsv"]  # paths are never split
    assert args.ratios == [0.7, 0.2, 0.1] and args.drop == ["C1", "C2", "C3"]
    assert _parse(["prepare", "criteo", "--input", "x", "--out", "o"]).ratios == [0.8, 0.1, 0.1]  # default
    args = _parse(["train-retrieval", "--data", "d", "--out", "o", "--hidden", "", "--hard-ranks", "10,50",
                   "--recall-k", "5 10", "--item-features", "a,b"])
    assert args.hidden == [] and args.hard_ranks == [10, 50] and args.recall_k == [5, 10]
    assert args.item_features == ["a", "b"]
    args = _parse(["bench", "retrieval", "--kinds", "flat-ip,hnsw-ip", "--targets", "0.9,0.95", "--batch-sizes",
                   "1,8"])
    assert args.kinds == ["flat-ip", "hnsw-ip"] and args.targets == [0.9, 0.95] and args.batch_sizes == [1, 8]
    assert _parse(["tune", "--bundle", "b", "--buckets", "1,16", "--focus", "16"]).buckets == [1, 16]


@pytest.mark.parametrize(("argv", "message"), [
    ([*TRAIN, "--mlp", "400,x"], "argument --mlp: invalid int value: 'x'"),
    ([*TRAIN, "--mlp", ","], "argument --mlp: expected at least one value"),
    (["prepare", "criteo", "--input", "x", "--out", "o", "--ratios", "0.8,0.2"],
     "argument --ratios: expected 3 values, got 2"),
    (["train-retrieval", "--data", "d", "--out", "o", "--hard-ranks", "1", "2", "3"],
     "argument --hard-ranks: expected 2 values, got 3"),
])
def test_bad_list_values_are_argparse_errors_naming_the_option(argv, message, capsys):
    assert message in _refused(argv, capsys)


# -- choices come from the registries -------------------------------------------------------------
def _known(what: str) -> list[str]:
    if what == "models":
        from ctrzoo.models import list_models

        return list_models()
    if what == "backends":
        from ctrzoo.runtime import BACKENDS

        return list(BACKENDS)
    if what == "formats":
        from ctrzoo.data.formats import FORMATS

        return list(FORMATS)
    from ctrzoo.retrieval import KINDS

    return [*KINDS, "auto"] if what == "kinds+auto" else list(KINDS)


@pytest.mark.parametrize(("argv", "what"), [
    (["train", "--model", "nosuch", "--data", "d", "--out", "o"], "models"),
    (["serve", "--bundle", "b", "--backend", "nosuch"], "backends"),
    (["bench", "inference", "--backends", "torch,nosuch"], "backends"),
    (["bench", "retrieval", "--kinds", "nosuch"], "kinds"),
    (["index", "--bundle", "b", "--kind", "nosuch"], "kinds+auto"),
    (["prepare", "nosuch", "--input", "x", "--out", "o"], "formats"),
])
def test_unknown_names_are_argparse_errors_listing_the_registry(argv, what, capsys):
    err = _refused(argv, capsys)
    known = _known(what)
    assert "invalid choice: 'nosuch' (choose from " + ", ".join(map(repr, known)) + ")" in err


def test_train_model_choices_and_help_follow_the_model_registry(monkeypatch, capsys):
    from ctrzoo.models import registry
    from ctrzoo.models.deepfm import DeepFM

    help_text = _subparsers(build_parser())["train"].format_help()
    assert all(name in help_text for name in registry.list_models())
    _refused([*TRAIN[:2], "my_model", *TRAIN[3:]], capsys)
    monkeypatch.setitem(registry._MODELS, "my_model", DeepFM)  # a model registered after the CLI was imported
    assert _parse([*TRAIN[:2], "my_model", *TRAIN[3:]]).model == "my_model"


# -- no import cycle, no torch for help ------------------------------------------------------------
def _fresh(code: str) -> str:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                          cwd=ROOT).stdout


def test_library_never_imports_the_cli():
    """Only ``ctrzoo/__main__.py`` imports ``ctrzoo.cli`` (the demo imported it for a summary: a cycle)."""
    offenders = []
    for path in sorted((ROOT / "ctrzoo").rglob("*.py")):
        if path.name in ("cli.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "ctrzoo.cli" or n.startswith("ctrzoo.cli.") for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_cli_and_demo_do_not_import_each_other():
    out = _fresh("import sys, ctrzoo.demo; a = 'ctrzoo.cli' in sys.modules; import ctrzoo.cli; "
                 "print(a, 'ctrzoo.demo' in sys.modules)")
    assert out.split() == ["False", "True"]
    out = _fresh("import sys, ctrzoo.cli; print('ctrzoo.demo' in sys.modules, 'torch' in sys.modules)")
    assert out.split() == ["False", "False"]


def test_help_and_version_do_not_import_torch():
    out = _fresh("import sys\nfrom ctrzoo.cli import main\nfor argv in (['--help'], ['--version']):\n"
                 "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
                 "print('torch' in sys.modules)")
    assert out.split()[-1] == "False"


# -- info ------------------------------------------------------------------------------------------
def test_info_on_a_dataset(small, capsys):
    assert main(["info", str(small / "data")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"dataset {small / 'data'} (criteo, fingerprint ") and "features: 26 categorical" in out
    assert main(["info", "--json", str(small / "data")]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((small / "data" / "dataset.json").read_text())


def test_info_on_a_bundle_then_exported_then_damaged(small, tmp_path, capsys):
    from ctrzoo.export import export_onnx

    bundle = tmp_path / "b"
    shutil.copytree(small / "bundle", bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    assert main(["info", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"bundle {bundle} (deepfm, version {meta['version']}, format 2, written by ctrzoo ")
    assert "hyper-parameters: emb_dim=4, mlp=[8]" in out
    assert "features: 26 categorical (C1:" in out and "13 numeric (I1, I2" in out
    assert f"trained on: {(small / 'data').resolve()} (criteo" in out
    assert f"best epoch 1: valid AUC {meta['metrics']['valid']['valid_auc']:.4f}" in out
    assert f"test ({meta['metrics']['test']['rows']:,d} rows): AUC " in out
    assert f"exported: no (`ctrzoo export --bundle {bundle}` writes model.onnx)" in out
    assert f"manifest: ok ({len(meta['files'])} files match their sha256)" in out

    export_onnx(bundle)
    assert main(["info", str(bundle)]) == 0
    assert "exported: model.onnx (opset " in capsys.readouterr().out
    assert main(["info", "--verify", str(bundle)]) == 0
    assert capsys.readouterr().out.startswith(f"verified {bundle}: every file matches the bundle's manifest, "
                                              "golden rows reproduced")
    assert main(["info", "--json", str(bundle)]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((bundle / "bundle.json").read_text())

    weights = bundle / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(data)
    assert main(["info", str(bundle)]) == 0  # inspecting a damaged bundle is what info is for
    assert f"manifest: DAMAGED: {weights}: checksum differs" in capsys.readouterr().out
    assert main(["info", "--verify", str(bundle)]) == 2
    cap = capsys.readouterr()
    assert cap.out.startswith(f"damaged: {weights}: checksum differs")
    assert cap.err == f"ctrzoo info: error: {bundle}: damaged; train or copy the bundle again\n"


def test_info_on_a_retrieval_bundle(tmp_path, capsys):
    pytest.importorskip("faiss")
    from ctrzoo.data.prepare import prepare
    from ctrzoo.retrieval.train import RetrievalConfig, train_retrieval
    from ctrzoo.synth import generate

    generate("taobao", 4_000, 2, tmp_path / "t.csv", config={"target_ctr": 0.2})
    prepare("taobao", [tmp_path / "t.csv"], tmp_path / "data")
    out = tmp_path / "r"
    train_retrieval(tmp_path / "data", out, config=RetrievalConfig(epochs=1, batch_size=256, max_steps=2,
                                                                   recall_k=[10]), progress=False, verbose=False)
    meta = json.loads((out / "bundle.json").read_text())
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"retrieval bundle {out} (two_tower, version {meta['version']}, format 1")
    assert f"item tower: {', '.join(meta['towers']['item'])} (id {meta['towers']['item_id']})" in text
    assert f"catalogue: {meta['catalogue']['items']:,d} items by adgroup_id" in text
    assert f"index: none (`ctrzoo index --bundle {out} --kind auto` builds one)" in text
    assert main(["info", "--json", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "retrieval"
    assert main(["info", "--verify", str(out)]) == 2
    assert "--verify checks datasets and model bundles" in capsys.readouterr().err


def test_info_names_what_it_cannot_read(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == (f"ctrzoo info: error: {tmp_path / 'nowhere'}: no such directory "
                                       "(a prepared dataset or a bundle)\n")
    assert main(["info", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"ctrzoo info: error: {tmp_path}: neither a prepared dataset (dataset.json "
                                       "missing) nor a bundle (bundle.json missing)\n")
    (tmp_path / "bundle.json").write_text("{")
    assert main(["info", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"ctrzoo info: error: {tmp_path / 'bundle.json'}:1: not valid JSON")


def test_info_marker_names_are_the_loaders():
    from ctrzoo import bundle, info
    from ctrzoo.data import dataset
    from ctrzoo.retrieval import bundle as rbundle

    assert info.DATASET_META == dataset.META_FILE
    assert info.BUNDLE_META == bundle.META_FILE == rbundle.META_FILE


# -- prepare's spec options -----------------------------------------------------------------------
def test_prepare_drop_of_an_unknown_feature_names_it(small, tmp_path, capsys):
    assert main(["prepare", "criteo", "--input", str(small / "c.raw"), "--out", str(tmp_path / "d"),
                 "--drop", "C1,nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ctrzoo prepare: error: field 'nosuch': cannot drop it: no such feature (the spec has ")
    assert not (tmp_path / "d").exists()


def test_spec_file_errors_name_the_file(tmp_path):
    from ctrzoo.errors import CtrzooError
    from ctrzoo.features.spec_file import load_spec_file, with_overrides

    with pytest.raises(CtrzooError, match=rf"^{tmp_path / 'none.yaml'}: no such spec file$"):
        load_spec_file(tmp_path / "none.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(CtrzooError, match=r"list.yaml: a feature spec is a mapping with 'features:', not list"):
        load_spec_file(tmp_path / "list.yaml")
    (tmp_path / "s.yaml").write_text("label: y\nfeatures:\n- {kind: categorical, name: a}\n"
                                     "- {kind: categorical, name: b}\n- {kind: numeric, name: n}\n")
    spec = with_overrides(load_spec_file(tmp_path / "s.yaml"), drop=["b"], min_count=3, max_vocab=10,
                          hash_overflow=True)
    assert [f.name for f in spec.features] == ["a", "n"] and spec.label == "y"
    assert (spec["a"].min_count, spec["a"].max_vocab, spec["a"].overflow) == (3, 10, "hash")


# -- early stopping says which epoch it kept -------------------------------------------------------
def test_early_stopping_note():
    from ctrzoo.train.run import early_stopping_note

    h = [{"epoch": e, "valid_auc": a, "valid_logloss": 0.5} for e, a in ((1, 0.70), (2, 0.7412), (3, 0.73), (4, 0.72))]
    assert early_stopping_note(h, h[1], 10) == ("early stopping: kept epoch 2 (valid AUC 0.7412); epochs 3-4 did not "
                                                "improve (stopped after 4 of 10 epochs)")
    assert early_stopping_note(h[:3], h[1], 3) == ("early stopping: kept epoch 2 (valid AUC 0.7412); epoch 3 did not "
                                                   "improve")
    assert early_stopping_note(h[:2], h[1], 2) is None  # the last epoch is the one kept
    undefined = [{"epoch": 1, "valid_auc": float("nan"), "valid_auc_undefined": "one class", "valid_logloss": 0.25},
                 {"epoch": 2, "valid_auc": float("nan"), "valid_auc_undefined": "one class", "valid_logloss": 0.3}]
    assert early_stopping_note(undefined, undefined[0], 2) == ("early stopping: kept epoch 1 (valid logloss "
                                                               "0.2500); epoch 2 did not improve")


def test_train_says_when_early_stopping_keeps_an_earlier_epoch(small, tmp_path, monkeypatch, capsys):
    from ctrzoo.train.trainer import Trainer

    aucs = iter([0.70, 0.75, 0.74, 0.73])  # epochs 1-3 on valid, then the test split

    def evaluate(self, loader):
        return {"auc": next(aucs), "logloss": 0.5, "rows": loader.rows}

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    assert main(["train", "--model", "deepfm", "--data", str(small / "data"), "--out", str(tmp_path / "b"),
                 "--epochs", "5", "--patience", "1", "--emb-dim", "4", "--mlp", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "early stopping: kept epoch 2 (valid AUC 0.7500); epoch 3 did not improve (stopped after 3 of 5 epochs)" \
        in out
    assert out[-1].startswith(f"deepfm -> {tmp_path / 'b'}: test AUC 0.7300")
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["metrics"]["valid"]["epoch"] == 2 and [h["epoch"] for h in meta["history"]] == [1, 2, 3]
    assert main(["info", str(tmp_path / "b")]) == 0
    assert "    early stopping: kept epoch 2 (valid AUC 0.7500)" in capsys.readouterr().out
