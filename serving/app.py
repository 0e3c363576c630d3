"""The ranking service: ``create_app(bundle, ...)`` returns a FastAPI app; this module holds its state and assembly.

Endpoints, one ``APIRouter`` per concern: ``serving.info`` (``GET /healthz`` alive, ``/readyz`` model loaded and
warmed, ``/metrics`` Prometheus, ``/model`` what a client needs to build requests), ``serving.rank``
(``POST /rank``), ``serving.admin`` (``POST /admin/reload``, token-guarded; SIGHUP does the same for the
configured bundle) and, with a retrieval bundle, ``serving.recommend`` (``POST /recommend``).

How a request travels (``create_app``):

1. ``BodyLimit`` (``serving.middleware``, plain ASGI, the outermost middleware): 413 over ``max_body_bytes``, 408
   when the body is not there within ``read_timeout_s``.
2. ``POST /rank`` with ``rank_lane`` on: ``RankingApp.__call__`` hands it to ``RankLane`` (wrapped in its own
   ``BodyLimit``) before Starlette's middleware, routing and dependency solving, which cost ~0.1 ms per request;
   the lane and the documented /rank route call the same ``serving.rank.handle_rank``.
3. Everything else: Starlette's error middleware, ``BodyLimit``, routing, then the route. Routes reach the app's
   ``ServiceState`` (model, settings, metrics, coalescer; on ``app.state.service``) through the dependency
   ``serving.deps.get_state``, never a closure or a module global; the admin token check is the dependency
   ``serving.admin.require_admin``.

Bad input never reaches a 5xx: ``serving.errors`` owns the one body ``{"error", "field", "detail"}`` and the
handlers that give FastAPI's own errors that shape. A reload builds and smoke-tests the new model first and
swaps one reference; requests in flight keep the model they started with, and a bad bundle leaves the old one
serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import weakref
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from ctrzoo.bundle import Bundle, load_bundle
from ctrzoo.errors import BundleError, CtrzooError
from serving import admin, info, rank
from serving.batcher import Coalescer
from serving.errors import error_responses, install_handlers
from serving.metrics import ServiceMetrics
from serving.middleware import BodyLimit
from serving.model_state import LoadedModel, load_model
from serving.settings import ServeSettings

log = logging.getLogger("ctrzoo.serving")


class ServiceState:
    """Everything a request needs, held by the app (``app.state.service``) instead of module globals; routes get
    it from the dependency ``serving.deps.get_state``, the /rank lane and ``BodyLimit`` hold it directly."""

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
        s = self.settings
        return load_model(bundle, s.backend, s.threads, s.rank_by, s.task_weights)

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
    """What a reload from ``old`` to ``new`` changes in the model kind, its tasks (the response's task scores) or
    the feature set ('' when nothing)."""
    parts = []
    if old.model_name != new.model_name:
        parts.append(f"model {old.model_name!r} -> {new.model_name!r}")
    if old.tasks != new.tasks:
        parts.append(f"tasks {list(old.tasks)} -> {list(new.tasks)}")
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
    return settings.model_copy(update={"bundle": bundle})  # frozen: a copy, not an edit


async def _sighup_reload(state: ServiceState) -> None:
    """Reload the configured bundle path; never a change of model kind or feature set."""
    try:
        await state.reload(None, allow_model_change=False)
    except CtrzooError as exc:
        log.error("SIGHUP reload refused, still serving the old model: %s", exc)
    except Exception:
        log.exception("SIGHUP reload failed unexpectedly, still serving the old model")


@asynccontextmanager
async def _lifespan(app: FastAPI):
    """Load and warm the configured bundle before the first request; SIGHUP reloads it; stop the coalescer."""
    state: ServiceState = app.state.service
    settings = state.settings
    state.install(await asyncio.to_thread(load_model, settings.bundle, settings.backend, settings.threads,
                                          settings.rank_by, settings.task_weights))
    _settle_gc(settings.gc_gen0_threshold)  # the full collection runs before the first request
    loop = asyncio.get_running_loop()
    # not possible outside the main thread (tests) or without signals: reload stays available over HTTP
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_sighup_reload(state)))
    yield
    if state.coalescer is not None:
        state.coalescer.close()


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


def create_app(bundle: str | None = None, settings: ServeSettings | None = None, retrieval: str | None = None,
               **overrides: Any) -> FastAPI:
    """``retrieval``: a retrieval bundle (with its index) to also serve ``POST /recommend`` (or CTRZOO_RETRIEVAL)."""
    settings = settings or ServeSettings.from_env(bundle=bundle, **overrides)
    if not settings.bundle:
        raise CtrzooError("no bundle to serve: pass create_app(bundle=...) or set CTRZOO_BUNDLE")
    state = ServiceState(settings)
    app = RankingApp(title="ctrzoo ranking service", lifespan=_lifespan, responses=error_responses(422, 413))
    app.state.service = state  # what serving.deps.get_state hands to every route
    install_handlers(app)
    for router in (info.router, rank.router, admin.router):  # this order is /openapi.json's
        app.include_router(router)
    retrieval = retrieval or os.environ.get("CTRZOO_RETRIEVAL") or None
    if retrieval:
        from serving.recommend import add_recommend_routes  # FAISS and the towers: only when asked

        add_recommend_routes(app, retrieval)
    if settings.rank_lane:  # POST /rank, size-checked, straight to its handler (RankingApp.__call__)
        app.lane = BodyLimit(rank.RankLane(state), state)
    app.add_middleware(BodyLimit, state=state)  # added last: outermost, so the lane sees checked bodies
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory serving.app:app_from_env`` (several workers read CTRZOO_* env)."""
    return create_app()
