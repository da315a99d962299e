"""`bertserve serve` as a real process: fails fast before listening, serves, exits 0 on SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bertserve.runtime.selection import count_cuda_devices
from tests.helpers.fake_repo import write_fake_repo

BERTSERVE = [sys.executable, "-m", "bertserve.cli"]


@pytest.fixture(scope="module")
def fake_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_repo(tmp_path_factory.mktemp("cli-repo"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BERTSERVE_")}
    return {**clean, "PYTHONUNBUFFERED": "1"}


def run_serve(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    result = subprocess.run(
        [*BERTSERVE, "serve", *args], capture_output=True, text=True, timeout=timeout, env=env()
    )
    return result, time.monotonic() - start


@pytest.mark.skipif(count_cuda_devices() > 0, reason="this machine has a GPU: tensorrt may be available")
def test_tensorrt_without_gpu_exits_fast_with_a_clear_message(fake_repo: Path) -> None:
    port = free_port()
    result, elapsed = run_serve("--repo", str(fake_repo), "--backend", "tensorrt", "--port", str(port))
    assert result.returncode != 0
    assert "backend tensorrt is unavailable: no NVIDIA GPU" in result.stderr
    assert "--backend" in result.stderr  # says what to do instead
    assert elapsed < 30  # seconds, including interpreter start on a loaded CI box
    assert "Uvicorn running" not in result.stderr


def test_tampered_tokenizer_stops_startup(fake_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(fake_repo, repo)
    with (repo / "cls" / "1" / "tokenizer.json").open("a") as fh:
        fh.write(" ")
    result, _ = run_serve("--repo", str(repo), "--backend", "fake", "--model", "cls")
    assert result.returncode == 2
    assert "does not match the sha256" in result.stderr


def test_unknown_model_and_bad_flag_value_stop_startup(fake_repo: Path) -> None:
    result, _ = run_serve("--repo", str(fake_repo), "--backend", "fake", "--model", "nope")
    assert result.returncode == 2 and "nope not found" in result.stderr
    result, _ = run_serve("--repo", str(fake_repo), "--backend", "warp-drive")
    assert result.returncode == 2 and "backend" in result.stderr


def test_serves_then_exits_zero_on_sigterm(fake_repo: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*BERTSERVE, "serve", "--repo", str(fake_repo), "--backend", "fake", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env(), "BERTSERVE_MAX_BATCH_SIZE": "4"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "service did not become ready"
            time.sleep(0.1)
        request = urllib.request.Request(
            f"{base}/v1/models/cls/classify",
            data=json.dumps({"inputs": ["the movie was great", "boring"]}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            body = json.load(r)
        assert body["model"] == "cls" and len(body["results"]) == 2
        with urllib.request.urlopen(f"{base}/v1/models/cls", timeout=5) as r:
            assert json.load(r)["batching"]["max_batch_size"] == 4  # env var reached the service
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0
