"""A loaded, validated model: bundle + codec + runtime (+ how a multi-task model ranks). Swapped as one object
on reload."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctrzoo import runtime
from ctrzoo.bundle import Bundle, check_golden, golden_tolerance, load_bundle
from ctrzoo.errors import BundleError, CtrzooError
from ctrzoo.features import FeatureCodec
from serving.tasks import TaskRanking, task_ranking


@dataclass
class LoadedModel:
    bundle: Bundle
    codec: FeatureCodec
    predictor: runtime.Predictor
    raw_columns: frozenset[str]
    loaded_at: float = field(default_factory=time.time)
    ranking: TaskRanking | None = None  # a multi-task bundle's: [B, T] probabilities -> the ranking score

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.bundle.tasks

    @property
    def name(self) -> str:
        return self.bundle.model_name

    @property
    def version(self) -> str:
        return self.bundle.version


def load_model(path: str | Path | Bundle, backend: str, threads: int | None = None, rank_by: str | None = None,
               task_weights: Mapping[str, float] | None = None) -> LoadedModel:
    """Load and validate a bundle; raises CtrzooError (and changes nothing) when it is not servable.

    Validation: the bundle's integrity manifest (``load_bundle``), the ranking settings against its tasks
    (``serving.tasks.task_ranking``: ``rank_by``/``task_weights`` for a multi-task bundle only, naming its
    tasks), a smoke prediction (``[8]``, or ``[8, T]``), then its golden raw rows encoded by this codec and
    scored by this backend must give the scores recorded at training, task by task (int8 within its looser
    ``GOLDEN_TOLERANCE_INT8``): a model.onnx of another model, weights of another spec or a broken runtime
    are refused here, before anything is swapped.
    """
    bundle = path if isinstance(path, Bundle) else load_bundle(path)
    ranking = task_ranking(bundle.tasks, rank_by, task_weights, f"{bundle.path} (model {bundle.model_name!r})")
    try:
        predictor = runtime.load(bundle, backend, threads)
        smoke = predictor.predict(bundle.codec.random_batch(8, seed=1))
    except CtrzooError:
        raise
    except Exception as exc:  # a runtime's own error, e.g. onnxruntime on a model.onnx of another layout
        raise BundleError(f"{bundle.path}: the {backend} backend cannot run it, smoke prediction failed "
                          f"({exc.__class__.__name__}: {str(exc)[:200]})") from None
    shape = (8, len(bundle.tasks)) if bundle.tasks else (8,)
    if smoke.shape != shape or not np.all(np.isfinite(smoke)) or smoke.min() < 0 or smoke.max() > 1:
        raise BundleError(f"{bundle.path}: smoke prediction failed (expected {shape} probabilities, got {smoke!r})")
    codec = bundle.codec.warm()  # every lookup table built now, not on the first request
    check_golden(bundle, codec, predictor.predict, golden_tolerance(backend), f" with the {backend} backend")
    return LoadedModel(bundle, codec, predictor, frozenset(codec.raw_columns), ranking=ranking)
