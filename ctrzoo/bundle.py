"""Bundles: the one artefact training writes and every consumer (evaluate, export, serve) reads.

Every bundle is a directory of one shape, whatever its kind (``BaseBundle`` owns it):

    BUNDLE/bundle.json   typed metadata (``ctrzoo.metadata``): kind, format version, version stamp, model name +
                         hyper-parameters, data fingerprint, training record, and ``files``: the integrity
                         manifest (sha256 of every other file of the bundle)
    BUNDLE/spec.json, vocab/   the fitted feature spec (so raw rows can be encoded without the dataset)
    BUNDLE/weights.pt    a state dict, loaded with ``weights_only=True`` (no pickle)

A ranking model bundle (``Bundle``, kind ``model``) adds ``golden.json`` (a few raw rows with the scores the
saved model gives them, ``check_golden``; one score per task for a multi-task model, see ``Bundle.tasks``) and,
after ``ctrzoo export``, ``model.onnx`` (which export adds to the manifest). A retrieval bundle
(``ctrzoo.retrieval.bundle``) adds its catalogue and index.

Writing builds the directory beside the target and swaps it in (``ctrzoo.atomic``); a bundle of another kind is
never replaced. Loading opens regular files only, checks the kind, the format version and every file against
the manifest, and fails with a message that names what is wrong. Left out of the manifest, because they are
derived and checked by their own records: ``model.int8.onnx`` and ``tvm/`` (whose ``manifest.json`` keys
``model.so`` by the sha256 of ``model.onnx``), a retrieval bundle's ``index/`` (built from a bundle version),
and dot-files (temporaries).

Ranking bundles of format 1 (written before the manifest existed) still load, with a warning: refusing them
would stop every deployed server at upgrade, and ``ctrzoo export --bundle B`` upgrades one in place. Retrieval
bundles written before they had a manifest load the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from torch import nn

import ctrzoo
from ctrzoo.atomic import building, read_json, recover, write_json
from ctrzoo.errors import BundleError, CtrzooError
from ctrzoo.features import EncodedBatch, FeatureCodec, FeatureSpec
from ctrzoo.metadata import BundleMeta, ModelBundleMeta, bundle_kind

BUNDLE_FORMAT_VERSION = ModelBundleMeta.FORMATS[-1]
READABLE_FORMATS = ModelBundleMeta.FORMATS  # 1: no manifest, no golden rows (loaded with a warning)
META_FILE = "bundle.json"
WEIGHTS_FILE = "weights.pt"
SPEC_FILE = "spec.json"
GOLDEN_FILE = "golden.json"
ONNX_FILE = "model.onnx"
UNLISTED = ("model.int8.onnx", "tvm")  # a model bundle's derived caches with their own checks (module docstring)
REQUIRED = (WEIGHTS_FILE, SPEC_FILE, GOLDEN_FILE)
GOLDEN_ROWS = 8
GOLDEN_TOLERANCE = 1e-4  # fp32 backends: torch, onnxruntime, fused, tvm (parity with torch is 1e-5)
GOLDEN_TOLERANCE_INT8 = 0.05  # int8 weights: the bound test_int8 checks against fp32


def golden_tolerance(backend: str) -> float:
    """How closely ``backend`` must reproduce the golden scores (int8 backends within their looser bound)."""
    return GOLDEN_TOLERANCE_INT8 if backend.endswith("int8") else GOLDEN_TOLERANCE

log = logging.getLogger("ctrzoo.bundle")


@dataclass
class BaseBundle:
    """What every kind of bundle is and does: metadata, spec, weights, manifest, atomic write, checked load.

    A kind sets the class constants and adds what differs (its model, its extra files); ``write`` and
    ``open`` are the one implementation of saving and loading.
    """

    path: Path
    meta: BundleMeta
    spec: FeatureSpec

    META_TYPE: ClassVar[type[BundleMeta]]
    WHAT: ClassVar[str]  # "model bundle", "retrieval bundle"
    REQUIRED: ClassVar[tuple[str, ...]]  # files the manifest must list
    MUST_EXIST: ClassVar[tuple[str, ...]] = (WEIGHTS_FILE,)  # checked first, manifest or not
    UNLISTED: ClassVar[tuple[str, ...]] = ()  # derived files and directories with their own checks
    LEGACY_FORMATS: ClassVar[tuple[int, ...]] = ()  # formats written before the manifest: loaded with a warning

    @property
    def kind(self) -> str:
        return self.meta.kind

    @property
    def version(self) -> str:
        return self.meta.version

    @cached_property
    def codec(self) -> FeatureCodec:
        """The spec compiled (once per loaded bundle)."""
        return self.spec.compile()

    @classmethod
    def error(cls) -> type[CtrzooError]:
        return cls.META_TYPE.error()

    # -- writing -----------------------------------------------------------------------------------------
    @classmethod
    def write(cls, out: str | Path, model: nn.Module, spec: FeatureSpec, meta: BundleMeta,
              add: Callable[[Self], None] | None = None) -> Self:
        """Write a bundle directory atomically (built beside ``out``, swapped in by rename).

        ``meta`` is what the caller knows; the stamps (version, ctrzoo version, format, ``files``) are set here.
        ``add(bundle)`` writes the kind's own files into the bundle being built, before its manifest is taken.
        An earlier bundle of the same kind, an empty directory or nothing may be replaced; nothing else.
        """
        out = Path(out)
        check_replaceable(out, cls)
        with building(out, META_FILE, cls.WHAT, cls.error()) as tmp:
            spec.save(tmp)
            with open(tmp / WEIGHTS_FILE, "wb") as fh:  # a file object: torch keeps the OS error (ENOSPC) then
                # CPU copies: a model trained on a GPU loads on a machine without one
                torch.save({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}, fh)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            meta = dataclasses.replace(
                meta, format_version=cls.META_TYPE.FORMATS[-1], ctrzoo_version=ctrzoo.__version__,
                version=f"{stamp}-{sha256_file(tmp / WEIGHTS_FILE)[:8]}",  # time + weights: never shared
            )
            if add is not None:
                add(cls(tmp, meta, spec))
            meta.files = manifest(tmp, cls.UNLISTED)
            write_json(tmp / META_FILE, meta.to_json())  # the marker, written last
        return cls(out, meta, spec)

    def write_meta(self) -> None:
        """Replace ``bundle.json`` with ``self.meta`` (in one rename: readers see the old or the new one)."""
        write_json(self.path / META_FILE, self.meta.to_json())

    # -- loading -----------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> Self:
        """Open and check a bundle: regular files only, the kind, the format version, every file against the
        manifest. Any OS error on the way (a name too long, a permission) is the kind's error naming the path.
        """
        path = Path(path)
        error = cls.error()
        try:
            return cls._open(path, verify)
        except OSError as exc:
            raise error(f"{_short(path)}: cannot read the bundle ({exc.strerror or exc})") from None
        except BundleError as exc:  # the file checks' (not a regular file), as the kind's error
            if issubclass(BundleError, error):
                raise
            raise error(str(exc)) from None

    @classmethod
    def _open(cls, path: Path, verify: bool) -> Self:
        error = cls.error()
        recover(path, META_FILE)  # a writer killed between the fallback publish's two renames (ctrzoo.atomic)
        meta_path = path / META_FILE
        if not path.is_dir():
            raise error(f"{_short(path)}: no such {cls.META_TYPE.WHAT} directory")
        if not meta_path.exists():
            raise error(f"{path}: not a {cls.WHAT} ({META_FILE} missing)")
        raw = read_meta_json(meta_path, error)
        if bundle_kind(raw) != cls.META_TYPE.KIND:
            raise error(cls.wrong_kind(path, raw))
        meta = cls.META_TYPE.from_json(raw, meta_path)
        for name in cls.MUST_EXIST:
            if not (path / name).exists():
                raise error(f"{path / name}: missing{' weights file' if name == WEIGHTS_FILE else ''}")
        if meta.files is None and meta.format_version in cls.LEGACY_FORMATS:
            log.warning("%s", cls.legacy_note(path))
            for name in (*cls.REQUIRED, ONNX_FILE):
                if (path / name).exists():
                    _require_regular(path / name, error)
        elif verify:  # no manifest in a format that has one: "incomplete"
            verify_manifest(path, meta.files, cls.REQUIRED, error)
        try:
            spec = FeatureSpec.load(path)
        except CtrzooError as exc:
            raise error(f"{path}: bad feature spec: {exc}") from None
        bundle = cls(path, meta, spec)
        bundle.check()
        return bundle

    @classmethod
    def wrong_kind(cls, path: Path, raw: dict[str, Any]) -> str:
        """The message for a ``bundle.json`` of another kind."""
        return f"{path}: a {bundle_kind(raw)} bundle, not a {cls.WHAT}"

    @classmethod
    def legacy_note(cls, path: Path) -> str:
        """The warning for a bundle written before the manifest."""
        return f"{path}: {cls.WHAT} without an integrity manifest: its files are not checked"

    def check(self) -> None:
        """The kind's own consistency checks, once the spec is loaded."""

    def load_weights(self, model: nn.Module, what: str) -> nn.Module:
        """``model`` with the bundle's weights loaded (``weights_only``: no pickle), in eval mode."""
        path = self.path / WEIGHTS_FILE
        error = self.error()
        try:
            _require_regular(path, error)
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise error(f"{path}: missing weights file") from None
        except CtrzooError:
            raise
        except Exception as exc:  # corrupt or not a torch file
            raise error(f"{path}: cannot read weights ({exc.__class__.__name__}: {exc})") from None
        try:
            model.load_state_dict(self.upgrade_state(state))
        except RuntimeError as exc:
            raise error(f"{path}: weights do not fit {what}: {exc}") from None
        return model.eval()

    def upgrade_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """A state dict written by an earlier version, in today's names."""
        return state

    # -- integrity manifest ------------------------------------------------------------------------------
    def manifest(self) -> dict[str, str]:
        """sha256 of every file of the bundle but ``bundle.json``, the kind's derived files and dot-files."""
        return manifest(self.path, self.UNLISTED)

    def verify_manifest(self) -> None:
        """Every file listed in ``files`` is there with its recorded sha256; the kind's required files are listed."""
        verify_manifest(self.path, self.meta.files, self.REQUIRED, self.error())


@dataclass
class Bundle(BaseBundle):
    """A ranking model bundle (kind ``model``): weights of a registered model, golden rows, ``model.onnx``."""

    meta: ModelBundleMeta

    META_TYPE = ModelBundleMeta
    WHAT = "model bundle"
    REQUIRED = REQUIRED
    UNLISTED = UNLISTED
    LEGACY_FORMATS = (1,)

    @property
    def model_name(self) -> str:
        return self.meta.model.name

    @property
    def hparams(self) -> dict[str, Any]:
        return self.meta.model.hparams

    @cached_property
    def tasks(self) -> tuple[str, ...]:
        """The labels a multi-task model learns, in the order of its output columns (probabilities ``[B, T]``);
        ``()`` for a single-task model (``[B]``). Read from the hyper-parameters, or the constructor's default
        when they do not record it: the value ``build_model`` used."""
        from ctrzoo.models.registry import model_tasks

        return model_tasks(self.model_name, self.hparams)

    @property
    def feature_set(self) -> tuple[tuple[str, str], ...]:
        """(name, kind) of every feature, in order: what a request must provide."""
        return tuple((f.name, f.kind) for f in self.spec.features)

    def golden(self) -> dict[str, Any] | None:
        """``{"rows": [...], "scores": [...]}`` or None for a format-1 bundle; a multi-task bundle's scores are
        one list per row, ordered as ``tasks`` (which the file records as ``"tasks"``)."""
        path = self.path / GOLDEN_FILE
        if self.meta.format_version == 1 and not path.exists():
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
        from ctrzoo.models import build_model, model_hparam_names

        hparams = dict(self.hparams)
        if "pool_lists" in model_hparam_names(self.model_name) and "pool_lists" not in hparams:
            hparams["pool_lists"] = False  # trained before sequences reached this model (issue 16): as trained
        model = build_model(self.model_name, self.codec.layout, **hparams)
        if tuple(getattr(model, "tasks", ())) != self.tasks:  # the protocol's promise, checked once here
            raise BundleError(f"{self.path}: model {self.model_name!r} learns tasks {list(model.tasks)}, the "
                              f"bundle's hyper-parameters say {list(self.tasks)}")
        return self.load_weights(model, f"model {self.model_name!r}")

    @classmethod
    def wrong_kind(cls, path: Path, raw: dict[str, Any]) -> str:
        # e.g. a retrieval bundle: say so here, not at the first missing key
        return (f"{path}: a {bundle_kind(raw)} bundle, not a ranking model bundle (a retrieval bundle is served "
                "with `ctrzoo serve --retrieval` beside a model bundle)")

    @classmethod
    def legacy_note(cls, path: Path) -> str:
        return (f"{path}: bundle format 1 has no integrity manifest and no golden rows, so neither is checked; "
                f"`ctrzoo export --bundle {path}` adds them")


def save_bundle(out: str | Path, model: nn.Module, spec: FeatureSpec, meta: ModelBundleMeta) -> Bundle:
    """Write a model bundle atomically; ``meta`` names the model and holds the training record. Its golden rows
    are the saved model's scores of raw rows (``write_golden``)."""
    return Bundle.write(out, model, spec, meta, add=lambda b: write_golden(b, b.meta.data.path))


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Open and check a model bundle (``BaseBundle.open``); a ``BundleError`` names what is wrong."""
    return Bundle.open(path, verify)


def check_replaceable(out: Path, kind: type[BaseBundle]) -> None:
    """Refuse to replace a bundle of another kind at ``out`` (``building`` refuses anything else but a bundle)."""
    if not (out / META_FILE).is_file():
        return
    try:
        other = bundle_kind(read_json(out / META_FILE, kind.error(), "bundle metadata"))
    except CtrzooError:
        return  # a damaged bundle.json: replacing it is what retraining is for
    if other != kind.META_TYPE.KIND:
        theirs = BUNDLE_OTHER_NAMES.get(other, f"{other} bundle")
        raise kind.error()(f"{out} is a {theirs}, not a {kind.WHAT}: refusing to replace it")


BUNDLE_OTHER_NAMES = {"model": "model bundle", "retrieval": "retrieval bundle"}


def read_meta_json(meta_path: Path, error: type[CtrzooError]) -> Any:
    """``bundle.json`` parsed (a regular file, UTF-8 JSON), or ``error`` naming the file and line."""
    try:
        return json.loads(read_regular(meta_path))
    except json.JSONDecodeError as exc:
        raise error(f"{meta_path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise error(f"{meta_path}: not UTF-8 text ({exc.reason})") from None


# -- integrity manifest --------------------------------------------------------------------------
def manifest(path: Path, unlisted: tuple[str, ...] = UNLISTED) -> dict[str, str]:
    """sha256 of every file of the bundle but ``bundle.json``, ``unlisted`` (top-level names) and dot-files."""
    out = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if rel.parts[0] in unlisted or any(part.startswith(".") for part in rel.parts) or rel.as_posix() == META_FILE:
            continue
        if p.is_dir() and not p.is_symlink():
            continue
        out[rel.as_posix()] = sha256_file(p)
    return out


def verify_manifest(path: Path, files: dict[str, str] | None, required: tuple[str, ...] = REQUIRED,
                    error: type[CtrzooError] = BundleError) -> None:
    if files is None:
        raise error(f"{path / META_FILE}: no integrity manifest ('files'); the bundle is incomplete")
    for name in required:
        if name not in files:
            raise error(f"{path / name}: not recorded in the bundle's manifest")
    if (path / ONNX_FILE).exists() and ONNX_FILE not in files:
        raise error(f"{path / ONNX_FILE}: not recorded in the bundle's manifest (copied from another "
                    f"bundle?): run `ctrzoo export --bundle {path}`")
    for rel, want in files.items():
        if os.path.isabs(rel) or ".." in Path(rel).parts or not Path(rel).parts:
            raise error(f"{path / META_FILE}: manifest entry {rel!r} is not a path inside the bundle")
        file = path / rel
        if not file.exists():
            hint = f"; run `ctrzoo export --bundle {path}` first" if rel == ONNX_FILE else ""
            raise error(f"{file}: missing{hint} (it is listed in the bundle's manifest)")
        got = sha256_file(file)
        if got != want:
            raise error(f"{file}: checksum differs from the one recorded in the bundle's manifest (sha256 "
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


def _require_regular(path: Path, error: type[CtrzooError] = BundleError) -> None:
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise error(f"{path}: not a regular file")


def _short(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 200 else f"{text[:100]}...{text[-60:]} ({len(text)} characters)"


# -- golden rows ---------------------------------------------------------------------------------
def write_golden(bundle: Bundle, data_path: str | None = None) -> dict[str, Any]:
    """Raw rows and the scores the bundle's torch model gives them, into ``golden.json``.

    Rows: the first raw test rows of the training dataset when it is still there, plus rows built from the
    spec's vocabularies (common, rare and unknown values, one row with every feature missing), so a
    bundle can always get them. Scores are of the saved weights, in eval mode: one per row, or for a
    multi-task model one list per row in the order of ``bundle.tasks`` (recorded as ``"tasks"``).
    """
    from ctrzoo.models.probability import ProbabilityModel

    rows = _dataset_rows(bundle.spec, data_path, GOLDEN_ROWS // 2)
    rows += _spec_rows(bundle.spec, GOLDEN_ROWS - len(rows))
    batch = encode_rows(bundle.codec, rows)
    model = ProbabilityModel(bundle.build_model()).eval()
    with torch.inference_mode():
        scores = model(*(torch.from_numpy(a) for a in (batch.sparse, batch.dense, batch.seq))).numpy()
    data: dict[str, Any] = {"rows": rows, "scores": scores.astype(np.float64).tolist()}
    if bundle.tasks:
        data["tasks"] = list(bundle.tasks)
    (bundle.path / GOLDEN_FILE).write_text(json.dumps(data, indent=1))
    return data


def check_golden(bundle: Bundle, codec: FeatureCodec, predict, tolerance: float = GOLDEN_TOLERANCE,
                 what: str = "") -> float | None:
    """Score the golden rows with ``predict(encoded_batch)``; BundleError when they are not reproduced.

    A multi-task bundle's rows are checked task by task (``predict`` must give ``[N, T]``; the error names
    the task that differs). Returns the largest difference (None for a bundle without golden rows)."""
    golden = bundle.golden()
    if golden is None:
        return None
    try:
        got = np.asarray(predict(encode_rows(codec, golden["rows"])), dtype=np.float64)
    except Exception as exc:  # an encoder's CtrzooError, or a runtime's own error type
        raise BundleError(f"{bundle.path}: cannot score its golden rows{what}: {exc.__class__.__name__}: "
                          f"{str(exc)[:200]}") from None
    tasks = bundle.tasks
    try:
        want = np.asarray(golden["scores"], dtype=np.float64)
    except (ValueError, TypeError):
        want = np.empty(0)  # ragged or not numbers: reported as the wrong shape below
    shape = (len(golden["rows"]), len(tasks)) if tasks else (len(golden["rows"]),)
    recorded = golden.get("tasks", list(tasks))  # written by multi-task bundles only
    if want.shape != shape or recorded != list(tasks):
        raise BundleError(f"{bundle.path}: golden scores of shape {want.shape} for tasks {golden.get('tasks')}, "
                          f"expected {shape} for {list(tasks) if tasks else 'a single-task model'}")
    if not tasks:
        got = got.reshape(-1)
    if got.shape != want.shape:
        raise BundleError(f"{bundle.path}: scored its golden rows{what} as shape {got.shape}, expected {want.shape}"
                          + (f" (one column per task: {', '.join(tasks)})" if tasks else ""))
    diffs = np.abs(got - want).reshape(len(want), -1).max(axis=0) if want.size else np.zeros(max(len(tasks), 1))
    for t, diff in enumerate(diffs):
        if not math.isfinite(diff) or diff > tolerance:
            task = f" (task {tasks[t]!r})" if tasks else ""
            raise BundleError(f"{bundle.path}: does not reproduce its golden rows{what}{task}: max |diff| "
                              f"{diff:.2e} > {tolerance:.0e} (weights, model.onnx and spec of different models, "
                              "or corrupt)")
    return float(diffs.max())


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
            elif f.kind in ("numeric", "bucketized"):
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
