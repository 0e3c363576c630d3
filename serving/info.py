"""``GET /healthz`` (alive), ``/readyz`` (model loaded and warmed), ``/metrics`` (Prometheus) and ``/model``
(what a client needs to build requests: the features, their raw fields and types, the limits)."""

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
    return {"name": m.name, "version": m.version, "backend": m.predictor.backend,
            "features": _feature_docs(m), "limits": {"max_candidates": s.settings.max_candidates,
                                                      "max_body_bytes": s.settings.max_body_bytes},
            "unknown_features": s.settings.unknown_features}


def _require_model(s: ServiceState) -> LoadedModel:
    if s.model is None:
        raise CtrzooError("model not loaded")
    return s.model


def _feature_docs(m: LoadedModel) -> list[dict]:
    docs = []
    for f in m.bundle.spec.features:
        d = {"name": f.name, "kind": f.kind, "raw_field": f.source or f.name}
        if f.kind == "categorical":
            d["type"] = "string or integer (unknown values map to the out-of-vocabulary id; absent = missing)"
        elif f.kind == "numeric":
            d["type"] = f"number (absent = missing, filled with {f.fill} after '{f.transform}')"
        else:
            d["type"] = f"list of item ids or a '{f.sep}'-joined string, most recent last"
            d["max_len"] = f.max_len
            d["too_long"] = "the most recent max_len items are kept" if f.too_long == "keep_last" else "422 error"
        docs.append(d)
    return docs
