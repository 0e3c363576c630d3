"""What ``ctrzoo info PATH`` shows: a prepared dataset, a model bundle or a retrieval bundle, told apart by
their marker file.

A bundle is described even when its integrity manifest does not match (the summary says so): inspecting a
damaged bundle is one reason to run ``info``. ``verify`` is the strict check (exit 2 in the CLI).
Bundle modules load torch, so they are imported only for bundles.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from ctrzoo.atomic import recover
from ctrzoo.errors import BundleError, CtrzooError, DatasetError
from ctrzoo.metadata import DataRef, bundle_kind

# the marker files, named here so that telling them apart imports neither pyarrow nor torch:
DATASET_META = "dataset.json"  # ctrzoo.data.dataset.META_FILE
BUNDLE_META = "bundle.json"  # ctrzoo.bundle.META_FILE and ctrzoo.retrieval.bundle.META_FILE

Kind = Literal["dataset", "bundle", "retrieval"]


def kind_of(path: str | Path) -> Kind:
    """``bundle`` or ``retrieval`` where ``bundle.json`` is (by its ``kind``), ``dataset`` where
    ``dataset.json`` is; a CtrzooError naming the path otherwise."""
    path = Path(path)
    for marker in (BUNDLE_META, DATASET_META):
        recover(path, marker)  # an artefact whose writer died mid-publish (as their loaders do)
    if not path.is_dir():
        raise CtrzooError(f"{path}: no such directory (a prepared dataset or a bundle)")
    meta_path = path / BUNDLE_META
    if not meta_path.is_file():
        if (path / DATASET_META).exists():
            return "dataset"
        raise CtrzooError(f"{path}: neither a prepared dataset ({DATASET_META} missing) nor a bundle "
                          f"({BUNDLE_META} missing)")
    try:
        kind = bundle_kind(json.loads(meta_path.read_text()))
    except (ValueError, OSError):
        return "bundle"  # unreadable: load_bundle names what is wrong with it
    return "retrieval" if kind == "retrieval" else "bundle"


def metadata(path: str | Path) -> dict[str, Any]:
    """The artefact's own metadata: ``dataset.json`` or ``bundle.json``, as loaded (and as written)."""
    kind = kind_of(path)
    if kind == "dataset":
        from ctrzoo.data.dataset import PreparedDataset

        return PreparedDataset.open(path).meta.to_json()
    if kind == "retrieval":
        from ctrzoo.retrieval.bundle import load_retrieval_bundle

        return load_retrieval_bundle(path).meta.to_json()
    from ctrzoo.bundle import load_bundle

    return load_bundle(path, verify=False).meta.to_json()


def describe(path: str | Path) -> str:
    """The human summary of whatever ``path`` is."""
    kind = kind_of(path)
    if kind == "dataset":
        from ctrzoo.data.summary import format_summary

        return format_summary(path)
    return describe_retrieval(path) if kind == "retrieval" else describe_bundle(path)


def verify(path: str | Path, report: Callable[[str], None] = print) -> str:
    """Read everything back: every dataset file with its row counts; a bundle's files against its manifest
    and its golden rows through the torch model. ``report`` gets one line per damaged part, then the error
    is raised; returns what was checked."""
    kind = kind_of(path)
    if kind == "dataset":
        from ctrzoo.data.dataset import verify as verify_dataset

        problems = verify_dataset(path)
        for p in problems:
            report(f"damaged: {p}")
        if problems:
            raise DatasetError(f"{path}: {len(problems)} damaged file(s); prepare the data again")
        return f"verified {path}: every shard and the raw test file read back, row counts match dataset.json"
    if kind == "retrieval":
        raise BundleError(f"{path}: --verify checks datasets and model bundles; a retrieval bundle is checked "
                          "when it loads (`ctrzoo info` without --verify)")
    return _verify_bundle(path, report)


# -- model bundles -------------------------------------------------------------------------------
def describe_bundle(path: str | Path) -> str:
    """Model, version, hyper-parameters, features, training data, metrics, export state, manifest state."""
    from ctrzoo.bundle import ONNX_FILE, load_bundle
    from ctrzoo.train.run import early_stopping_note, format_auc, format_valid

    b = load_bundle(path, verify=False)
    m = b.meta
    lines = [f"bundle {b.path} ({b.model_name}, version {b.version}, format {m.format_version}, "
             f"written by ctrzoo {m.ctrzoo_version or '?'})"]
    lines.append("  hyper-parameters: " + (", ".join(f"{k}={v}" for k, v in b.hparams.items()) or "none"))
    lines += _features(b.spec)
    data = m.data
    if data != DataRef():
        lines.append(f"  trained on: {data.path} ({data.kind}, fingerprint {str(data.fingerprint)[:24]}...)")
    valid, test = m.metrics.valid, m.metrics.test
    if valid:
        lines.append(f"  best epoch {valid.get('epoch')}: {format_valid(valid)}")
        note = early_stopping_note(m.history, valid, m.train.get("epochs", 0))
        if note:
            lines.append(f"    {note}")
    if test:
        line = f"  test ({test['rows']:,d} rows): " if test.get("rows") else "  test: no test rows"
        if test.get("rows"):
            line += f"{format_auc(test)}  logloss {test['logloss']:.4f}"
            if "gauc" in test:
                line += f"  GAUC {test['gauc']:.4f}"
        lines.append(line)
    onnx = m.artifacts.onnx
    if (b.path / ONNX_FILE).exists():
        detail = (f" (opset {onnx.opset}, onnxruntime vs torch max |diff| "
                  f"{onnx.parity_max_abs_diff:.1e})") if onnx else ""
        caches = [name for name in ("model.int8.onnx", "tvm") if (b.path / name).exists()]
        lines.append(f"  exported: {ONNX_FILE}{detail}" + (f"; caches: {', '.join(caches)}" if caches else ""))
    else:
        lines.append(f"  exported: no (`ctrzoo export --bundle {b.path}` writes {ONNX_FILE})")
    lines.append(f"  manifest: {_manifest_status(b)}")
    return "\n".join(lines)


def _manifest_status(bundle) -> str:
    if bundle.meta.format_version == 1:
        return f"none (bundle format 1; `ctrzoo export --bundle {bundle.path}` adds one)"
    try:
        bundle.verify_manifest()
    except BundleError as exc:
        return f"DAMAGED: {exc}"
    return f"ok ({len(bundle.meta.files)} files match their sha256)"


def _verify_bundle(path: str | Path, report: Callable[[str], None]) -> str:
    from ctrzoo.bundle import check_golden, load_bundle
    from ctrzoo.runtime import load

    try:
        bundle = load_bundle(path)  # the manifest: regular files, every sha256
        diff = check_golden(bundle, bundle.codec, load(bundle, "torch").predict, what=" (torch)")
    except BundleError as exc:
        report(f"damaged: {exc}")
        raise BundleError(f"{path}: damaged; train or copy the bundle again") from None
    golden = "no golden rows (format 1)" if diff is None else f"golden rows reproduced (max |diff| {diff:.1e})"
    return f"verified {path}: every file matches the bundle's manifest, {golden}"


# -- retrieval bundles ---------------------------------------------------------------------------
def describe_retrieval(path: str | Path) -> str:
    """Towers, hyper-parameters, catalogue, recall, and the index if ``ctrzoo index`` built one."""
    from ctrzoo.retrieval.bundle import load_retrieval_bundle

    b = load_retrieval_bundle(path)
    m = b.meta
    hp = m.model.hparams
    lines = [f"retrieval bundle {b.path} (two_tower, version {b.version}, format {m.format_version}, "
             f"written by ctrzoo {m.ctrzoo_version or '?'})",
             "  hyper-parameters: " + ", ".join(f"{k}={v}" for k, v in hp.items())]
    split = b.split
    lines.append(f"  item tower: {', '.join(split.item)} (id {split.item_id})")
    lines.append(f"  user tower: {', '.join(split.user)}"
                 + (f"; history attributes: {', '.join(split.history_attributes)}" if split.history_attributes else ""))
    lines += _features(b.spec)
    lines.append(f"  catalogue: {m.catalogue.items:,d} items by {m.catalogue.id_column}")
    test = m.metrics.test
    if test:
        lines.append("  test: " + "  ".join(f"{k} {v:.4f}" for k, v in test.items()))
    index = b.index_dir / "index.json"
    if index.is_file():
        try:
            im = json.loads(index.read_text())
            lines.append(f"  index: {im.get('kind')} over {im.get('ntotal', 0):,d} vectors of dim {im.get('dim')}")
        except (ValueError, OSError) as exc:
            lines.append(f"  index: unreadable {index} ({exc})")
    else:
        lines.append(f"  index: none (`ctrzoo index --bundle {b.path} --kind auto` builds one)")
    return "\n".join(lines)


def _features(spec) -> list[str]:
    return spec.compile().describe()
