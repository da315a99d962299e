"""Embeddings, reranking and tokenization on real exported models, checked against the libraries
users compare us with: sentence-transformers' `encode` (every pooling mode, normalized or not, the
packaged MiniLM on SST-2 sentences) and the transformers pipeline's sigmoid for a cross-encoder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bertserve.export.exporter import ExportOptions, run_export
from bertserve.modelrepo import load_model_config
from bertserve.service.settings import Settings
from tests.helpers.asgi import AppStarter

BACKENDS = ["onnxruntime-cpu", "openvino-cpu"]
# lengths from one word to past the tiny models' max_length (48 tokens): every batch is padded and
# one text is truncated, as sentence-transformers truncates it
TEXTS = [
    "paris",
    "the movie was great and the actors were wonderful",
    "worst service ever",
    "i did not like this film at all , it was boring and far too long " * 4,
    "mary visited paris last summer with her friends from london",
]
MINILM_MIN_COSINE = 0.9999  # the bar, per sentence


def st_encode(path: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    return np.asarray(model.encode(texts, batch_size=8, convert_to_numpy=True), dtype=np.float64)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.asarray((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


async def embed(client: httpx.AsyncClient, model: str, inputs: Any, **extra: Any) -> np.ndarray:
    r = await client.post(f"/v1/models/{model}/embed", json={"inputs": inputs, **extra})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dimensions"] == len(body["embeddings"][0])
    return np.asarray(body["embeddings"], dtype=np.float64)


@pytest.fixture
def serve(start_app: AppStarter) -> Callable[..., Any]:
    async def start(
        repo: Path, models: list[str], backend: str = "onnxruntime-cpu", **kw: Any
    ) -> httpx.AsyncClient:
        settings = Settings(repo=repo, models=models, backend=backend, intra_op_threads=1, **kw)  # type: ignore[arg-type]
        return (await start_app.start(settings, wait_ready_s=60)).client

    return start


@pytest.fixture(scope="module")
def pooling_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """One tiny sentence-transformers model per pooling mode (mean normalized, the others not),
    exported to ONNX and OpenVINO IR."""
    from tests.helpers.checkpoints import build_sentence_transformer

    root = tmp_path_factory.mktemp("pooling")
    repo = root / "repo"
    sources = {}
    for pooling in ("mean", "cls", "max", "lasttoken"):
        ckpt = build_sentence_transformer(
            root / pooling, pooling=pooling, normalize=pooling == "mean", seed=3
        )
        run_export(
            ExportOptions(
                model=str(ckpt.path),
                task="feature-extraction",
                name=f"st-{pooling}",
                repo=repo,
                quiet=True,
                measure_speed=False,
            )
        )
        sources[pooling] = ckpt.path
    return repo, sources


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "lasttoken"])
async def test_every_pooling_matches_sentence_transformers_single_and_batched(
    serve: Callable[..., Any], pooling_repo: tuple[Path, dict[str, Path]], pooling: str, backend: str
) -> None:
    repo, sources = pooling_repo
    name = f"st-{pooling}"
    config = load_model_config(repo, name)
    assert config.embedding is not None and config.embedding.pooling == pooling
    assert config.embedding.normalize == (pooling == "mean")
    assert config.max_length == 48  # sentence_bert_config.json's max_seq_length, as encode truncates
    expected = st_encode(sources[pooling], TEXTS)
    client = await serve(repo, [name], backend)
    batched = await embed(client, name, TEXTS)
    singles = np.concatenate([await embed(client, name, text) for text in TEXTS])
    for got in (batched, singles):
        np.testing.assert_allclose(got, expected, atol=1e-4)
        assert cosines(got, expected).min() >= 0.9999
    info = (await client.get(f"/v1/models/{name}")).json()
    assert info["task"] == "feature-extraction" and info["labels"] == []
    assert info["embedding"] == {"pooling": pooling, "normalize": pooling == "mean", "dimensions": 32}


@pytest.fixture(scope="module")
def minilm_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The packaged MiniLM-L6 sentence-transformers model, exported as shipped."""
    from bertserve.training.finetune import default_base_model

    source = default_base_model()
    repo = tmp_path_factory.mktemp("minilm")
    result = run_export(
        ExportOptions(
            model=str(source),
            task="feature-extraction",
            name="minilm",
            repo=repo,
            quiet=True,
            measure_speed=False,
        )
    )
    assert any("match sentence-transformers" in note for note in result.report.notes)
    return repo, source


def sst2_sentences(limit: int | None = None) -> list[str]:
    """SST-2 dev sentences (all 872) when ../shared/data is present, else the built-in review sentences."""
    from loadtest.corpus import classify_corpus

    return list(classify_corpus(limit=limit).texts)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_packaged_minilm_matches_sentence_transformers_on_sst2_sentences(
    serve: Callable[..., Any], minilm_repo: tuple[Path, Path], backend: str
) -> None:
    repo, source = minilm_repo
    texts = sst2_sentences()
    expected = st_encode(source, texts)
    client = await serve(repo, ["minilm"], backend)
    batched = np.concatenate(
        [await embed(client, "minilm", texts[i : i + 32]) for i in range(0, len(texts), 32)]
    )
    singles = np.concatenate([await embed(client, "minilm", text) for text in texts[:48]])
    assert cosines(batched, expected).min() >= MINILM_MIN_COSINE
    assert cosines(singles, expected[:48]).min() >= MINILM_MIN_COSINE
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)  # its Normalize module


async def test_dimensions_cut_then_normalize_and_normalize_false_gives_the_pooled_vector(
    serve: Callable[..., Any], exported_repo: Path, sentence_transformer_checkpoint: Any
) -> None:
    client = await serve(exported_repo, ["bert-embed"], precision="fp32")
    full = await embed(client, "bert-embed", TEXTS, normalize=False)
    np.testing.assert_allclose(
        full, st_encode_unnormalized(sentence_transformer_checkpoint.path, TEXTS), atol=1e-4
    )
    cut = await embed(client, "bert-embed", TEXTS, dimensions=8)
    prefix = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, prefix, atol=1e-5)
    r = await client.post("/v1/models/bert-embed/embed", json={"inputs": "x", "dimensions": 33})
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_input"
    long = await client.post("/v1/models/bert-embed/embed", json={"inputs": TEXTS[3], "truncate": False})
    assert long.status_code == 413
    r = await client.post("/v1/models/bert-embed/embed", json={"inputs": TEXTS})
    assert r.json()["truncated"] == [3] and r.json()["usage"]["tokens"] > len(TEXTS) * 2


def st_encode_unnormalized(path: Path, texts: list[str]) -> np.ndarray:
    """sentence-transformers' Transformer + Pooling, without its Normalize module."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    unnormalized = SentenceTransformer(modules=[model[0], model[1]], device="cpu")
    return np.asarray(unnormalized.encode(texts, convert_to_numpy=True), dtype=np.float64)


def transformers_sigmoid(checkpoint: Path, query: str, texts: list[str]) -> list[float]:
    from transformers import pipeline

    scorer = pipeline("text-classification", model=str(checkpoint), device="cpu")
    return [float(x["score"]) for x in scorer([{"text": query, "text_pair": t} for t in texts])]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_cross_encoder_reranks_by_the_transformers_sigmoid(
    serve: Callable[..., Any], exported_repo: Path, bert_scorer_checkpoint: Any, backend: str
) -> None:
    config = load_model_config(exported_repo, "bert-rerank")
    assert (config.task, config.labels) == ("rerank", ["relevance"])
    client = await serve(exported_repo, ["bert-rerank"], backend, precision="fp32")
    query = "where did mary go last summer ?"
    want = transformers_sigmoid(bert_scorer_checkpoint.path, query, TEXTS)
    r = await client.post(
        "/v1/models/bert-rerank/rerank",
        json={"query": query, "texts": TEXTS, "return_text": True, "top_n": 4},
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 4
    assert [x["index"] for x in results] == sorted(range(len(TEXTS)), key=lambda i: -want[i])[:4]
    for x in results:
        assert abs(x["score"] - want[x["index"]]) <= 1e-4 and x["text"] == TEXTS[x["index"]]
    raw = (
        await client.post(
            "/v1/models/bert-rerank/rerank", json={"query": query, "texts": TEXTS, "raw_scores": True}
        )
    ).json()
    for x in raw["results"]:  # the logit whose sigmoid is the score
        assert abs(1 / (1 + np.exp(-x["score"])) - want[x["index"]]) <= 1e-4
    # a rerank model is a classifier of pairs as well
    r = await client.post("/v1/models/bert-rerank/classify", json={"inputs": [[query, TEXTS[0]]]})
    assert abs(r.json()["results"][0][0]["score"] - want[0]) <= 1e-4


async def test_an_embedding_model_reranks_by_cosine_and_other_models_are_refused(
    serve: Callable[..., Any], exported_repo: Path, sentence_transformer_checkpoint: Any
) -> None:
    client = await serve(exported_repo, ["bert-embed", "bert-cls", "bert-ner"], precision="fp32")
    query = "where did mary go last summer ?"
    vectors = st_encode(sentence_transformer_checkpoint.path, [query, *TEXTS])
    want = cosines(np.repeat(vectors[:1], len(TEXTS), axis=0), vectors[1:])
    r = await client.post("/v1/models/bert-embed/rerank", json={"query": query, "texts": TEXTS})
    assert r.status_code == 200, r.text
    got = {x["index"]: x["score"] for x in r.json()["results"]}
    for i, score in got.items():
        assert abs(score - want[i]) <= 1e-4
    assert "text" not in r.json()["results"][0]
    two_labels = await client.post("/v1/models/bert-cls/rerank", json={"query": "q", "texts": ["a"]})
    assert two_labels.status_code == 400 and two_labels.json()["error"]["type"] == "unsupported_task"
    tagger = await client.post("/v1/models/bert-ner/rerank", json={"query": "q", "texts": ["a"]})
    assert tagger.status_code == 400
    not_embedder = await client.post("/v1/models/bert-cls/embed", json={"inputs": "a"})
    assert not_embedder.status_code == 400 and "feature-extraction" in not_embedder.json()["error"]["message"]
    assert (await client.post("/v1/models/bert-embed/classify", json={"inputs": "a"})).status_code == 400


async def test_tokenize_shows_the_tokens_the_model_reads(
    serve: Callable[..., Any], exported_repo: Path
) -> None:
    from tokenizers import Tokenizer

    client = await serve(exported_repo, ["bert-ner", "bert-embed"])
    text = "Mary visited Paris."
    for model in ("bert-ner", "bert-embed"):  # every task tokenizes, with its own tokenizer
        tokenizer = Tokenizer.from_file(str(exported_repo / model / "1" / "tokenizer.json"))
        enc = tokenizer.encode(text)
        r = await client.post(f"/v1/models/{model}/tokenize", json={"inputs": [text, "paris"]})
        assert r.status_code == 200, r.text
        first = r.json()["results"][0]
        assert [t["id"] for t in first["tokens"]] == enc.ids and first["count"] == len(enc.ids)
        assert [t["special"] for t in first["tokens"]] == [bool(x) for x in enc.special_tokens_mask]
        for token in first["tokens"]:
            if not token["special"]:
                assert text[token["start"] : token["end"]] == token["text"]
    tokenizer = Tokenizer.from_file(str(exported_repo / "bert-ner" / "1" / "tokenizer.json"))
    bare = (
        await client.post("/v1/models/bert-ner/tokenize", json={"inputs": text, "add_special_tokens": False})
    ).json()
    assert [t["id"] for t in bare["results"][0]["tokens"]] == tokenizer.encode(
        text, add_special_tokens=False
    ).ids
    cut = (
        await client.post("/v1/models/bert-ner/tokenize", json={"inputs": TEXTS[3] * 4, "truncate": True})
    ).json()
    assert (
        cut["results"][0]["truncated"]
        and cut["results"][0]["count"] == load_model_config(exported_repo, "bert-ner").max_length
    )
