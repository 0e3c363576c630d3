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
    loc = list(first.get("loc", ()))
    if loc[:1] == ["body"]:  # FastAPI's prefix (a feature may itself be called "body")
        loc = loc[1:]
    # json_invalid's loc is a character position; an empty loc is the body as a whole
    field = "body" if first.get("type") == "json_invalid" or not loc else ".".join(map(str, loc))
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
    problem, absent, unknown = check_names(req, m.raw_columns, s.settings.unknown_features)
    if problem is not None:
        return 422, problem
    s.metrics.count_names("/rank", absent, unknown)
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
                "features": {"absent": absent, "unknown": unknown},
                "timing": {"encode_ms": (t1 - t0) * 1e3, "predict_ms": (t2 - t1) * 1e3, "total_ms": (t2 - t0) * 1e3}}
    return 200, orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)


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

    def __init__(self, state: Any):
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
