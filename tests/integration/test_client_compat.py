"""Clients nobody here wrote, from PyPI, against a running `bertserve serve`: huggingface_hub's
`InferenceClient` (the TEI routes and the HF Inference API shape) and the `openai` client's
`embeddings.create`; their answers must equal the native routes'. Plus the TEI and OpenAI error
bodies those clients parse."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers.service_process import ServiceProcess, start_service

MODELS = "bert-embed,bert-cls,bert-ner,bert-rerank"
TEXTS = ["mary visited paris last summer", "the movie was great", "worst service ever"]


@pytest.fixture(scope="module")
def service(exported_repo: Path) -> Iterator[ServiceProcess]:
    env = {
        "BERTSERVE_MODELS": MODELS,
        "BERTSERVE_BACKEND": "onnxruntime-cpu",
        "BERTSERVE_PRECISION": "fp32",
        "BERTSERVE_DEFAULT_CLASSIFICATION_MODEL": "bert-cls",
        "BERTSERVE_API_KEY": "compat-test-key-0123456789",
    }
    with start_service(exported_repo, env=env) as proc:
        proc.wait_ready(120)
        yield proc
        assert proc.stop() == 0


AUTH = {"Authorization": "Bearer compat-test-key-0123456789"}


def native(service: ServiceProcess, model: str, route: str, body: dict[str, object]) -> dict[str, object]:
    r = httpx.post(f"{service.base}/v1/models/{model}/{route}", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    out: dict[str, object] = r.json()
    return out


def native_vectors(service: ServiceProcess, texts: list[str], **extra: object) -> np.ndarray:
    return np.asarray(native(service, "bert-embed", "embed", {"inputs": texts, **extra})["embeddings"])


def test_inference_client_feature_extraction_on_tei_embed(service: ServiceProcess) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=f"{service.base}/embed", token="compat-test-key-0123456789")
    got = client.feature_extraction(TEXTS[0])
    assert got.shape == (1, 32)
    np.testing.assert_allclose(got, native_vectors(service, TEXTS[:1]), atol=1e-6)
    unnormalized = client.feature_extraction(TEXTS[0], normalize=False)
    np.testing.assert_allclose(unnormalized, native_vectors(service, TEXTS[:1], normalize=False), atol=1e-6)
    # the HF Inference API's URL for the same model answers the same
    hub_style = InferenceClient(
        model=f"{service.base}/models/bert-embed/pipeline/feature-extraction",
        token="compat-test-key-0123456789",
    )
    np.testing.assert_allclose(hub_style.feature_extraction(TEXTS[0]), got, atol=1e-6)


def test_inference_client_text_classification(service: ServiceProcess) -> None:
    from huggingface_hub import InferenceClient

    want = native(service, "bert-cls", "classify", {"inputs": TEXTS[1]})["results"][0]  # type: ignore[index]
    for url in (f"{service.base}/predict", f"{service.base}/models/bert-cls"):
        client = InferenceClient(model=url, token="compat-test-key-0123456789")
        got = client.text_classification(TEXTS[1])
        assert [(x.label, round(x.score, 6)) for x in got] == [
            (w["label"], round(w["score"], 6)) for w in want
        ]
        top = client.text_classification(TEXTS[1], top_k=1)
        assert [x.label for x in top] == [want[0]["label"]]
    # TEI's own shape: one input answers a flat list, a batch a list per input
    single = httpx.post(f"{service.base}/predict", json={"inputs": TEXTS[1]}, headers=AUTH).json()
    assert single == want
    batch = httpx.post(f"{service.base}/predict", json={"inputs": TEXTS}, headers=AUTH).json()
    assert len(batch) == 3 and batch[1] == want
    raw = httpx.post(
        f"{service.base}/predict", json={"inputs": TEXTS[1], "raw_scores": True}, headers=AUTH
    ).json()
    logits = {x["label"]: x["score"] for x in raw}
    e = np.exp(np.array(list(logits.values())) - max(logits.values()))
    assert dict(zip(logits, e / e.sum(), strict=True))[want[0]["label"]] == pytest.approx(
        want[0]["score"], abs=1e-6
    )


def test_inference_client_token_classification(service: ServiceProcess) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=f"{service.base}/models/bert-ner", token="compat-test-key-0123456789")
    text = "mary visited paris last summer with her friends from london"
    for strategy in ("simple", "first"):
        want = native(service, "bert-ner", "ner", {"inputs": text, "aggregation": strategy})["results"][0]  # type: ignore[index]
        got = client.token_classification(text, aggregation_strategy=strategy)  # type: ignore[arg-type]
        assert [(e.entity_group, e.start, e.end, e.word) for e in got] == [
            (w["entity_group"], w["start"], w["end"], w["text"]) for w in want
        ]


def test_tei_rerank_tokenize_and_info(service: ServiceProcess) -> None:
    query = "where did mary go ?"
    body = {"query": query, "texts": TEXTS, "return_text": True}
    tei = httpx.post(f"{service.base}/rerank", json=body, headers=AUTH).json()
    ours = native(service, "bert-rerank", "rerank", body)["results"]
    assert tei == ours  # the one rerank model is the default; same order, scores and texts
    tokens = httpx.post(f"{service.base}/tokenize", json={"inputs": [TEXTS[0]]}, headers=AUTH).json()
    want = native(service, "bert-embed", "tokenize", {"inputs": TEXTS[0]})["results"][0]["tokens"]  # type: ignore[index]
    assert [t["id"] for t in tokens[0]] == [t["id"] for t in want]
    assert tokens[0][0]["special"] and tokens[0][0]["start"] is None
    info = httpx.get(f"{service.base}/info", headers=AUTH).json()
    assert info["model_id"] == "bert-embed" and info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 48 and info["max_client_batch_size"] == 32


def test_tei_errors_have_tei_bodies(service: ServiceProcess) -> None:
    long = "paris " * 200
    r = httpx.post(
        f"{service.base}/embed", json={"inputs": long}, headers=AUTH
    )  # TEI refuses unless truncate
    assert r.status_code == 413 and r.json()["error_type"] == "Validation" and "tokens" in r.json()["error"]
    assert (
        httpx.post(f"{service.base}/embed", json={"inputs": long, "truncate": True}, headers=AUTH).status_code
        == 200
    )
    r = httpx.post(f"{service.base}/embed", json={"inputs": ""}, headers=AUTH)
    assert r.status_code == 422 and set(r.json()) == {"error", "error_type"}
    r = httpx.post(
        f"{service.base}/embed", json={"inputs": "a", "truncation_direction": "Left"}, headers=AUTH
    )
    assert r.status_code == 422 and "Right" in r.json()["error"]
    r = httpx.post(f"{service.base}/embed", json={"inputs": "a", "prompt_name": "query"}, headers=AUTH)
    assert r.status_code == 422 and "unknown field" in r.json()["error"]
    r = httpx.post(f"{service.base}/embed", json={"inputs": "a"})  # no API key
    assert r.status_code == 401 and set(r.json()) == {"error", "error_type"}


def test_openai_client_embeddings(service: ServiceProcess) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{service.base}/v1", api_key="compat-test-key-0123456789")
    want = native_vectors(service, TEXTS)
    # the client asks for base64 unless told otherwise, and decodes it
    out = client.embeddings.create(model="bert-embed", input=TEXTS)
    assert [d.index for d in out.data] == [0, 1, 2] and out.model == "bert-embed"
    np.testing.assert_allclose(np.asarray([d.embedding for d in out.data]), want, atol=1e-6)
    assert out.usage.prompt_tokens == out.usage.total_tokens > 3 * 2
    floats = client.embeddings.create(
        model="bert-embed", input=TEXTS[0], encoding_format="float", dimensions=8
    )
    cut = want[0, :8] / np.linalg.norm(want[0, :8])
    np.testing.assert_allclose(floats.data[0].embedding, cut, atol=1e-6)
    raw = httpx.post(
        f"{service.base}/v1/embeddings",
        json={"model": "bert-embed", "input": TEXTS[0], "encoding_format": "base64"},
        headers=AUTH,
    ).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, want[0], atol=1e-6)
    # token ids in: the model's own ids, framed by its special tokens as a text would be
    ids = native(service, "bert-embed", "tokenize", {"inputs": TEXTS[0], "add_special_tokens": False})
    token_ids = [t["id"] for t in ids["results"][0]["tokens"]]  # type: ignore[index]
    by_ids = client.embeddings.create(model="bert-embed", input=[token_ids], encoding_format="float")
    np.testing.assert_allclose(by_ids.data[0].embedding, want[0], atol=1e-5)


def test_openai_errors_have_openai_bodies(service: ServiceProcess) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{service.base}/v1", api_key="compat-test-key-0123456789", max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="text-embedding-3-small", input="a")
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as wrong_task:
        client.embeddings.create(model="bert-cls", input="a")
    assert wrong_task.value.body["code"] == "unsupported_task"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as empty:
        client.embeddings.create(model="bert-embed", input="")
    assert empty.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="bert-embed", input=[[10**9]])  # outside the vocabulary
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{service.base}/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="bert-embed", input="a"
        )
