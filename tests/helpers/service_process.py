"""`bertserve serve` as a real process for tests that need a socket, signals and a real uvicorn.

`python -m tests.helpers.service_process --fake-delay-ms 20` runs the production entry point
(`bertserve.service.api.server.run_server`: settings from BERTSERVE_* variables, load, verify, uvicorn,
drain on SIGTERM) with fake backends that sleep a fixed time per batch, so that capacity is known and
deterministic. Without the flag, tests run the real `bertserve serve` command.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

BERTSERVE = (sys.executable, "-m", "bertserve.cli", "serve")
FAKE_SERVER = (sys.executable, "-m", "tests.helpers.service_process")
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def clean_env(extra: Mapping[str, str] = {}) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTSERVE_")}
    return {**env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **extra}


@dataclass
class ServiceProcess:
    """A started service; `stop()` sends SIGTERM and returns the exit code."""

    proc: subprocess.Popen[str]
    port: int
    log: IO[str]  # stdout + stderr; a file, not a pipe, so a chatty server never blocks on it

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"service not ready within {timeout_s} s:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self.log.close()


def start_service(
    repo: Path, *, fake_delay_ms: float | None = None, env: Mapping[str, str] = {}, args: Sequence[str] = ()
) -> ServiceProcess:
    """Start on a free loopback port; `fake_delay_ms` selects the fake-backend launcher."""
    port = free_port()
    command = (
        [*FAKE_SERVER, "--fake-delay-ms", str(fake_delay_ms)] if fake_delay_ms is not None else [*BERTSERVE]
    )
    variables = {"BERTSERVE_REPO": str(repo), "BERTSERVE_PORT": str(port), **env}
    log = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115 - ServiceProcess.__exit__ closes it
    proc = subprocess.Popen(
        [*command, *args], stdout=log, stderr=subprocess.STDOUT, text=True, env=clean_env(variables), cwd=ROOT
    )
    return ServiceProcess(proc, port, log)


def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fake-delay-ms", type=float, default=0.0, help="Sleep per executed batch.")
    options = parser.parse_args()

    from bertserve.modelrepo import ModelConfig, Task
    from bertserve.runtime.base import Backend
    from bertserve.runtime.fake import FakeBackend, FaultHooks
    from bertserve.service.api.server import run_server

    faults = FaultHooks(delay_s=options.fake_delay_ms / 1000)

    def factory(model: ModelConfig, version_dir: Path) -> Backend:
        return FakeBackend(
            model.output_width,
            token_level=model.task == Task.TOKEN_CLASSIFICATION,
            input_names=tuple(model.inputs),
            faults=faults,
        )

    return run_server({}, backend_factory=factory)


if __name__ == "__main__":
    sys.exit(_main())
