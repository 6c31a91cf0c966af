"""The FastAPI application factory and its lifespan (models, audit store, MQTT, watcher)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from scrapvision import __version__
from scrapvision.audit import routes as audit_routes
from scrapvision.audit.store import AuditStore
from scrapvision.decode import DecodeError
from scrapvision.registry import ModelRegistry
from scrapvision.service import metrics
from scrapvision.service.auth import KeyRing
from scrapvision.service.limits import BodyLimitMiddleware
from scrapvision.service.inference import workers_fill_cores
from scrapvision.service.lines import Line, LineUnavailable
from scrapvision.service.models import ModelManager
from scrapvision.service.mqtt import MqttPublisher
from scrapvision.service.routes import health, lines, models, stream, tallies
from scrapvision.service.sink import AuditSink, DecisionSink
from scrapvision.settings import LineSettings, Settings, load_settings

log = logging.getLogger(__name__)


def configured_lines(settings: Settings, registry: ModelRegistry) -> dict[str, LineSettings]:
    """The configured lines, or by default one line per registry model, named after it."""
    if settings.lines:
        return dict(settings.lines)
    return {name: LineSettings(model=name) for name in registry.names()}


def freeze_startup_objects() -> None:
    """Exempt what startup built (app, models, libraries) from full garbage collections.

    Records waiting in the audit buffer live long enough to reach the oldest generation, so
    under load full collections keep coming: every 1.4 s at 5,000 frames/s (inference
    stubbed), less often at a real model's rate. Each walked the ~120k objects of a started
    worker, 50-60 ms with its event loop stopped, most of a line's 80 ms deadline. With those
    objects frozen, a full collection takes about 1 ms. Startup leaves about 80 unreachable
    objects, not worth a collection first: they are freed with the rest at shutdown.
    """
    gc.freeze()


def create_app(settings: Settings | None = None, audit_store: AuditSink | None = None) -> FastAPI:
    """Build the app; `audit_store` replaces the configured store (its owner closes it)."""
    settings = settings or load_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = ModelRegistry(settings.models_dir)
        line_settings = configured_lines(settings, registry)
        manager = ModelManager(
            registry, line_settings, settings.ort_threads, settings.inference_threads,
            settings.max_batch, workers_fill_cores(settings.workers, settings.ort_threads),
            on_loop=settings.inference == "loop")
        manager.load_all()
        store = audit_store or AuditStore(settings.audit).start()
        publisher = MqttPublisher(settings.mqtt) if settings.mqtt else None
        if publisher:
            publisher.start()
        sink = DecisionSink(store, publisher)
        app.state.models = manager
        app.state.audit = store
        app.state.lines = {
            name: Line(name, line, manager.slots[line.model], sink, settings.max_pixels)
            for name, line in line_settings.items()
        }
        if not app.state.lines:
            log.warning("no lines configured and no models in the registry: not ready",
                        extra={"models_dir": str(settings.models_dir)})
        if app.state.keyring.open:
            log.warning("no API keys configured: every route is open; "
                        "serve binds to localhost only")
        log.info("service started", extra={"lines": sorted(app.state.lines),
                                            "models": sorted(manager.slots)})
        watcher = asyncio.create_task(manager.watch(settings.model_poll_s))
        freeze_startup_objects()
        metrics.WORKERS_STARTED.inc()  # for /readyz: ready once every worker is
        try:
            yield
        finally:
            gc.unfreeze()  # collectable again once the app stops (tests start many in one process)
            metrics.WORKERS_STARTED.dec()
            watcher.cancel()
            manager.close()
            if publisher:
                publisher.close()
            if audit_store is None:
                store.close()
            metrics.process_exited()

    app = FastAPI(
        title="scrapvision",
        version=__version__,
        summary="Scrap-sorting decisions from conveyor camera frames",
        lifespan=lifespan,
        # metrics are Prometheus (service/metrics.py): skip FastAPI's per-request look-up of
        # OpenTelemetry providers that are never configured (3 us per HTTP frame)
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    # FastAPI's own max_body_size answers a declared oversized body in plain text; ours
    # answers JSON with the limit, like every other 4xx here.
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.state.keyring = KeyRing(settings.api_keys)
    lines.add_frame_routes(app.router)
    for router in (lines.router, stream.router, tallies.router,
                   models.router, health.router, audit_routes.router, audit_routes.qa_router):
        app.include_router(router)
    app.add_exception_handler(DecodeError, _decode_error)
    app.add_exception_handler(LineUnavailable, _line_unavailable)
    app.add_exception_handler(RequestValidationError, _validation_error)
    return app


def app_from_environment() -> FastAPI:
    """uvicorn factory for worker processes: settings from `$SCRAPVISION_CONFIG` + env."""
    return create_app(load_settings())


async def _decode_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DecodeError)
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


async def _line_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field, without echoing the input (it may be binary)."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)
