"""`bertserve serve`: settings -> load and verify models -> uvicorn.

Everything that can be wrong with the configuration, the repository or the backend is found
before the port opens, and turns into a one-line message and a non-zero exit code.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import sys
from types import FrameType
from typing import Any

from pydantic import ValidationError

EXIT_CONFIG = 2  # bad settings, repository or backend: fix the deployment
EXIT_SERVER = 1  # the server itself failed (e.g. the port is taken)

log = logging.getLogger("service")


def _after_graceful_shutdown(signum: int, frame: FrameType | None) -> None:
    log.info("stopped on %s", signal.Signals(signum).name)


def run_server(overrides: dict[str, Any]) -> int:
    """Serve until stopped; returns the process exit code. `overrides` (CLI flags) beat env vars."""
    import uvicorn

    from service.app import create_app
    from service.errors import StartupError
    from service.metrics import Metrics
    from service.registry import ModelRegistry
    from service.settings import Settings

    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"error: invalid settings: {problems}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    registry = ModelRegistry(settings, Metrics())
    try:
        registry.load()
    except StartupError as exc:
        log.error("startup failed: %s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    app = create_app(settings, registry=registry)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        log_config=None,  # keep the basicConfig above for uvicorn's loggers too
        log_level=settings.log_level,
        access_log=settings.access_log,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    # NOTE: uvicorn turns SIGTERM/SIGINT into a graceful shutdown and afterwards re-raises the
    # signal to the handler that was installed before it; with Python's defaults the process
    # would then die by the signal (exit -15) after a clean drain. These handlers make a
    # completed graceful shutdown exit 0, as orchestrators expect.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _after_graceful_shutdown)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits when it cannot bind
        registry.close()
        return exc.code if isinstance(exc.code, int) and exc.code else EXIT_SERVER
    return 0 if server.started else EXIT_SERVER
