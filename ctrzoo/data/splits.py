"""Deterministic train/valid/test assignment that does not depend on block sizes or worker count."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ctrzoo.errors import CtrzooError
from ctrzoo.features.transforms import to_timestamp

SPLITS = ("train", "valid", "test")
METHODS = ("random", "order", "time")


@dataclass(frozen=True)
class SplitConfig:
    """``random``: each data line hashed with the seed (BARS x4 style 8:1:1); ``order``: last fractions;
    ``time``: by a time column, ``valid_from`` <= t < ``test_from`` valid, later test (the protocol CTR teams
    use: train on the past, evaluate on the future). Times are unix seconds (UTC)."""

    method: str = "random"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 2024
    column: str | None = None  # time: the raw column holding each row's time
    valid_from: int | None = None  # time: first second of the valid split
    test_from: int | None = None  # time: first second of the test split
    time_format: str = "auto"  # time: how the column is read (``ctrzoo.features.transforms.to_timestamp``)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CtrzooError(f"split method must be one of {', '.join(METHODS)}, got {self.method!r}")
        object.__setattr__(self, "ratios", tuple(self.ratios))
        if len(self.ratios) != 3 or any(r < 0 for r in self.ratios) or not np.isclose(sum(self.ratios), 1.0):
            raise CtrzooError(f"split ratios must be three non-negative numbers summing to 1, got {self.ratios}")
        if self.method == "time":
            if not self.column:
                raise CtrzooError("a time split needs the time column (column)")
            if self.valid_from is None or self.test_from is None:
                raise CtrzooError("a time split needs valid_from and test_from")
            if self.valid_from > self.test_from:
                raise CtrzooError(f"valid_from ({iso_time(self.valid_from)}) is after test_from "
                                  f"({iso_time(self.test_from)})")

    def to_dict(self) -> dict:
        """As ``dataset.json`` records it (random and order splits: method, ratios, seed, as before)."""
        out = {"method": self.method, "ratios": list(self.ratios), "seed": self.seed}
        if self.method == "time":
            out = {"method": "time", "column": self.column, "valid_from": iso_time(self.valid_from),
                   "test_from": iso_time(self.test_from), "time_format": self.time_format}
        return out

    def assign(self, row_index: np.ndarray, total_rows: int | None = None) -> np.ndarray:
        """Split id (0 train, 1 valid, 2 test) per global data-line index (random and order splits)."""
        if self.method == "time":
            raise CtrzooError("a time split is assigned from the rows' times (assign_times)")
        if self.method == "random":
            u = _uniform(row_index, self.seed)
        else:
            if not total_rows:
                raise CtrzooError("an order split needs the total row count")
            u = (row_index + 0.5) / total_rows
        edges = np.cumsum(self.ratios)[:-1]
        return np.searchsorted(edges, u, side="right").astype(np.int8)

    def assign_times(self, seconds: np.ndarray) -> np.ndarray:
        """Split id per row of a time split from its time ``[B]`` (int64 unix seconds)."""
        edges = np.array([self.valid_from, self.test_from], dtype=np.int64)
        return np.searchsorted(edges, seconds, side="right").astype(np.int8)


def unix_seconds(col: pa.Array, time_format: str, column: str) -> np.ndarray:
    """A time column as int64 unix seconds ``[B]`` (read as the features' time derivations read it)."""
    ts = to_timestamp(col, time_format, column)
    return pc.cast(ts, pa.timestamp("s", ts.type.tz), safe=False).cast(pa.int64()).to_numpy(zero_copy_only=False)


def parse_time(value, what: str) -> int:
    """Unix seconds (UTC) of a split boundary: a number, an ISO 8601 date or time (``2024-05-01``,
    ``2024-05-01 13:00:00``), or a YAML date."""
    if isinstance(value, bool):
        raise CtrzooError(f"{what}: expected a time (unix seconds or an ISO date), got {value!r}")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, datetime):
        return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp())
    if isinstance(value, date):
        return int(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp())
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            return parse_time(datetime.fromisoformat(text.replace("Z", "+00:00")), what)
        except ValueError:
            pass
    raise CtrzooError(f"{what}: expected a time (unix seconds or an ISO date such as 2024-05-01), got {value!r}")


def iso_time(seconds: int | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _uniform(index: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of (seed, index) mapped to [0, 1): a counter-based RNG, vectorized."""
    with np.errstate(over="ignore"):
        z = index.astype(np.uint64) + np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
