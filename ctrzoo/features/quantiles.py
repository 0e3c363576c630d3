"""Quantile boundaries of a numeric column, counted over many blocks with bounded memory.

Values are rounded to 5 significant digits before counting, a fixed grid: the counts (and so the fitted
boundaries) are the same whatever the block size, order or worker count, and the number of distinct values
stays bounded (~90k per decade of magnitude) however many rows there are.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ctrzoo.features.vocab import ValueCounter

SIGNIFICANT_DIGITS = 5


def quantize(x: np.ndarray) -> np.ndarray:
    """Round finite values to ``SIGNIFICANT_DIGITS`` significant digits (0 stays 0)."""
    x = np.asarray(x, dtype=np.float64)
    out = x.copy()
    nonzero = x != 0
    magnitude = np.floor(np.log10(np.abs(x[nonzero])))
    scale = 10.0 ** (SIGNIFICANT_DIGITS - 1 - magnitude)
    out[nonzero] = np.round(x[nonzero] * scale) / scale
    return out


class QuantileCounter:
    """``update(values)`` over blocks (NaN = missing, ignored), then ``boundaries(buckets)``."""

    def __init__(self) -> None:
        self._counts = ValueCounter()  # the same bounded (value, count) merging as vocabularies

    def update(self, x: np.ndarray) -> None:
        x = x[~np.isnan(x)]
        if x.size:
            values, counts = np.unique(quantize(x), return_counts=True)
            self.add_counts(values, counts)

    def add_counts(self, values: np.ndarray, counts: np.ndarray) -> None:
        """Merge (value, count) pairs, e.g. another worker's."""
        self._counts.add_counts(pa.array(values, pa.float64()), counts)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct (quantized) values ascending and their counts."""
        values, counts = self._counts.result()
        v = values.to_numpy(zero_copy_only=False).astype(np.float64)
        order = np.argsort(v, kind="stable")
        return v[order], counts[order]

    def boundaries(self, buckets: int) -> tuple[float, ...]:
        """Cut points ``b_1 < ... < b_k`` (k <= buckets - 1): bucket i holds values in ``[b_i, b_{i+1})``, each
        about ``1 / buckets`` of the rows; ties collapse (a value never straddles two buckets)."""
        values, counts = self.result()
        if values.size < 2:
            return ()
        cum = np.cumsum(counts)
        total = cum[-1]
        targets = total * np.arange(1, buckets) / buckets
        # the first value whose cumulative count passes each target starts the next bucket
        idx = np.searchsorted(cum, targets, side="right")
        idx = idx[(idx > 0) & (idx < values.size)]
        return tuple(float(b) for b in np.unique(values[idx]))
