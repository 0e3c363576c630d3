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


def derive(name: str | None, arr: pa.Array, field: str) -> pa.Array:
    """Apply a named derivation (e.g. Avazu's hour of day from ``hour``); None leaves the column as is."""
    if name is None:
        return arr
    try:
        fn = DERIVATIONS[name]
    except KeyError:
        raise SpecError(f"unknown derivation {name!r}; known: {sorted(DERIVATIONS)}", field=field) from None
    return fn(arr, field)
