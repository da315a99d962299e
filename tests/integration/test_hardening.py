"""Hardening of the HTTP app, in process (httpx against the ASGI app) on the fake backend: the error
contract for every status, deadlines, a hung backend, access control, CORS, the route list, logs.

Behaviour that needs a socket, a signal or a real uvicorn is in test_hardening_process.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

from bertserve.runtime.fake import FaultHooks
from bertserve.service.registry import ModelRegistry
from bertserve.service.settings import Settings
from tests.helpers.asgi import AppStarter
from tests.helpers.fake_repo import FakeBackends, write_fake_repo

API_KEY = "k" * 24
SECRET_TEXT = "zanzibar-4711"  # stands for user input: must never be echoed or logged


@pytest.fixture(scope="module")
def fake_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_repo(tmp_path_factory.mktemp("hardening-repo"))


@dataclass
class Service:
    app: FastAPI
    client: httpx.AsyncClient
    backends: FakeBackends
    registry: ModelRegistry

    @property
    def faults(self) -> FaultHooks:
        return self.backends.faults

    async def wait_ready(self, timeout_s: float = 5) -> None:
        """Until readiness is back (e.g. after a slow or hung batch finally returned)."""
        deadline = time.monotonic() + timeout_s
        while (await self.client.get("/health/ready")).status_code != 200:
            assert time.monotonic() < deadline, "readiness did not recover"
            await asyncio.sleep(0.01)

    async def classify(self, body: Any = None, **kwargs: Any) -> httpx.Response:
        if body is None:
            body = {"inputs": "the movie was great"}
        return await self.client.post("/v1/models/cls/classify", json=body, **kwargs)


@pytest.fixture
def make_service(fake_repo: Path, start_app: AppStarter) -> Callable[..., Any]:
    async def make(**overrides: Any) -> Service:
        settings = Settings(repo=fake_repo, backend="fake", **overrides)  # type: ignore[arg-type]
        backends = FakeBackends()
        # An unexpected error must come back as the 500 envelope, as a real server sends it.
        started = await start_app.start(settings, backends, raise_app_exceptions=False)
        return Service(started.app, started.client, backends, started.registry)

    return make


def assert_envelope(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "request_id"}, body
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    assert body["error"]["type"] == error_type
    message = str(body["error"]["message"])
    for leak in ("Traceback", 'File "', "/service/", ".py", SECRET_TEXT):
        assert leak not in response.text, f"{leak!r} leaked into a {status} body"
    return message


# --- the route list ----------------------------------------------------------------------------

EXPECTED_ROUTES = {
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/redoc"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model}"),
    ("POST", "/v1/models/{model}/classify"),
    ("POST", "/v1/models/{model}/ner"),
    ("POST", "/v1/models/{model}/embed"),
    ("POST", "/v1/models/{model}/rerank"),
    ("POST", "/v1/models/{model}/tokenize"),
    # the routes TEI's, the HF Inference API's and OpenAI's clients speak (service/api/compat.py)
    ("POST", "/embed"),
    ("POST", "/predict"),
    ("POST", "/rerank"),
    ("POST", "/tokenize"),
    ("GET", "/info"),
    ("POST", "/models/{model}"),
    ("POST", "/models/{model}/pipeline/feature-extraction"),
    ("POST", "/v1/embeddings"),
    # the served versions of a model (model.yaml's version_policy), each route at its own path
    ("GET", "/v1/models/{model}/versions/{version}"),
    ("POST", "/v1/models/{model}/versions/{version}/classify"),
    ("POST", "/v1/models/{model}/versions/{version}/ner"),
    ("POST", "/v1/models/{model}/versions/{version}/embed"),
    ("POST", "/v1/models/{model}/versions/{version}/rerank"),
    ("POST", "/v1/models/{model}/versions/{version}/tokenize"),
    # repository control: reload served models from the repository (API key required; no paths,
    # no uploads: only what the repository folder already holds)
    ("POST", "/v1/repository/reload"),
    ("POST", "/v1/repository/models/{model}/load"),
    # the Open Inference Protocol (service/api/v2.py): metadata, health and inference, nothing else
    ("GET", "/v2"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/models/{model}"),
    ("GET", "/v2/models/{model}/versions/{version}"),
    ("GET", "/v2/models/{model}/ready"),
    ("GET", "/v2/models/{model}/versions/{version}/ready"),
    ("POST", "/v2/models/{model}/infer"),
    ("POST", "/v2/models/{model}/versions/{version}/infer"),
}


async def test_route_list_snapshot(make_service: Callable[..., Any]) -> None:
    """No management or file-path endpoint exists beyond the repository reload; a new route must be
    added here on purpose."""
    svc: Service = await make_service(
        api_key=API_KEY, metrics_public=True, cors_origins=["https://a.example"]
    )
    routes = set()
    for route in iter_route_contexts(svc.app.routes):  # included routers flattened, hidden routes too
        for method in route.methods or ():
            if method != "HEAD":  # Starlette answers HEAD wherever it answers GET
                routes.add((method, route.path))
    assert routes == EXPECTED_ROUTES


# --- one envelope for every non-2xx ------------------------------------------------------------


async def test_every_error_status_uses_the_envelope(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service(max_queue_size=1, request_timeout_ms=300, max_body_bytes=4096)
    assert_envelope(await svc.client.get("/nope"), 404, "not_found")
    assert_envelope(await svc.client.delete("/v1/models/cls/classify"), 405, "method_not_allowed")
    assert_envelope(await svc.classify({"inputs": 42}), 422, "invalid_input")
    assert_envelope(await svc.classify({"inputs": "x" * 5000}), 413, "payload_too_large")
    assert_envelope(
        await svc.client.post("/v1/models/nope/classify", json={"inputs": "x"}), 404, "model_not_found"
    )
    assert_envelope(
        await svc.client.post("/v1/models/ner/classify", json={"inputs": "x"}), 400, "unsupported_task"
    )

    release = threading.Event()
    svc.faults.hang = release
    backend = svc.backends.made["cls"]
    backend.started.clear()
    running = asyncio.create_task(svc.classify())
    assert await asyncio.to_thread(backend.started.wait, 5)
    queued = asyncio.create_task(svc.classify({"inputs": SECRET_TEXT}))
    while svc.registry.describe("cls").batcher.queue_depth < 1:
        await asyncio.sleep(0.005)
    r = await svc.classify({"inputs": SECRET_TEXT})
    assert_envelope(r, 429, "queue_full")
    assert r.headers["retry-after"] == "1"
    assert_envelope(await queued, 504, "deadline_exceeded")
    assert_envelope(await running, 504, "deadline_exceeded")
    await asyncio.sleep(0.35)  # the stuck batch is now older than the request timeout
    assert_envelope(await svc.classify(), 503, "not_ready")
    svc.faults.hang = None
    release.set()
    await svc.wait_ready()  # the stuck batch has returned

    svc.faults.fail_batches = 1
    assert_envelope(await svc.classify({"inputs": SECRET_TEXT}), 500, "inference_error")


async def test_unexpected_errors_are_a_bare_500(
    make_service: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    svc: Service = await make_service()

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom in /srv/secret/path.py")

    monkeypatch.setattr(svc.registry.describe("cls"), "classify", broken)
    with caplog.at_level(logging.ERROR):
        r = await svc.classify()
    assert assert_envelope(r, 500, "internal_error") == "internal server error"
    assert "/srv/secret" not in r.text
    assert "boom" in caplog.text  # the operator sees what happened; the client does not


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b'{"inputs": "caf\xe9"}', {"content-type": "application/json"}),  # latin-1, not UTF-8
        (b'{"inputs": "\\ud800 lone surrogate"}', {"content-type": "application/json"}),
        (b'{"inputs": "a\\u0000b"}', {"content-type": "application/json"}),
        (b'{"inputs": ["ok", ""]}', {"content-type": "application/json"}),
        (b'{"inputs": [["a", "b"], ["c"]]}', {"content-type": "application/json"}),
        (b'{"inputs": "x", "top_k": "many"}', {"content-type": "application/json"}),
        (b"", {"content-type": "application/json"}),
        (b"inputs=x", {"content-type": "application/x-www-form-urlencoded"}),
        (b'{"inputs": "x"}', {"content-type": "application/json", "x-request-timeout-ms": "soon"}),
        (b'{"inputs": "x"}', {"content-type": "application/json", "x-request-timeout-ms": "-5"}),
    ],
)
async def test_malformed_requests_get_422(
    make_service: Callable[..., Any], content: bytes, headers: dict[str, str]
) -> None:
    svc: Service = await make_service()
    r = await svc.client.post("/v1/models/cls/classify", content=content, headers=headers)
    assert_envelope(r, 422, "invalid_input")


async def test_fastapi_validation_errors_are_counted(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service()
    await svc.classify({"inputs": []})
    await svc.client.post("/v1/models/ghost/ner", json={"bogus": 1})
    await svc.client.post(
        "/v1/models/cls/classify", content=b'{"inputs": "\xff"}', headers={"content-type": "application/json"}
    )
    await svc.classify()
    metrics = (await svc.client.get("/metrics")).text
    assert 'bertserve_requests_total{code="422",endpoint="classify",model="cls"} 2.0' in metrics
    assert 'bertserve_requests_total{code="422",endpoint="ner",model="_unknown"} 1.0' in metrics
    assert 'bertserve_requests_total{code="200",endpoint="classify",model="cls"} 1.0' in metrics
    assert "ghost" not in metrics


async def test_input_text_never_reaches_info_logs(
    make_service: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    svc: Service = await make_service(max_input_chars=200, request_timeout_ms=200)
    text = f"the movie {SECRET_TEXT} was great"
    assert (await svc.classify({"inputs": [text, [text, text]]})).status_code == 422  # mixed kinds
    assert (await svc.classify({"inputs": text})).status_code == 200
    assert (await svc.classify({"inputs": text * 20})).status_code == 413
    assert (await svc.classify({"inputs": text * 5, "truncate": False})).status_code == 413
    assert (await svc.client.post("/v1/models/ner/ner", json={"inputs": text})).status_code == 200
    svc.faults.fail_batches = 1
    assert (await svc.classify({"inputs": text})).status_code == 500
    svc.faults.delay_s = 0.3
    assert (await svc.classify({"inputs": text})).status_code == 504
    svc.faults.delay_s = 0
    assert caplog.records, "the service logged nothing at all: the capture is not working"
    assert SECRET_TEXT not in caplog.text


# --- deadlines and a hung backend ----------------------------------------------------------------


async def test_timeout_header_only_shortens(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service(request_timeout_ms=150)
    svc.faults.delay_s = 0.4
    start = time.monotonic()
    r = await svc.classify(headers={"X-Request-Timeout-Ms": "60000"})
    assert_envelope(r, 504, "deadline_exceeded")
    assert time.monotonic() - start < 0.4  # the server's 150 ms held, not the client's 60 s
    svc.faults.delay_s = 0
    await svc.wait_ready()
    assert (await svc.classify(headers={"X-Request-Timeout-Ms": "60000"})).status_code == 200


async def test_expired_requests_are_answered_and_never_run(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service()  # the server allows 10 s; the clients ask for less
    backend = svc.backends.made["cls"]
    release = threading.Event()
    svc.faults.hang = release
    backend.started.clear()
    before = backend.sequences_run
    blocker = asyncio.create_task(svc.classify({"inputs": "a"}))
    assert await asyncio.to_thread(backend.started.wait, 5)  # the worker is now busy with "a"
    start = time.monotonic()
    expired = await svc.classify({"inputs": ["b", "c", "d"]}, headers={"X-Request-Timeout-Ms": "80"})
    assert_envelope(expired, 504, "deadline_exceeded")
    assert time.monotonic() - start < 1.0
    svc.faults.hang = None
    release.set()
    assert (await blocker).status_code == 200
    assert (await svc.classify({"inputs": "e"})).status_code == 200
    # "a" and "e" ran; the three sequences of the expired request never reached the backend.
    assert backend.sequences_run - before == 2


# One request per model that is not broken below, and whether its answer is the healthy one.
OTHER_MODELS = {
    "multi": ("/v1/models/multi/classify", {"inputs": ["the movie was great", "rainy seattle"]}),
    "distil": ("/v1/models/distil/classify", {"inputs": [["the movie", "was great"]], "top_k": 1}),
    "ner": ("/v1/models/ner/ner", {"inputs": "john smith lives in new york", "ignore_labels": []}),
}


async def answers_of_other_models(svc: Service) -> dict[str, Any]:
    answers = {}
    for name, (path, body) in OTHER_MODELS.items():
        r = await svc.client.post(path, json=body)
        assert r.status_code == 200, (name, r.text)
        answers[name] = r.json()
    assert all(answer["results"] and all(answer["results"]) for answer in answers.values())
    return answers


async def assert_only_cls_is_affected(svc: Service, healthy: dict[str, Any]) -> None:
    """`cls` is broken: readiness names it and nothing else, and every other model, having its own
    worker and backend, still answers at once with exactly the answers it gave while all was well."""
    problems = assert_envelope(await svc.client.get("/health/ready"), 503, "not_ready").split("; ")
    assert problems and all(p.startswith("model cls: ") for p in problems), problems
    start = time.monotonic()
    assert await answers_of_other_models(svc) == healthy
    assert time.monotonic() - start < 1.0  # not queued behind the broken model


async def test_hung_backend_fails_its_batch_then_readiness_recovers(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service(request_timeout_ms=200)
    healthy = await answers_of_other_models(svc)
    release = threading.Event()
    svc.backends.faults_for("cls").hang = release
    hung = await svc.classify()
    assert_envelope(hung, 504, "deadline_exceeded")  # the waiter is answered at its deadline
    await asyncio.sleep(0.1)  # the call has now run longer than the request timeout
    assert "backend stuck" in assert_envelope(await svc.client.get("/health/ready"), 503, "not_ready")
    start = time.monotonic()
    refused = await svc.classify()
    assert_envelope(refused, 503, "not_ready")  # refused at once instead of queueing behind it
    assert time.monotonic() - start < 0.15
    assert refused.headers["retry-after"] == "1"
    assert (await svc.client.get("/health/live")).status_code == 200
    # Other models have their own worker and are unaffected.
    await assert_only_cls_is_affected(svc, healthy)
    svc.backends.faults_for("cls").hang = None
    release.set()
    await svc.wait_ready(timeout_s=1)
    assert (await svc.classify()).status_code == 200


async def test_failing_backend_fails_only_its_own_model(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service(unhealthy_after_failures=2)
    healthy = await answers_of_other_models(svc)
    svc.backends.faults_for("cls").fail_always = True
    for _ in range(2):
        assert_envelope(await svc.classify(), 500, "inference_error")
    assert "model cls: 2 consecutive batches failed" in (await svc.client.get("/health/ready")).text
    await assert_only_cls_is_affected(svc, healthy)
    svc.backends.faults_for("cls").fail_always = False
    assert (await svc.classify()).status_code == 200
    await svc.wait_ready(timeout_s=1)
    assert await answers_of_other_models(svc) == healthy


# --- drain (the in-process half; the signal itself is tested against a real process) ------------


async def test_drain_refuses_new_work_and_finishes_admitted_work(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service()
    svc.faults.delay_s = 0.2
    backend = svc.backends.made["cls"]
    backend.started.clear()
    admitted = asyncio.create_task(svc.classify())
    assert await asyncio.to_thread(backend.started.wait, 5)
    svc.registry.begin_drain()
    assert "shutting down" in assert_envelope(await svc.client.get("/health/ready"), 503, "not_ready")
    assert_envelope(await svc.classify(), 503, "not_ready")
    assert svc.registry.inflight == 1
    assert not await svc.registry.wait_idle(0.01)
    assert (await admitted).status_code == 200
    assert await svc.registry.wait_idle(1)
    assert (await svc.client.get("/health/live")).status_code == 200


# --- access control and CORS ---------------------------------------------------------------------


async def test_api_key_guards_everything_but_health(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service(api_key=API_KEY)
    for path in ("/v1/models", "/v1/models/cls", "/metrics", "/nope"):
        r = await svc.client.get(path)
        assert_envelope(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert_envelope(await svc.classify(), 401, "unauthorized")
    for bad in ("Bearer wrong-key-of-some-length", f"Basic {API_KEY}", API_KEY, f"Bearer {API_KEY}x"):
        assert_envelope(await svc.classify(headers={"Authorization": bad}), 401, "unauthorized")
    assert (await svc.client.get("/health/live")).status_code == 200
    assert (await svc.client.get("/health/ready")).status_code == 200
    good = {"Authorization": f"Bearer {API_KEY}"}
    assert (await svc.classify(headers=good)).status_code == 200
    assert (await svc.classify(headers={"Authorization": f"bearer {API_KEY}"})).status_code == 200
    assert (await svc.client.get("/metrics", headers=good)).status_code == 200
    spec = (await svc.client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/models/{model}/classify"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/health/ready"]["get"]


async def test_metrics_can_be_made_public(make_service: Callable[..., Any]) -> None:
    svc: Service = await make_service(api_key=API_KEY, metrics_public=True)
    assert (await svc.client.get("/metrics")).status_code == 200
    assert_envelope(await svc.client.get("/v1/models"), 401, "unauthorized")


def test_short_or_empty_api_keys() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        Settings(api_key="short")  # type: ignore[arg-type]
    assert Settings(api_key="").api_key is None  # type: ignore[arg-type]


async def test_cors_is_off_unless_origins_are_listed(make_service: Callable[..., Any]) -> None:
    origin = "https://app.example"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    off: Service = await make_service()
    r = await off.classify(headers={"Origin": origin})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = await off.client.options("/v1/models/cls/classify", headers=preflight)
    assert_envelope(r, 405, "method_not_allowed")

    on: Service = await make_service(cors_origins=[origin], api_key=API_KEY)
    r = await on.client.options("/v1/models/cls/classify", headers=preflight)  # preflights carry no key
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    r = await on.client.options(
        "/v1/models/cls/classify", headers={**preflight, "Origin": "https://evil.example"}
    )
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = await on.classify(headers={"Origin": origin, "Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
