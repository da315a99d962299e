"""Bounded work against a real `bertserve serve`: a hostile NER request costs neither time nor memory
and does not slow a classify request beside it; a second SIGTERM ends a drain at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.fake_repo import FakeModelSpec, write_fake_repo
from tests.helpers.service_process import ServiceProcess, start_service

pytestmark = pytest.mark.slow


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_a_hostile_ner_request_is_refused_at_once_without_memory_growth(exported_repo: Path) -> None:
    """The request of the issue: 20 inputs of `"a! " * 33333` with sentence segmentation, 2.0 MB,
    under the 2 MiB body limit. It becomes 666,660 sentences: 413 within 1 s, RSS + < 50 MB, and a
    classify request sent at the same time is answered normally."""
    hostile = json.dumps({"inputs": ["a! " * 33333] * 20, "segmentation": "sentences"}).encode()
    assert 1_900_000 < len(hostile) < 2 * 1024 * 1024
    with start_service(
        exported_repo,
        args=("--backend", "onnxruntime-cpu", "--model", "bert-ner", "--model", "bert-cls"),
    ) as svc:
        svc.wait_ready()
        async with httpx.AsyncClient(base_url=svc.base, timeout=30) as http:
            for _ in range(3):  # allocator and first-request warm-up
                assert (
                    await http.post("/v1/models/bert-cls/classify", json={"inputs": "warm"})
                ).status_code == 200
                assert (
                    await http.post("/v1/models/bert-ner/ner", json={"inputs": "Warm in Paris."})
                ).status_code == 200
            before = rss_mb(svc.proc.pid)
            headers = {"Content-Type": "application/json"}
            t0 = time.monotonic()
            refused, answered = await asyncio.gather(
                http.post("/v1/models/bert-ner/ner", content=hostile, headers=headers),
                http.post("/v1/models/bert-cls/classify", json={"inputs": "the movie was great"}),
            )
            elapsed = time.monotonic() - t0
            after = rss_mb(svc.proc.pid)
            print(f"hostile: {refused.status_code} in {elapsed:.3f} s, RSS {before:.0f} -> {after:.0f} MB")
            assert refused.status_code == 413, refused.text
            assert refused.json()["error"]["type"] == "payload_too_large"
            assert "max_request_sequences" in refused.json()["error"]["message"]
            assert elapsed < 1.0
            assert after - before < 50
            assert answered.status_code == 200 and len(answered.json()["results"][0]) == 2
            # Twice more, at once: still refused fast, and the process does not grow with each one.
            results = await asyncio.gather(
                *(http.post("/v1/models/bert-ner/ner", content=hostile, headers=headers) for _ in range(2))
            )
            assert [r.status_code for r in results] == [413, 413]
            assert rss_mb(svc.proc.pid) - before < 50
        assert svc.stop() == 0


@pytest.fixture(scope="module")
def fake_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_repo(tmp_path_factory.mktemp("signal-repo"), (FakeModelSpec("cls"),))


def test_a_second_sigterm_exits_at_once_during_a_drain(fake_repo: Path) -> None:
    """A batch that takes 6 s keeps the drain waiting (drain timeout 30 s); the second SIGTERM must
    end the process within a second, with 128 + 15, instead of waiting for the batch."""
    with start_service(fake_repo, fake_delay_ms=6_000, env={"BERTSERVE_DRAIN_TIMEOUT_S": "30"}) as svc:
        svc.wait_ready(timeout_s=60)  # the warm-up itself is one 6 s batch
        stuck = threading.Thread(
            target=lambda: _post_ignoring_errors(svc, {"inputs": "a long batch"}), daemon=True
        )
        stuck.start()
        _wait_inflight(svc)
        svc.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert svc.proc.poll() is None  # draining: the in-flight request may still finish
        t0 = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        code = svc.proc.wait(timeout=10)
        elapsed = time.monotonic() - t0
        print(f"second SIGTERM: exit {code} after {elapsed:.2f} s")
        assert elapsed < 1.5, svc.output()
        assert code == 128 + signal.SIGTERM
        assert "second stop signal" in svc.output()


def _post_ignoring_errors(svc: ServiceProcess, body: object) -> None:
    with contextlib.suppress(httpx.TransportError):  # the process may exit without finishing it
        httpx.post(f"{svc.base}/v1/models/cls/classify", json=body, timeout=60)


def _wait_inflight(svc: ServiceProcess, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = httpx.get(f"{svc.base}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith("bertserve_inflight_requests ") and float(line.split()[1]) >= 1:
                return
        time.sleep(0.05)
    raise AssertionError("the request never became in flight")
