"""``POST /rank`` from body bytes to response bytes: parse, check, encode, predict, rank, serialize.

One implementation serves both ways in: the FastAPI route (``router``, which documents the endpoint in
``/openapi.json``) and ``RankLane``, a plain-ASGI lane that ``serving.app.RankingApp`` sends the request
down before Starlette's middleware, request object, routing and dependency solving: per request that
machinery cost ~0.3 ms, a sixth of a 100-candidate request's server time. ``predict_scores`` is /rank's and
/recommend's one way to the model (coalescer, timeout).

A multi-task bundle's ``[B, T]`` probabilities are ranked by one task or a weighted sum of them
(``serving.tasks``, settings ``rank_by``/``task_weights``): ``scores`` holds that ranking score, the response
adds ``task_scores`` (task -> each candidate's probability, in request order) and ``ranked_by`` (the task, or
``"weighted"``). A single-task response has neither field.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import orjson
import pyarrow as pa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from ctrzoo.errors import CtrzooError, SpecError
from ctrzoo.features import EncodedBatch
from serving.deps import get_state
from serving.errors import PredictionTimeout, error_body, error_responses, validation_error_body
from serving.schemas import RankRequest, RankResponse, parse_rank_request

if TYPE_CHECKING:
    from serving.app import ServiceState
    from serving.model_state import LoadedModel

log = logging.getLogger("ctrzoo.serving")
JSON = [(b"content-type", b"application/json")]
router = APIRouter()
_RANK_BODY = {"required": True, "content": {"application/json": {"schema": RankRequest.model_json_schema()}}}


# The work is handle_rank, which RankingApp's lane calls without FastAPI's routing; this route documents the
# endpoint (request and response schemas in /openapi.json) and serves it when the app runs without the lane
# (CTRZOO_RANK_LANE=0). The body is parsed from the raw bytes (parse_rank_request), hence openapi_extra.
@router.post("/rank", response_model=RankResponse, response_class=JSONResponse,
             openapi_extra={"requestBody": _RANK_BODY}, responses=error_responses(408, 413, 415, 422, 503))
async def rank(request: Request, s: ServiceState = Depends(get_state)):
    content_type = request.headers.get("content-type")
    if not json_content_type(content_type):
        s.metrics.requests.labels(endpoint="/rank", status="415").inc()
        return Response(unsupported_media_type(content_type), status_code=415, media_type="application/json")
    status, payload = await handle_rank(s, await request.body())
    return Response(payload, status_code=status, media_type="application/json")


async def handle_rank(state: ServiceState, body: bytes) -> tuple[int, bytes]:
    """(HTTP status, JSON body) for one /rank request; every bad input is a 4xx naming the field."""
    status, payload = await _rank(state, body)
    state.metrics.requests.labels(endpoint="/rank", status=str(status)).inc()
    return status, payload


async def _rank(s: ServiceState, body: bytes) -> tuple[int, bytes]:
    t0 = time.perf_counter()
    try:
        req = parse_rank_request(body)
    except ValidationError as exc:
        return 422, validation_error_body(exc.errors())
    m = s.model  # this request keeps this model even if a reload swaps it meanwhile
    if m is None:
        return 503, error_body("model not loaded yet")
    limit = s.settings.max_candidates
    if len(req.candidates) > limit:
        return 422, error_body(f"{len(req.candidates)} candidates exceed the limit of {limit}", "candidates")
    problem, absent, unknown = check_names(req, m.raw_columns, s.settings.unknown_features)
    if problem is not None:
        return 422, problem
    s.metrics.count_names("/rank", absent, unknown)
    try:
        batch = m.codec.encode_request(req.context, req.candidates)
    except SpecError as exc:
        return 422, error_body(exc.reason, exc.field)
    except (pa.ArrowException, ValueError, TypeError) as exc:  # a value shape the checks above missed
        log.warning("request could not be encoded: %s", exc)
        return 422, error_body(f"a feature value could not be encoded: {exc}")
    t1 = time.perf_counter()
    try:
        probs = await predict_scores(s, m, batch)
    except PredictionTimeout as exc:
        return 503, error_body(str(exc))
    t2 = time.perf_counter()
    scores = probs if m.ranking is None else m.ranking.score(probs)
    order = np.argsort(-scores, kind="stable")
    if req.top_k is not None:
        order = order[: req.top_k]
    s.metrics.candidates.inc(len(req.candidates))
    s.metrics.latency.observe(t2 - t0)
    # the RankResponse shape, serialized by orjson straight from the numpy arrays
    response = {"request_id": req.request_id, "model": {"name": m.name, "version": m.version},
                "scores": scores.astype(np.float64), "ranking": order,
                "features": {"absent": absent, "unknown": unknown},
                "timing": {"encode_ms": (t1 - t0) * 1e3, "predict_ms": (t2 - t1) * 1e3, "total_ms": (t2 - t0) * 1e3}}
    if m.ranking is not None:
        response["task_scores"] = m.ranking.task_scores(probs)
        response["ranked_by"] = m.ranking.ranked_by
    return 200, orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)


async def predict_scores(s: ServiceState, m: LoadedModel, batch: EncodedBatch) -> np.ndarray:
    """``m``'s probabilities for ``batch``, ``[B]`` (``[B, T]`` for a multi-task model), through the coalescer
    when it is on, or ``PredictionTimeout`` after ``request_timeout_s``: /rank's and /recommend's one way to the
    model."""
    try:
        async with asyncio.timeout(s.settings.request_timeout_s):  # no extra task, unlike wait_for
            if s.coalescer is not None:
                return await s.coalescer.predict(m, batch)
            return await asyncio.to_thread(m.predictor.predict, batch)
    except TimeoutError:
        raise PredictionTimeout(f"prediction took longer than {s.settings.request_timeout_s}s") from None


def check_names(req: RankRequest, known: frozenset[str], policy: str) -> tuple[bytes | None, list, list]:
    """(error or None, absent model features, unknown request names), from the names alone: set operations
    over the dicts' keys in C, never a look at the values.

    A feature in both context and candidates is an error; so is a request with candidates naming no feature
    the model reads (every candidate would get the same all-missing score); unknown names are one when
    ``policy == "reject"``, else reported in the response.
    """
    ctx = req.context
    named = set().union(*req.candidates)  # ~0.2 us per candidate of 39 names; a C loop over the key tables
    # that skips rows with the same key objects (orjson's key cache) saved only a quarter of it: not worth C code
    if ctx:
        both = named.intersection(ctx)
        if both:
            both = sorted(both)
            return error_body(f"features given both in context and in candidates: {both}", both[0]), [], []
        named.update(ctx)
    unknown = [] if named <= known else sorted(named - known)
    absent = [] if known <= named else sorted(known - named)
    if unknown and policy == "reject":
        return error_body(f"unknown features {unknown} (this model reads {sorted(known)})", unknown[0]), [], []
    if req.candidates and len(absent) == len(known) and known:
        return no_known_feature(known, unknown, "candidates"), [], []
    return None, absent, unknown


def no_known_feature(known, unknown: list, field: str) -> bytes:
    expected = sorted(known)
    return error_body(f"the request names none of the features this model reads, so every candidate would get the "
                      f"same score; expected some of {expected}" + (f", got {unknown[:20]}" if unknown else ""),
                      field, [{"expected": expected, "unknown": unknown[:100]}])


def json_content_type(value: bytes | str | None) -> bool:
    """``application/json``, with or without parameters; a charset, if given, must be UTF-8 (RFC 8259)."""
    if value is None:
        return False
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    media, _, params = value.partition(";")
    if media.strip().lower() != "application/json":
        return False
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset" and val.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


def unsupported_media_type(value) -> bytes:
    shown = value.decode("latin-1") if isinstance(value, bytes) else value
    return error_body(f"expected Content-Type: application/json, got {shown!r}", "content-type")


class RankLane:
    """Plain ASGI for ``POST /rank`` only: the body in, ``handle_rank``'s answer out.

    ``RankingApp`` routes that one request here, wrapped in ``BodyLimit`` so bodies are size-checked
    first; every answer is the same JSON as through the FastAPI route, which the lane bypasses.
    """

    def __init__(self, state: ServiceState):
        self.state = state

    async def __call__(self, scope, receive, send):
        content_type = next((v for k, v in scope["headers"] if k == b"content-type"), None)
        if not json_content_type(content_type):
            self.state.metrics.requests.labels(endpoint="/rank", status="415").inc()
            return await _send(send, 415, unsupported_media_type(content_type))
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            status, payload = await handle_rank(self.state, b"".join(chunks))
        except CtrzooError as exc:
            status, payload = 503, error_body(str(exc))
        except Exception as exc:  # a bug: still the documented shape (the FastAPI route has its app handler)
            log.exception("unexpected error in /rank")
            status, payload = 500, error_body(f"internal error: {type(exc).__name__}")
        return await _send(send, status, payload)


async def _send(send, status: int, payload: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON, (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
