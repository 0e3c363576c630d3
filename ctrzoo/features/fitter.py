"""SpecFitter: vocabularies and numeric statistics counted over training blocks, then a fitted spec."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow.compute as pc

from ctrzoo.features.columns import as_table, category_codes, sequence_lists
from ctrzoo.features.compiled import raw_category_codes, raw_numbers
from ctrzoo.features.quantiles import QuantileCounter
from ctrzoo.features.spec import FeatureSpec
from ctrzoo.features.vocab import ValueCounter, Vocabulary


class SpecFitter:
    """Accumulates vocabulary counts and numeric statistics over training blocks, then fits the spec.

    Sequence items count towards the vocabulary of the field they share, so history ids that never
    appear as candidates are still known.
    """

    def __init__(self, spec: FeatureSpec):
        self.spec = spec.unfitted()
        self._counters = {c.name: ValueCounter() for c in (*self.spec.categorical, *self.spec.multi_value)
                          if not c.hash_buckets and not getattr(c, "shares", None)}
        self._moments = {n.name: np.zeros(3) for n in self.spec.numeric}  # count, sum, sum of squares
        self._quantiles = {b.name: QuantileCounter() for b in self.spec.bucketized}
        self.rows = 0

    def update(self, data: Any) -> None:
        table = as_table(data, self.spec.raw_columns())
        self.rows += table.num_rows
        for c in self.spec.categorical:
            if c.name in self._counters:
                self._counters[c.name].update(raw_category_codes(table, c.column, c.name, c.derive))
        for s in self.spec.lists:  # sequences and bags count towards the table they use
            counter = self._counters.get(s.shares or s.name)
            if counter is not None:
                lists = sequence_lists(table.column(s.column).combine_chunks(), s.sep, s.name)
                counter.update(category_codes(pc.list_flatten(lists), s.name))
        for n in self.spec.numeric:
            x = raw_numbers(table, n.column, n.name, n.derive, n.transform, n.clip)
            x = x[~np.isnan(x)]
            self._moments[n.name] += (x.size, x.sum(), np.square(x).sum())
        for b in self.spec.bucketized:
            self._quantiles[b.name].update(raw_numbers(table, b.column, b.name, b.derive, b.transform, b.clip))

    def merge(self, other: SpecFitter) -> None:
        """Fold another fitter's counts in (per-file or per-worker counting)."""
        self.rows += other.rows
        for name, counter in other._counters.items():
            values, counts = counter.result()
            self._counters[name].add_counts(values, counts)
        for name, m in other._moments.items():
            self._moments[name] += m
        for name, q in other._quantiles.items():
            self._quantiles[name].add_counts(*q.result())

    def finalize(self) -> FeatureSpec:
        """The fitted spec (a new one: specs are immutable)."""
        fitted = {}
        for c in (*self.spec.categorical, *self.spec.multi_value):
            if c.name in self._counters:
                values, counts = self._counters[c.name].result()
                frequent = int((counts >= c.min_count).sum())
                if c.max_vocab is not None and getattr(c, "overflow", "truncate") == "hash" and frequent > c.max_vocab:
                    fitted[c.name] = replace(c, hash_buckets=c.max_vocab)  # cardinality exploded: hash instead
                else:
                    fitted[c.name] = replace(c, vocab=Vocabulary.from_counts(values, counts, c.min_count,
                                                                             c.max_vocab))
        for n in self.spec.numeric:
            count, total, squares = self._moments[n.name]
            if n.standardize:
                mean = total / count if count else 0.0
                var = squares / count - mean * mean if count else 1.0
                # Rounded to float32 (the model's input precision): summation order then no longer shows,
                # so any block size or worker count fits the same statistics.
                fitted[n.name] = replace(n, mean=float(np.float32(mean)),
                                         std=float(np.float32(np.sqrt(max(var, 0.0)))) or 1.0)
        for b in self.spec.bucketized:
            fitted[b.name] = replace(b, boundaries=self._quantiles[b.name].boundaries(b.buckets))
        return self.spec.replace_features(fitted)
