"""``POST /recommend``: user tower -> index top-N -> ranking model on those candidates -> top-k.

Mounted on the ranking app by ``add_recommend_routes(app, retrieval_bundle)`` (or
``create_app(..., retrieval=PATH)``): the request carries user/context features only; retrieval picks
``candidates`` items from the catalogue, whose raw item features are what the ranking model scores, with
the same encoder, batching and model reference as ``/rank``. ``/rank`` is untouched. A multi-task ranking
model orders the items as ``/rank`` does (``serving.tasks``): each item's ``score`` is the ranking score, and
the items' ``task_scores`` and the response's ``ranked_by`` appear (for a single-task model they are absent).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson
import pyarrow as pa
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ctrzoo.errors import SpecError
from ctrzoo.retrieval.retriever import Retriever
from serving.deps import get_state
from serving.errors import PredictionTimeout, error_response, error_responses
from serving.rank import predict_scores
from serving.schemas import FeatureReport, Features, ModelInfo, RawValue

if TYPE_CHECKING:
    from serving.app import ServiceState

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
    candidates: int | None = Field(default=None, ge=1, strict=True,
                                   description="items retrieval hands to the ranking model "
                                   f"(default {DEFAULT_CANDIDATES}, at most the service's max_candidates)")
    exclude: list[RawValue] = Field(default_factory=list, max_length=1000,
                                    description="item ids never to return (e.g. already bought)")


class RecommendedItem(BaseModel):
    item_id: str
    score: float = Field(description="the ranking model's click probability (multi-task: its ranking score)")
    retrieval_score: float = Field(description="inner product of the user and item vectors")
    task_scores: dict[str, float] | None = Field(default=None, description="multi-task ranking models only: task "
                                                 "-> probability")


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
    ranked_by: str | None = Field(default=None, description="multi-task ranking models only: the task the items "
                                  "are ordered by, or \"weighted\" (as /rank's)")


@dataclass(frozen=True)
class Recommender:
    """The retrieval side of /recommend, loaded once (``app.state.recommender``): the retriever and the names
    the request checks need."""

    retriever: Retriever
    item_columns: frozenset[str]  # raw item features: the catalogue's, never the context's
    retriever_columns: frozenset[str]
    info: RetrievalInfo

    @classmethod
    def load(cls, retrieval: str | Path | Retriever, index_dir: str | Path | None = None) -> Recommender:
        retriever = retrieval if isinstance(retrieval, Retriever) else Retriever.load(retrieval, index_dir)
        info = RetrievalInfo(version=retriever.bundle.version, index=retriever.index.kind,
                             catalogue_items=len(retriever.catalogue))
        return cls(retriever, frozenset(retriever.item_columns), frozenset(retriever.bundle.spec.raw_columns()),
                   info)


async def get_recommender(request: Request) -> Recommender:
    return request.app.state.recommender


def add_recommend_routes(app: FastAPI, retrieval: str | Path | Retriever,
                         index_dir: str | Path | None = None) -> Retriever:
    """Load the retriever now (a bad bundle or index fails here, not on the first request) and mount
    ``POST /recommend`` on ``app`` (whose ``app.state.service`` holds the ranking model and metrics)."""
    recommender = Recommender.load(retrieval, index_dir)
    app.state.recommender = recommender
    app.state.retriever = recommender.retriever
    app.include_router(router)
    return recommender.retriever


def _refuse(state: ServiceState, status: int, error: str, field: str | None = None) -> Response:
    state.metrics.requests.labels(endpoint="/recommend", status=str(status)).inc()
    return error_response(status, error, field)


router = APIRouter()


# exclude_unset: the multi-task fields are left out of a single-task model's answer, as /rank leaves them out
@router.post("/recommend", response_model=RecommendResponse, response_model_exclude_unset=True,
             responses=error_responses(400, 408, 413, 422, 503))
async def recommend(req: RecommendRequest, state: ServiceState = Depends(get_state),
                    rec: Recommender = Depends(get_recommender)):
    t0 = time.perf_counter()
    retriever = rec.retriever
    m = state.model
    if m is None:
        return _refuse(state, 503, "model not loaded yet")
    bad = _unencodable(req)
    if bad is not None:
        return _refuse(state, 422, "text that is not valid Unicode (a lone surrogate) cannot be encoded", bad)
    names = req.context.keys()
    clash = sorted(names & rec.item_columns)
    if clash:
        return _refuse(state, 422, f"item features {clash} come from the catalogue, not the context", clash[0])
    known = m.raw_columns | rec.retriever_columns
    unknown = sorted(names - known)
    if unknown and state.settings.unknown_features == "reject":
        return _refuse(state, 422, f"unknown features {unknown}", unknown[0])
    absent = sorted(known - rec.item_columns - names)
    limit = state.settings.max_candidates
    n = req.candidates or min(DEFAULT_CANDIDATES, limit)
    if n > limit:
        return _refuse(state, 422, f"{n} candidates exceed the limit of {limit}", "candidates")
    excluded = {str(v) for v in req.exclude}
    try:
        pos, rscores = await asyncio.to_thread(retriever.retrieve, req.context, n + len(excluded))
        if excluded:
            ids = np.asarray(retriever.catalogue.ids.take(pos).to_pylist(), dtype=object)
            keep = ~np.isin(ids, list(excluded))
            pos, rscores = pos[keep][:n], rscores[keep][:n]
        batch = m.codec.encode_request(req.context, retriever.catalogue.rows(pos)) if len(pos) else None
    except SpecError as exc:
        return _refuse(state, 422, exc.reason, exc.field)
    except _VALUE_ERRORS as exc:  # a value the encoders could not type: find which, for the answer
        log.warning("recommend context could not be encoded: %s", exc)
        return _refuse(state, 422, f"a context value could not be encoded: {type(exc).__name__}",
                       _failing_field(req.context, [retriever.codec, m.codec]))
    state.metrics.count_names("/recommend", absent, unknown)
    t1 = time.perf_counter()
    if batch is None:
        probs = np.zeros((0, len(m.tasks)) if m.tasks else 0, dtype=np.float32)
    else:
        try:
            probs = await predict_scores(state, m, batch)
        except PredictionTimeout as exc:
            return _refuse(state, 503, str(exc))
    t2 = time.perf_counter()
    scores = probs if m.ranking is None else m.ranking.score(probs)
    order = np.argsort(-scores, kind="stable")[: req.top_k]
    ids = retriever.catalogue.ids.take(pos[order]).to_pylist() if len(order) else []
    multi, per_item = {}, [{}] * len(order)
    if m.ranking is not None:  # the top items' task probabilities ([top_k, T])
        multi = {"ranked_by": m.ranking.ranked_by}
        per_item = [{"task_scores": dict(zip(m.tasks, row))} for row in probs[order].astype(np.float64).tolist()]
    items = [RecommendedItem(item_id=i, score=float(scores[j]), retrieval_score=float(rscores[j]), **x)
             for i, j, x in zip(ids, order, per_item)]
    state.metrics.requests.labels(endpoint="/recommend", status="200").inc()
    return RecommendResponse(
        request_id=req.request_id, model=ModelInfo(name=m.name, version=m.version), retrieval=rec.info,
        candidates=len(pos), items=items, features=FeatureReport(absent=absent, unknown=unknown),
        timing=RecommendTiming(retrieve_ms=(t1 - t0) * 1e3, rank_ms=(t2 - t1) * 1e3, total_ms=(t2 - t0) * 1e3),
        **multi,
    )


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
