"""Numeric transforms and column derivations, by name, so a spec saved as JSON can name them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ctrzoo.errors import SpecError


def _criteo_log(x: np.ndarray) -> np.ndarray:
    """The customary Criteo squashing: ``log(x)^2`` for x > 2, x unchanged otherwise (heavy tails)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(x > 2, np.square(np.log(np.maximum(x, 2.0))), x)


def _log1p(x: np.ndarray) -> np.ndarray:
    """Sign-preserving log1p, so negative counts do not produce NaN."""
    return np.sign(x) * np.log1p(np.abs(x))


NUMERIC_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "log1p": _log1p,
    "criteo_log": _criteo_log,
}


def numeric_transform(name: str) -> Callable[[np.ndarray], np.ndarray]:
    try:
        return NUMERIC_TRANSFORMS[name]
    except KeyError:
        raise SpecError(f"unknown numeric transform {name!r}; known: {sorted(NUMERIC_TRANSFORMS)}") from None


def _yymmddhh(arr: pa.Array, field: str) -> pa.Array:
    strings = arr.cast(pa.string()) if not pa.types.is_string(arr.type) else arr
    try:
        return pc.strptime(strings, format="%y%m%d%H", unit="s", error_is_null=True)
    except pa.ArrowInvalid as exc:
        raise SpecError(f"expected YYMMDDHH ({exc})", field=field) from None


def _hour_of_day(arr: pa.Array, field: str) -> pa.Array:
    return pc.cast(pc.hour(_yymmddhh(arr, field)), pa.string())


def _weekday(arr: pa.Array, field: str) -> pa.Array:
    return pc.cast(pc.day_of_week(_yymmddhh(arr, field)), pa.string())


DERIVATIONS: dict[str, Callable[[pa.Array, str], pa.Array]] = {
    "yymmddhh_hour": _hour_of_day,
    "yymmddhh_weekday": _weekday,
}

# Parts of a point in time (UTC), derived as ``"PART"`` or ``"PART:FORMAT"``: FORMAT is ``unix`` (seconds),
# ``unix_ms``, a strptime format such as ``%Y-%m-%d %H:%M``, or absent (``auto``: numbers and all-digit strings
# are unix seconds, other strings ISO 8601 such as ``2024-05-01 13:45:00`` or ``2024-05-01T13:45:00Z``).
TIME_PARTS: dict[str, Callable[[pa.Array], pa.Array]] = {
    "hour": pc.hour, "weekday": pc.day_of_week, "day": pc.day, "month": pc.month, "year": pc.year,
}
_DIGITS = r"^-?[0-9]+$"


def to_timestamp(arr: pa.Array, fmt: str, field: str) -> pa.Array:
    """Raw times -> ``timestamp[s]`` (UTC; null stays null = missing); what cannot be read is an error."""
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.timestamp("s"))
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return pc.cast(arr, pa.timestamp("s")) if not pa.types.is_timestamp(t) or t.tz is None else arr
    try:
        if pa.types.is_integer(t) or pa.types.is_floating(t) or fmt in ("unix", "unix_ms"):
            seconds = pc.cast(arr, pa.float64())
            if fmt == "unix_ms":
                seconds = pc.divide(seconds, 1000.0)
            return pc.cast(pc.cast(pc.floor(seconds), pa.int64()), pa.timestamp("s"))
        strings = pc.utf8_trim_whitespace(arr.cast(pa.string()))
        strings = pc.if_else(pc.equal(strings, ""), pa.scalar(None, pa.string()), strings)
        if fmt != "auto":
            return pc.strptime(strings, format=fmt, unit="s")
        digits = pc.fill_null(pc.match_substring_regex(strings, _DIGITS), False)
        as_unix = pc.cast(pc.cast(pc.if_else(digits, strings, pa.scalar(None, pa.string())), pa.int64()),
                          pa.timestamp("s"))
        text = pc.replace_substring_regex(pc.if_else(digits, pa.scalar(None, pa.string()), strings), "Z$", "")
        return pc.if_else(digits, as_unix, pc.cast(text, pa.timestamp("s")))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise SpecError(f"expected a time ({'unix seconds or ISO 8601' if fmt == 'auto' else fmt}): {exc}",
                        field=field) from None


def is_derivation(name: str) -> bool:
    part, _, fmt = name.partition(":")
    return name in DERIVATIONS or (part in TIME_PARTS and (fmt or "auto") is not None)


def derive(name: str | None, arr: pa.Array, field: str) -> pa.Array:
    """Apply a named derivation (Avazu's hour of day from ``hour``, ``hour``/``weekday``/... of a time); None
    leaves the column as is."""
    if name is None:
        return arr
    fn = DERIVATIONS.get(name)
    if fn is not None:
        return fn(arr, field)
    part, _, fmt = name.partition(":")
    if part not in TIME_PARTS:
        raise SpecError(f"unknown derivation {name!r}; known: {sorted(DERIVATIONS)} and time parts "
                        f"{sorted(TIME_PARTS)} (e.g. 'hour' or 'hour:unix_ms')", field=field)
    return pc.cast(TIME_PARTS[part](to_timestamp(arr, fmt or "auto", field)), pa.string())
