"""The metadata every artefact carries, one dataclass per JSON file: the schema, in one place.

    DIR/dataset.json         DatasetMeta          written by ``ctrzoo.data.prepare``, read by ``PreparedDataset``
    BUNDLE/bundle.json       ModelBundleMeta      a ranking model bundle (``ctrzoo.bundle``)
                             RetrievalBundleMeta  a retrieval bundle (``ctrzoo.retrieval.bundle``); both are a
                                                  ``BundleMeta``: the stamps, model, data, training record, files
    BUNDLE/tvm/manifest.json TvmManifest          what the tvm backend's library was built from
                                                  (``ctrzoo.runtime.tvm.artifacts``)

``to_json()`` is what is written; ``from_json(d, path)`` checks the format version first, then the type of every
key it knows, and raises the artefact's own error (``DatasetError``, ``BundleError``, ``RetrievalError``) naming
the file and the key (``bundle.json: key 'model.hparams': expected an object, got a list``).

Files written by earlier versions read as they are: a key the file lacks takes the field's default and is
not written back; a key this version does not know is kept in ``extra`` and written back unchanged. So
reading and rewriting a file (``ctrzoo export`` updating ``bundle.json``) keeps exactly what it had.
Free-form parts stay plain dicts where their own code owns the schema: hyper-parameters (the model's
constructor), ``train`` (``TrainConfig`` / ``RetrievalConfig``), metric records (``ctrzoo.train``), ``towers``
(``TowerSplit``), the dataset's ``split`` (``SplitConfig``) and tuning summaries.

Import-light on purpose (no torch, no pyarrow): ``ctrzoo info`` reads metadata before it loads anything.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from ctrzoo.errors import BundleError, CtrzooError, DatasetError

# -- the JSON codec shared by every record -----------------------------------------------------------------
OMIT_DEFAULT = {"omit_default": True}  # field metadata: the key is written only when its value is not the default


@dataclass(kw_only=True)
class Record:
    """Base of every metadata dataclass: ``to_json`` and a checked ``from_json`` (see the module docstring)."""

    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # keys of other versions, written back
    _absent: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in _fields(type(self)):
            value = getattr(self, f.name)
            if (f.metadata.get("omit_default") or f.name in self._absent) and value == _default(f):
                continue  # a key the file did not have (or one only some files have) stays out
            out[f.name] = _dump(value)
        out.update((k, v) for k, v in self.extra.items() if k not in out)
        return out

    @classmethod
    def read(cls, d: Any, path: str | Path, where: str, error: type[CtrzooError]) -> Self:
        """``d`` (the value at key ``where`` of ``path``) as this record; ``error`` names the key on a bad value."""
        if not isinstance(d, dict):
            raise error(f"{path}: {_at(where)}expected an object, got {_json_type(d)}")
        hints = _hints(cls)
        known, kwargs, absent = set(), {}, set()
        for f in _fields(cls):
            known.add(f.name)
            if f.name not in d:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise error(f"{path}: key {_join(where, f.name)!r} is missing")
                absent.add(f.name)
                continue
            kwargs[f.name] = _convert(d[f.name], hints[f.name], path, _join(where, f.name), error)
        record = cls(**kwargs, extra={k: v for k, v in d.items() if k not in known})
        record._absent = frozenset(absent)
        return record


@functools.cache
def _fields(cls: type) -> tuple[dataclasses.Field, ...]:
    return tuple(f for f in dataclasses.fields(cls) if f.name not in ("extra", "_absent"))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _dump(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    return value


def _convert(value: Any, hint: Any, path: str | Path, where: str, error: type[CtrzooError]) -> Any:
    """``value`` checked against the annotation ``hint`` (records, unions with None, dict/list, scalars)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = (a for a in args if a is not type(None))
        return _convert(value, inner, path, where, error)
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.read(value, path, where, error)
    if origin is dict:
        if not isinstance(value, dict):
            raise error(f"{path}: {_at(where)}expected an object, got {_json_type(value)}")
        return {k: _convert(v, args[1], path, _join(where, k), error) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise error(f"{path}: {_at(where)}expected a list, got {_json_type(value)}")
        return [_convert(v, args[0], path, f"{where}[{i}]", error) for i, v in enumerate(value)]
    ok = {int: lambda v: type(v) is int, float: lambda v: type(v) in (int, float),
          str: lambda v: isinstance(v, str), bool: lambda v: isinstance(v, bool)}[hint]
    if not ok(value):
        raise error(f"{path}: {_at(where)}expected {_SCALARS[hint]}, got {_json_type(value)}")
    return value


_SCALARS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    for t, name in ((dict, "an object"), (list, "a list"), (str, "a string"), (int, "an integer"),
                    (float, "a number")):
        if isinstance(value, t):
            return name
    return type(value).__name__


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _at(where: str) -> str:
    return f"key {where!r}: " if where else ""


class Artefact(Record):
    """A whole metadata file: its format version is checked before anything else is read."""

    FORMAT_KEY: ClassVar[str] = "format_version"
    FORMATS: ClassVar[tuple[int, ...]]  # the versions this ctrzoo reads; the last one is written
    WHAT: ClassVar[str]  # in messages: "dataset", "bundle", "retrieval bundle", "tvm manifest"
    HINT: ClassVar[str] = ""  # what to do about another format version

    @classmethod
    def error(cls) -> type[CtrzooError]:
        raise NotImplementedError

    @classmethod
    def from_json(cls, d: Any, path: str | Path) -> Self:
        error = cls.error()
        if not isinstance(d, dict):
            raise error(f"{path}: {cls.WHAT} metadata must be a JSON object")
        version = d.get(cls.FORMAT_KEY)
        if type(version) is not int or version not in cls.FORMATS:
            raise error(f"{path}: {cls.WHAT} format version {version!r}, this ctrzoo reads "
                        f"{', '.join(map(str, cls.FORMATS))}{cls.HINT}")
        return cls.read(d, path, "", error)


# -- dataset.json ----------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class InputFile(Record):
    path: str  # resolved path of a raw input file
    bytes: int


@dataclass(kw_only=True)
class SplitInfo(Record):
    rows: int
    positives: int  # of the first label (the shards' ``label`` column)
    shards: list[str]  # Parquet files, relative to the dataset directory
    label_positives: dict[str, int] = field(default_factory=dict, metadata=OMIT_DEFAULT)  # the other labels'


@dataclass(kw_only=True)
class BadRowReason(Record):
    count: int
    first: list[str]  # ``file:line`` of the first rows skipped for this reason


@dataclass(kw_only=True)
class BadRowsSummary(Record):
    total: int = 0
    by_reason: dict[str, BadRowReason] = field(default_factory=dict)


@dataclass(kw_only=True)
class LayoutSummary(Record):
    """The encoded widths, for people and ``ctrzoo info`` (the spec is the contract, not this)."""

    num_embeddings: int
    sparse: dict[str, int]  # field -> rows of its slice of the table
    dense: list[str]
    seq: dict[str, dict[str, Any]]  # sequence -> {"shares": field, "max_len": L}


@dataclass(kw_only=True)
class DatasetMeta(Artefact):
    """``dataset.json``: written last by ``prepare``, so a directory with it is complete."""

    FORMATS = (1,)
    WHAT = "dataset"
    HINT = ": prepare the data again"

    format_version: int = 1
    kind: str  # the schema's name: criteo, avazu, taobao (the built-in formats) or a user's schema's
    created: str | None = None  # ISO time
    ctrzoo_version: str | None = None
    inputs: list[InputFile] = field(default_factory=list)
    fingerprint: str  # of the raw inputs' bytes: bundles record it, compare and evaluate check it
    split: dict[str, Any] = field(default_factory=dict)  # SplitConfig.to_dict(): method, ratios, seed
    splits: dict[str, SplitInfo]  # train, valid, test
    user_id: str | None = None  # the raw column kept beside the shards for GAUC
    # the labels in the shards: the first is ``label``, the others ``label.<name>``; how each was decided
    labels: list[str] = field(default_factory=list, metadata=OMIT_DEFAULT)
    label_rules: dict[str, str] = field(default_factory=dict, metadata=OMIT_DEFAULT)
    weight: str | None = field(default=None, metadata=OMIT_DEFAULT)  # the sample weight column (``weight``)
    schema: dict[str, Any] | None = field(default=None, metadata=OMIT_DEFAULT)  # the DatasetSchema, YAML form
    raw: dict[str, str] = field(default_factory=dict)  # split -> raw rows kept (``raw/test.parquet``)
    bad_rows: BadRowsSummary = field(default_factory=BadRowsSummary)
    warnings: list[str] = field(default_factory=list)
    layout: LayoutSummary | None = None
    workers: int = 1
    seconds: float | None = None

    @classmethod
    def error(cls) -> type[CtrzooError]:
        return DatasetError


# -- bundle.json -----------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ModelInfo(Record):
    name: str  # the registry name (``two_tower`` for retrieval)
    hparams: dict[str, Any] = field(default_factory=dict)  # the constructor's keyword arguments


@dataclass(kw_only=True)
class DataRef(Record):
    """The prepared dataset a bundle was trained on."""

    path: str | None = None
    kind: str | None = None
    fingerprint: str | None = None


@dataclass(kw_only=True)
class Metrics(Record):
    valid: dict[str, Any] = field(default_factory=dict)  # the kept epoch's history record
    test: dict[str, Any] = field(default_factory=dict)  # ranking: auc, logloss, rows[, gauc]; retrieval: recall@K
    # retrieval: recall@K of recommending the most clicked items to everyone
    test_popularity_baseline: dict[str, float] | None = field(default=None, metadata=OMIT_DEFAULT)


@dataclass(kw_only=True)
class OnnxRecord(Record):
    """What ``ctrzoo export`` wrote and checked."""

    file: str
    sha256: str
    opset: int
    parity_max_abs_diff: float  # onnxruntime vs torch on random inputs
    golden_max_abs_diff: float  # the golden rows, encoded from raw values, vs their recorded scores
    # a multi-task model's output: ``prob [B, T]``, columns in ``tasks`` order (single-task: ``[B]``, not written)
    tasks: list[str] = field(default_factory=list, metadata=OMIT_DEFAULT)
    output_shape: list[Any] = field(default_factory=lambda: ["batch"], metadata=OMIT_DEFAULT)


@dataclass(kw_only=True)
class Artifacts(Record):
    onnx: OnnxRecord | None = None


@dataclass(kw_only=True)
class BundleMeta(Artefact):
    """What every bundle's ``bundle.json`` holds; the kinds add theirs. ``files`` is the integrity manifest
    (relative path -> sha256 of every file but ``bundle.json`` and the kind's derived caches)."""

    KIND: ClassVar[str]
    WHAT = "bundle"

    kind: str = field(default="model", metadata=OMIT_DEFAULT)  # absent in ranking bundles (the first kind)
    format_version: int
    version: str = "0"  # written time + weights digest: two bundles never share one
    ctrzoo_version: str | None = None
    model: ModelInfo
    data: DataRef = field(default_factory=DataRef)
    train: dict[str, Any] = field(default_factory=dict)  # the training config as run
    metrics: Metrics = field(default_factory=Metrics)
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    train_seconds: float | None = None
    files: dict[str, str] | None = field(default=None, metadata=OMIT_DEFAULT)

    def __post_init__(self) -> None:
        if self.kind != self.KIND:
            raise self.error()(f"a {self.kind!r} bundle's metadata read as a {self.KIND!r} bundle's")

    @classmethod
    def from_json(cls, d: Any, path: str | Path) -> Self:
        if isinstance(d, dict) and bundle_kind(d) != cls.KIND:
            raise cls.error()(f"{path}: a {bundle_kind(d)} bundle, not a {cls.KIND} bundle")
        return super().from_json(d, path)


def bundle_kind(d: Any) -> str:
    """The kind a parsed ``bundle.json`` declares (``model`` when it names none, as ranking bundles do)."""
    kind = d.get("kind", "model") if isinstance(d, dict) else None
    return kind if isinstance(kind, str) else repr(kind)


@dataclass(kw_only=True)
class ModelBundleMeta(BundleMeta):
    KIND = "model"
    FORMATS = (1, 2)  # 1: no manifest, no golden rows (loaded with a warning; ``ctrzoo export`` upgrades it)

    format_version: int = 2
    artifacts: Artifacts = field(default_factory=Artifacts, metadata=OMIT_DEFAULT)  # written by ``ctrzoo export``

    @classmethod
    def error(cls) -> type[CtrzooError]:
        return BundleError


@dataclass(kw_only=True)
class CatalogueInfo(Record):
    file: str
    id_column: str
    items: int
    columns: list[str]  # the item features kept beside each id


@dataclass(kw_only=True)
class RetrievalBundleMeta(BundleMeta):
    KIND = "retrieval"
    WHAT = "retrieval bundle"
    FORMATS = (1,)  # the manifest (``files``) came later without a new version: bundles without one still load

    kind: str = "retrieval"
    format_version: int = 1
    towers: dict[str, Any]  # TowerSplit.to_dict(): item_id, item, user, history_attributes
    catalogue: CatalogueInfo
    clicks: dict[str, Any] = field(default_factory=dict)  # per split, and those left out (not in the catalogue)
    catalogue_build: dict[str, Any] = field(default_factory=dict)  # counts from building it off the raw rows

    @classmethod
    def error(cls) -> type[CtrzooError]:
        from ctrzoo.retrieval.errors import RetrievalError  # the retrieval package imports this module

        return RetrievalError


BUNDLE_META_TYPES: dict[str, type[BundleMeta]] = {"model": ModelBundleMeta, "retrieval": RetrievalBundleMeta}


# -- tvm/manifest.json -----------------------------------------------------------------------------------
@dataclass(kw_only=True)
class TvmBuildKey(Record):
    """What ``model.so`` depends on: a manifest with another key means the library is stale."""

    onnx_sha256: str
    tvm_version: str
    target: dict[str, Any]  # the host target, without its thread count (a runtime setting)
    buckets: list[int]
    database_sha256: str | None  # of the tuning records, None when untuned

    def differences(self, other: TvmBuildKey) -> list[str]:
        return [f.name for f in _fields(TvmBuildKey) if getattr(self, f.name) != getattr(other, f.name)]


@dataclass(kw_only=True)
class TvmLibrary(Record):
    file: str
    sha256: str
    build_seconds: float


@dataclass(kw_only=True)
class TvmManifest(Artefact):
    """``BUNDLE/tvm/manifest.json``: the build key's fields at the top level, then how the build went."""

    FORMAT_KEY = "format"
    FORMATS = (1,)
    WHAT = "tvm manifest"

    format: int = 1
    onnx_sha256: str
    tvm_version: str
    target: dict[str, Any]
    buckets: list[int]
    database_sha256: str | None
    num_cores: int | None = None
    library: TvmLibrary
    database_records: int = 0
    built_from: str  # "database" or "untuned"
    tuning: dict[str, Any] | None = None  # the last ``ctrzoo tune`` summary, kept across rebuilds

    @classmethod
    def error(cls) -> type[CtrzooError]:
        return BundleError

    @classmethod
    def built(cls, key: TvmBuildKey, **details: Any) -> TvmManifest:
        """The manifest of a library built for ``key``; ``details``: the fields after the key's."""
        return cls(**{f.name: getattr(key, f.name) for f in _fields(TvmBuildKey)}, **details)

    @property
    def build_key(self) -> TvmBuildKey:
        return TvmBuildKey(**{f.name: getattr(self, f.name) for f in _fields(TvmBuildKey)})
