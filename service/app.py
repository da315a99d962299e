"""The FastAPI application: `create_app(settings)`.

The lifespan loads the models unless the caller already did (`run_server` loads before the
port opens), starts the batchers, and warms up in the background so that /health/live answers
and /health/ready says 503 until every model has run one inference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

import service
from service.api.routes import AppState, router
from service.backends.selection import BackendFactory
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.settings import Settings

log = logging.getLogger(__name__)


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
        warm_up = asyncio.create_task(reg.warm_up(), name="warm-up")
        try:
            yield
        finally:
            warm_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warm_up
            await reg.stop()

    app = FastAPI(
        title="bertserve",
        version=getattr(service, "__version__", "0.1.0"),
        summary="Batched inference for fine-tuned BERT-family encoders.",
        lifespan=lifespan,
    )
    app.state.bertserve = AppState(settings=settings, registry=reg, metrics=reg.metrics)
    install_error_handlers(app)
    app.include_router(router)
    return app
