"""The Python API for notebooks and batch jobs: ``ctrzoo.load(bundle).predict(rows)``.

Example::

    import ctrzoo
    model = ctrzoo.load("bundles/deepfm")            # checks the manifest and the golden rows
    probs = model.predict(df)                        # pandas DataFrame, pyarrow Table or list of dicts -> [N]

A multi-task bundle (``mmoe``, ``ple``, ``esmm``; ``model.tasks`` names its labels) predicts a pandas DataFrame
with one float32 column per task, in ``model.tasks`` order, indexed like the input frame (a RangeIndex for a
table or a list), so ``df.join(model.predict(df))`` lines rows up::

    model = ctrzoo.load("bundles/mmoe")              # model.tasks == ("click", "converted")
    probs = model.predict(df)                        # DataFrame [N rows x 2]: probs["converted"], ...

Rows are encoded by the bundle's own codec (the one the service uses) and scored by the chosen runtime, so
the numbers equal ``/rank``'s for the same raw values. A table or frame must carry every raw column the
model reads: a missing column is an error naming it (``allow_missing=True`` encodes it as missing on
purpose), never a silent constant.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ctrzoo.bundle import Bundle, check_golden, golden_tolerance, load_bundle
from ctrzoo.errors import CtrzooError
from ctrzoo.features import EncodedBatch, FeatureCodec
from ctrzoo.features.columns import check_columns

DEFAULT_CHUNK_ROWS = 65_536  # rows encoded and scored at once: bounded memory for large frames


@dataclass(frozen=True)
class FeatureInfo:
    """One input feature: its name, kind and the raw column it is read from."""

    name: str
    kind: str
    column: str


class Model:
    """A trained bundle, checked and loaded for scoring raw rows (see the module docstring)."""

    def __init__(self, bundle: Bundle, backend: str = "torch", threads: int | None = None):
        from ctrzoo import runtime

        self.bundle = bundle
        self.backend = backend
        self.codec: FeatureCodec = bundle.codec.warm()
        self._predictor = runtime.load(bundle, backend, threads)
        check_golden(bundle, self.codec, self._predictor.predict, golden_tolerance(backend),
                     f" with the {backend} backend")

    @property
    def name(self) -> str:
        return self.bundle.model_name

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def tasks(self) -> tuple[str, ...]:
        """The labels a multi-task model predicts (``predict``'s columns); ``()`` for a single-task model."""
        return self.bundle.tasks

    @property
    def features(self) -> list[FeatureInfo]:
        """What each row must provide (extra columns are ignored)."""
        return [FeatureInfo(f.name, f.kind, f.column) for f in self.bundle.spec.features]

    def encode(self, data: Any, allow_missing: bool = False) -> EncodedBatch:
        """Raw rows -> the tensor layout, exactly as the service encodes them."""
        return self.codec.encode(data, allow_missing=allow_missing)

    def predict(self, data: Any, allow_missing: bool = False,
                chunk_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray | pd.DataFrame:
        """Click probabilities ``[N]`` (float32) of raw rows: a pandas DataFrame, a pyarrow Table or RecordBatch,
        or a list of dicts (a dict without a key is a missing value there). A multi-task model gives a
        DataFrame instead: one float32 column per task (``self.tasks``), indexed like a DataFrame input."""
        if chunk_rows < 1:
            raise CtrzooError(f"chunk_rows must be >= 1, got {chunk_rows}")
        check_columns(data, self.codec.raw_columns, allow_missing)
        parts = [self._predictor.predict(self.codec.encode(chunk, allow_missing=True))
                 for chunk in _chunks(data, chunk_rows)]
        width = (len(self.tasks),) if self.tasks else ()
        probs = np.concatenate(parts) if parts else np.zeros((0, *width))
        probs = probs.astype(np.float32, copy=False)
        if not self.tasks:
            return probs
        index = data.index if isinstance(data, pd.DataFrame) else None
        return pd.DataFrame(probs, columns=list(self.tasks), index=index)

    def __repr__(self) -> str:
        return f"ctrzoo.Model({self.name!r}, version {self.version}, backend {self.backend!r}, {self.codec!r})"


def load(path: str | Path, backend: str = "torch", threads: int | None = None) -> Model:
    """A model bundle ready to score raw rows: integrity and golden rows checked on ``backend``."""
    bundle = load_bundle(path)
    return Model(bundle, backend, threads)


def _chunks(data: Any, rows: int) -> Iterator[Any]:
    """Slices of at most ``rows`` rows, without copying tables or frames."""
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    if isinstance(data, pa.Table):
        for start in range(0, data.num_rows, rows):
            yield data.slice(start, rows)
        return
    if hasattr(data, "iloc") and hasattr(data, "columns"):  # pandas
        for start in range(0, len(data), rows):
            yield data.iloc[start:start + rows]
        return
    if isinstance(data, list | tuple):
        for start in range(0, len(data), rows):
            yield list(data[start:start + rows])
        return
    raise CtrzooError(f"predict() takes a pandas DataFrame, a pyarrow Table or a list of dicts, got "
                      f"{type(data).__name__}")
