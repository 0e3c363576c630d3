"""``POST /recommend``: user tower -> index top-N -> ranking model on those candidates -> top-k.

Mounted on the ranking app by ``add_recommend_routes(app, state, retrieval_bundle)`` (or
``create_app(..., retrieval=PATH)``): the request carries user/context features only; retrieval picks
``candidates`` items from the catalogue, whose raw item features are what the ranking model scores, with
the same encoder, batching and model reference as ``/rank``. ``/rank`` is untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ctrzoo.errors import SpecError
from ctrzoo.retrieval.retriever import Retriever
from serving.schemas import ErrorResponse, FeatureReport, Features, ModelInfo, RawValue

log = logging.getLogger("ctrzoo.serving")
# what encoding a context value can raise besides SpecError (which names its field): arrow's type errors,
# UnicodeEncodeError of a lone surrogate (a ValueError), ints beyond 64 bits
_VALUE_ERRORS = (pa.ArrowException, ValueError, TypeError, OverflowError)

DEFAULT_CANDIDATES = 200


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str | None = Field(default=None, max_length=200)
    context: Features = Field(default_factory=dict, description="user/context features (profile, device, "
                              "behaviour sequence); item features come from the catalogue")
    top_k: int = Field(default=10, ge=1, le=1000, strict=True, description="items to return, best first")
    candidates: int | None = Field(default=None, ge=1, strict=True, description="items retrieval hands to the ranking model "
                                   f"(default {DEFAULT_CANDIDATES}, at most the service's max_candidates)")
    exclude: list[RawValue] = Field(default_factory=list, max_length=1000,
                                    description="item ids never to return (e.g. already bought)")


class RecommendedItem(BaseModel):
    item_id: str
    score: float = Field(description="the ranking model's click probability")
    retrieval_score: float = Field(description="inner product of the user and item vectors")


class RetrievalInfo(BaseModel):
    version: str
    index: str
    catalogue_items: int


class RecommendTiming(BaseModel):
    retrieve_ms: float
    rank_ms: float
    total_ms: float


class RecommendResponse(BaseModel):
    request_id: str | None
    model: ModelInfo
    retrieval: RetrievalInfo
    candidates: int = Field(description="items retrieved and scored by the ranking model")
    items: list[RecommendedItem]
    features: FeatureReport = Field(description="context names: user-side features the models read that the "
                                    "context lacks, and names neither model reads")
    timing: RecommendTiming


def _error(status: int, error: str, field: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=ErrorResponse(error=error, field=field).model_dump())


def add_recommend_routes(app: FastAPI, state, retrieval: str | Path | Retriever,
                         index_dir: str | Path | None = None) -> Retriever:
    """Load the retriever now (a bad bundle or index fails here, not on the first request) and mount
    ``POST /recommend`` on ``app``; ``state`` is the app's ``ServiceState`` (ranking model, metrics)."""
    retriever = retrieval if isinstance(retrieval, Retriever) else Retriever.load(retrieval, index_dir)
    item_columns = set(retriever.item_columns)
    retriever_columns = set(retriever.bundle.spec.raw_columns())
    info = RetrievalInfo(version=retriever.bundle.version, index=retriever.index.kind,
                         catalogue_items=len(retriever.catalogue))
    app.state.retriever = retriever

    def refuse(status: int, error: str, field: str | None = None) -> JSONResponse:
        state.metrics.requests.labels(endpoint="/recommend", status=str(status)).inc()
        return _error(status, error, field)

    @app.post("/recommend", response_model=RecommendResponse,
              responses={status: {"model": ErrorResponse} for status in (400, 408, 413, 422, 503)})
    async def recommend(req: RecommendRequest):
        t0 = time.perf_counter()
        m = state.model
        if m is None:
            return refuse(503, "model not loaded yet")
        bad = _unencodable(req)
        if bad is not None:
            return refuse(422, "text that is not valid Unicode (a lone surrogate) cannot be encoded", bad)
        names = req.context.keys()
        clash = sorted(names & item_columns)
        if clash:
            return refuse(422, f"item features {clash} come from the catalogue, not the context", clash[0])
        known = m.raw_columns | retriever_columns
        unknown = sorted(names - known)
        if unknown and state.settings.unknown_features == "reject":
            return refuse(422, f"unknown features {unknown}", unknown[0])
        absent = sorted(known - item_columns - names)
        limit = state.settings.max_candidates
        n = req.candidates or min(DEFAULT_CANDIDATES, limit)
        if n > limit:
            return refuse(422, f"{n} candidates exceed the limit of {limit}", "candidates")
        excluded = {str(v) for v in req.exclude}
        try:
            pos, rscores = await asyncio.to_thread(retriever.retrieve, req.context, n + len(excluded))
            if excluded:
                ids = np.asarray(retriever.catalogue.ids.take(pos).to_pylist(), dtype=object)
                keep = ~np.isin(ids, list(excluded))
                pos, rscores = pos[keep][:n], rscores[keep][:n]
            batch = m.encoder.encode_request(req.context, retriever.catalogue.rows(pos)) if len(pos) else None
        except SpecError as exc:
            return refuse(422, exc.reason, exc.field)
        except _VALUE_ERRORS as exc:  # a value the encoders could not type: find which, for the answer
            log.warning("recommend context could not be encoded: %s", exc)
            return refuse(422, f"a context value could not be encoded: {type(exc).__name__}",
                          _failing_field(req.context, [retriever.encoder, m.encoder]))
        state.metrics.count_names("/recommend", absent, unknown)
        t1 = time.perf_counter()
        if batch is None:
            scores = np.zeros(0, dtype=np.float32)
        else:
            try:
                async with asyncio.timeout(state.settings.request_timeout_s):  # no extra task, unlike wait_for
                    if state.coalescer is not None:
                        scores = await state.coalescer.predict(m, batch)
                    else:
                        scores = await asyncio.to_thread(m.predictor.predict, batch)
            except TimeoutError:
                return refuse(503, f"prediction took longer than {state.settings.request_timeout_s}s")
        t2 = time.perf_counter()
        order = np.argsort(-scores, kind="stable")[: req.top_k]
        ids = retriever.catalogue.ids.take(pos[order]).to_pylist() if len(order) else []
        items = [RecommendedItem(item_id=i, score=float(scores[j]), retrieval_score=float(rscores[j]))
                 for i, j in zip(ids, order)]
        state.metrics.requests.labels(endpoint="/recommend", status="200").inc()
        return RecommendResponse(
            request_id=req.request_id, model=ModelInfo(name=m.name, version=m.version), retrieval=info,
            candidates=len(pos), items=items, features=FeatureReport(absent=absent, unknown=unknown),
            timing=RecommendTiming(retrieve_ms=(t1 - t0) * 1e3, rank_ms=(t2 - t1) * 1e3, total_ms=(t2 - t0) * 1e3),
        )

    return retriever


def _unencodable(req: RecommendRequest) -> str | None:
    """The field holding text UTF-8 cannot carry (a lone surrogate, which Python's JSON parser lets through),
    or None: orjson refuses such text, once for the whole request, per field only when it does."""
    try:
        orjson.dumps([req.request_id, req.context, req.exclude])
        return None
    except orjson.JSONEncodeError:
        pass
    for field, value in (("request_id", req.request_id), ("exclude", req.exclude)):
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError:
            return field
    for key, value in req.context.items():
        try:
            orjson.dumps(key)
        except orjson.JSONEncodeError:
            return "context"  # the name itself cannot be written back
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError:
            return key
    return "context"


def _failing_field(context: dict, encoders: list) -> str:
    """The first context feature that fails to encode on its own (the error path only)."""
    for key, value in context.items():
        for encoder in encoders:
            try:
                encoder.encode_request({key: value}, [{}])
            except (SpecError, *_VALUE_ERRORS):
                return key
    return "context"
