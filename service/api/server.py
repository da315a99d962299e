"""`bertserve serve`: settings -> load and verify models -> uvicorn.

Everything that can be wrong with the configuration, the repository or the backend is found
before the port opens, and turns into a one-line message and a non-zero exit code.

Shutdown (SIGTERM, or Ctrl-C) drains before uvicorn's own graceful shutdown: readiness turns 503
and new inference requests are refused with a 503 envelope at once, while the port stays open
and the requests already admitted finish. Every response during the drain carries `Connection:
close`, and the drain ends once nothing is in flight and no request has arrived for
`DRAIN_QUIET_S` (clients and load balancers have moved on), so the final close never cuts a
request already on the wire; then uvicorn closes the connections and the lifespan stops the
batchers. All of it within `drain_timeout_s`. A watchdog thread bounds the whole exit: a second
signal exits at once (code 128 + signal), and a process still alive `HARD_EXIT_MARGIN_S` after
the drain deadline (a stuck backend call, a thread that never returns) exits with code 1.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from bertserve.service.logs import configure_logging
from bertserve.service.settings import DEFAULT_ENV_FILE

if TYPE_CHECKING:
    import uvicorn

    from bertserve.runtime.selection import BackendFactory
    from bertserve.service.registry import ModelRegistry

EXIT_CONFIG = 2  # bad settings, repository or backend: fix the deployment
EXIT_SERVER = 1  # the server itself failed (e.g. the port is taken), or its exit overran the drain
DRAIN_QUIET_S = 0.3  # no request arrived for this long: the drain may end
HARD_EXIT_MARGIN_S = 5.0  # after the drain deadline, for uvicorn's close and the interpreter's exit
# NOTE: a batch worker returning from the backend (which runs without the GIL) must get the GIL back
# to hand its results over and cut the next batch; with Python's default 5 ms switch interval it
# waits up to 5 ms behind the event loop, the backend idle meanwhile (measured on 2 cores at 64
# clients: ~8 % more throughput at 1 ms, and 2 instances x 1 thread went from 130 to 200 req/s).
GIL_SWITCH_INTERVAL_S = 0.001

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


class ExitWatchdog:
    """A daemon thread that makes the exit bounded whatever else hangs. It sleeps until the first
    stop signal, then until the hard deadline (drain deadline + margin) or a second signal, and
    ends the process with `os._exit` if it is still alive by then. `signalled` and `forced` are
    only ever set (from the signal handler), never waited on by the main thread."""

    def __init__(self) -> None:
        self.signalled = threading.Event()
        self.forced = threading.Event()
        self.hard_deadline = 0.0
        self.forced_code = EXIT_SERVER
        self._thread = threading.Thread(target=self._watch, name="exit-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def arm(self, hard_deadline: float) -> None:
        """First signal. NOTE: called from a signal handler: attributes and an Event only."""
        self.hard_deadline = hard_deadline
        self.signalled.set()

    def force(self, sig: int) -> None:
        """Second signal: exit now."""
        self.forced_code = 128 + sig
        self.forced.set()

    def _watch(self) -> None:
        self.signalled.wait()
        forced = self.forced.wait(max(0.0, self.hard_deadline - time.monotonic()))
        if forced:
            log.warning("second stop signal: exiting now, without waiting for the drain")
            code = self.forced_code
        else:
            log.error("shutdown overran the drain deadline by %.0f s: exiting now", HARD_EXIT_MARGIN_S)
            code = EXIT_SERVER
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _draining_server(
    config: uvicorn.Config, registry: ModelRegistry, drain_timeout_s: float, watchdog: ExitWatchdog
) -> uvicorn.Server:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn.Server whose first stop signal drains the registry before uvicorn shuts down."""

        drain_deadline: float | None = None
        drain_announced = False
        drained_cleanly = True

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # NOTE: runs in a signal handler: set attributes only (no logging, no I/O, which
            # could re-enter a buffered write this signal interrupted).
            if self.drain_deadline is not None or self.should_exit:
                # Second signal: the operator wants out now.
                self.force_exit = True
                self.should_exit = True
                watchdog.force(sig)
                return
            self.drain_deadline = time.monotonic() + drain_timeout_s
            watchdog.arm(self.drain_deadline + HARD_EXIT_MARGIN_S)
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
            if remaining > 0 and (registry.inflight or registry.drain.quiet_for() < DRAIN_QUIET_S):
                return
            if registry.inflight:
                self.drained_cleanly = False
                log.warning("drain timeout: %d request(s) still in flight are abandoned", registry.inflight)
            # What is left of the budget bounds uvicorn's wait for open connections.
            self.config.timeout_graceful_shutdown = max(1, int(remaining))
            self.should_exit = True

    return DrainingServer(config)


def run_server(
    overrides: dict[str, Any],
    *,
    backend_factory: BackendFactory | None = None,
    env_file: Path | None = DEFAULT_ENV_FILE,
) -> int:
    """Serve until stopped; returns the process exit code. `overrides` (CLI flags) beat env vars,
    which beat the BERTSERVE_* lines of `env_file`; `backend_factory` replaces the real backends
    (load tests with a fake backend of known speed)."""
    import uvicorn

    from bertserve.service.api.app import create_app
    from bertserve.service.errors import StartupError
    from bertserve.service.metrics import Metrics
    from bertserve.service.registry import ModelRegistry
    from bertserve.service.settings import Settings

    try:
        settings = Settings.for_serve(overrides, env_file)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"error: invalid settings: {problems}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format)
    if settings.otel_endpoint:
        from bertserve.service import tracing

        try:
            tracing.configure(settings.otel_endpoint, settings.otel_service_name)
        except tracing.TracingUnavailableError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        log.info("tracing to %s", settings.otel_endpoint)
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
    # uvloop and httptools (uvicorn[standard]) cost a fraction of asyncio's loop and h11 per request
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    if (loop, http) != ("uvloop", "httptools"):
        log.warning(
            "serving with the %s event loop and the %s HTTP parser (uvloop/httptools missing)", loop, http
        )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop=loop,
        http=http,
        log_config=None,  # keep configure_logging's handler for uvicorn's loggers too
        log_level=settings.log_level,
        access_log=False,  # bertserve's own (RequestIdMiddleware), with the request id and model
        lifespan="on",
        server_header=False,  # no software/version banner for scanners
    )
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    watchdog = ExitWatchdog()
    watchdog.start()
    server = _draining_server(config, registry, settings.drain_timeout_s, watchdog)
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
    finally:
        _flush_traces()
    return 0 if server.started else EXIT_SERVER


def _flush_traces() -> None:
    """Send the spans still buffered (tracing on only)."""
    from bertserve.service import tracing

    provider = tracing.provider()
    if provider is not None:
        provider.shutdown()
