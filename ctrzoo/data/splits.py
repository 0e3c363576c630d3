"""Deterministic train/valid/test assignment that does not depend on block sizes or worker count."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ctrzoo.errors import CtrzooError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SplitConfig:
    """``random``: each data line hashed with the seed (BARS x4 style 8:1:1); ``order``: last fractions."""

    method: str = "random"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 2024

    def __post_init__(self) -> None:
        if self.method not in ("random", "order"):
            raise CtrzooError(f"split method must be 'random' or 'order', got {self.method!r}")
        if len(self.ratios) != 3 or any(r < 0 for r in self.ratios) or not np.isclose(sum(self.ratios), 1.0):
            raise CtrzooError(f"split ratios must be three non-negative numbers summing to 1, got {self.ratios}")

    def to_dict(self) -> dict:
        return {**asdict(self), "ratios": list(self.ratios)}

    def assign(self, row_index: np.ndarray, total_rows: int | None = None) -> np.ndarray:
        """Split id (0 train, 1 valid, 2 test) per global data-line index."""
        if self.method == "random":
            u = _uniform(row_index, self.seed)
        else:
            if not total_rows:
                raise CtrzooError("an order split needs the total row count")
            u = (row_index + 0.5) / total_rows
        edges = np.cumsum(self.ratios)[:-1]
        return np.searchsorted(edges, u, side="right").astype(np.int8)


def _uniform(index: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of (seed, index) mapped to [0, 1): a counter-based RNG, vectorized."""
    with np.errstate(over="ignore"):
        z = index.astype(np.uint64) + np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
