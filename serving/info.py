"""``GET /healthz`` (alive), ``/readyz`` (model loaded and warmed), ``/metrics`` (Prometheus) and ``/model``
(what a client needs to build requests: the features, their raw fields and types, the limits; for a multi-task
model its tasks and how /rank orders them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from ctrzoo.errors import CtrzooError
from serving.deps import get_state
from serving.errors import error_response

if TYPE_CHECKING:
    from serving.app import ServiceState
    from serving.model_state import LoadedModel

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(s: ServiceState = Depends(get_state)):
    if s.model is None:
        return error_response(503, "model not loaded yet")
    return {"status": "ready", "model": s.model.name, "version": s.model.version}


@router.get("/metrics")
async def metrics(s: ServiceState = Depends(get_state)):
    return PlainTextResponse(s.metrics.render(), media_type="text/plain; version=0.0.4")


@router.get("/model")
async def model_info(s: ServiceState = Depends(get_state)):
    m = _require_model(s)
    out = {"name": m.name, "version": m.version, "backend": m.predictor.backend,
           "features": _feature_docs(m), "limits": {"max_candidates": s.settings.max_candidates,
                                                     "max_body_bytes": s.settings.max_body_bytes},
           "unknown_features": s.settings.unknown_features}
    if m.ranking is not None:  # a multi-task model: what /rank's task_scores hold and what orders them
        weights = dict(zip(m.tasks, m.ranking.weights.tolist()))
        out |= {"tasks": list(m.tasks), "ranked_by": m.ranking.ranked_by, "task_weights": weights}
    return out


def _require_model(s: ServiceState) -> LoadedModel:
    if s.model is None:
        raise CtrzooError("model not loaded")
    return s.model


def _feature_docs(m: LoadedModel) -> list[dict]:
    """Every feature with its kind and how to send it (what a client needs to build a request)."""
    return [{"name": f.name, "kind": f.kind, "raw_field": f.column, **_how_to_send(f)} for f in m.bundle.spec.features]


def _how_to_send(f) -> dict:
    derived = f" (derived: {f.derive} of the raw field)" if getattr(f, "derive", None) else ""
    if f.kind == "categorical":
        return {"type": "string or integer (unknown values map to the out-of-vocabulary id; absent = missing)"
                        + derived}
    if f.kind == "numeric":
        clip = f", clipped to {list(f.clip)}" if f.clip else ""
        return {"type": f"number (absent = missing, filled with {f.fill}; then '{f.transform}'{clip}){derived}"}
    if f.kind == "bucketized":
        return {"type": f"number, put in one of {f.buckets} ranges fitted on the training rows (absent = missing)"
                        + derived}
    if f.kind == "multi_value":
        return {"type": f"list of values or a '{f.sep}'-joined string (a bag: order does not matter; "
                        f"unknown values map to out-of-vocabulary; absent or empty = none)",
                "max_len": f.max_len, "too_long": "the first max_len values are kept"}
    if f.kind == "dense_vector":
        return {"type": f"list of {f.dim} numbers or a '{f.sep}'-joined string (absent = all {f.fill}; another "
                        "length is a 422)", "dim": f.dim}
    return {"type": f"list of item ids or a '{f.sep}'-joined string, most recent last", "max_len": f.max_len,
            "too_long": "the most recent max_len items are kept" if f.too_long == "keep_last" else "422 error"}
