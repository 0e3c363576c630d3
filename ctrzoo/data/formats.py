"""Raw file formats (Criteo, Avazu, Taobao): their columns, what is validated, and default specs."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ctrzoo.errors import DataError
from ctrzoo.features import Categorical, FeatureSpec, Numeric, SequenceFeature

CRITEO_INT = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CAT = tuple(f"C{i}" for i in range(1, 27))
AVAZU_COLUMNS = ["id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain", "app_category", "device_id", "device_ip", "device_model", "device_type", "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21"]
TAOBAO_COLUMNS = ["clk", "time_stamp", "userid", "adgroup_id", "pid", "cate_id", "campaign_id", "customer", "brand", "price", "cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level", "shopping_level", "occupation", "new_user_class_level", "click_sequence"]
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
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


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
