"""FeatureSpec: the ordered list of features, fitted once on training data, saved as JSON (+ Parquet).

Plain, frozen data: the definitions and the fitted statistics (vocabularies, means), nothing derived. A
changed spec is a new one (``dataclasses.replace``, ``replace_features``). Everything derived (the tensor
layout, lookup tables, numeric parameters) belongs to the codec that ``spec.compile()`` builds once.
Every consumer (prepare, training, export, serving, comparison) reads the same saved spec, which is how
offline and online encodings cannot drift apart.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ctrzoo.errors import SpecError
from ctrzoo.features.codec import FeatureCodec
from ctrzoo.features.transforms import DERIVATIONS, NUMERIC_TRANSFORMS, TIME_PARTS, is_derivation
from ctrzoo.features.vocab import FIRST_ID, Vocabulary

SPEC_FORMAT_VERSION = 1
SPEC_FILE = "spec.json"
INLINE_VOCAB_MAX = 10_000  # larger vocabularies go to Parquet next to spec.json

Overflow = Literal["truncate", "hash"]  # past max_vocab: rarest values -> OOV, or hash into max_vocab buckets
TooLong = Literal["keep_last", "error"]  # a sequence longer than max_len: keep the most recent, or refuse
Pooling = Literal["mean", "sum", "max"]  # how models without attention turn a bag or sequence into one field


class _Column:
    @property
    def column(self) -> str:
        """The raw column this feature reads (``source``, else its own name)."""
        return self.source or self.name


@dataclass(frozen=True)
class Categorical(_Column):
    """A category: vocabulary fitted with ``min_count`` (ids 0 missing, 1 OOV) or hashed into buckets."""

    name: str
    source: str | None = None
    derive: str | None = None
    min_count: int = 1
    max_vocab: int | None = None
    overflow: Overflow = "truncate"
    hash_buckets: int | None = None
    vocab: Vocabulary | None = field(default=None, repr=False, compare=False)
    kind: ClassVar[str] = "categorical"

    @property
    def table_size(self) -> int:
        if self.hash_buckets:
            return self.hash_buckets + FIRST_ID
        if self.vocab is None:
            raise SpecError("not fitted yet", field=self.name)
        return self.vocab.table_size


_NEW = {"omit_default": True}  # fields added after spec format 1: left out of spec.json at their default


@dataclass(frozen=True)
class Numeric(_Column):
    """A number: ``fill`` when missing, else clipped to ``clip`` (raw value), ``transform``, then (optionally)
    standardization."""

    name: str
    source: str | None = None
    derive: str | None = None
    transform: str = "identity"
    standardize: bool = False
    fill: float = 0.0
    mean: float | None = None
    std: float | None = None
    clip: tuple[float, float] | None = field(default=None, metadata=_NEW)
    kind: ClassVar[str] = "numeric"

    def __post_init__(self) -> None:
        if self.clip is not None:
            object.__setattr__(self, "clip", tuple(self.clip))  # JSON gives a list


@dataclass(frozen=True)
class Bucketized(_Column):
    """A number cut into ``buckets`` quantile ranges of the training rows (raw value clipped to ``clip``, then
    ``transform``): a categorical field with ids 0 missing, 2 + range index, so models learn a vector per range
    instead of one weight on the value. ``boundaries`` (fitted) are the ``buckets - 1`` cut points (fewer
    when values tie)."""

    name: str
    source: str | None = None
    derive: str | None = None
    buckets: int = 10
    transform: str = "identity"
    clip: tuple[float, float] | None = None
    boundaries: tuple[float, ...] | None = None
    kind: ClassVar[str] = "bucketized"

    def __post_init__(self) -> None:
        for name in ("clip", "boundaries"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def table_size(self) -> int:
        if self.boundaries is None:
            raise SpecError("not fitted yet", field=self.name)
        return len(self.boundaries) + 1 + FIRST_ID


@dataclass(frozen=True)
class SequenceFeature(_Column):
    """A behaviour sequence (most recent last) looked up in the table of categorical ``shares``."""

    name: str
    shares: str
    source: str | None = None
    max_len: int = 50
    sep: str = "^"
    too_long: TooLong = "keep_last"
    pooling: Pooling = field(default="mean", metadata=_NEW)
    kind: ClassVar[str] = "sequence"


@dataclass(frozen=True)
class MultiValue(_Column):
    """A bag of categories per row (a ``sep``-joined string or a list, e.g. tags or genres), pooled by the
    models. Its ids come from its own vocabulary (fitted like a categorical's: ``min_count``, ``max_vocab``,
    or ``hash_buckets``) or, with ``shares``, from a categorical feature's table. The first ``max_len`` items
    are kept; missing and empty items are dropped."""

    name: str
    source: str | None = None
    sep: str = "|"
    max_len: int = 16
    shares: str | None = None
    min_count: int = 1
    max_vocab: int | None = None
    hash_buckets: int | None = None
    pooling: Pooling = "mean"
    vocab: Vocabulary | None = field(default=None, repr=False, compare=False)
    kind: ClassVar[str] = "multi_value"

    @property
    def table_size(self) -> int:
        """Rows of its own table (0 when it shares another feature's)."""
        if self.shares:
            return 0
        if self.hash_buckets:
            return self.hash_buckets + FIRST_ID
        if self.vocab is None:
            raise SpecError("not fitted yet", field=self.name)
        return self.vocab.table_size


@dataclass(frozen=True)
class DenseVector(_Column):
    """A fixed-length vector of floats per row (a list column, or a ``sep``-joined string), e.g. a pretrained
    embedding; all ``fill`` when missing. It enters ``dense`` as ``dim`` columns; models project it to a field."""

    name: str
    dim: int
    source: str | None = None
    sep: str = ","
    fill: float = 0.0
    kind: ClassVar[str] = "dense_vector"


Feature = Categorical | Numeric | Bucketized | SequenceFeature | MultiValue | DenseVector
_KINDS = {c.kind: c for c in (Categorical, Numeric, Bucketized, SequenceFeature, MultiValue, DenseVector)}


@dataclass(frozen=True)
class FeatureSpec:
    """The features in order, the label column and the optional user id column (for GAUC)."""

    features: tuple[Feature, ...]
    label: str | None = "label"
    user_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))  # a list given: frozen as a tuple
        self._validate()

    # -- views (of immutable data: computed once) ------------------------------------------------------
    @cached_property
    def categorical(self) -> tuple[Categorical, ...]:
        return tuple(f for f in self.features if isinstance(f, Categorical))

    @cached_property
    def numeric(self) -> tuple[Numeric, ...]:
        return tuple(f for f in self.features if isinstance(f, Numeric))

    @cached_property
    def sequence(self) -> tuple[SequenceFeature, ...]:
        return tuple(f for f in self.features if isinstance(f, SequenceFeature))

    @cached_property
    def bucketized(self) -> tuple[Bucketized, ...]:
        return tuple(f for f in self.features if isinstance(f, Bucketized))

    @cached_property
    def sparse_fields(self) -> tuple[Categorical | Bucketized, ...]:
        """Categorical and bucketized features in spec order: the columns of ``sparse [B, F]``."""
        return tuple(f for f in self.features if isinstance(f, Categorical | Bucketized))

    @cached_property
    def multi_value(self) -> tuple[MultiValue, ...]:
        return tuple(f for f in self.features if isinstance(f, MultiValue))

    @cached_property
    def dense_vector(self) -> tuple[DenseVector, ...]:
        return tuple(f for f in self.features if isinstance(f, DenseVector))

    @cached_property
    def lists(self) -> tuple[SequenceFeature | MultiValue, ...]:
        """Sequences and bags in spec order: the slots of ``seq [B, S, L]``."""
        return tuple(f for f in self.features if isinstance(f, SequenceFeature | MultiValue))

    @cached_property
    def _by_name(self) -> dict[str, Feature]:
        return {f.name: f for f in self.features}

    def __getitem__(self, name: str) -> Feature:
        try:
            return self._by_name[name]
        except KeyError:
            raise SpecError("no such feature", field=name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def compile(self) -> FeatureCodec:
        """The codec of this fitted spec: layout, lookup tables, both encoders (build it once, keep it)."""
        return FeatureCodec(self)

    def replace_features(self, changed: Mapping[str, Feature]) -> FeatureSpec:
        """A copy with the features named in ``changed`` swapped for the given ones (same order)."""
        unknown = set(changed) - set(self._by_name)
        if unknown:
            raise SpecError(f"no such feature(s): {sorted(unknown)}")
        return replace(self, features=tuple(changed.get(f.name, f) for f in self.features))

    def without(self, names: Iterable[str]) -> FeatureSpec:
        """A copy without the named features (each must exist)."""
        names = set(names)
        for name in sorted(names - set(self._by_name)):
            raise SpecError(f"no such feature (the spec has {', '.join(self._by_name)})", field=name)
        return replace(self, features=tuple(f for f in self.features if f.name not in names))

    @property
    def fitted(self) -> bool:
        cats = all(c.hash_buckets or c.vocab is not None for c in self.categorical)
        bags = all(b.shares or b.hash_buckets or b.vocab is not None for b in self.multi_value)
        nums = all(not n.standardize or n.mean is not None for n in self.numeric)
        buckets = all(b.boundaries is not None for b in self.bucketized)
        return cats and bags and nums and buckets

    def raw_columns(self) -> tuple[str, ...]:
        """Raw columns the features read, in first-use order."""
        return tuple(dict.fromkeys(f.column for f in self.features))

    def _validate(self) -> None:
        names = [f.name for f in self.features]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise SpecError(f"duplicate feature names: {sorted(dupes)}")
        cats = {c.name for c in self.categorical}
        for f in self.features:
            if isinstance(f, SequenceFeature | MultiValue) and f.pooling not in get_args(Pooling):
                raise SpecError(f"pooling must be one of {get_args(Pooling)}", field=f.name)
            if isinstance(f, MultiValue):
                if f.shares is not None and f.shares not in cats:
                    raise SpecError(f"shares {f.shares!r}, which is not a categorical feature", field=f.name)
                if f.max_len < 1 or f.min_count < 1 or (f.hash_buckets is not None and f.hash_buckets < 1):
                    raise SpecError("max_len, min_count and hash_buckets must be >= 1", field=f.name)
                if not f.sep:
                    raise SpecError("sep must not be empty", field=f.name)
            if isinstance(f, DenseVector) and (not isinstance(f.dim, int) or f.dim < 1):
                raise SpecError(f"dim must be a positive integer, got {f.dim!r}", field=f.name)
            if isinstance(f, SequenceFeature):
                if f.shares not in cats:
                    raise SpecError(f"shares {f.shares!r}, which is not a categorical feature", field=f.name)
                if f.max_len < 1:
                    raise SpecError("max_len must be >= 1", field=f.name)
                if f.too_long not in get_args(TooLong):
                    raise SpecError(f"too_long must be one of {get_args(TooLong)}", field=f.name)
            if isinstance(f, Numeric | Bucketized) and f.clip is not None and (
                    len(f.clip) != 2 or not all(isinstance(v, int | float) for v in f.clip) or f.clip[0] > f.clip[1]):
                raise SpecError(f"clip must be [low, high] with low <= high, got {list(f.clip)}", field=f.name)
            if isinstance(f, Bucketized) and (not isinstance(f.buckets, int) or f.buckets < 2):
                raise SpecError(f"buckets must be an integer >= 2, got {f.buckets!r}", field=f.name)
            if isinstance(f, Numeric | Bucketized) and f.transform not in NUMERIC_TRANSFORMS:
                raise SpecError(f"unknown transform {f.transform!r}; known: {sorted(NUMERIC_TRANSFORMS)}", field=f.name)
            if getattr(f, "derive", None) and not is_derivation(f.derive):
                raise SpecError(f"unknown derivation {f.derive!r}; known: {sorted(DERIVATIONS)} and time parts "
                                f"{sorted(TIME_PARTS)} (e.g. 'hour' or 'hour:unix_ms')", field=f.name)
            if isinstance(f, Categorical):
                if f.min_count < 1:
                    raise SpecError("min_count must be >= 1", field=f.name)
                if f.hash_buckets is not None and f.hash_buckets < 1:
                    raise SpecError("hash_buckets must be >= 1", field=f.name)
                if f.overflow not in get_args(Overflow):
                    raise SpecError(f"overflow must be one of {get_args(Overflow)}", field=f.name)

    # -- persistence -----------------------------------------------------------------------------
    def to_dict(self, vocab_dir: Path | None = None) -> dict[str, Any]:
        """JSON-ready dict; large vocabularies are written to ``vocab_dir`` as Parquet and referenced."""
        feats = []
        for f in self.features:
            # not dataclasses.asdict: it would deep-copy the vocabulary and its built lookup table
            d = {"kind": f.kind, **{fl.name: _jsonable(getattr(f, fl.name)) for fl in fields(f) if fl.name != "vocab"
                                    and not (fl.metadata.get("omit_default") and getattr(f, fl.name) == fl.default)}}
            if isinstance(f, Categorical | MultiValue) and f.vocab is not None:
                d["vocab"] = _vocab_to_json(f, vocab_dir)
            feats.append(d)
        return {"format_version": SPEC_FORMAT_VERSION, "label": self.label, "user_id": self.user_id, "features": feats}

    @classmethod
    def from_dict(cls, d: dict[str, Any], vocab_dir: Path | None = None) -> FeatureSpec:
        version = d.get("format_version")
        if version != SPEC_FORMAT_VERSION:
            raise SpecError(f"spec format version {version!r}, this ctrzoo reads {SPEC_FORMAT_VERSION}")
        feats: list[Feature] = []
        for i, fd in enumerate(d.get("features", [])):
            fd = dict(fd)
            kind = fd.pop("kind", None)
            if kind not in _KINDS:
                raise SpecError(f"features[{i}]: unknown kind {kind!r}; known: {sorted(_KINDS)}")
            klass = _KINDS[kind]
            vocab_json = fd.pop("vocab", None)
            allowed = {f.name for f in fields(klass)} - {"vocab"}
            unknown = set(fd) - allowed
            if unknown:
                raise SpecError(f"features[{i}]: unknown keys {sorted(unknown)} for a {kind} feature")
            if vocab_json is not None:
                fd["vocab"] = _vocab_from_json(vocab_json, vocab_dir, fd.get("name", f"features[{i}]"))
            try:
                feat = klass(**fd)
            except TypeError as exc:
                raise SpecError(f"features[{i}]: {exc}") from None
            feats.append(feat)
        return cls(feats, label=d.get("label"), user_id=d.get("user_id"))

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / SPEC_FILE
        path.write_text(json.dumps(self.to_dict(directory / "vocab"), indent=1))
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> FeatureSpec:
        path = Path(directory) / SPEC_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SpecError(f"{path}: missing feature spec") from None
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        return cls.from_dict(data, Path(directory) / "vocab")

    def unfitted(self) -> FeatureSpec:
        """A copy with the fitted state dropped (vocabularies, statistics)."""
        feats = []
        for f in self.features:
            if isinstance(f, Categorical | MultiValue):
                f = replace(f, vocab=None)
            elif isinstance(f, Numeric):
                f = replace(f, mean=None, std=None)
            elif isinstance(f, Bucketized):
                f = replace(f, boundaries=None)
            feats.append(f)
        return FeatureSpec(feats, self.label, self.user_id)

    def equals(self, other: FeatureSpec) -> bool:
        """Same definitions and the same fitted state, vocabularies included."""
        if self.to_dict(None) != other.to_dict(None):
            return False
        return all(
            (a.vocab is None) == (b.vocab is None) and (a.vocab is None or a.vocab.equals(b.vocab))
            for a, b in zip(self.categorical + self.multi_value, other.categorical + other.multi_value)
        )


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _vocab_to_json(f: Categorical | MultiValue, vocab_dir: Path | None) -> dict[str, Any]:
    vocab = f.vocab
    assert vocab is not None
    if vocab_dir is None or len(vocab) <= INLINE_VOCAB_MAX:
        return {"values": vocab.values.to_pylist(), "counts": vocab.counts.tolist()}
    vocab_dir.mkdir(parents=True, exist_ok=True)
    name = f"{f.name}.parquet"
    pq.write_table(pa.table({"value": vocab.values, "count": vocab.counts}), vocab_dir / name)
    return {"file": f"vocab/{name}", "size": len(vocab)}


def _vocab_from_json(d: dict[str, Any], vocab_dir: Path | None, name: str) -> Vocabulary:
    if "file" in d:
        if vocab_dir is None:
            raise SpecError("vocabulary stored in a file, but no directory given", field=name)
        path = _inside(vocab_dir.parent, d.get("file"), name)
        try:
            t = pq.read_table(path)
        except (FileNotFoundError, OSError, pa.ArrowInvalid) as exc:
            raise SpecError(f"cannot read vocabulary {path}: {exc}", field=name) from None
        vocab = Vocabulary(t.column("value").combine_chunks(), t.column("count").to_numpy())
        if len(vocab) != d.get("size"):
            raise SpecError(f"vocabulary {path} has {len(vocab)} values, spec says {d.get('size')}", field=name)
        return vocab
    return Vocabulary(pa.array(d["values"], pa.string()), np.asarray(d["counts"], dtype=np.int64))


def _inside(root: Path, rel: Any, name: str) -> Path:
    """``root / rel`` for a relative path that stays inside ``root`` (no ``..``, no absolute path, no link out)
    and names a regular file: a spec must not make its reader open files elsewhere, or a FIFO that blocks."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or ".." in Path(rel).parts:
        raise SpecError(f"vocabulary file {rel!r} must be a relative path inside {root}", field=name)
    path = root / rel
    try:
        if not path.resolve().is_relative_to(root.resolve()):
            raise SpecError(f"vocabulary file {rel!r} leads outside {root}", field=name)
        if not stat.S_ISREG(path.stat().st_mode):
            raise SpecError(f"vocabulary file {path} is not a regular file", field=name)
    except OSError as exc:
        raise SpecError(f"cannot read vocabulary {path}: {exc.strerror or exc}", field=name) from None
    return path
