"""Model bundles: the one artifact training writes and every consumer (evaluate, export, serve) reads.

    BUNDLE/bundle.json   format version, model name + hyper-parameters, data fingerprint, metrics, version,
                         and ``files``: the integrity manifest (sha256 of every other file of the bundle)
    BUNDLE/spec.json, vocab/   the fitted feature spec (so raw rows can be encoded without the dataset)
    BUNDLE/weights.pt    a state dict, loaded with ``weights_only=True`` (no pickle)
    BUNDLE/golden.json   a few raw rows with the scores the saved model gives them (``check_golden``)
    BUNDLE/model.onnx    after ``ctrzoo export`` (which adds it to the manifest)

Loading opens regular files only, checks the format version and every file against the manifest, and fails
with a message that names what is wrong. Left out of the manifest, because they are caches derived from
``model.onnx`` and checked against it by their own records: ``model.int8.onnx`` and ``tvm/`` (whose
``manifest.json`` keys ``model.so`` by the sha256 of ``model.onnx``), and dot-files (temporaries).

Bundles of format 1 (written before the manifest existed) still load, with a warning: refusing them would
stop every deployed server at upgrade, and ``ctrzoo export --bundle B`` upgrades one in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import ctrzoo
from ctrzoo.atomic import building, recover, write_json
from ctrzoo.errors import BundleError, CtrzooError
from ctrzoo.features import EncodedBatch, FeatureCodec, FeatureSpec

BUNDLE_FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # 1: no manifest, no golden rows (loaded with a warning)
META_FILE = "bundle.json"
WEIGHTS_FILE = "weights.pt"
SPEC_FILE = "spec.json"
GOLDEN_FILE = "golden.json"
ONNX_FILE = "model.onnx"
UNLISTED = ("model.int8.onnx", "tvm")  # derived caches with their own checks (see the module docstring)
REQUIRED = (WEIGHTS_FILE, SPEC_FILE, GOLDEN_FILE)
GOLDEN_ROWS = 8
GOLDEN_TOLERANCE = 1e-4  # fp32 backends: torch, onnxruntime, fused, tvm (parity with torch is 1e-5)
GOLDEN_TOLERANCE_INT8 = 0.05  # int8 weights: the bound test_int8 checks against fp32

log = logging.getLogger("ctrzoo.bundle")


@dataclass
class Bundle:
    path: Path
    meta: dict[str, Any]
    spec: FeatureSpec

    @cached_property
    def codec(self) -> FeatureCodec:
        """The spec compiled (once per loaded bundle)."""
        return self.spec.compile()

    @property
    def model_name(self) -> str:
        return self.meta["model"]["name"]

    @property
    def hparams(self) -> dict[str, Any]:
        return self.meta["model"]["hparams"]

    @property
    def version(self) -> str:
        return self.meta.get("version", "0")

    @property
    def feature_set(self) -> tuple[tuple[str, str], ...]:
        """(name, kind) of every feature, in order: what a request must provide."""
        return tuple((f.name, f.kind) for f in self.spec.features)

    def golden(self) -> dict[str, Any] | None:
        """``{"rows": [...], "scores": [...]}`` or None for a format-1 bundle."""
        path = self.path / GOLDEN_FILE
        if self.meta.get("format_version") == 1 and not path.exists():
            return None
        try:
            data = json.loads(read_regular(path))
            rows, scores = data["rows"], data["scores"]
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{path}: not a golden-rows file ({exc})") from None
        if not isinstance(rows, list) or not isinstance(scores, list) or len(rows) != len(scores):
            raise BundleError(f"{path}: rows and scores must be lists of the same length")
        return data

    def build_model(self) -> nn.Module:
        """The model with its trained weights, in eval mode."""
        from ctrzoo.models import build_model

        model = build_model(self.model_name, self.codec.layout, **self.hparams)
        path = self.path / WEIGHTS_FILE
        try:
            _require_regular(path)
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise BundleError(f"{path}: missing weights file") from None
        except BundleError:
            raise
        except Exception as exc:  # corrupt or not a torch file
            raise BundleError(f"{path}: cannot read weights ({exc.__class__.__name__}: {exc})") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise BundleError(f"{path}: weights do not fit model {self.model_name!r}: {exc}") from None
        return model.eval()


def save_bundle(out: str | Path, model: nn.Module, model_name: str, spec: FeatureSpec, meta: dict[str, Any]) -> Path:
    """Write a bundle directory atomically (built beside ``out``, swapped in by rename)."""
    with building(out, META_FILE, "model bundle", BundleError) as tmp:
        spec.save(tmp)
        with open(tmp / WEIGHTS_FILE, "wb") as fh:  # a file object: torch keeps the OS error (ENOSPC) then
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, fh)
        digest = sha256_file(tmp / WEIGHTS_FILE)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        full = {
            "version": f"{stamp}-{digest[:8]}",  # time + weights: two bundles never share a version
            "format_version": BUNDLE_FORMAT_VERSION,
            "ctrzoo_version": ctrzoo.__version__,
            "model": {"name": model_name, "hparams": getattr(model, "hparams", {})},
            **meta,
        }
        bundle = Bundle(tmp, full, spec)
        write_golden(bundle, (meta.get("data") or {}).get("path"))
        full["files"] = manifest(tmp)
        write_json(tmp / META_FILE, full)
    return Path(out)


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Open and check a bundle: regular files only, the format version, every file against the manifest.

    Any OS error on the way (a name too long, a permission) is a ``BundleError`` naming the path.
    """
    path = Path(path)
    try:
        return _load(path, verify)
    except OSError as exc:
        raise BundleError(f"{_short(path)}: cannot read the bundle ({exc.strerror or exc})") from None


def _load(path: Path, verify: bool) -> Bundle:
    recover(path, META_FILE)  # a writer killed between the fallback publish's two renames (ctrzoo.atomic)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise BundleError(f"{_short(path)}: no such bundle directory")
    if not meta_path.exists():
        raise BundleError(f"{path}: not a model bundle ({META_FILE} missing)")
    try:
        meta = json.loads(read_regular(meta_path))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{meta_path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise BundleError(f"{meta_path}: not UTF-8 text ({exc.reason})") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path}: bundle metadata must be a JSON object")
    if meta.get("kind", "model") != "model":  # e.g. a retrieval bundle: say so here, not at the first missing key
        raise BundleError(f"{path}: a {meta.get('kind')} bundle, not a ranking model bundle (a retrieval bundle is "
                          "served with `ctrzoo serve --retrieval` beside a model bundle)")
    if meta.get("format_version") not in READABLE_FORMATS:
        raise BundleError(
            f"{meta_path}: bundle format version {meta.get('format_version')!r}, this ctrzoo reads "
            f"{', '.join(map(str, READABLE_FORMATS))}"
        )
    if not (path / WEIGHTS_FILE).exists():
        raise BundleError(f"{path / WEIGHTS_FILE}: missing weights file")
    if meta["format_version"] == 1:
        log.warning("%s: bundle format 1 has no integrity manifest and no golden rows, so neither is checked; "
                    "`ctrzoo export --bundle %s` adds them", path, path)
        for name in (WEIGHTS_FILE, SPEC_FILE, ONNX_FILE):
            if (path / name).exists():
                _require_regular(path / name)
    elif verify:
        verify_manifest(path, meta)
    try:
        spec = FeatureSpec.load(path)
    except CtrzooError as exc:
        raise BundleError(f"{path}: bad feature spec: {exc}") from None
    return Bundle(path, meta, spec)


# -- integrity manifest --------------------------------------------------------------------------
def manifest(path: Path) -> dict[str, str]:
    """sha256 of every file of the bundle but ``bundle.json``, the derived caches and dot-files."""
    out = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if rel.parts[0] in UNLISTED or any(part.startswith(".") for part in rel.parts) or rel.as_posix() == META_FILE:
            continue
        if p.is_dir() and not p.is_symlink():
            continue
        out[rel.as_posix()] = sha256_file(p)
    return out


def verify_manifest(path: Path, meta: dict[str, Any]) -> None:
    files = meta.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{path / META_FILE}: no integrity manifest ('files'); the bundle is incomplete")
    for name in REQUIRED:
        if name not in files:
            raise BundleError(f"{path / name}: not recorded in the bundle's manifest")
    if (path / ONNX_FILE).exists() and ONNX_FILE not in files:
        raise BundleError(f"{path / ONNX_FILE}: not recorded in the bundle's manifest (copied from another "
                          f"bundle?): run `ctrzoo export --bundle {path}`")
    for rel, want in files.items():
        if not isinstance(rel, str) or os.path.isabs(rel) or ".." in Path(rel).parts or not Path(rel).parts:
            raise BundleError(f"{path / META_FILE}: manifest entry {rel!r} is not a path inside the bundle")
        file = path / rel
        if not file.exists():
            hint = f"; run `ctrzoo export --bundle {path}` first" if rel == ONNX_FILE else ""
            raise BundleError(f"{file}: missing{hint} (it is listed in the bundle's manifest)")
        got = sha256_file(file)
        if got != want:
            raise BundleError(f"{file}: checksum differs from the one recorded in the bundle's manifest (sha256 "
                              f"{got[:12]}..., recorded {str(want)[:12]}...): corrupt, truncated or replaced")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with _open_regular(path) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_regular(path: Path) -> str:
    with _open_regular(path) as fh:
        return fh.read().decode()


def _open_regular(path: Path):
    """Open for reading only if it is a regular file: O_NONBLOCK so a FIFO never blocks the open itself,
    then fstat on the open descriptor (no window between the check and the read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BundleError(f"{path}: not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _require_regular(path: Path) -> None:
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise BundleError(f"{path}: not a regular file")


def _short(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 200 else f"{text[:100]}...{text[-60:]} ({len(text)} characters)"


# -- golden rows ---------------------------------------------------------------------------------
def write_golden(bundle: Bundle, data_path: str | None = None) -> dict[str, Any]:
    """Raw rows and the scores the bundle's torch model gives them, into ``golden.json``.

    Rows: the first raw test rows of the training dataset when it is still there, plus rows built from the
    spec's vocabularies (common, rare and unknown values, one row with every feature missing), so a
    bundle can always get them. Scores are of the saved weights, in eval mode.
    """
    from ctrzoo.models.probability import ProbabilityModel

    rows = _dataset_rows(bundle.spec, data_path, GOLDEN_ROWS // 2)
    rows += _spec_rows(bundle.spec, GOLDEN_ROWS - len(rows))
    batch = encode_rows(bundle.codec, rows)
    model = ProbabilityModel(bundle.build_model()).eval()
    with torch.inference_mode():
        scores = model(*(torch.from_numpy(a) for a in (batch.sparse, batch.dense, batch.seq))).numpy()
    data = {"rows": rows, "scores": [float(s) for s in scores]}
    (bundle.path / GOLDEN_FILE).write_text(json.dumps(data, indent=1))
    return data


def check_golden(bundle: Bundle, codec: FeatureCodec, predict, tolerance: float = GOLDEN_TOLERANCE,
                 what: str = "") -> float | None:
    """Score the golden rows with ``predict(encoded_batch)``; BundleError when they are not reproduced.

    Returns the largest difference (None for a bundle without golden rows)."""
    golden = bundle.golden()
    if golden is None:
        return None
    try:
        got = np.asarray(predict(encode_rows(codec, golden["rows"])), dtype=np.float64).reshape(-1)
    except Exception as exc:  # an encoder's CtrzooError, or a runtime's own error type
        raise BundleError(f"{bundle.path}: cannot score its golden rows{what}: {exc.__class__.__name__}: "
                          f"{str(exc)[:200]}") from None
    want = np.asarray(golden["scores"], dtype=np.float64)
    if got.shape != want.shape:
        raise BundleError(f"{bundle.path}: scored {got.size} golden rows{what}, expected {want.size}")
    diff = float(np.abs(got - want).max()) if want.size else 0.0
    if not math.isfinite(diff) or diff > tolerance:
        raise BundleError(f"{bundle.path}: does not reproduce its golden rows{what}: max |diff| {diff:.2e} > "
                          f"{tolerance:.0e} (weights, model.onnx and spec of different models, or corrupt)")
    return diff


def encode_rows(codec: FeatureCodec, rows: list[dict[str, Any]]) -> EncodedBatch:
    """Each row as its own request (a dataset's rows and the spec's may type a column differently)."""
    return EncodedBatch.concat([codec.encode_request({}, [row]) for row in rows])


def _dataset_rows(spec: FeatureSpec, data_path: str | None, n: int) -> list[dict[str, Any]]:
    if not data_path:
        return []
    try:
        import pyarrow.parquet as pq

        from ctrzoo.data.dataset import PreparedDataset

        raw = PreparedDataset.open(data_path).raw_path("test")
        table = next(pq.ParquetFile(raw).iter_batches(batch_size=n, columns=None))
    except (CtrzooError, OSError, StopIteration, ValueError):
        return []  # no dataset, or no raw rows kept (--no-raw): the spec's rows serve alone
    keep = [c for c in spec.raw_columns() if c in table.schema.names]
    return [_jsonable(r) for r in table.select(keep).to_pylist()]


def _spec_rows(spec: FeatureSpec, n: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = [{}]  # every feature missing
    for i in range(1, n):
        row: dict[str, Any] = {}
        for f in spec.features:
            src = f.source or f.name
            if getattr(f, "derive", None) or src in row:
                continue  # derived features read another column's raw value: left to that column
            if f.kind == "categorical":
                row[src] = _category(f, rng, unknown=i == n - 1)
            elif f.kind == "numeric":
                row[src] = round(float(abs(rng.normal(1.0, 2.0))), 4)
            elif f.kind == "dense_vector":
                row[src] = [round(float(x), 4) for x in rng.normal(0.0, 1.0, f.dim)]
            else:  # a sequence or a bag: items of the table it uses
                table = spec[f.shares] if f.shares else f
                row[src] = [_category(table, rng) for _ in range(int(rng.integers(1, f.max_len + 1)))]
        rows.append(row)
    return rows


def _category(f, rng, unknown: bool = False) -> str:
    if unknown or f.vocab is None or len(f.vocab) == 0:
        return f"golden-{int(rng.integers(1 << 30))}"
    return str(f.vocab.values[int(rng.integers(len(f.vocab)))].as_py())


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v if isinstance(v, str | int | float | list | type(None)) else str(v)
    return out
