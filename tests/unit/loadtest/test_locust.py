"""The locustfile in a real Locust process: a 3-second headless run against the fake backend.

Locust runs in a subprocess because importing it monkey-patches the interpreter (gevent).
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.fake_repo import write_fake_repo

ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repo = write_fake_repo(tmp_path_factory.mktemp("locust-repo"))
    port = _free_port()
    cmd = [sys.executable, "-m", "bertserve.cli", "serve", "--repo", str(repo), "--backend", "fake",
           "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "the fake service exited"
            assert time.monotonic() < deadline, "the fake service did not become ready"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_locust(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "loadtest.run_locust", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


def test_a_short_paced_run_sends_both_tasks_without_failures(fake_server: str, tmp_path: Path) -> None:
    result = run_locust(
        "--host", fake_server, "--users", "4", "--spawn-rate", "4", "--rate", "40", "--duration", "3s",
        "--classify-model", "cls", "--ner-model", "ner", "--task-mix", "classify=1,ner=1", "--inputs", "1-3",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    with (tmp_path / "locust_stats.csv").open() as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    assert int(rows["classify"]["Request Count"]) > 0 and int(rows["ner"]["Request Count"]) > 0
    assert rows["Aggregated"]["Failure Count"] == "0"
    # paced: 40 req/s over about 3 s, not the hundreds per second the fake backend could answer
    assert int(rows["Aggregated"]["Request Count"]) < 40 * 3 * 2
    assert (tmp_path / "locust.html").stat().st_size > 0


def test_an_unknown_model_shows_up_as_failures(fake_server: str, tmp_path: Path) -> None:
    result = run_locust(
        "--host", fake_server, "--users", "2", "--duration", "1s", "--classify-model", "nope",
        "--task-mix", "classify=1", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode != 0


def test_remote_hosts_are_refused_before_locust_starts(tmp_path: Path) -> None:
    result = run_locust("--host", "http://203.0.113.5:8000", "--duration", "1s", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "loopback" in result.stderr
    assert not (tmp_path / "locust_stats.csv").exists()


def test_the_locustfile_itself_refuses_remote_hosts() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless", "--host",
           "http://203.0.113.5:8000", "-u", "1", "-t", "1s"]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "loopback" in result.stderr
