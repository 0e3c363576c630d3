"""``POST /rank`` from body bytes to response bytes: parse, check, encode, predict, rank, serialize.

One implementation serves both ways in: the FastAPI route (which documents the endpoint in
``/openapi.json``) and ``RankLane``, a plain-ASGI lane that ``serving.app.RankingApp`` sends the request
down before Starlette's middleware, request object, routing and dependency solving: per request that
machinery cost ~0.3 ms, a sixth of a 100-candidate request's server time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from pydantic import ValidationError

from ctrzoo.errors import CtrzooError, SpecError
from serving.schemas import ErrorResponse, RankRequest, parse_rank_request

log = logging.getLogger("ctrzoo.serving")
JSON = [(b"content-type", b"application/json")]


def error_body(error: str, field: str | None = None, detail: list | None = None) -> bytes:
    return orjson.dumps(ErrorResponse(error=error, field=field, detail=detail).model_dump())


def validation_error_body(errors: list) -> bytes:
    """pydantic's errors as ``{"error", "field", "detail"}``: the first error's message and location."""
    first = errors[0] if errors else {}
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors[:20]]
    return error_body(first.get("msg", "invalid request"), field, detail)


async def handle_rank(state: Any, body: bytes) -> tuple[int, bytes]:
    """(HTTP status, JSON body) for one /rank request; every bad input is a 4xx naming the field."""
    status, payload = await _rank(state, body)
    state.metrics.requests.labels(endpoint="/rank", status=str(status)).inc()
    return status, payload


async def _rank(s: Any, body: bytes) -> tuple[int, bytes]:
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
    problem = check_names(req, m.raw_columns, s.settings.unknown_features)
    if problem is not None:
        return 422, problem
    try:
        batch = m.encoder.encode_request(req.context, req.candidates)
    except SpecError as exc:
        return 422, error_body(exc.reason, exc.field)
    except (pa.ArrowException, ValueError, TypeError) as exc:  # a value shape the checks above missed
        log.warning("request could not be encoded: %s", exc)
        return 422, error_body(f"a feature value could not be encoded: {exc}")
    t1 = time.perf_counter()
    try:
        async with asyncio.timeout(s.settings.request_timeout_s):  # no extra task, unlike wait_for
            if s.coalescer is not None:
                scores = await s.coalescer.predict(m, batch)
            else:
                scores = await asyncio.to_thread(m.predictor.predict, batch)
    except TimeoutError:
        return 503, error_body(f"prediction took longer than {s.settings.request_timeout_s}s")
    t2 = time.perf_counter()
    order = np.argsort(-scores, kind="stable")
    if req.top_k is not None:
        order = order[: req.top_k]
    s.metrics.candidates.inc(len(req.candidates))
    s.metrics.latency.observe(t2 - t0)
    # the RankResponse shape, serialized by orjson straight from the numpy arrays
    response = {"request_id": req.request_id, "model": {"name": m.name, "version": m.version},
                "scores": scores.astype(np.float64), "ranking": order,
                "timing": {"encode_ms": (t1 - t0) * 1e3, "predict_ms": (t2 - t1) * 1e3, "total_ms": (t2 - t0) * 1e3}}
    return 200, orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)


def check_names(req: RankRequest, known: frozenset[str], policy: str) -> bytes | None:
    """A feature in both context and candidates is an error; unknown names are one when ``policy == "reject"``."""
    ctx = req.context
    if ctx:
        both = sorted({k for c in req.candidates for k in ctx if k in c})
        if both:
            return error_body(f"features given both in context and in candidates: {both}", both[0])
    if policy == "reject":
        names = set(ctx)
        for c in req.candidates:
            names.update(c)
        unknown = sorted(names - known)
        if unknown:
            return error_body(f"unknown features {unknown} (this model reads {sorted(known)})", unknown[0])
    return None


class RankLane:
    """Plain ASGI for ``POST /rank`` only: the body in, ``handle_rank``'s answer out.

    ``RankingApp`` routes that one request here, wrapped in ``BodyLimit`` so bodies are size-checked
    first; every answer is the same JSON as through the FastAPI route, which the lane bypasses.
    """

    def __init__(self, state: Any):
        self.state = state

    async def __call__(self, scope, receive, send):
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
        await send({"type": "http.response.start", "status": status,
                    "headers": [*JSON, (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
        return None
