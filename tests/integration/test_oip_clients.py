"""Triton's own clients (`tritonclient.http`, `tritonclient.grpc`, from PyPI) against a running
`bertserve serve` with real exported models: health, metadata, classification, NER, embeddings and
pairs over the Open Inference Protocol, REST (binary and JSON tensors) and gRPC; every answer must
equal the native route's. And the protocol's errors as those clients read them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers.service_process import ServiceProcess, free_port, start_service

KEY = "oip-test-key-0123456789"
# NOTE: tritonclient.http's `infer` writes Inference-Header-Content-Length into the headers dict it
# is given, so every call here passes a copy: a binary request's header must not leak into the next.
AUTH = {"Authorization": f"Bearer {KEY}"}
GRPC_AUTH = {"authorization": f"Bearer {KEY}"}
TEXTS = ["mary visited paris last summer", "the movie was great", "worst service ever"]
MODELS = "bert-cls,bert-multilabel,bert-ner,bert-embed,bert-rerank"


@pytest.fixture(scope="module")
def service(exported_repo: Path) -> Iterator[tuple[ServiceProcess, int]]:
    grpc_port = free_port()
    env = {
        "BERTSERVE_MODELS": MODELS,
        "BERTSERVE_BACKEND": "onnxruntime-cpu",
        "BERTSERVE_PRECISION": "fp32",
        "BERTSERVE_API_KEY": KEY,
        "BERTSERVE_GRPC_PORT": str(grpc_port),
    }
    with start_service(exported_repo, env=env) as proc:
        proc.wait_ready(120)
        yield proc, grpc_port
        assert proc.stop() == 0


def native(proc: ServiceProcess, model: str, route: str, body: dict[str, Any]) -> Any:
    r = httpx.post(f"{proc.base}/v1/models/{model}/{route}", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def http_client(proc: ServiceProcess) -> Any:
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(f"127.0.0.1:{proc.port}")


def grpc_client(port: int) -> Any:
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(f"127.0.0.1:{port}")


def text_input(module: Any, name: str, texts: list[str], binary: bool | None = None) -> Any:
    tensor = module.InferInput(name, [len(texts)], "BYTES")
    data = np.array([t.encode() for t in texts], dtype=np.object_)
    if binary is None:  # gRPC: always raw
        tensor.set_data_from_numpy(data)
    else:
        tensor.set_data_from_numpy(data, binary_data=binary)
    return tensor


def both_clients(service: tuple[ServiceProcess, int]) -> list[tuple[str, Any, Any, dict[str, str]]]:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    proc, grpc_port = service
    return [
        ("http", http_client(proc), httpclient, AUTH),
        ("grpc", grpc_client(grpc_port), grpcclient, GRPC_AUTH),
    ]


def classify_want(proc: ServiceProcess, model: str, inputs: list[Any]) -> tuple[list[str], np.ndarray, Any]:
    results = native(proc, model, "classify", {"inputs": inputs})["results"]
    labels = native_labels(proc, model)
    scores = np.array([[{s["label"]: s["score"] for s in row}[label] for label in labels] for row in results])
    return [row[0]["label"] for row in results], scores, results


def native_labels(proc: ServiceProcess, model: str) -> list[str]:
    r = httpx.get(f"{proc.base}/v1/models/{model}", headers=AUTH)
    labels: list[str] = r.json()["labels"]
    return labels


def test_health_and_metadata(service: tuple[ServiceProcess, int]) -> None:
    for kind, client, _, headers in both_clients(service):
        assert client.is_server_live() and client.is_server_ready(), kind  # probes need no key
        assert client.is_model_ready("bert-cls", headers=headers), kind
        server = client.get_server_metadata(headers=headers, **({"as_json": True} if kind == "grpc" else {}))
        assert server["name"] == "bertserve" and "binary_tensor_data" in server["extensions"]
        meta = client.get_model_metadata(
            "bert-ner", headers=headers, **({"as_json": True} if kind == "grpc" else {})
        )
        assert meta["name"] == "bert-ner" and meta["versions"] == ["1"]
        assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [("text", "BYTES")]
        assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [("entities", "BYTES")]
        cls = client.get_model_metadata(
            "bert-cls", "1", headers=headers, **({"as_json": True} if kind == "grpc" else {})
        )
        scores = next(t for t in cls["outputs"] if t["name"] == "scores")
        assert [int(d) for d in scores["shape"]] == [-1, len(native_labels(service[0], "bert-cls"))]


@pytest.mark.parametrize("model", ["bert-cls", "bert-multilabel"])
def test_classification_equals_native(service: tuple[ServiceProcess, int], model: str) -> None:
    proc = service[0]
    want_labels, want_scores, _ = classify_want(proc, model, TEXTS)
    for kind, client, module, headers in both_clients(service):
        for binary in (True, False) if kind == "http" else (None,):
            result = client.infer(model, [text_input(module, "text", TEXTS, binary)], headers=dict(headers))
            assert [x.decode() for x in result.as_numpy("label")] == want_labels, (kind, binary)
            np.testing.assert_allclose(result.as_numpy("scores"), want_scores, atol=1e-6)
            np.testing.assert_allclose(result.as_numpy("score"), want_scores.max(axis=1), atol=1e-6)


def test_pairs_on_a_cross_encoder(service: tuple[ServiceProcess, int]) -> None:
    proc = service[0]
    query = "where did mary go ?"
    _, want_scores, _ = classify_want(proc, "bert-rerank", [[query, t] for t in TEXTS])
    for kind, client, module, headers in both_clients(service):
        inputs = [
            text_input(module, "text", [query] * len(TEXTS), None if kind == "grpc" else True),
            text_input(module, "text_pair", TEXTS, None if kind == "grpc" else True),
        ]
        result = client.infer("bert-rerank", inputs, headers=dict(headers))
        np.testing.assert_allclose(result.as_numpy("scores"), want_scores, atol=1e-6, err_msg=kind)


def test_ner_equals_native(service: tuple[ServiceProcess, int]) -> None:
    proc = service[0]
    texts = ["mary visited paris last summer with her friends from london", "the movie was great"]
    for strategy in ("simple", "first"):
        want = native(proc, "bert-ner", "ner", {"inputs": texts, "aggregation": strategy})["results"]
        for kind, client, module, headers in both_clients(service):
            result = client.infer(
                "bert-ner",
                [text_input(module, "text", texts, None if kind == "grpc" else True)],
                headers=dict(headers),
                parameters={"aggregation": strategy},
            )
            got = [json.loads(x) for x in result.as_numpy("entities")]
            assert got == want, (kind, strategy)


def test_embeddings_equal_native(service: tuple[ServiceProcess, int]) -> None:
    proc = service[0]
    want = np.array(native(proc, "bert-embed", "embed", {"inputs": TEXTS})["embeddings"])
    ids = [
        [t["id"] for t in row["tokens"]]
        for row in native(proc, "bert-embed", "tokenize", {"inputs": TEXTS})["results"]
    ]
    width = max(len(row) for row in ids)
    grid = np.array([row + [0] * (width - len(row)) for row in ids], dtype=np.int64)
    mask = np.array([[1] * len(row) + [0] * (width - len(row)) for row in ids], dtype=np.int64)
    for kind, client, module, headers in both_clients(service):
        result = client.infer(
            "bert-embed",
            [text_input(module, "text", TEXTS, None if kind == "grpc" else False)],
            headers=dict(headers),
        )
        np.testing.assert_allclose(result.as_numpy("embedding"), want, atol=1e-6, err_msg=kind)
        # pre-tokenized: input_ids + attention_mask answer the same vectors
        id_input = module.InferInput("input_ids", list(grid.shape), "INT64")
        id_input.set_data_from_numpy(grid)
        mask_input = module.InferInput("attention_mask", list(mask.shape), "INT64")
        mask_input.set_data_from_numpy(mask)
        result = client.infer("bert-embed", [id_input, mask_input], headers=dict(headers))
        np.testing.assert_allclose(result.as_numpy("embedding"), want, atol=1e-5, err_msg=kind)


def test_protocol_errors(service: tuple[ServiceProcess, int]) -> None:
    from tritonclient.utils import InferenceServerException

    proc, _ = service
    http, grpc_ = http_client(proc), None
    for kind, client, module, headers in both_clients(service):
        grpc_ = client if kind == "grpc" else grpc_
        cases: list[tuple[str, list[Any], str, str]] = [
            (
                "nope",
                [text_input(module, "text", TEXTS[:1], None if kind == "grpc" else True)],
                "404",
                "NOT_FOUND",
            ),
            (
                "bert-cls",
                [text_input(module, "txt", TEXTS[:1], None if kind == "grpc" else True)],
                "400",
                "INVALID_ARGUMENT",
            ),
        ]
        wrong = module.InferInput("text", [1], "FP32")
        wrong.set_data_from_numpy(np.array([1.0], dtype=np.float32))
        cases.append(("bert-cls", [wrong], "400", "INVALID_ARGUMENT"))
        for model, inputs, http_status, grpc_status in cases:
            with pytest.raises(InferenceServerException) as err:
                client.infer(model, inputs, headers=dict(headers))
            assert err.value.status() == (http_status if kind == "http" else f"StatusCode.{grpc_status}"), (
                kind,
                model,
                err.value,
            )
        with pytest.raises(InferenceServerException) as err:  # the API key is required for inference
            client.infer(
                "bert-cls", [text_input(module, "text", TEXTS[:1], None if kind == "grpc" else True)]
            )
        assert err.value.status() in ("401", "StatusCode.UNAUTHENTICATED")
    with pytest.raises(InferenceServerException) as err:
        http.get_model_metadata("bert-cls", "7", headers=AUTH)
    assert err.value.status() == "404"
    assert http.is_model_ready("bert-cls", "1", headers=AUTH)
