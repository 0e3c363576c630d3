"""The ranking service: ``create_app(bundle, ...)`` returns a FastAPI app.

Endpoints: ``POST /rank``, ``GET /healthz`` (alive), ``GET /readyz`` (model loaded and warmed),
``GET /metrics`` (Prometheus), ``GET /model`` (what a client needs to build requests) and
``POST /admin/reload`` (token-guarded; SIGHUP does the same for the configured bundle).

Bad input never reaches a 5xx: it is a 4xx JSON body ``{"error", "field", "detail"}``. A reload builds and
smoke-tests the new model first and swaps one reference; requests in flight keep the model they started
with, and a bad bundle leaves the old one serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import signal
import weakref
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ctrzoo.bundle import Bundle, load_bundle
from ctrzoo.errors import BundleError, CtrzooError, SpecError
from serving.batcher import Coalescer
from serving.metrics import ServiceMetrics
from serving.model_state import LoadedModel, load_model
from serving.rank import (
    RankLane,
    error_body,
    handle_rank,
    json_content_type,
    unsupported_media_type,
    validation_error_body,
)
from serving.schemas import (
    ErrorResponse,
    RankRequest,
    RankResponse,
    ReloadRequest,
)
from serving.settings import ServeSettings

log = logging.getLogger("ctrzoo.serving")


class ServiceState:
    """Everything a request needs, held by the app instead of module globals."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.model: LoadedModel | None = None
        self.metrics = ServiceMetrics()
        self.coalescer = Coalescer(settings.coalesce_max_rows) if settings.coalesce else None
        self.reload_lock = asyncio.Lock()
        self._watches: set[asyncio.Task] = set()

    def install(self, model: LoadedModel) -> None:
        self.model = model  # one reference assignment: atomic for every reader
        self.metrics.set_model(model.name, model.version)

    async def reload(self, path: str | None, allow_model_change: bool = False) -> LoadedModel:
        """Load, validate and swap in a bundle (default: the configured one, as SIGHUP does).

        Refused (CtrzooError, the old model keeps serving) when it does not load or validate, or when it
        changes the model kind or the feature set and ``allow_model_change`` is not given. The old model is
        then released: nothing may keep it alive once the requests that hold it are done."""
        async with self.reload_lock:
            target = path or self.settings.bundle
            try:
                model = await asyncio.to_thread(self._load, target, allow_model_change)
            except Exception:
                self.metrics.reloads.labels(outcome="refused").inc()
                raise
            retired = weakref.ref(self.model) if self.model is not None else None
            self.install(model)
            self.settings = _replace_bundle(self.settings, target)
            self.metrics.reloads.labels(outcome="ok").inc()
            log.info("serving %s version %s from %s", model.name, model.version, target)
            _settle_gc(self.settings.gc_gen0_threshold)
            if retired is not None and retired() is not None:  # requests in flight still hold it
                task = asyncio.get_running_loop().create_task(self._watch_retired(retired))
                self._watches.add(task)
                task.add_done_callback(self._watches.discard)
            return model

    def _load(self, target: str, allow_model_change: bool) -> LoadedModel:
        bundle = load_bundle(target)
        current = self.model
        if current is not None and not allow_model_change:
            change = model_change(current.bundle, bundle)
            if change:
                raise BundleError(f"{target}: {change}; a reload keeps the model kind and the feature set unless "
                                  "the request says allow_model_change: true")
        del current
        return load_model(bundle, self.settings.backend, self.settings.threads)

    async def _watch_retired(self, retired: weakref.ref) -> None:
        """Requests that held the old model finish within their timeout; then it must be gone. If a cycle
        holds it (e.g. an exception's traceback), collect once more; if it is still there, say so."""
        await asyncio.sleep(self.settings.request_timeout_s + 1.0)
        if retired() is not None:
            _settle_gc(self.settings.gc_gen0_threshold)
        old = retired()
        if old is not None:
            log.warning("the replaced model %s version %s is still referenced %.0fs after the reload: its memory "
                        "is not freed", old.name, old.version, self.settings.request_timeout_s + 1.0)


def model_change(old: Bundle, new: Bundle) -> str:
    """What a reload from ``old`` to ``new`` changes in the model kind or feature set ('' when nothing)."""
    parts = []
    if old.model_name != new.model_name:
        parts.append(f"model {old.model_name!r} -> {new.model_name!r}")
    before, after = dict(old.feature_set), dict(new.feature_set)
    if before != after:
        added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
        kinds = sorted(n for n in set(before) & set(after) if before[n] != after[n])
        for label, names in (("features added", added), ("features removed", removed), ("kind changed", kinds)):
            if names:
                parts.append(f"{label}: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")
    return "; ".join(parts)


def _settle_gc(gen0_threshold: int, collect: bool = True) -> None:
    """Keep the cyclic GC off the loaded model: ``gc.freeze()`` moves everything alive now (the bundle, the
    vocabulary tables, the runtime) out of the collector's sight, so full collections no longer walk them
    in the middle of requests. Optionally a larger generation-0 threshold (a 100-candidate request
    allocates ~8000 objects). On the benchmark's small vocabularies neither changed throughput beyond this
    machine's run-to-run noise (±15%).

    Frozen objects are never collected, so a model replaced by a reload must not stay frozen: the frozen
    set is released first (``gc.unfreeze()``), collected once (the replaced model's cycles and any garbage
    frozen with it; ~0.1 s for a DIN bundle's 200k objects, once per reload), then frozen again. Freezing
    without that made every reload leak the old model (~50 MB per DIN reload)."""
    if collect:
        gc.unfreeze()
        gc.collect()
    gc.freeze()
    if gen0_threshold > 0:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)


def _replace_bundle(settings: ServeSettings, bundle: str) -> ServeSettings:
    from dataclasses import replace

    return replace(settings, bundle=bundle)


def _error(status: int, error: str, field: str | None = None, detail: list | None = None,
           headers: dict | None = None) -> Response:
    return Response(error_body(error, field, detail), status_code=status, media_type="application/json",
                    headers=headers)


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


def _deadline_receive(receive, seconds: float):
    """``receive`` that raises ``ReadTimeout`` if the body is not complete ``seconds`` from now; once it is,
    later calls (waiting for a disconnect) pass straight through.

    One timer per request, which cancels the task only while it waits in ``receive``: ``asyncio.timeout``
    around each call cost ~10 us a request, this ~3."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    waiting = expired = done = False

    def expire() -> None:
        nonlocal expired
        expired = True
        if waiting:
            task.cancel()

    timer = loop.call_later(seconds, expire)

    async def timed():
        nonlocal waiting, done
        if done:
            return await receive()
        if expired:  # the deadline passed while the app was busy elsewhere: only what has arrived by now
            try:
                async with asyncio.timeout(0):
                    return finish(await receive())
            except TimeoutError:
                raise ReadTimeout(seconds) from None
        waiting = True
        try:
            message = await receive()
        except asyncio.CancelledError:
            if expired and task.uncancel() == 0:  # our cancellation, not the server's
                raise ReadTimeout(seconds) from None
            raise
        finally:
            waiting = False
        return finish(message)

    def finish(message):
        nonlocal done
        done = message["type"] != "http.request" or not message.get("more_body", False)
        if done:
            timer.cancel()
        return message

    return timed


class BodyLimit:
    """Refuse bodies over the limit (413) before anything parses them: by Content-Length, or by counting the
    chunks of a body without one; and bodies that do not arrive within ``read_timeout_s`` (408). Plain ASGI
    (no ``BaseHTTPMiddleware``: its per-request task and stream wrapping cost more than a whole /rank encoding)."""

    def __init__(self, app, state: ServiceState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        settings = self.state.settings
        limit = settings.max_body_bytes
        if settings.read_timeout_s > 0 and scope["method"] != "GET":
            receive = _deadline_receive(receive, settings.read_timeout_s)
        try:
            return await self._limited(scope, receive, send, limit)
        except ReadTimeout as exc:  # from the lane or this class: FastAPI's routes answer it themselves
            return await _error(408, exc.detail, "body", headers={"connection": "close"})(scope, receive, send)

    async def _limited(self, scope, receive, send, limit: int):
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            if length.isdigit() and int(length) > limit:
                text = length.decode()
                return await _error(413, f"request body of {text} bytes exceeds the limit of {limit}", "body")(
                    scope, receive, send)
            return await self.app(scope, receive, send)
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        messages, size = [], 0
        while True:  # chunked body: buffer it, counting, then replay it to the app
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > limit:
                return await _error(413, f"request body exceeds the limit of {limit} bytes", "body")(
                    scope, receive, send)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)


class RankingApp(FastAPI):
    """FastAPI, except that ``POST /rank`` is answered by ``lane`` before Starlette's middleware stack.

    The stack (error and telemetry wrappers, body limit, routing) cost ~0.1 ms of event-loop time per
    request, 8% of a 100-candidate /rank; the lane does the body limit itself and its handler turns every
    bad input into a JSON 4xx. Everything else, /rank included when ``lane`` is None, goes through FastAPI.
    """

    lane = None

    async def __call__(self, scope, receive, send):
        if self.lane is not None and scope["type"] == "http" and scope["path"] == "/rank" and scope["method"] == "POST":
            return await self.lane(scope, receive, send)
        return await super().__call__(scope, receive, send)


def _errors(*statuses: int) -> dict:
    """OpenAPI ``responses`` for these 4xx/5xx statuses: all ``ErrorResponse``."""
    return {status: {"model": ErrorResponse} for status in statuses}


_RANK_BODY = {"required": True, "content": {"application/json": {"schema": RankRequest.model_json_schema()}}}


def create_app(bundle: str | None = None, settings: ServeSettings | None = None, retrieval: str | None = None,
               **overrides: Any) -> FastAPI:
    """``retrieval``: a retrieval bundle (with its index) to also serve ``POST /recommend`` (or CTRZOO_RETRIEVAL)."""
    settings = settings or ServeSettings.from_env(bundle=bundle, **overrides)
    if not settings.bundle:
        raise CtrzooError("no bundle to serve: pass create_app(bundle=...) or set CTRZOO_BUNDLE")
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.install(await asyncio.to_thread(load_model, settings.bundle, settings.backend, settings.threads))
        _settle_gc(settings.gc_gen0_threshold)  # the full collection runs before the first request
        loop = asyncio.get_running_loop()
        # not possible outside the main thread (tests) or without signals: reload stays available over HTTP
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_sighup_reload(state)))
        yield
        if state.coalescer is not None:
            state.coalescer.close()

    app = RankingApp(title="ctrzoo ranking service", lifespan=lifespan,
                  responses={422: {"model": ErrorResponse}, 413: {"model": ErrorResponse}})
    app.state.service = state
    if settings.rank_lane:  # POST /rank, size-checked, straight to its handler (RankingApp.__call__)
        app.lane = BodyLimit(RankLane(state), state)
    app.add_middleware(BodyLimit, state=state)  # added last: outermost, so the lane sees checked bodies

    async def get_state() -> ServiceState:  # async: FastAPI runs a sync dependency in a worker thread
        return state

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError):
        state.metrics.requests.labels(endpoint=request.url.path, status="422").inc()
        return Response(validation_error_body(exc.errors()), status_code=422, media_type="application/json")

    @app.exception_handler(SpecError)
    async def on_spec_error(request: Request, exc: SpecError):
        state.metrics.requests.labels(endpoint=request.url.path, status="422").inc()
        return _error(422, exc.reason, exc.field)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        """404, 405, a body FastAPI could not read (bad UTF-8), ApiError: the same JSON shape as every 4xx."""
        if request.scope.get("route") is not None:  # unrouted paths (scanners) would blow up the label set
            state.metrics.requests.labels(endpoint=request.url.path, status=str(exc.status_code)).inc()
        error = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if error == "There was an error parsing the body":  # FastAPI's words; the cause says which
            cause = exc.__cause__
            error = f"the request body could not be read: {type(cause).__name__}: {cause}" if cause else error
        return _error(exc.status_code, error, getattr(exc, "field", None) or _field_of(exc), headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(s: ServiceState = Depends(get_state)):
        if s.model is None:
            return _error(503, "model not loaded yet")
        return {"status": "ready", "model": s.model.name, "version": s.model.version}

    @app.get("/metrics")
    async def metrics(s: ServiceState = Depends(get_state)):
        return PlainTextResponse(s.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/model")
    async def model_info(s: ServiceState = Depends(get_state)):
        m = _require_model(s)
        return {"name": m.name, "version": m.version, "backend": m.predictor.backend,
                "features": _feature_docs(m), "limits": {"max_candidates": s.settings.max_candidates,
                                                          "max_body_bytes": s.settings.max_body_bytes},
                "unknown_features": s.settings.unknown_features}

    # The work is serving.rank.handle_rank, which RankingApp's lane calls without FastAPI's routing; this
    # route documents the endpoint (request and response schemas in /openapi.json) and serves it when the
    # app is mounted without the lane. The body is parsed from the raw bytes (parse_rank_request).
    @app.post("/rank", response_model=RankResponse, response_class=JSONResponse, openapi_extra={"requestBody": _RANK_BODY},
              responses=_errors(408, 413, 415, 422, 503))
    async def rank(request: Request):
        content_type = request.headers.get("content-type")
        if not json_content_type(content_type):
            state.metrics.requests.labels(endpoint="/rank", status="415").inc()
            return Response(unsupported_media_type(content_type), status_code=415, media_type="application/json")
        status, payload = await handle_rank(state, await request.body())
        return Response(payload, status_code=status, media_type="application/json")

    async def require_admin(authorization: str | None = Header(default=None),
                            s: ServiceState = Depends(get_state)) -> None:
        token = s.settings.admin_token
        if not token:
            raise ApiError(403, "reload is disabled: set CTRZOO_ADMIN_TOKEN to enable it")
        given = (authorization or "").encode("latin-1", "replace")  # header bytes, as sent
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):  # constant time: no token by timing
            raise ApiError(401, "missing or wrong admin token (Authorization: Bearer ...)", "authorization")

    @app.post("/admin/reload", dependencies=[Depends(require_admin)],
              responses=_errors(400, 401, 403, 408, 409, 413, 422))
    async def reload(body: ReloadRequest | None = None, s: ServiceState = Depends(get_state)):
        path = body.bundle if body else None
        if path is not None:
            path, problem = _checked_bundle_path(path, s.settings.bundle_root)
            if problem is not None:
                return problem
        try:
            model = await s.reload(path, allow_model_change=bool(body and body.allow_model_change))
        except (CtrzooError, OSError, ValueError) as exc:  # ValueError: e.g. a NUL in the path
            current = s.model.version if s.model else None
            status = 409 if isinstance(exc, CtrzooError) else 422
            return _error(status, f"bundle refused, still serving version {current}: {exc}", "bundle")
        except Exception as exc:  # any other load failure is the bundle's too: a 409, the old model keeps serving
            current = s.model.version if s.model else None
            log.exception("reload failed unexpectedly; still serving version %s", current)
            return _error(409, f"bundle refused, still serving version {current}: {exc.__class__.__name__}: "
                               f"{str(exc)[:300]}", "bundle")
        return {"status": "reloaded", "model": model.name, "version": model.version}

    retrieval = retrieval or os.environ.get("CTRZOO_RETRIEVAL") or None
    if retrieval:
        from serving.recommend import add_recommend_routes

        add_recommend_routes(app, state, retrieval)
    return app


async def _sighup_reload(state: ServiceState) -> None:
    """Reload the configured bundle path; never a change of model kind or feature set."""
    try:
        await state.reload(None, allow_model_change=False)
    except CtrzooError as exc:
        log.error("SIGHUP reload refused, still serving the old model: %s", exc)
    except Exception:
        log.exception("SIGHUP reload failed unexpectedly, still serving the old model")


def _field_of(exc: StarletteHTTPException) -> str | None:
    return "body" if exc.status_code in (400, 408, 413) else None


def _checked_bundle_path(path: str, root: str | None) -> tuple[str, Response | None]:
    """(the path to load, None), or a 4xx naming ``bundle`` for a path the OS cannot use (a name too long, a
    NUL byte) or, with a bundle root set, one that resolves (symlinks followed) outside it. Under a root the
    resolved path is what gets loaded, so a link changed after this check cannot lead outside."""
    try:
        resolved = Path(path).resolve()
        with contextlib.suppress(FileNotFoundError):  # a missing bundle is the loader's to report
            os.stat(resolved)
        inside = root is None or resolved.is_relative_to(Path(root).resolve())
    except (OSError, ValueError) as exc:
        return path, _error(422, f"unusable bundle path: {type(exc).__name__}: {str(exc)[:200]}", "bundle")
    if not inside:
        return path, _error(403, f"bundle {path} is outside the allowed bundle root (CTRZOO_BUNDLE_ROOT)",
                            "bundle")
    return (path if root is None else str(resolved)), None


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


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory serving.app:app_from_env`` (several workers read CTRZOO_* env)."""
    return create_app()
