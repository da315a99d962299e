"""The embedding, rerank and compatibility routes on the fake backend: the same batching, limits,
deadlines and metrics as /classify, the default model of each TEI route, and each dialect's error
body, with answers recomputed from the fake model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bertserve.modelrepo import EmbeddingConfig, Pooling, Task
from bertserve.runtime.fake import FaultHooks, fake_logits
from bertserve.service.errors import StartupError
from bertserve.service.registry import ModelRegistry
from bertserve.service.settings import Settings
from bertserve.service.tokenization import TextTokenizer
from tests.helpers.asgi import AppStarter
from tests.helpers.fake_repo import DEFAULT_SPECS, FakeBackends, FakeModelSpec, write_fake_repo

WIDTH = 6
EMBED = FakeModelSpec(
    "emb",
    task=Task.FEATURE_EXTRACTION,
    labels=(),
    embedding=EmbeddingConfig(pooling=Pooling.MEAN, dimensions=WIDTH),
)
EMBED_2 = FakeModelSpec(
    "emb2",
    task=Task.FEATURE_EXTRACTION,
    labels=(),
    embedding=EmbeddingConfig(pooling=Pooling.CLS, dimensions=WIDTH),
)
CROSS = FakeModelSpec("cross", task=Task.RERANK, labels=("relevance",))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_repo(tmp_path_factory.mktemp("compat-repo"), (*DEFAULT_SPECS, EMBED, EMBED_2, CROSS))


@pytest.fixture
def start(repo: Path, start_app: AppStarter) -> Callable[..., Any]:
    async def make(
        models: list[str], faults: FaultHooks | None = None, **overrides: Any
    ) -> tuple[httpx.AsyncClient, ModelRegistry, FakeBackends]:
        settings = Settings(repo=repo, backend="fake", models=models, **overrides)  # type: ignore[arg-type]
        backends = FakeBackends(faults or FaultHooks())
        started = await start_app.start(settings, backends)
        return started.client, started.registry, backends

    return make


def expected_vector(repo: Path, text: str) -> np.ndarray:
    """The fake model's row for `text`, normalized: what /embed must answer."""
    tokenizer = TextTokenizer(repo / "emb" / "1" / "tokenizer.json", 32)
    (enc,) = tokenizer.encode([text], truncate=True)
    x = enc.model_input(True)
    row = fake_logits(x.ids[None], np.ones((1, x.length), np.int64), x.type_ids[None], WIDTH, False)[0]
    return np.asarray(row / np.linalg.norm(row), dtype=np.float64)


def requests_total(registry: ModelRegistry, model: str, endpoint: str, code: str) -> float:
    value = registry.metrics.registry.get_sample_value(
        "bertserve_requests_total", {"model": model, "endpoint": endpoint, "code": code}
    )
    return value or 0.0


TEXTS = [f"text number {i} " + "word " * (i % 5) for i in range(24)]


async def test_concurrent_embed_requests_on_every_route_batch_together_and_get_their_own_rows(
    start: Callable[..., Any], repo: Path
) -> None:
    client, registry, backends = await start(["emb"], faults=FaultHooks(delay_s=0.02))
    bodies = [
        ("/v1/models/emb/embed", lambda t: {"inputs": t}),
        ("/embed", lambda t: {"inputs": t}),
        ("/v1/embeddings", lambda t: {"input": t, "model": "emb"}),
        ("/models/emb", lambda t: {"inputs": t}),
    ]

    async def one(i: int, text: str) -> np.ndarray:
        path, body = bodies[i % len(bodies)]
        r = await client.post(path, json=body(text))
        assert r.status_code == 200, r.text
        out = r.json()
        if path == "/v1/models/emb/embed":
            return np.asarray(out["embeddings"][0])
        if path == "/v1/embeddings":
            return np.asarray(out["data"][0]["embedding"])
        return np.asarray(out[0])

    backends.made["emb"].batch_shapes.clear()
    got = await asyncio.gather(*(one(i, t) for i, t in enumerate(TEXTS)))
    for text, vector in zip(TEXTS, got, strict=True):
        np.testing.assert_allclose(vector, expected_vector(repo, text), atol=1e-6)
    assert max(b for b, _ in backends.made["emb"].batch_shapes) > 1  # requests of all routes shared batches
    for endpoint in ("embed", "tei_embed", "openai_embeddings", "hf_inference"):
        assert requests_total(registry, "emb", endpoint, "200") == len(TEXTS) / 4


async def test_limits_and_deadlines_hold_on_every_route_in_each_dialect(start: Callable[..., Any]) -> None:
    faults = FaultHooks()
    client, registry, _ = await start(["emb", "cls"], faults=faults, max_inputs=4, max_input_chars=50)
    five = ["a"] * 5
    native = await client.post("/v1/models/emb/embed", json={"inputs": five})
    assert native.status_code == 413 and native.json()["error"]["type"] == "payload_too_large"
    tei = await client.post("/embed", json={"inputs": five})
    assert tei.status_code == 413 and tei.json() == {"error": tei.json()["error"], "error_type": "Validation"}
    openai = await client.post("/v1/embeddings", json={"input": five, "model": "emb"})
    assert openai.status_code == 413 and openai.json()["error"]["code"] == "payload_too_large"
    ids = await client.post("/v1/embeddings", json={"input": [[5]] * 5, "model": "emb"})
    assert ids.status_code == 413
    long = await client.post("/rerank", json={"query": "x" * 60, "texts": ["a"]})
    assert long.status_code == 413
    faults.delay_s = 0.5
    slow = await client.post("/embed", json={"inputs": "a"}, headers={"X-Request-Timeout-Ms": "100"})
    assert slow.status_code == 504 and slow.json()["error_type"] == "Backend"
    faults.delay_s, faults.fail_always = 0.0, True
    failed = await client.post("/embed", json={"inputs": "a"})
    assert failed.status_code == 424 and failed.json()["error_type"] == "Backend"  # TEI's status
    faults.fail_always = False
    assert requests_total(registry, "emb", "tei_embed", "413") == 1
    assert requests_total(registry, "emb", "openai_embeddings", "413") == 2
    # FastAPI's own 422 (before the route runs) is counted under the route too
    invalid = await client.post("/v1/embeddings", json={"input": 42, "model": "emb"})
    assert invalid.status_code == 400 and invalid.json()["error"]["type"] == "invalid_request_error"


async def test_tei_routes_use_the_one_model_of_their_kind_or_the_setting(
    start: Callable[..., Any], repo: Path
) -> None:
    client, _, _ = await start(["emb", "emb2", "cls", "cross", "ner"])
    ambiguous = await client.post("/embed", json={"inputs": "a"})
    assert ambiguous.status_code == 404 and "BERTSERVE_DEFAULT_EMBEDDING_MODEL" in ambiguous.json()["error"]
    predict = await client.post("/predict", json={"inputs": ["a", "b", "c"]})
    assert predict.status_code == 200 and len(predict.json()) == 3  # cls: the one text-classification model
    pair = (await client.post("/predict", json={"inputs": ["a", "b"]})).json()
    assert isinstance(pair[0], dict)  # TEI reads two texts as one pair: one flat answer
    rerank = await client.post("/rerank", json={"query": "q", "texts": ["a", "b"]})
    assert rerank.status_code == 200 and {r["index"] for r in rerank.json()} == {0, 1}  # the cross-encoder
    scores = (await client.post("/v1/models/cross/rerank", json={"query": "q", "texts": ["a", "b"]})).json()
    assert [r["score"] for r in rerank.json()] == [r["score"] for r in scores["results"]]

    chosen, _, _ = await start(["emb", "emb2"], default_embedding_model="emb2")
    info = (await chosen.get("/info")).json()
    assert info["model_id"] == "emb2" and info["model_type"] == {"embedding": {"pooling": "cls"}}
    assert (await chosen.post("/embed", json={"inputs": "a"})).status_code == 200
    # without a cross-encoder, /rerank ranks by the default embedding model's cosine
    cosine = await chosen.post("/rerank", json={"query": "q", "texts": ["a", "q"]})
    assert (
        cosine.status_code == 200
        and cosine.json()[0]["index"] == 1
        and cosine.json()[0]["score"] == pytest.approx(1.0)
    )


async def test_a_default_model_that_is_not_served_or_of_the_wrong_task_fails_startup(
    start: Callable[..., Any],
) -> None:
    for setting in ({"default_embedding_model": "cls"}, {"default_classification_model": "nope"}):
        with pytest.raises(StartupError, match="not a served"):
            await start(["emb", "cls"], **setting)


async def test_hf_inference_shape_answers_by_task(start: Callable[..., Any]) -> None:
    client, _, _ = await start(["cls", "ner", "emb"])
    classified = (await client.post("/models/cls", json={"inputs": "a", "parameters": {"top_k": 1}})).json()
    assert len(classified) == 1 and len(classified[0]) == 1 and set(classified[0][0]) == {"label", "score"}
    raw = (
        await client.post("/models/cls", json={"inputs": "a", "parameters": {"function_to_apply": "none"}})
    ).json()
    native = (await client.post("/v1/models/cls/classify", json={"inputs": "a"})).json()["results"][0]
    assert {x["label"] for x in raw[0]} == {x["label"] for x in native}
    entities = await client.post("/models/ner", json={"inputs": "Tim Cook visited Berlin."})
    assert entities.status_code == 200 and isinstance(entities.json(), list)
    for entity in entities.json():
        assert set(entity) == {"entity_group", "score", "word", "start", "end"}
    foreign = await client.post("/models/cls", json={"inputs": "a", "normalize": False})
    assert foreign.status_code == 422 and "normalize" in foreign.json()["error"]
    foreign = await client.post("/models/emb", json={"inputs": "a", "parameters": {"top_k": 2}})
    assert foreign.status_code == 422 and "top_k" in foreign.json()["error"]
    stride = await client.post("/models/ner", json={"inputs": "a", "parameters": {"stride": 16}})
    assert stride.status_code == 422 and "BERTSERVE_NER_STRIDE" in stride.json()["error"]
    wrong = await client.post("/models/cls/pipeline/feature-extraction", json={"inputs": "a"})
    assert wrong.status_code == 400 and wrong.json()["error_type"] == "Validation"
    missing = await client.post("/models/nope", json={"inputs": "a"})
    assert missing.status_code == 404 and set(missing.json()) == {"error", "error_type"}
