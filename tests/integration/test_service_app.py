"""The HTTP app end to end (httpx against the ASGI app) on the fake backend."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from bertserve.runtime.fake import FaultHooks, fake_logits
from bertserve.service.heads.classification import sigmoid, softmax
from bertserve.service.registry import ModelRegistry
from bertserve.service.settings import Settings
from bertserve.service.tokenization import TextTokenizer
from tests.helpers.asgi import AppStarter
from tests.helpers.fake_repo import FakeBackends, write_fake_repo


@pytest.fixture(scope="module")
def fake_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_repo(tmp_path_factory.mktemp("fake-repo"))


@dataclass
class Service:
    app: FastAPI
    client: httpx.AsyncClient
    backends: FakeBackends
    registry: ModelRegistry
    tokenizer: TextTokenizer

    def expected(self, model: str, text: str | tuple[str, str]) -> dict[str, float]:
        """Label -> score the service must return for `text`, recomputed from the fake model."""
        (enc,) = self.tokenizer.encode([text], truncate=True)
        pipeline = self.registry.describe(model)
        x = enc.model_input("token_type_ids" in pipeline.backend.input_names)
        types = None if x.type_ids is None else x.type_ids[None]
        logits = fake_logits(
            x.ids[None], np.ones((1, x.length), np.int64), types, len(pipeline.config.labels), False
        )
        multi = pipeline.config.problem_type == "multi_label_classification"
        probs = (sigmoid if multi else softmax)(logits)[0]
        return dict(zip(pipeline.config.labels, probs.tolist(), strict=True))


@pytest.fixture
def make_service(fake_repo: Path, start_app: AppStarter) -> Callable[..., Any]:
    async def make(wait_ready: bool = True, faults: FaultHooks | None = None, **overrides: Any) -> Service:
        settings = Settings(repo=fake_repo, backend="fake", **overrides)  # type: ignore[arg-type]
        backends = FakeBackends(faults or FaultHooks())
        started = await start_app.start(settings, backends, wait_ready_s=5 if wait_ready else None)
        tokenizer = TextTokenizer(fake_repo / "cls" / "1" / "tokenizer.json", 32)
        return Service(started.app, started.client, backends, started.registry, tokenizer)

    return make


def assert_envelope(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "request_id"}
    assert body["error"]["request_id"] == response.headers["x-request-id"]  # the same id, logged too
    assert body["error"]["type"] == error_type
    return str(body["error"]["message"])


async def test_classify_single_batched_and_pairs(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service()
    texts = ["the movie was great", "worst service ever , the food was cold"]
    single = (await svc.client.post("/v1/models/cls/classify", json={"inputs": texts[0]})).json()
    assert single["model"] == "cls" and single["truncated"] == []
    assert len(single["results"]) == 1
    batched = (await svc.client.post("/v1/models/cls/classify", json={"inputs": texts})).json()
    pairs = [["the movie", "was great"], ["the city", "is rainy"]]
    paired = (await svc.client.post("/v1/models/cls/classify", json={"inputs": pairs})).json()
    cases = [
        (texts[0], single["results"][0]),
        *zip(texts, batched["results"], strict=True),
        *zip([tuple(p) for p in pairs], paired["results"], strict=True),
    ]
    for text, result in cases:
        expected = svc.expected("cls", text)  # type: ignore[arg-type]
        assert [r["label"] for r in result] == sorted(expected, key=lambda k: -expected[k])
        for r in result:
            assert r["score"] == pytest.approx(expected[r["label"]], abs=1e-6)


async def test_model_without_token_type_ids_and_multi_label(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service()
    distil = (await svc.client.post("/v1/models/distil/classify", json={"inputs": [["a b", "c d"]]})).json()
    assert {r["label"]: r["score"] for r in distil["results"][0]} == pytest.approx(
        svc.expected("distil", ("a b", "c d"))
    )
    assert "token_type_ids" not in svc.backends.made["distil"].input_names
    multi = (
        await svc.client.post("/v1/models/multi/classify", json={"inputs": "the team won", "top_k": 2})
    ).json()
    (result,) = multi["results"]
    expected = svc.expected("multi", "the team won")
    assert len(result) == 2
    assert [r["label"] for r in result] == sorted(expected, key=lambda k: -expected[k])[:2]


async def test_truncation_is_reported_or_refused(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service()
    long_text = "the weather in seattle is rainy " * 20
    body = (await svc.client.post("/v1/models/cls/classify", json={"inputs": ["short", long_text]})).json()
    assert body["truncated"] == [1]
    r = await svc.client.post(
        "/v1/models/cls/classify", json={"inputs": ["short", long_text], "truncate": False}
    )
    message = assert_envelope(r, 413, "payload_too_large")
    assert "input 1 has" in message and "seattle" not in message


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": ""},
        {"inputs": []},
        {"inputs": 42},
        {"inputs": ["ok", 3]},
        {"inputs": [["only one"]]},
        {"inputs": "nul\u0000byte"},
        {"inputs": "x", "top_k": 0},
        {"inputs": "x", "extra": 1},
        {},
    ],
)
async def test_invalid_bodies_get_422_envelope(
    make_service: Callable[..., Any], body: dict[str, Any]
) -> None:
    svc: Service = await make_service()
    message = assert_envelope(
        await svc.client.post("/v1/models/cls/classify", json=body), 422, "invalid_input"
    )
    assert "nul" not in message and "only one" not in message


async def test_routing_errors_use_the_envelope(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service()
    assert_envelope(
        await svc.client.post("/v1/models/nope/classify", json={"inputs": "x"}), 404, "model_not_found"
    )
    assert_envelope(await svc.client.get("/v1/models/nope"), 404, "model_not_found")
    assert_envelope(await svc.client.get("/no/such/path"), 404, "not_found")
    assert_envelope(await svc.client.get("/v1/models/cls/classify"), 405, "method_not_allowed")
    r = await svc.client.post(
        "/v1/models/cls/classify", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_envelope(r, 422, "invalid_input")


async def test_input_limits_give_413(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service(max_inputs=2, max_input_chars=10)
    r = await svc.client.post("/v1/models/cls/classify", json={"inputs": ["a", "b", "c"]})
    assert "3 inputs" in assert_envelope(r, 413, "payload_too_large")
    r = await svc.client.post("/v1/models/cls/classify", json={"inputs": [["12345", "678901"]]})
    assert "11 characters" in assert_envelope(r, 413, "payload_too_large")


async def test_models_endpoints_describe_what_is_served(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service(max_batch_size=7)
    models = (await svc.client.get("/v1/models")).json()["models"]
    assert [m["name"] for m in models] == ["cls", "distil", "multi", "ner"]
    info = (await svc.client.get("/v1/models/multi")).json()
    assert info["labels"] == ["sports", "politics", "business"]
    assert info["problem_type"] == "multi_label_classification"
    assert (info["backend"], info["precision"], info["max_length"], info["ready"]) == (
        "fake",
        "fp32",
        32,
        True,
    )
    assert info["batching"]["max_batch_size"] == 7  # BERTSERVE_ override beats model.yaml
    assert info["batching"]["max_queue_delay_ms"] == 5.0  # model.yaml value


async def test_readiness_waits_for_warm_up(make_service: Callable[..., Any]) -> None:
    release = threading.Event()
    svc: Service = await make_service(wait_ready=False, faults=FaultHooks(hang=release))
    assert (await svc.client.get("/health/live")).status_code == 200
    message = assert_envelope(await svc.client.get("/health/ready"), 503, "not_ready")
    assert "warming up" in message
    r = await svc.client.post("/v1/models/cls/classify", json={"inputs": "x"})
    assert_envelope(r, 503, "not_ready")
    assert r.headers["retry-after"] == "1"
    svc.backends.faults.hang = None
    release.set()
    await svc.registry.wait_ready(5)
    assert (await svc.client.get("/health/ready")).json() == {"status": "ok", "reasons": []}


async def test_queue_full_gives_429_with_retry_after(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service(max_queue_size=2)
    release = threading.Event()
    svc.backends.faults.hang = release
    backend = svc.backends.made["cls"]
    backend.started.clear()
    first = asyncio.create_task(svc.client.post("/v1/models/cls/classify", json={"inputs": "a"}))
    assert await asyncio.to_thread(backend.started.wait, 5)
    queued = asyncio.create_task(svc.client.post("/v1/models/cls/classify", json={"inputs": ["b", "c"]}))
    while svc.registry.describe("cls").batcher.queue_depth < 2:
        await asyncio.sleep(0.005)
    r = await svc.client.post("/v1/models/cls/classify", json={"inputs": "d"})
    assert_envelope(r, 429, "queue_full")
    assert r.headers["retry-after"] == "1"
    release.set()
    assert (await first).status_code == 200 and (await queued).status_code == 200


async def test_backend_failure_fails_the_request_and_then_readiness(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service(unhealthy_after_failures=2)
    svc.backends.faults.fail_always = True
    for _ in range(2):
        r = await svc.client.post("/v1/models/cls/classify", json={"inputs": "x"})
        message = assert_envelope(r, 500, "inference_error")
        assert "Traceback" not in message and "fake backend" not in message
    assert "2 consecutive batches failed" in assert_envelope(
        await svc.client.get("/health/ready"), 503, "not_ready"
    )
    svc.backends.faults.fail_always = False
    assert (await svc.client.post("/v1/models/cls/classify", json={"inputs": "x"})).status_code == 200
    assert (await svc.client.get("/health/ready")).status_code == 200


async def test_slow_backend_hits_the_request_deadline(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service(request_timeout_ms=50)
    svc.backends.faults.delay_s = 0.3
    r = await svc.client.post("/v1/models/cls/classify", json={"inputs": "x"})
    assert_envelope(r, 504, "deadline_exceeded")


async def test_concurrent_clients_share_batches_and_get_their_own_answers(
    make_service: Callable[..., Any],
) -> None:
    svc: Service = await make_service()
    words = (
        "the",
        "movie",
        "was",
        "great",
        "and",
        "actors",
        "were",
        "wonderful",
        "city",
        "rainy",
        "food",
        "cold",
    )
    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 12)))) for _ in range(64)]
    responses = await asyncio.gather(
        *(svc.client.post("/v1/models/cls/classify", json={"inputs": t}) for t in texts)
    )
    for text, r in zip(texts, responses, strict=True):
        assert r.status_code == 200
        got = {x["label"]: x["score"] for x in r.json()["results"][0]}
        assert got == pytest.approx(svc.expected("cls", text), abs=1e-6)
    metrics = (await svc.client.get("/metrics")).text
    assert max(b for b, _ in svc.backends.made["cls"].batch_shapes) > 1
    assert 'bertserve_requests_total{code="200",endpoint="classify",model="cls"} 64.0' in metrics


async def test_metrics_exposition(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service()
    await svc.client.post("/v1/models/cls/classify", json={"inputs": "x"})
    await svc.client.post("/v1/models/not-a-model/classify", json={"inputs": "x"})
    r = await svc.client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in (
        "bertserve_requests_total",
        "bertserve_request_duration_seconds_bucket",
        "bertserve_tokenize_duration_seconds_bucket",
        "bertserve_queue_duration_seconds_bucket",
        "bertserve_inference_duration_seconds_bucket",
        "bertserve_batch_size_bucket",
        "bertserve_batch_tokens_bucket",
        "bertserve_real_tokens_total",
        "bertserve_padded_tokens_total",
        "bertserve_queue_depth",
        "bertserve_inflight_requests",
        "process_resident_memory_bytes",
    ):
        assert name in text, name
    # an unknown model name never becomes a label value
    assert 'model="_unknown"' in text and "not-a-model" not in text


async def test_openapi_documents_contract_and_examples(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service()
    spec = (await svc.client.get("/openapi.json")).json()
    paths = spec["paths"]
    assert {
        "/v1/models/{model}/classify",
        "/v1/models",
        "/v1/models/{model}",
        "/health/live",
        "/health/ready",
        "/metrics",
    } <= set(paths)
    classify = paths["/v1/models/{model}/classify"]["post"]
    assert {"200", "404", "413", "429", "503", "504"} <= set(classify["responses"])
    schemas = spec["components"]["schemas"]
    assert schemas["ClassifyRequest"]["examples"] and schemas["ErrorEnvelope"]["examples"]
    assert (await svc.client.get("/docs")).status_code == 200


def test_service_never_imports_torch() -> None:
    code = (
        "import sys, bertserve.service.api.server, bertserve.service.api.app, bertserve.service.registry, "
        "bertserve.runtime.selection, "
        "bertserve.runtime.onnxruntime, bertserve.runtime.openvino; "
        "bad = sorted(m for m in ('torch', 'transformers', 'optimum') if m in sys.modules); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
