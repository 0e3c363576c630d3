"""A loaded, validated model: bundle + encoder + runtime. Swapped as one object on reload."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctrzoo import runtime
from ctrzoo.bundle import Bundle, load_bundle
from ctrzoo.errors import CtrzooError
from ctrzoo.export import example_batch
from ctrzoo.features import FeatureEncoder


@dataclass
class LoadedModel:
    bundle: Bundle
    encoder: FeatureEncoder
    predictor: runtime.Predictor
    raw_columns: frozenset[str]
    loaded_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.bundle.model_name

    @property
    def version(self) -> str:
        return self.bundle.version


def load_model(path: str | Path, backend: str, threads: int | None = None) -> LoadedModel:
    """Load and validate a bundle; raises CtrzooError (and changes nothing) when it is not servable."""
    bundle = load_bundle(path)
    predictor = runtime.load(bundle, backend, threads)
    smoke = predictor.predict(example_batch(bundle.spec.layout(), 8, seed=1))
    if smoke.shape != (8,) or not np.all(np.isfinite(smoke)) or smoke.min() < 0 or smoke.max() > 1:
        raise CtrzooError(f"{path}: smoke prediction failed (got {smoke!r})")
    encoder = FeatureEncoder(bundle.spec)
    encoder.encode_request({}, [{}])  # builds the vocabulary lookup tables now, not on the first request
    return LoadedModel(bundle, encoder, predictor, frozenset(bundle.spec.raw_columns()))
