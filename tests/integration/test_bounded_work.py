"""Bounded work per request, and failure paths that tell the truth (in process, fake backends).

Each test breaks one thing and checks what a client, an orchestrator or an autoscaler sees: 413 for
work that is too large (before it is done), 504 at the deadline while a request still waits for
tokenization, one model's tokenization never delaying another's, a global cap on requests in
flight, non-finite outputs as failed batches, liveness that fails when only a restart helps, a
queue depth that counts only live work, and error messages that never echo input.
The signal and memory behaviour of a real process is in test_bounded_work_process.py.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bertserve.modelrepo import ModelConfig
from bertserve.runtime.base import Backend, Feeds, Logits
from bertserve.runtime.fake import FakeBackend
from bertserve.service.pipeline import Pipeline
from bertserve.service.registry import ModelRegistry
from bertserve.service.settings import Settings
from tests.helpers.asgi import AppStarter
from tests.helpers.fake_repo import DEFAULT_SPECS, FakeBackends, FakeModelSpec, write_fake_repo

SECRET = "zanzibar-4711"  # stands for user input: never echoed


@pytest.fixture(scope="module")
def fake_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A longer NER model too, so that windows and token counts are easy to reason about.
    specs = (
        *DEFAULT_SPECS,
        FakeModelSpec("ner128", task=DEFAULT_SPECS[3].task, labels=("O", "B-PER", "I-PER"), max_length=128),
    )
    return write_fake_repo(tmp_path_factory.mktemp("bounded-repo"), specs)


class NaNBackends(FakeBackends):
    """FakeBackends whose models return NaN logits while `nan` is set."""

    nan = False

    def __call__(self, model: ModelConfig, version_dir: Path) -> Backend:
        inner = super().__call__(model, version_dir)
        assert isinstance(inner, FakeBackend)
        factory = self

        class Poisoned:
            name = inner.name
            input_names = inner.input_names
            precision = inner.precision

            def infer(self, feeds: Feeds) -> Logits:
                out = inner.infer(feeds)
                if factory.nan:
                    out = out.copy()
                    out[0, 0] = np.nan
                return out

            def close(self) -> None:
                inner.close()

        return Poisoned()


@dataclass
class Service:
    client: httpx.AsyncClient
    backends: FakeBackends
    registry: ModelRegistry

    def pipeline(self, name: str) -> Pipeline:
        return self.registry.describe(name)

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = (await self.client.get("/metrics")).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


@pytest.fixture
def make_service(fake_repo: Path, start_app: AppStarter) -> Callable[..., Any]:
    async def make(
        backends: FakeBackends | None = None, wait_ready: bool = True, **overrides: Any
    ) -> Service:
        settings = Settings(repo=fake_repo, backend="fake", **overrides)  # type: ignore[arg-type]
        backends = backends or FakeBackends()
        started = await start_app.start(
            settings,
            backends,
            wait_ready_s=10 if wait_ready else None,
            raise_app_exceptions=False,
            timeout=30,
        )
        return Service(started.client, backends, started.registry)

    return make


def envelope(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["type"] == error_type, body
    assert SECRET not in response.text
    return str(body["error"]["message"])


def slow_tokenizer(
    pipeline: Pipeline, started: threading.Event, release: threading.Event, longer_than: int = 0
) -> None:
    """Make the model's tokenization of inputs over `longer_than` characters in all block (as a
    huge input would) until `release` is set."""
    tokenizer = pipeline.tokenizer
    original = tokenizer.encode

    def encode(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if sum(len(x) for x in inputs) > longer_than:
            started.set()
            release.wait(10)
        return original(inputs, *args, **kwargs)

    tokenizer.encode = encode  # type: ignore[method-assign]


# --- count before working -----------------------------------------------------------------------


async def test_a_text_of_many_sentences_is_refused_before_it_is_tokenized(
    make_service: Callable[..., Any],
) -> None:
    svc: Service = await make_service(max_request_sequences=100)
    backend = svc.backends.made["ner"]
    before = backend.sequences_run
    calls: list[int] = []
    tokenizer = svc.pipeline("ner").tokenizer
    original = tokenizer.encode_documents
    tokenizer.encode_documents = lambda texts: calls.append(len(texts)) or original(texts)  # type: ignore[method-assign, func-returns-value]
    start = time.monotonic()
    r = await svc.client.post(
        "/v1/models/ner/ner", json={"inputs": ["a! " * 30_000] * 3, "segmentation": "sentences"}
    )
    elapsed = time.monotonic() - start
    message = envelope(r, 413, "payload_too_large")
    assert "max_request_sequences" in message and "100" in message
    assert calls == []  # refused while segmenting: not one segment was tokenized
    assert backend.sequences_run == before
    assert elapsed < 1.0
    # The same text read whole is 60,000 tokens: windows and tokens are over the limits too.
    r = await svc.client.post("/v1/models/ner/ner", json={"inputs": "a! " * 30_000, "segmentation": "none"})
    envelope(r, 413, "payload_too_large")
    assert backend.sequences_run == before
    # Within the limits the same model answers, and a refused request cost it nothing.
    ok = await svc.client.post("/v1/models/ner/ner", json={"inputs": "a! " * 40, "segmentation": "sentences"})
    assert ok.status_code == 200
    assert backend.sequences_run == before + 40  # one sequence per sentence


async def test_the_token_limit_counts_every_window(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service(max_request_tokens=1000, ner_stride=16)
    text = " ".join(["john smith lives in new york"] * 60)  # 360 words, 1 token each here
    info = (await svc.client.get("/v1/models/ner128")).json()
    assert info["limits"] == {
        "max_inputs": 32,
        "max_input_chars": 100_000,
        "max_request_sequences": 1024,
        "max_request_tokens": 1000,
    }
    r = await svc.client.post("/v1/models/ner128/ner", json={"inputs": text})
    assert r.status_code == 200  # 362 positions: 4 windows of <= 128 tokens
    windows = svc.backends.made["ner128"].batch_shapes[-1]
    assert windows[0] >= 3
    r = await svc.client.post("/v1/models/ner128/ner", json={"inputs": [text, text, text]})
    assert "max_request_tokens" in envelope(r, 413, "payload_too_large")


async def test_a_request_that_can_never_fit_the_queue_gets_413_not_429(
    make_service: Callable[..., Any],
) -> None:
    svc: Service = await make_service(max_queue_size=4)
    assert (await svc.client.get("/v1/models/cls")).json()["limits"]["max_request_sequences"] == 4
    r = await svc.client.post("/v1/models/cls/classify", json={"inputs": ["x"] * 5})
    message = envelope(r, 413, "payload_too_large")
    assert "retry-after" not in r.headers and "max_queue_size" in message
    r = await svc.client.post(
        "/v1/models/ner/ner",
        json={"inputs": "One here. Two here. Three here. Four here. Five here.", "segmentation": "sentences"},
    )
    envelope(r, 413, "payload_too_large")
    assert (await svc.client.post("/v1/models/cls/classify", json={"inputs": ["x"] * 4})).status_code == 200


# --- deadlines hold while a request waits for tokenization ---------------------------------------


async def test_the_deadline_holds_while_waiting_for_tokenization(make_service: Callable[..., Any]) -> None:
    # every request through the tokenization threads, however short (as longer inputs go)
    svc: Service = await make_service(tokenizer_threads=1, inline_tokenize_chars=0)
    started, release = threading.Event(), threading.Event()
    slow_tokenizer(svc.pipeline("cls"), started, release)
    backend = svc.backends.made["cls"]
    before = backend.sequences_run
    try:
        blocker = asyncio.create_task(svc.client.post("/v1/models/cls/classify", json={"inputs": "first"}))
        assert await asyncio.to_thread(started.wait, 5)
        t0 = time.monotonic()
        r = await svc.client.post(
            "/v1/models/cls/classify", json={"inputs": "second"}, headers={"X-Request-Timeout-Ms": "300"}
        )
        waited = time.monotonic() - t0
        envelope(r, 504, "deadline_exceeded")
        assert 0.2 <= waited <= 0.4, waited  # at its deadline (±100 ms), not when the pool came free
    finally:
        release.set()
    assert (await blocker).status_code == 200
    await asyncio.sleep(0.1)
    assert backend.sequences_run == before + 1  # the late request never reached the backend
    metrics = await svc.metrics()
    assert metrics[("bertserve_rejected_total", (("model", "cls"), ("reason", "deadline")))] == 1


async def test_one_model_busy_tokenizing_does_not_delay_another(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service(tokenizer_threads=1, inline_tokenize_chars=0)
    started, release = threading.Event(), threading.Event()
    slow_tokenizer(svc.pipeline("cls"), started, release)
    try:
        blocked = asyncio.create_task(svc.client.post("/v1/models/cls/classify", json={"inputs": "x"}))
        assert await asyncio.to_thread(started.wait, 5)
        t0 = time.monotonic()
        r = await svc.client.post("/v1/models/multi/classify", json={"inputs": "rainy seattle"})
        assert r.status_code == 200
        assert time.monotonic() - t0 < 0.5  # its own tokenization threads were free
        assert not blocked.done()
    finally:
        release.set()
    assert (await blocked).status_code == 200


async def test_a_short_request_is_not_queued_behind_a_long_ones_tokenization(
    make_service: Callable[..., Any],
) -> None:
    """Short requests are tokenized on the event loop (inline_tokenize_chars): one model's pool
    busy with a long input delays neither its short requests nor, of course, the loop."""
    svc: Service = await make_service(tokenizer_threads=1, inline_tokenize_chars=64)
    started, release = threading.Event(), threading.Event()
    slow_tokenizer(svc.pipeline("cls"), started, release, longer_than=64)
    backend = svc.backends.made["cls"]
    try:
        long = asyncio.create_task(svc.client.post("/v1/models/cls/classify", json={"inputs": "word " * 20}))
        assert await asyncio.to_thread(started.wait, 5)
        t0 = time.monotonic()
        short = await svc.client.post("/v1/models/cls/classify", json={"inputs": ["short", "ones"]})
        assert short.status_code == 200, short.text
        assert time.monotonic() - t0 < 0.5
        assert len(short.json()["results"]) == 2
        assert not long.done()  # still in the pool, where it holds the one thread
        ran = backend.sequences_run
    finally:
        release.set()
    assert (await long).status_code == 200
    assert backend.sequences_run == ran + 1


async def test_the_global_inflight_cap_answers_429_at_once(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service(max_inflight_requests=2)
    release = threading.Event()
    hooks = svc.backends.faults_for("cls")
    hooks.hang = release
    try:
        held = [
            asyncio.create_task(svc.client.post("/v1/models/cls/classify", json={"inputs": f"t{k}"}))
            for k in range(2)
        ]
        while svc.registry.inflight < 2:
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        r = await svc.client.post("/v1/models/multi/classify", json={"inputs": "other model, same process"})
        message = envelope(r, 429, "queue_full")
        assert time.monotonic() - t0 < 0.2 and r.headers["retry-after"] == "1"
        assert "max_inflight_requests" in message
        assert (await svc.client.get("/health/live")).status_code == 200  # GETs are not capped
    finally:
        hooks.hang = None
        release.set()
    assert [(await t).status_code for t in held] == [200, 200]
    assert (await svc.client.post("/v1/models/multi/classify", json={"inputs": "x"})).status_code == 200
    metrics = await svc.metrics()
    assert metrics[("bertserve_rejected_total", (("model", "multi"), ("reason", "overloaded")))] == 1
    assert (
        metrics[("bertserve_requests_total", (("code", "429"), ("endpoint", "classify"), ("model", "multi")))]
        == 1
    )


# --- non-finite outputs --------------------------------------------------------------------------


async def test_nan_logits_fail_the_batch_and_count(make_service: Callable[..., Any]) -> None:
    backends = NaNBackends()
    svc: Service = await make_service(backends=backends, unhealthy_after_failures=2)
    backends.nan = True
    for path, body in (
        ("/v1/models/cls/classify", {"inputs": "the movie was great"}),
        ("/v1/models/ner/ner", {"inputs": "john smith lives in new york"}),
    ):
        r = await svc.client.post(path, json=body)
        envelope(r, 500, "inference_error")
        assert "nan" not in r.text.lower()
    r = await svc.client.post("/v1/models/cls/classify", json={"inputs": "again"})
    envelope(r, 500, "inference_error")
    metrics = await svc.metrics()
    key = (
        "bertserve_batch_failures_total",
        (("backend", "fake"), ("model", "cls"), ("reason", "non_finite")),
    )
    assert metrics[key] == 2
    assert "model cls: 2 consecutive batches failed" in (await svc.client.get("/health/ready")).text
    backends.nan = False
    assert (await svc.client.post("/v1/models/cls/classify", json={"inputs": "x"})).status_code == 200


def test_no_response_body_can_carry_nan() -> None:
    from bertserve.service.api.routes import json_response

    with pytest.raises(ValueError):
        json_response({"score": math.nan})


# --- liveness ------------------------------------------------------------------------------------


async def test_a_dead_batch_worker_fails_liveness(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service()
    assert (await svc.client.get("/health/live")).status_code == 200
    batcher = svc.pipeline("cls").batcher

    def broken_cut() -> Any:
        raise MemoryError("simulated: the worker thread dies")

    batcher._cut = broken_cut  # type: ignore[method-assign]
    envelope(await svc.client.post("/v1/models/cls/classify", json={"inputs": "x"}), 500, "inference_error")
    message = envelope(await svc.client.get("/health/live"), 503, "unhealthy")
    assert "model cls: batch worker crashed (MemoryError)" in message
    # Other models still serve until the orchestrator restarts the process.
    assert (await svc.client.post("/v1/models/multi/classify", json={"inputs": "x"})).status_code == 200


async def test_a_warm_up_that_never_succeeds_fails_liveness_after_its_retries(
    make_service: Callable[..., Any],
) -> None:
    backends = FakeBackends()
    backends.faults_for("distil").fail_always = True
    svc: Service = await make_service(backends=backends, wait_ready=False, warmup_attempts=2)
    assert (await svc.client.get("/health/live")).status_code == 200  # still retrying
    deadline = time.monotonic() + 5
    while (await svc.client.get("/health/live")).status_code == 200:
        assert time.monotonic() < deadline, "liveness never failed"
        await asyncio.sleep(0.05)
    message = envelope(await svc.client.get("/health/live"), 503, "unhealthy")
    assert "model distil: warm-up failed 2 times" in message
    assert "distil" in envelope(await svc.client.get("/health/ready"), 503, "not_ready")


async def test_a_warm_up_that_fails_once_is_retried_and_becomes_ready(
    make_service: Callable[..., Any],
) -> None:
    backends = FakeBackends()
    backends.faults_for("distil").fail_batches = 1
    svc: Service = await make_service(backends=backends, wait_ready=False, warmup_attempts=3)
    await svc.registry.wait_ready(5)
    assert (await svc.client.get("/health/ready")).status_code == 200
    assert (await svc.client.get("/health/live")).status_code == 200


# --- the queue depth that autoscalers read -------------------------------------------------------


async def test_queue_depth_drops_expired_sequences_while_the_backend_is_busy(
    make_service: Callable[..., Any],
) -> None:
    svc: Service = await make_service(max_batch_size=1, request_timeout_ms=5000)
    release = threading.Event()
    hooks = svc.backends.faults_for("cls")
    hooks.hang = release
    backend = svc.backends.made["cls"]
    backend.started.clear()

    def depth(metrics: dict[Any, float]) -> float:
        return metrics[("bertserve_queue_depth", (("model", "cls"),))]

    try:
        running = asyncio.create_task(svc.client.post("/v1/models/cls/classify", json={"inputs": "running"}))
        assert await asyncio.to_thread(backend.started.wait, 5)
        waiting = [
            asyncio.create_task(
                svc.client.post(
                    "/v1/models/cls/classify",
                    json={"inputs": f"w{k}"},
                    headers={"X-Request-Timeout-Ms": "200"},
                )
            )
            for k in range(3)
        ]
        await asyncio.sleep(0.1)
        assert depth(await svc.metrics()) == 3
        for task in waiting:
            envelope(await task, 504, "deadline_exceeded")
        # The backend is still stuck on the first batch, yet the gauge already counts no work.
        assert depth(await svc.metrics()) == 0
        assert svc.pipeline("cls").batcher.queue_depth == 0
    finally:
        hooks.hang = None
        release.set()
    assert (await running).status_code == 200


# --- messages and docs ---------------------------------------------------------------------------


async def test_an_unknown_model_name_is_not_echoed(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service()
    for r in (
        await svc.client.post(f"/v1/models/{SECRET}/classify", json={"inputs": "x"}),
        await svc.client.get(f"/v1/models/{SECRET}"),
    ):
        envelope(r, 404, "model_not_found")


@pytest.mark.parametrize("docs_public", [True, False])
async def test_docs_follow_docs_public_when_a_key_is_set(
    make_service: Callable[..., Any], docs_public: bool
) -> None:
    svc: Service = await make_service(api_key="k" * 24, docs_public=docs_public)
    for path in ("/openapi.json", "/docs", "/redoc"):
        r = await svc.client.get(path)
        assert r.status_code == (200 if docs_public else 401), (path, r.status_code)
    assert (await svc.client.get("/health/ready")).status_code == 200
    authorized = await svc.client.get("/openapi.json", headers={"Authorization": "Bearer " + "k" * 24})
    assert authorized.status_code == 200


async def test_every_response_during_a_drain_closes_its_connection(make_service: Callable[..., Any]) -> None:
    """No keep-alive connection is left idle for the final close to cut under a request in transit."""
    svc: Service = await make_service()
    ok = await svc.client.post("/v1/models/cls/classify", json={"inputs": "x"})
    assert ok.status_code == 200 and ok.headers.get("connection") != "close"
    before = svc.registry.drain.last_request
    svc.registry.begin_drain()
    refused = await svc.client.post("/v1/models/cls/classify", json={"inputs": "x"})
    envelope(refused, 503, "not_ready")
    assert refused.headers["connection"] == "close"
    probe = await svc.client.get("/health/ready")
    assert probe.status_code == 503 and probe.headers["connection"] == "close"
    assert svc.registry.drain.last_request > before  # the shutdown sequence waits for quiet
