"""The Open Inference Protocol in process on the fake backend, REST and gRPC: answers equal to the
native routes', requested outputs and binary outputs, the same limits, deadlines, metrics and
drain as every route, batching across gRPC calls, and the protocol's error bodies and codes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from bertserve.modelrepo import EmbeddingConfig, Pooling, Task
from bertserve.runtime.fake import FaultHooks
from bertserve.service.api import oip
from bertserve.service.api.grpc_server import SERVICE, M
from bertserve.service.registry import ModelRegistry
from bertserve.service.settings import Settings
from tests.helpers.asgi import AppHarness, AppStarter
from tests.helpers.fake_repo import DEFAULT_SPECS, FakeBackends, FakeModelSpec, write_fake_repo
from tests.helpers.service_process import free_port

EMBED = FakeModelSpec(
    "emb",
    task=Task.FEATURE_EXTRACTION,
    labels=(),
    embedding=EmbeddingConfig(pooling=Pooling.MEAN, dimensions=6),
)
TEXTS = ["mary visited paris", "the movie was great", "worst service ever"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_repo(tmp_path_factory.mktemp("oip-repo"), (*DEFAULT_SPECS, EMBED))


@pytest.fixture
def start(repo: Path, start_app: AppStarter) -> Callable[..., Any]:
    async def make(faults: FaultHooks | None = None, **overrides: Any) -> tuple[AppHarness, int]:
        port = free_port()
        settings = Settings(
            repo=repo,
            backend="fake",  # type: ignore[arg-type]
            models=["cls", "multi", "ner", "emb"],
            grpc_port=port,
            **overrides,
        )
        return await start_app.start(settings, FakeBackends(faults or FaultHooks())), port

    return make


def text_tensor(texts: list[str], name: str = "text") -> dict[str, Any]:
    return {"name": name, "shape": [len(texts)], "datatype": "BYTES", "data": texts}


def requests_total(registry: ModelRegistry, model: str, endpoint: str, code: str) -> float:
    value = registry.metrics.registry.get_sample_value(
        "bertserve_requests_total", {"model": model, "endpoint": endpoint, "code": code}
    )
    return value or 0.0


def grpc_call(port: int, rpc: str, request: Any, response: str, **kwargs: Any) -> Any:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    method = channel.unary_unary(
        f"/{SERVICE}/{rpc}",
        request_serializer=type(request).SerializeToString,
        response_deserializer=M[response].FromString,
    )
    return channel, method(request, **kwargs)


def infer_message(model: str, texts: list[str], **fields: Any) -> Any:
    message = M["ModelInferRequest"](model_name=model, **fields)
    message.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
    message.raw_input_contents.append(oip.serialize_bytes([t.encode() for t in texts]))
    return message


async def grpc_infer(port: int, message: Any, **kwargs: Any) -> Any:
    channel, call = grpc_call(port, "ModelInfer", message, "ModelInferResponse", **kwargs)
    async with channel:
        return await call


async def test_rest_answers_equal_native_and_select_outputs(start: Callable[..., Any]) -> None:
    svc, _ = await start()
    c = svc.client
    native = (await c.post("/v1/models/multi/classify", json={"inputs": TEXTS})).json()["results"]
    body = {"id": "req-7", "inputs": [text_tensor(TEXTS)], "outputs": [{"name": "scores"}, {"name": "label"}]}
    r = await c.post("/v2/models/multi/infer", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == "req-7" and doc["model_version"] == "1"
    assert [o["name"] for o in doc["outputs"]] == ["scores", "label"]  # as asked, in that order
    labels = ["sports", "politics", "business"]
    want = [[{s["label"]: s["score"] for s in row}[label] for label in labels] for row in native]
    assert doc["outputs"][0]["shape"] == [3, 3]
    np.testing.assert_allclose(np.reshape(doc["outputs"][0]["data"], (3, 3)), want, atol=1e-6)
    assert doc["outputs"][1]["data"] == [row[0]["label"] for row in native]
    # one output in binary, the other in JSON
    body["outputs"] = [{"name": "score", "parameters": {"binary_data": True}}, {"name": "label"}]
    r = await c.post("/v2/models/multi/infer", json=body)
    assert r.headers["content-type"] == "application/octet-stream"
    size = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:size])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 12} and "data" not in head["outputs"][0]
    np.testing.assert_allclose(
        np.frombuffer(r.content[size:], "<f4"), [row[0]["score"] for row in native], atol=1e-6
    )
    # NER: each text's entities are the /ner answer as JSON
    ner = (await c.post("/v1/models/ner/ner", json={"inputs": TEXTS})).json()["results"]
    r = await c.post("/v2/models/ner/infer", json={"inputs": [text_tensor(TEXTS)]})
    assert [json.loads(x) for x in r.json()["outputs"][0]["data"]] == ner
    # embeddings, with the embedding parameters
    emb = (await c.post("/v1/models/emb/embed", json={"inputs": TEXTS, "dimensions": 4})).json()["embeddings"]
    r = await c.post(
        "/v2/models/emb/infer", json={"inputs": [text_tensor(TEXTS)], "parameters": {"dimensions": 4}}
    )
    out = r.json()["outputs"][0]
    assert out["shape"] == [3, 4]
    np.testing.assert_allclose(np.reshape(out["data"], (3, 4)), emb, atol=1e-6)
    assert requests_total(svc.registry, "multi", "v2_infer", "200") == 2


@pytest.mark.parametrize(
    ("model", "body", "status", "fragment"),
    [
        ("cls", {"inputs": [text_tensor(["a"], "txt")]}, 400, "unknown input 'txt'"),
        (
            "cls",
            {"inputs": [text_tensor(["a"]), text_tensor(["a", "b"], "text_pair")]},
            400,
            "text_pair has 2",
        ),
        ("cls", {"inputs": [text_tensor(["a"])], "outputs": [{"name": "logits"}]}, 400, "unknown output"),
        ("cls", {"inputs": [text_tensor(["a"])], "parameters": {"top_k": 1}}, 400, "unknown parameter"),
        ("cls", {"inputs": [text_tensor(["a"])], "parameters": {"sequence_id": 3}}, 400, "sequence batching"),
        ("cls", {"inputs": [text_tensor(["a"])], "parameters": {"timeout": -5}}, 400, "timeout"),
        ("cls", {"inputs": [text_tensor(["a\x00b"])]}, 400, "NUL"),
        ("cls", {"inputs": [text_tensor(["a"] * 65)]}, 413, "65 inputs"),
        ("cls", {"inputs": [text_tensor(["x" * 20_001])]}, 413, "characters"),
        ("ner", {"inputs": [text_tensor(["a"])], "parameters": {"aggregation": "mean"}}, 400, "aggregation"),
        ("emb", {"inputs": [text_tensor(["a"])], "parameters": {"dimensions": 0}}, 400, "dimensions"),
        ("emb", {"inputs": [text_tensor(["a"])], "parameters": {"normalize": "yes"}}, 400, "boolean"),
        (
            "emb",
            {
                "inputs": [
                    text_tensor(["a"]),
                    {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [101, 102]},
                ]
            },
            400,
            "exactly one",
        ),
        (
            "emb",
            {"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [101, 10**9]}]},
            400,
            "vocabulary",
        ),
        ("nope", {"inputs": [text_tensor(["a"])]}, 404, "no such model"),
        ("cls", {"inputs": [text_tensor(["a"])], "extra": 1}, 400, "extra"),
    ],
)
async def test_rest_errors_are_the_protocols(
    start: Callable[..., Any], model: str, body: dict[str, Any], status: int, fragment: str
) -> None:
    svc, _ = await start(max_input_chars=20_000)
    r = await svc.client.post(f"/v2/models/{model}/infer", json=body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and fragment in r.json()["error"], r.json()
    assert (
        await svc.client.post("/v2/models/cls/infer", json={"inputs": [text_tensor(["ok"])]})
    ).status_code == 200
    if model != "nope":
        assert requests_total(svc.registry, model, "v2_infer", str(status)) == 1


async def test_versions_and_readiness(start: Callable[..., Any]) -> None:
    hang = FaultHooks()
    svc, port = await start(faults=hang)
    c = svc.client
    assert (
        await c.post("/v2/models/cls/versions/1/infer", json={"inputs": [text_tensor(["a"])]})
    ).status_code == 200
    r = await c.post("/v2/models/cls/versions/2/infer", json={"inputs": [text_tensor(["a"])]})
    assert r.status_code == 404 and "version 2 " in r.json()["error"]
    assert (await c.get("/v2/models/cls/versions/2/ready")).status_code == 404
    assert (await c.get("/v2/models/cls/ready")).status_code == 200
    svc.registry.begin_drain()
    assert (await c.get("/v2/health/ready")).status_code == 400 and (
        await c.get("/v2/health/ready")
    ).content == b""
    assert (await c.get("/v2/models/cls/ready")).status_code == 400
    assert (await c.get("/v2/health/live")).status_code == 200
    r = await c.post("/v2/models/cls/infer", json={"inputs": [text_tensor(["a"])]})
    assert r.status_code == 503 and set(r.json()) == {"error"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_infer(port, infer_message("cls", ["a"]))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    channel, call = grpc_call(port, "ServerReady", M["ServerReadyRequest"](), "ServerReadyResponse")
    async with channel:
        assert (await call).ready is False


async def test_grpc_equals_rest_and_batches_concurrent_calls(start: Callable[..., Any]) -> None:
    svc, port = await start(faults=FaultHooks(delay_s=0.02))
    rest = (await svc.client.post("/v2/models/cls/infer", json={"inputs": [text_tensor(TEXTS)]})).json()
    channel, call = grpc_call(
        port,
        "ModelInfer",
        infer_message("cls", TEXTS, id="g1"),
        "ModelInferResponse",
        metadata=(("x-request-id", "trace-1"),),
    )
    async with channel:
        reply = await call
        assert ("x-request-id", "trace-1") in tuple(await call.initial_metadata())
    assert reply.id == "g1" and [o.name for o in reply.outputs] == ["label", "score", "scores"]
    assert oip.deserialize_bytes(reply.raw_output_contents[0], "label", 10) == [
        x.encode() for x in rest["outputs"][0]["data"]
    ]
    np.testing.assert_allclose(
        np.frombuffer(reply.raw_output_contents[2], "<f4"), rest["outputs"][2]["data"], atol=1e-6
    )
    before = (
        svc.registry.metrics.registry.get_sample_value("bertserve_batch_size_count", {"model": "cls"}) or 0
    )
    replies = await asyncio.gather(
        *(grpc_infer(port, infer_message("cls", [f"text {i}"])) for i in range(32))
    )
    assert all(len(oip.deserialize_bytes(r.raw_output_contents[0], "label", 2)) == 1 for r in replies)
    batches = (
        svc.registry.metrics.registry.get_sample_value("bertserve_batch_size_count", {"model": "cls"}) or 0
    ) - before
    assert batches < 32  # the calls shared batches with one another
    assert requests_total(svc.registry, "cls", "grpc_infer", "200") == 33


async def test_grpc_deadline_key_and_errors(start: Callable[..., Any]) -> None:
    slow = FaultHooks(delay_s=0.5)
    svc, port = await start(faults=slow, api_key="grpc-test-key-0123456789")
    key = (("authorization", "Bearer grpc-test-key-0123456789"),)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_infer(port, infer_message("cls", ["a"]))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    channel, call = grpc_call(port, "ServerLive", M["ServerLiveRequest"](), "ServerLiveResponse")
    async with channel:  # the health RPCs need no key, as the health paths
        assert (await call).live is True
    with pytest.raises(grpc.aio.AioRpcError) as err:  # the gRPC deadline is the request deadline
        await grpc_infer(port, infer_message("cls", ["a"]), metadata=key, timeout=0.1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    slow.delay_s = 0.0
    bad = infer_message("cls", ["a"])
    bad.inputs[0].datatype = "FP32"
    for message, code in [
        (bad, grpc.StatusCode.INVALID_ARGUMENT),
        (infer_message("nope", ["a"]), grpc.StatusCode.NOT_FOUND),
        (infer_message("cls", ["a"], model_version="9"), grpc.StatusCode.NOT_FOUND),
        (infer_message("ner", ["a"] * 65), grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await grpc_infer(port, message, metadata=key)
        assert err.value.code() == code, err.value.details()
    assert requests_total(svc.registry, "ner", "grpc_infer", "413") == 1
    reply = await grpc_infer(port, infer_message("cls", ["a"]), metadata=key)
    assert len(reply.raw_output_contents) == 3
