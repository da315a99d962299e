"""`bertserve serve`: settings -> load and verify models -> uvicorn.

Everything that can be wrong with the configuration, the repository or the backend is found
before the port opens, and turns into a one-line message and a non-zero exit code.

Shutdown (SIGTERM, or Ctrl-C) drains before uvicorn's own graceful shutdown: readiness turns 503
and new inference requests are refused with a 503 envelope at once, while the port stays open
and the requests already admitted finish; then uvicorn closes the connections and the lifespan
stops the batchers. All of it within `drain_timeout_s`; a second signal forces the exit.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import signal
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    import uvicorn

    from service.backends.selection import BackendFactory
    from service.registry import ModelRegistry

EXIT_CONFIG = 2  # bad settings, repository or backend: fix the deployment
EXIT_SERVER = 1  # the server itself failed (e.g. the port is taken)

log = logging.getLogger("service")


def _after_graceful_shutdown(signum: int, frame: FrameType | None) -> None:
    log.info("stopped on %s", signal.Signals(signum).name)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: cannot tell, so assume it is reachable from outside
        return False


def _draining_server(
    config: uvicorn.Config, registry: ModelRegistry, drain_timeout_s: float
) -> uvicorn.Server:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn.Server whose first stop signal drains the registry before uvicorn shuts down."""

        drain_deadline: float | None = None
        drain_announced = False
        drained_cleanly = True

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.drain_deadline is not None or self.should_exit:
                super().handle_exit(sig, frame)  # second signal: uvicorn's (forced) shutdown
                return
            # NOTE: runs in a signal handler: set attributes only (no logging, no I/O, which
            # could re-enter a buffered write this signal interrupted).
            self.drain_deadline = time.monotonic() + drain_timeout_s
            registry.begin_drain(self.drain_deadline)

        async def on_tick(self, counter: int) -> bool:
            deadline = self.drain_deadline
            if deadline is not None and not self.should_exit:
                self._advance_drain(deadline)
            return await super().on_tick(counter)

        def _advance_drain(self, deadline: float) -> None:
            remaining = deadline - time.monotonic()
            if not self.drain_announced:
                self.drain_announced = True
                log.info("draining: %d request(s) in flight, %.0f s to finish", registry.inflight, remaining)
            if registry.inflight and remaining > 0:
                return
            if registry.inflight:
                self.drained_cleanly = False
                log.warning("drain timeout: %d request(s) still in flight are abandoned", registry.inflight)
            # What is left of the budget bounds uvicorn's wait for open connections.
            self.config.timeout_graceful_shutdown = max(1, int(remaining))
            self.should_exit = True

    return DrainingServer(config)


def run_server(overrides: dict[str, Any], *, backend_factory: BackendFactory | None = None) -> int:
    """Serve until stopped; returns the process exit code. `overrides` (CLI flags) beat env vars;
    `backend_factory` replaces the real backends (load tests with a fake backend of known speed)."""
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
    if settings.api_key is None and not is_loopback(settings.host):
        log.warning(
            "binding %s without BERTSERVE_API_KEY: anyone who reaches this port can run inference",
            settings.host,
        )
    registry = ModelRegistry(settings, Metrics(), backend_factory)
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
        server_header=False,  # no software/version banner for scanners
    )
    server = _draining_server(config, registry, settings.drain_timeout_s)
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
