"""A loaded, validated model: bundle + codec + runtime. Swapped as one object on reload."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctrzoo import runtime
from ctrzoo.bundle import Bundle, check_golden, golden_tolerance, load_bundle
from ctrzoo.errors import BundleError, CtrzooError
from ctrzoo.features import FeatureCodec


@dataclass
class LoadedModel:
    bundle: Bundle
    codec: FeatureCodec
    predictor: runtime.Predictor
    raw_columns: frozenset[str]
    loaded_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.bundle.model_name

    @property
    def version(self) -> str:
        return self.bundle.version


def load_model(path: str | Path | Bundle, backend: str, threads: int | None = None) -> LoadedModel:
    """Load and validate a bundle; raises CtrzooError (and changes nothing) when it is not servable.

    Validation: the bundle's integrity manifest (``load_bundle``), a smoke prediction, then its golden raw
    rows encoded by this codec and scored by this backend must give the scores recorded at training
    (int8 within its looser ``GOLDEN_TOLERANCE_INT8``): a model.onnx of another model, weights of another
    spec or a broken runtime are refused here, before anything is swapped.
    """
    bundle = path if isinstance(path, Bundle) else load_bundle(path)
    try:
        predictor = runtime.load(bundle, backend, threads)
        smoke = predictor.predict(bundle.codec.random_batch(8, seed=1))
    except CtrzooError:
        raise
    except Exception as exc:  # a runtime's own error, e.g. onnxruntime on a model.onnx of another layout
        raise BundleError(f"{bundle.path}: the {backend} backend cannot run it, smoke prediction failed "
                          f"({exc.__class__.__name__}: {str(exc)[:200]})") from None
    if smoke.shape != (8,) or not np.all(np.isfinite(smoke)) or smoke.min() < 0 or smoke.max() > 1:
        raise BundleError(f"{bundle.path}: smoke prediction failed (got {smoke!r})")
    codec = bundle.codec.warm()  # every lookup table built now, not on the first request
    check_golden(bundle, codec, predictor.predict, golden_tolerance(backend), f" with the {backend} backend")
    return LoadedModel(bundle, codec, predictor, frozenset(codec.raw_columns))
