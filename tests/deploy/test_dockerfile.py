"""The Dockerfile's structure (targets, user, entrypoint, health check) and the health-check script."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from tests.deploy.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
HEALTHCHECK = ROOT / "deploy" / "docker" / "healthcheck.py"


def stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    result: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = result.setdefault(match.group(1), [])
        if current is not None:
            current.append(line)
    return result


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_runtime_targets_are_non_root_with_healthcheck_and_entrypoint(target: str) -> None:
    body = stages()[target]
    (user,) = [line for line in body if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] == "10001"
    (entrypoint,) = [line for line in body if line.startswith("ENTRYPOINT ")]
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT ")) == ["bertserve", "serve"]
    (healthcheck,) = [line for line in body if line.startswith("HEALTHCHECK ")]
    assert "/usr/local/lib/bertserve/healthcheck.py" in healthcheck
    env = " ".join(line for line in body if line.startswith("ENV "))
    assert "BERTSERVE_HOST=0.0.0.0" in env and "BERTSERVE_REPO=/models" in env
    assert any(line.startswith("COPY --from=models /models /models") for line in body)


def test_runtime_images_never_get_the_export_extra() -> None:
    all_stages = stages()
    for name in ("cpu-venv", "gpu-venv", "cpu", "gpu"):
        body = " ".join(all_stages[name])
        assert "[export]" not in body and "torch" not in body, name
    # The demo-builder installs the export extra's requirements (read from pyproject.toml).
    assert '["optional-dependencies"]["export"]' in " ".join(all_stages["demo-builder"])


def test_demo_builder_is_swappable() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^ARG DEMO_BUILD_CMD=", text, re.MULTILINE)
    assert re.search(r"^ARG MODELS_FROM=demo-builder$", text, re.MULTILINE)
    assert "FROM ${MODELS_FROM} AS models" in text
    assert "models-empty" in stages()


def test_gpu_target_swaps_onnxruntime_for_onnxruntime_gpu() -> None:
    body = " ".join(stages()["gpu-venv"])
    assert body.index("pip uninstall -y onnxruntime") < body.index("onnxruntime-gpu==")


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = 200 if self.path == "/health/ready" and type(self).status == 200 else type(self).status
        self.send_response(code)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def ready_server() -> Iterator[tuple[int, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def run_healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BERTSERVE_PORT": str(port), "BERTSERVE_HEALTHCHECK_TIMEOUT_S": "2"}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, text=True, timeout=10, check=False
    )


def test_healthcheck_passes_on_ready_and_fails_on_503(ready_server: tuple[int, type[_Handler]]) -> None:
    port, handler = ready_server
    assert run_healthcheck(port).returncode == 0
    handler.status = 503
    failed = run_healthcheck(port)
    assert failed.returncode == 1
    assert "503" in failed.stderr


def test_healthcheck_fails_when_nothing_listens() -> None:
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_healthcheck(port)
    assert result.returncode == 1
    assert "unhealthy" in result.stderr


def test_dockerfile_needs_no_registry_for_its_frontend() -> None:
    # A `# syntax=` line makes BuildKit pull a frontend image first; the built-in one understands this file.
    first = DOCKERFILE.read_text(encoding="utf-8").splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first, re.IGNORECASE)


def test_demo_builder_takes_torch_from_the_optional_wheel_context() -> None:
    all_stages = stages()
    # Empty unless a build context of that name replaces it.
    assert all_stages["torch-wheels"] == ["FROM scratch AS torch-wheels"]
    body = " ".join(all_stages["demo-builder"])
    assert "--mount=type=bind,from=torch-wheels,target=/torch-wheels" in body
    assert '--find-links /torch-wheels --index-url "${TORCH_INDEX_URL}"' in body
    # build.py hashes bertserve/training/finetune.py into the recipe: the sources must be in the stage
    # as in a checkout.
    assert "COPY --from=wheel /src /src" in body
