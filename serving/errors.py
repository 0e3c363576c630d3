"""The service's one error shape, ``{"error", "field", "detail"}`` (``schemas.ErrorResponse``), and its producers.

Every refusal goes through here: ``error_body`` (bytes, for the /rank lane which answers without a
Response object), ``error_response`` (a Response, for routes and middleware), ``ApiError`` (raised from a
dependency) and the app's exception handlers (``install_handlers``), which give FastAPI's and Starlette's own
errors (404, 405, 422, a body that cannot be read) the same shape. Bad input is a 4xx naming the field; a 5xx
only for the service itself (503 no model or prediction too slow, 500 a bug, logged).
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ctrzoo.errors import CtrzooError, SpecError
from serving.schemas import ErrorResponse

log = logging.getLogger("ctrzoo.serving")


def error_body(error: str, field: str | None = None, detail: list | None = None) -> bytes:
    return orjson.dumps(ErrorResponse(error=error, field=field, detail=detail).model_dump())


def error_response(status: int, error: str, field: str | None = None, detail: list | None = None,
                   headers: dict | None = None) -> Response:
    return Response(error_body(error, field, detail), status_code=status, media_type="application/json",
                    headers=headers)


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


def error_responses(*statuses: int) -> dict:
    """OpenAPI ``responses`` for these 4xx/5xx statuses: all ``ErrorResponse``."""
    return {status: {"model": ErrorResponse} for status in statuses}


class ApiError(StarletteHTTPException):
    """An HTTP error answered as ``{"error", "field", "detail"}`` by the app's handler (FastAPI passes an
    ``HTTPException`` raised while it reads a body or solves a dependency through unchanged)."""

    def __init__(self, status: int, error: str, field: str | None = None, headers: dict | None = None):
        super().__init__(status, error, headers)
        self.field = field


class ReadTimeout(ApiError):
    def __init__(self, seconds: float):
        super().__init__(408, f"the request body did not arrive within {seconds:g}s", "body",
                         headers={"connection": "close"})


class PredictionTimeout(CtrzooError):
    """The model did not answer within ``request_timeout_s``: a 503 (the service is overloaded, not the input)."""


def install_handlers(app: FastAPI) -> None:
    """The app's exception handlers; each counts its answer in the app's metrics (``app.state.service``)."""
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(SpecError, _on_spec_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)


def _count(request: Request, status: int) -> None:
    request.app.state.service.metrics.requests.labels(endpoint=request.url.path, status=str(status)).inc()


async def _on_validation_error(request: Request, exc: RequestValidationError) -> Response:
    _count(request, 422)
    return Response(validation_error_body(exc.errors()), status_code=422, media_type="application/json")


async def _on_spec_error(request: Request, exc: SpecError) -> Response:
    _count(request, 422)
    return error_response(422, exc.reason, exc.field)


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """404, 405, a body FastAPI could not read (bad UTF-8), ApiError: the same JSON shape as every 4xx."""
    if request.scope.get("route") is not None:  # unrouted paths (scanners) would blow up the label set
        _count(request, exc.status_code)
    error = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if error == "There was an error parsing the body":  # FastAPI's words; the cause says which
        cause = exc.__cause__
        error = f"the request body could not be read: {type(cause).__name__}: {cause}" if cause else error
    field = getattr(exc, "field", None) or ("body" if exc.status_code in (400, 408, 413) else None)
    return error_response(exc.status_code, error, field, headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s", request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}")
