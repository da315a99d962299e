"""Every route answers with the body type its OpenAPI schema documents, and every body builder
builds a body that the schema accepts, unchanged (no key the schema lacks, none it needs missing)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast, get_args, get_origin, get_type_hints

import pytest
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import TypeAdapter
from starlette.responses import Response
from typing_extensions import is_typeddict

from bertserve.modelrepo import ModelConfig, Precision, Task, VersionConfig
from bertserve.service.api.routes import (
    JsonBody,
    classify_body,
    health_ok,
    model_info,
    ner_body,
    router,
)
from bertserve.service.api.schemas import (
    ClassifyResponse,
    EmbedResponse,
    HealthOut,
    ModelInfo,
    ModelList,
    NerResponse,
    ReloadResponse,
    RerankResponse,
    TokenizeResponse,
)
from bertserve.service.batching import BatchLimits
from bertserve.service.heads.classification import LabelScore
from bertserve.service.heads.token_classification import Entity
from bertserve.service.limits import RequestLimits
from bertserve.service.pipeline import Classification, Pipeline
from bertserve.service.settings import Settings

ROUTES = [route for route in router.routes if isinstance(route, APIRoute)]


def body_type(route: APIRoute) -> type[Any] | None:
    """`B` of a handler annotated `-> JsonBody[B]`; None for a handler returning a plain Response."""
    returns = get_type_hints(route.endpoint)["return"]
    if get_origin(returns) is JsonBody:
        (body,) = get_args(returns)
        return cast(type[Any], body)
    assert returns is Response, f"{route.name} returns {returns}, neither JsonBody[...] nor Response"
    return None


def assert_valid(body_cls: type[Any], body: object) -> None:
    """`body` is exactly a `body_cls`: strict validation returns it unchanged (a key the schema
    lacks would be dropped), and its serialised bytes validate too (what a client receives)."""
    adapter = TypeAdapter(body_cls)
    assert adapter.validate_python(body, strict=True) == body
    assert adapter.validate_json(JsonBody(body).body) == body


def test_every_json_route_documents_the_body_type_its_handler_returns() -> None:
    typed = {}
    for route in ROUTES:
        body = body_type(route)
        if body is None:
            assert route.response_model is None, route.name
            continue
        assert is_typeddict(body), f"{route.name}: {body} is not a TypedDict"
        assert route.response_model is body, f"{route.name}: response_model {route.response_model} != {body}"
        typed[route.name] = body
    assert typed == {
        "classify": ClassifyResponse,
        "ner": NerResponse,
        "embed": EmbedResponse,
        "rerank": RerankResponse,
        "tokenize": TokenizeResponse,
        "list_models": ModelList,
        "get_model": ModelInfo,
        "get_model_version": ModelInfo,
        "live": HealthOut,
        "ready": HealthOut,
        "reload_repository": ReloadResponse,
        "load_model": ReloadResponse,
    }


def test_openapi_200_schemas_are_the_body_types() -> None:
    spec = get_openapi(title="t", version="0", routes=router.routes)
    components = spec["components"]["schemas"]
    for route in ROUTES:
        body = body_type(route)
        if body is None:
            continue
        (method,) = (m.lower() for m in route.methods)
        schema = spec["paths"][route.path][method]["responses"]["200"]["content"]["application/json"][
            "schema"
        ]
        assert schema == {"$ref": f"#/components/schemas/{body.__name__}"}, route.name
        generated = TypeAdapter(body).json_schema(
            mode="serialization", ref_template="#/components/schemas/{model}"
        )
        for name, definition in generated.pop("$defs", {}).items():
            assert components[name] == definition, name
        assert components[body.__name__] == generated, route.name


def test_classify_body() -> None:
    out = Classification(
        results=[[LabelScore("positive", 0.75), LabelScore("negative", 0.25)], [LabelScore("negative", 1.0)]],
        truncated=[1],
    )
    body = classify_body("sst2", out)
    assert_valid(ClassifyResponse, body)
    assert body == {
        "model": "sst2",
        "results": [
            [{"label": "positive", "score": 0.75}, {"label": "negative", "score": 0.25}],
            [{"label": "negative", "score": 1.0}],
        ],
        "truncated": [1],
        "windowed": [],
    }


def test_ner_body_with_groups_and_tokens() -> None:
    group = Entity("PER", 0.5, 0, 13, "Angela Merkel")
    token = Entity("B-LOC", 0.25, 21, 23, "Zü", index=6)
    body = ner_body("ner", [[group, token], []])
    assert_valid(NerResponse, body)
    assert body["results"] == [[group.as_dict(), token.as_dict()], []]


def test_health_ok() -> None:
    body = health_ok()
    assert_valid(HealthOut, body)
    assert body == {"status": "ok", "reasons": []}


def fake_pipeline(task: Task, labels: list[str]) -> Pipeline:
    from bertserve.modelrepo import EmbeddingConfig, Pooling

    embedding = (
        EmbeddingConfig(pooling=Pooling.MEAN, dimensions=8) if task == Task.FEATURE_EXTRACTION else None
    )
    config = ModelConfig(
        name="m",
        task=task,
        architecture="bert",
        labels=labels,
        embedding=embedding,
        max_length=128,
        inputs=["input_ids", "attention_mask"],
        versions={1: VersionConfig(artifacts=[])},
    )
    return cast(
        Pipeline,
        SimpleNamespace(
            config=config,
            backend=SimpleNamespace(name="fake", precision=Precision.FP32),
            batcher=SimpleNamespace(limits=BatchLimits(32, 8192, 0.002, 1024)),
            limits=RequestLimits(max_sequences=1024, max_tokens=65536),
        ),
    )


@pytest.mark.parametrize(
    ("task", "labels"),
    [
        (Task.TEXT_CLASSIFICATION, ["negative", "positive"]),
        (Task.TOKEN_CLASSIFICATION, ["O", "B-PER", "I-PER"]),
    ],
)
def test_model_info_and_model_list(task: Task, labels: list[str], tmp_path: Path) -> None:
    info = model_info(fake_pipeline(task, labels), True, Settings(repo=tmp_path))
    assert_valid(ModelInfo, info)
    assert_valid(ModelList, {"models": [info]})
    assert info["batching"]["max_queue_delay_ms"] == pytest.approx(2.0)
    if task == Task.TOKEN_CLASSIFICATION:
        assert (info["tag_scheme"], info["segmentation"]) == ("IOB2", "none")
    else:
        assert (info["problem_type"], info["tag_scheme"], info["segmentation"]) == (
            "single_label_classification",
            None,
            None,
        )
    json.dumps(info, allow_nan=False)


def test_embed_body() -> None:
    import numpy as np

    from bertserve.service.api.routes import embed_body
    from bertserve.service.pipeline import Embeddings

    body = embed_body("e", Embeddings(np.array([[0.6, 0.8], [1.0, 0.0]], dtype=np.float32), 7, [1]))
    assert_valid(EmbedResponse, body)
    assert body["dimensions"] == 2 and body["usage"] == {"tokens": 7} and body["truncated"] == [1]
    assert body["embeddings"][0] == pytest.approx([0.6, 0.8])


def test_rerank_body_ranks_best_first_keeps_ties_in_request_order_and_cuts_to_top_n() -> None:
    from bertserve.service.api.routes import rerank_body
    from bertserve.service.api.schemas import RerankRequest
    from bertserve.service.pipeline import Reranking

    out = Reranking([0.1, 0.9, 0.5, 0.9], truncated=[])
    request = RerankRequest(query="q", texts=["a", "b", "c", "d"], top_n=3, return_text=True)
    body = rerank_body("r", out, request)
    assert_valid(RerankResponse, body)
    assert body["results"] == [
        {"index": 1, "score": 0.9, "text": "b"},
        {"index": 3, "score": 0.9, "text": "d"},
        {"index": 2, "score": 0.5, "text": "c"},
    ]
    plain = rerank_body("r", out, RerankRequest(query="q", texts=["a", "b", "c", "d"]))
    assert [r["index"] for r in plain["results"]] == [1, 3, 2, 0] and "text" not in plain["results"][0]


def test_tokenize_body(tmp_path: Path) -> None:
    from bertserve.service.api.routes import tokenize_body
    from bertserve.service.tokenization import TextTokenizer
    from tests.helpers.checkpoints import bert_tokenizer

    bert_tokenizer().save_pretrained(tmp_path)
    tokenizer = TextTokenizer(tmp_path / "tokenizer.json", 16)
    texts = ["Paris is nice", "the movie was great " * 5]
    body = tokenize_body("m", texts, tokenizer.tokenize(texts, add_special_tokens=True, truncate=True))
    assert_valid(TokenizeResponse, body)
    first, second = body["results"]
    assert first["tokens"][0]["special"] and first["tokens"][-1]["special"]
    assert all(texts[0][t["start"] : t["end"]] == t["text"] for t in first["tokens"] if not t["special"])
    assert first["count"] == len(first["tokens"]) > 2
    assert not first["truncated"] and second["truncated"] and second["count"] == 16


def test_model_info_of_an_embedding_model(tmp_path: Path) -> None:
    from bertserve.modelrepo import EmbeddingConfig, Pooling

    pipeline = fake_pipeline(Task.FEATURE_EXTRACTION, [])
    info = model_info(pipeline, True, Settings(repo=tmp_path))
    assert_valid(ModelInfo, info)
    assert info["labels"] == [] and info["embedding"] == {
        "pooling": "mean",
        "normalize": True,
        "dimensions": 8,
    }
    assert EmbeddingConfig(pooling=Pooling.MEAN, dimensions=8).normalize


def test_model_info_shows_the_served_precision_its_reason_and_gate(tmp_path: Path) -> None:
    from bertserve.modelrepo import ArtifactGate
    from bertserve.runtime.base import ServedPrecision

    pipeline = fake_pipeline(Task.TEXT_CLASSIFICATION, ["negative", "positive"])
    plain = model_info(pipeline, True, Settings(repo=tmp_path))
    assert plain["precision_reason"] is None and plain["gate"] is None  # a backend no loader chose
    gate = ArtifactGate(
        passed=True,
        agreement=0.995,
        min_agreement=0.99,
        metric="accuracy",
        drop_points=0.23,
        max_drop_points=0.5,
        speedup=2.3,
        needs=["vnni"],
        variant="dynamic-8bit",
        reasons=[],
    )
    reason = "int8: VNNI present (avx512_vnni), gate passed -0.23 pt accuracy, 99.5% agreement"
    pipeline.backend.served = ServedPrecision(Precision.INT8, reason, gate)  # type: ignore[attr-defined]
    pipeline.backend.precision = Precision.INT8  # type: ignore[misc]
    info = model_info(pipeline, True, Settings(repo=tmp_path))
    assert_valid(ModelInfo, info)
    assert (info["precision"], info["precision_reason"]) == ("int8", reason)
    assert (
        info["gate"] is not None and info["gate"]["drop_points"] == 0.23 and info["gate"]["needs"] == ["vnni"]
    )
    assert "reasons" not in info["gate"]
    pipeline.backend.served = ServedPrecision(  # type: ignore[attr-defined]
        Precision.INT8, "requested", gate, warning="int8 forced on a CPU with no VNNI"
    )
    forced = model_info(pipeline, True, Settings(repo=tmp_path))
    assert forced["precision_reason"] == "requested (warning: int8 forced on a CPU with no VNNI)"
