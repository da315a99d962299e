"""The one in-process service harness: the real app (`create_app`), its lifespan, and an httpx client
over ASGI, opened by a test and closed at its end in reverse order.

Every integration suite that talks to the app in process starts it through `AppStarter` (the
`start_app` fixture in tests/integration/conftest.py) or `serve_app`; the suites only add their own
helpers (expected scores, metric parsing, fault hooks) on top of `AppHarness`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from bertserve.runtime.selection import BackendFactory
from bertserve.service.api.app import create_app
from bertserve.service.registry import ModelRegistry
from bertserve.service.settings import Settings


@dataclass
class AppHarness:
    app: FastAPI
    client: httpx.AsyncClient
    registry: ModelRegistry
    settings: Settings


class AppStarter:
    """Starts apps (lifespan entered, optionally until ready) and closes every one it started."""

    def __init__(self) -> None:
        self._stack = contextlib.AsyncExitStack()

    async def start(
        self,
        settings: Settings,
        backend_factory: BackendFactory | None = None,
        *,
        wait_ready_s: float | None = 10.0,
        raise_app_exceptions: bool = True,
        base_url: str = "http://test",
        **client_options: Any,
    ) -> AppHarness:
        """`raise_app_exceptions=False`: an unexpected error comes back as the 500 envelope, the way
        a real server sends it, instead of being re-raised into the test."""
        app = create_app(settings, backend_factory=backend_factory)
        await self._stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        client = httpx.AsyncClient(transport=transport, base_url=base_url, **client_options)
        await self._stack.enter_async_context(client)
        registry: ModelRegistry = app.state.bertserve.registry
        if wait_ready_s is not None:
            await registry.wait_ready(wait_ready_s)
        return AppHarness(app, client, registry, settings)

    async def close(self) -> None:
        await self._stack.aclose()


@contextlib.asynccontextmanager
async def serve_app(
    settings: Settings, backend_factory: BackendFactory | None = None, **options: Any
) -> AsyncIterator[AppHarness]:
    """One app for the length of a `async with` block."""
    starter = AppStarter()
    try:
        yield await starter.start(settings, backend_factory, **options)
    finally:
        await starter.close()
