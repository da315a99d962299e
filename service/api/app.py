"""The FastAPI application: `create_app(settings)`.

The lifespan loads the models unless the caller already did (`run_server` loads before the
port opens), starts the batchers, and warms up in the background so that /health/live answers
and /health/ready says 503 until every model has run one inference.

Middleware, outermost first: CORS (only when origins are listed: preflights carry no key), the
API key (only when one is set), the body-size limit, then FastAPI's own stack. There are no
management, reload or file-path endpoints: the routes are the inference, model-metadata, health
and metrics ones in `bertserve.service.api.routes`, plus the OpenAPI schema and its viewers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

import bertserve
from bertserve.runtime.selection import BackendFactory
from bertserve.service import tracing
from bertserve.service.api.compat import router as compat_router
from bertserve.service.api.errors import install_error_handlers
from bertserve.service.api.middleware import (
    DOCS_PATHS,
    HEALTH_PATHS,
    METRICS_PATH,
    AdmissionMiddleware,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    RequestIdMiddleware,
)
from bertserve.service.api.routes import AppState, count_overloaded, count_unobserved_error, router
from bertserve.service.api.v2 import router as v2_router
from bertserve.service.metrics import Metrics
from bertserve.service.registry import ModelRegistry
from bertserve.service.settings import Settings

log = logging.getLogger(__name__)


class BertserveApp(FastAPI):
    """FastAPI with `RequestIdMiddleware` outside Starlette's own stack, so that even the answers
    of its outermost layer (the 500 of an unexpected error) carry the request id."""

    def __init__(self, *args: Any, access_log: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._access_log = access_log

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        if tracing.enabled():
            stack = _traced(stack)
        return RequestIdMiddleware(stack, access_log=self._access_log)


def create_app(
    settings: Settings,
    *,
    registry: ModelRegistry | None = None,
    backend_factory: BackendFactory | None = None,
) -> FastAPI:
    """`registry`: already loaded models (from `run_server`); `backend_factory`: tests inject
    backends (e.g. a FakeBackend with fault hooks) through it."""
    if registry is None:
        registry = ModelRegistry(settings, Metrics(), backend_factory)
    reg = registry

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not reg.loaded:
            await asyncio.to_thread(reg.load)
        reg.start()
        grpc_server = None
        if settings.grpc_port is not None:
            from bertserve.service.api.grpc_server import GrpcServer

            grpc_server = GrpcServer(app.state.bertserve)
            try:
                app.state.grpc_port = await grpc_server.start()
            except OSError:
                await reg.stop(timeout_s=1.0)
                raise
        warm_up = asyncio.create_task(reg.warm_up(), name="warm-up")
        poll = settings.repository_poll_s
        watch = asyncio.create_task(reg.watch(poll), name="repository-watch") if poll else None
        try:
            yield
        finally:
            for task in (warm_up, watch):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if grpc_server is not None:
                # requests were drained with HTTP's (they count in the registry's in-flight)
                await grpc_server.stop(grace_s=1.0)
            # Requests were drained before uvicorn shut down (see api.server); a backend stuck in
            # a call must not hold the exit beyond the drain budget.
            await reg.stop(timeout_s=settings.drain_timeout_s)

    app = BertserveApp(
        title="bertserve",
        version=bertserve.__version__,
        summary="Batched inference for fine-tuned BERT-family encoders.",
        lifespan=lifespan,
        access_log=settings.access_log,
        # Traces are bertserve's own (BERTSERVE_OTEL_ENDPOINT, `_traced` below, on a provider of
        # its own); FastAPI's native telemetry would otherwise look for global OpenTelemetry
        # providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.bertserve = AppState(settings=settings, registry=reg, metrics=reg.metrics)
    install_error_handlers(app, observe=count_unobserved_error)
    app.include_router(router)
    app.include_router(compat_router)
    app.include_router(v2_router)
    # add_middleware wraps what is there: the last added runs first.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        AdmissionMiddleware,
        max_inflight=settings.max_inflight_requests,
        state=reg.drain,
        on_refused=lambda scope: count_overloaded(reg, scope),
    )
    if settings.api_key is not None:
        public = HEALTH_PATHS | (DOCS_PATHS if settings.docs_public else frozenset())
        if settings.metrics_public:
            public |= {METRICS_PATH}
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key.get_secret_value(), public_paths=public)
        _document_bearer_auth(app, public)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Timeout-Ms", "X-Request-Id"],
            expose_headers=["X-Request-Id"],
            allow_credentials=False,  # a Bearer key is sent explicitly; no cookies are involved
            max_age=600,
        )
    return app


# Probes and scrapes are not traced: they would drown the requests that matter.
UNTRACED_PATHS = (*sorted(HEALTH_PATHS), METRICS_PATH)


def _traced(app: ASGIApp) -> ASGIApp:
    """The HTTP server span of every request (OpenTelemetry's ASGI middleware: W3C trace context
    from the caller's `traceparent`, the HTTP attributes), the parent of the pipeline's spans
    (bertserve.service.tracing); an inference route renames it after its route template."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.util.http import ExcludeList

    excluded = ExcludeList([f"{path}$" for path in UNTRACED_PATHS])
    return OpenTelemetryMiddleware(
        app,
        excluded_urls=excluded,
        default_span_details=_span_details,
        tracer_provider=tracing.provider(),
        exclude_spans=["receive", "send"],
    )


def _span_details(scope: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return f"{scope.get('method', '')} {scope.get('path', '')}", {}


def _document_bearer_auth(app: FastAPI, public: frozenset[str]) -> None:
    """Declare the Bearer scheme in OpenAPI (the /docs "Authorize" button) on protected routes."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "BERTSERVE_API_KEY"}
            }
            for path, operations in schema["paths"].items():
                if path not in public:
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
