"""Raw file formats (Criteo, Avazu, Taobao): their columns, what is validated, and default specs."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ctrzoo.errors import DataError
from ctrzoo.features import Categorical, FeatureSpec, Numeric, SequenceFeature

CRITEO_INT = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CAT = tuple(f"C{i}" for i in range(1, 27))
AVAZU_COLUMNS = [
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
    "app_category", "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
    "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
]
TAOBAO_COLUMNS = [
    "clk", "time_stamp", "userid", "adgroup_id", "pid", "cate_id", "campaign_id", "customer", "brand", "price",
    "cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level", "shopping_level", "occupation",
    "new_user_class_level", "click_sequence",
]
TAOBAO_CATEGORICAL = [c for c in TAOBAO_COLUMNS if c not in ("clk", "time_stamp", "price", "click_sequence")]


@dataclass(frozen=True)
class RawFormat:
    """How to read and validate one dataset's raw rows; everything else is the feature spec's job."""

    name: str
    columns: tuple[str, ...]
    delimiter: str
    has_header: bool
    label: str
    default_spec: Callable[[], FeatureSpec]
    integer_fields: tuple[str, ...] = ()
    float_fields: tuple[str, ...] = ()
    patterns: dict[str, tuple[str, str]] = field(default_factory=dict)  # column -> (regex, reason)
    user_id: str | None = None


def _criteo_spec() -> FeatureSpec:
    feats = [Numeric(c, transform="criteo_log", standardize=True) for c in CRITEO_INT]
    feats += [Categorical(c, min_count=10) for c in CRITEO_CAT]
    return FeatureSpec(feats, label="label")


def _avazu_spec() -> FeatureSpec:
    skip = {"id", "click", "hour"}
    feats = [Categorical(c, min_count=2) for c in AVAZU_COLUMNS if c not in skip]
    feats += [
        Categorical("hour_of_day", source="hour", derive="yymmddhh_hour"),
        Categorical("weekday", source="hour", derive="yymmddhh_weekday"),
    ]
    return FeatureSpec(feats, label="click")


def _taobao_spec() -> FeatureSpec:
    feats = [Categorical(c, min_count=2) for c in TAOBAO_CATEGORICAL]
    feats.append(Numeric("price", transform="log1p", standardize=True))
    feats.append(SequenceFeature("click_sequence", shares="adgroup_id", max_len=50, sep="^"))
    return FeatureSpec(feats, label="clk", user_id="userid")


FORMATS: dict[str, RawFormat] = {
    "criteo": RawFormat(
        "criteo", ("label", *CRITEO_INT, *CRITEO_CAT), "\t", False, "label", _criteo_spec, integer_fields=CRITEO_INT
    ),
    "avazu": RawFormat(
        "avazu",
        tuple(AVAZU_COLUMNS),
        ",",
        True,
        "click",
        _avazu_spec,
        patterns={"hour": (r"^\d{8}$", "hour is not YYMMDDHH")},
    ),
    "taobao": RawFormat(
        "taobao",
        tuple(TAOBAO_COLUMNS),
        ",",
        True,
        "clk",
        _taobao_spec,
        float_fields=("price",),
        patterns={"click_sequence": (r"^(\d+(\^\d+)*)?$", "broken click_sequence (expected ids joined by ^)")},
        user_id="userid",
    ),
}


def open_raw(path: Path):
    """Binary stream of a raw file, transparently gunzipped (Criteo 1TB day files ship as .gz)."""
    return GunzipStream(path) if path.suffix == ".gz" else open(path, "rb")


class GzipDataError(DataError):
    """A cut-short or corrupt .gz input; ``offset``: uncompressed bytes handed out before the damage."""

    def __init__(self, message: str, file: str, offset: int):
        super().__init__(f"{message}, after {offset:,} bytes of uncompressed data", file)
        self.detail, self.offset = message, offset


class GunzipStream:
    """Reader of a (multi-member) .gz file that hands out every byte decompressed before a truncation or
    corruption and only then raises ``GzipDataError``, so the caller can name the last whole line read
    (``gzip.open`` drops that data and raises a bare ``EOFError``). Output per call is bounded by ``size``.
    """

    _CHUNK = 1 << 18  # compressed bytes per raw read

    def __init__(self, path: Path):
        self._file = str(path)
        self._raw = open(path, "rb")  # noqa: SIM115 - closed by close() / __exit__
        self._z = None  # decompressor of the current member; None between members
        self._in = b""  # compressed input not yet fed
        self._out: list[bytes] = []  # decompressed, not yet handed out
        self._have = 0
        self._offset = 0
        self._done = False
        self._error: GzipDataError | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._raw.close()

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while part := self.read(1 << 24):
                parts.append(part)
            return b"".join(parts)
        if size == 0:
            return b""
        self._fill(size)
        if not self._have and self._error is not None:
            raise self._error
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        out, rest = (data, b"") if len(data) <= size else (data[:size], data[size:])
        self._out, self._have = ([rest] if rest else []), len(rest)
        self._offset += len(out)
        return out

    def readline(self, limit: int = -1) -> bytes:
        while True:
            data = b"".join(self._out)
            self._out = [data] if data else []
            nl = data.find(b"\n")
            if nl >= 0 or 0 <= limit <= len(data) or self._done:
                end = nl + 1 if nl >= 0 else len(data)
                end = min(end, limit) if limit >= 0 else end
                if not end and self._error is not None:
                    raise self._error
                return self.read(end)
            self._fill(self._have + (1 << 16))

    def _fill(self, want: int) -> None:
        """Decompress until ``want`` bytes are pending, the data ends, or it is found damaged."""
        while self._have < want and not self._done:
            at_end = False
            if not self._in:
                self._in = self._raw.read(self._CHUNK)
                at_end = not self._in
            if self._z is None:
                self._in = self._in.lstrip(b"\0")  # gzip allows zero padding after a member
                if at_end:
                    self._done = True
                    break
                if not self._in:
                    continue
                self._z = zlib.decompressobj(31)
            try:
                piece = self._z.decompress(self._in, want - self._have)
            except zlib.error as exc:
                self._fail(f"corrupt gzip data ({exc})")
                break
            self._in = self._z.unused_data if self._z.eof else self._z.unconsumed_tail
            if piece:
                self._out.append(piece)
                self._have += len(piece)
            if self._z.eof:
                self._z = None
            elif at_end and not piece:
                self._fail("truncated gzip file: the compressed data stops before the end of the stream")

    def _fail(self, message: str) -> None:
        self._done = True
        self._error = GzipDataError(message, self._file, self._offset + self._have)


def resolve_format(name: str, path: Path) -> RawFormat:
    """The format for ``name``, adapted to this file: Criteo also comes as CSV with a header line."""
    if name not in FORMATS:
        raise DataError(f"unknown dataset kind {name!r}; known: {sorted(FORMATS)}")
    fmt = FORMATS[name]
    if name == "criteo":
        with open_raw(path) as fh:
            first = fh.readline(4096).rstrip(b"\r\n").decode("utf-8", "replace")
        if first == ",".join(fmt.columns):
            return replace(fmt, delimiter=",", has_header=True)
    return fmt
