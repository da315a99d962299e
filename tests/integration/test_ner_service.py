"""The /ner endpoint end to end: the fake backend for the HTTP contract and long-text windowing,
the real backends on an exported token-classification model against the transformers pipeline."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bertserve.modelrepo import load_model_config
from bertserve.runtime.fake import fake_logits
from bertserve.service.heads.token_classification import TokenClassificationHead
from bertserve.service.settings import Settings
from bertserve.service.tokenization import TextTokenizer
from tests.helpers.asgi import AppStarter, serve_app
from tests.helpers.fake_repo import FakeBackends, write_fake_repo

WORDS = (
    "john", "smith", "lives", "in", "new", "york", "and", "works", "for", "the", "united", "nations",
    ".", "weather", "seattle", "is", "rainy", "but", "city", "beautiful", ";", "Zürich", "東京",
    "café😀", "don't", "U.S.A.", "movie", "was", "great",
)  # fmt: skip


def placed_text(rng: random.Random, n_words: int) -> tuple[str, dict[int, int]]:
    """A random text and, for each character of each of its words, which word it is part of: the
    test's own record of where the words are, to check entity offsets against."""
    text, word_of = "", {}
    for w in range(n_words):
        word = rng.choice(WORDS)
        word_of.update((i, w) for i in range(len(text), len(text) + len(word)))
        text += word + rng.choice((" ", " ", " ", "  ", "\n"))
    return text.rstrip(), word_of


def random_text(rng: random.Random, n_words: int) -> str:
    return placed_text(rng, n_words)[0]


def assert_on_words(entities: list[dict[str, Any]], word_of: dict[int, int]) -> None:
    """Every span starts and ends on characters of placed words (never on a separator); a token
    (strategy none) lies inside one word."""
    for e in entities:
        assert e["start"] in word_of and e["end"] - 1 in word_of, e
        if "index" in e:
            assert word_of[e["start"]] == word_of[e["end"] - 1], e


@pytest.fixture
async def fake_client(tmp_path: Path, start_app: AppStarter) -> tuple[httpx.AsyncClient, Path, Any]:
    repo = write_fake_repo(tmp_path / "repo")
    settings = Settings(repo=repo, backend="fake", ner_stride=8)  # type: ignore[arg-type]
    started = await start_app.start(settings, FakeBackends(), wait_ready_s=30)
    return started.client, repo, started.app


def expected_whole_text(repo: Path, text: str, strategy: str) -> list[dict[str, Any]]:
    """What the fake token-level model gives on the whole text at once, no windows: its logits
    depend on each token id alone, so windowing must not change a single entity."""
    config = load_model_config(repo, "ner")
    tokenizer = TextTokenizer(repo / "ner" / "1" / "tokenizer.json", max_length=10_000)
    (doc,) = tokenizer.encode_documents([text])
    ids = np.array([doc.ids], dtype=np.int64)
    logits = fake_logits(ids, np.ones_like(ids), None, len(config.labels), True)[0]
    head = TokenClassificationHead.from_config(config)
    return [e.as_dict() for e in head.postprocess(text, doc.encoding, logits, strategy)]  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max", "none"])
async def test_long_texts_are_windowed_without_changing_any_entity(
    fake_client: tuple[httpx.AsyncClient, Path, Any], strategy: str
) -> None:
    client, repo, _ = fake_client
    rng = random.Random(7)
    placed = [placed_text(rng, n) for n in (3, 40, 150, 400)]  # max_length is 32 tokens
    texts = [text for text, _ in placed]
    r = await client.post("/v1/models/ner/ner", json={"inputs": texts, "aggregation": strategy})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(texts)
    found = 0
    for (text, word_of), entities in zip(placed, results, strict=True):
        assert entities == expected_whole_text(repo, text, strategy)
        assert_on_words(entities, word_of)
        spans = [(e["start"], e["end"]) for e in entities]
        assert len(spans) == len(set(spans))
        found += len(entities)
    assert found > 20  # the comparison above is not between empty lists
    # with nothing ignored, the spans from all windows cover the words, each character once
    r = await client.post(
        "/v1/models/ner/ner", json={"inputs": texts, "aggregation": strategy, "ignore_labels": []}
    )
    for (text, word_of), entities in zip(placed, r.json()["results"], strict=True):
        assert_on_words(entities, word_of)
        assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(entities)), text
        covered = {i for e in entities for i in range(e["start"], e["end"])}
        assert covered >= word_of.keys()
        if strategy == "none":
            assert covered == word_of.keys()


def shifted(entities: list[dict[str, Any]], chars: int, tokens: int) -> list[dict[str, Any]]:
    out = []
    for e in entities:
        e = {**e, "start": e["start"] + chars, "end": e["end"] + chars}
        if "index" in e:
            e["index"] += tokens
        out.append(e)
    return out


@pytest.mark.parametrize("strategy", ["simple", "first", "none"])
@pytest.mark.parametrize("mode", ["lines", "sentences"])
async def test_segmented_document_equals_its_parts_sent_one_by_one(
    fake_client: tuple[httpx.AsyncClient, Path, Any], strategy: str, mode: str
) -> None:
    client, repo, _ = fake_client
    rng = random.Random(11)
    lines = [
        " ".join(rng.choice(WORDS[:12]) for _ in range(rng.randint(2, 60))).replace(" .", "") + "."
        for _ in range(12)
    ]  # some longer than the 32-token model: a segment is still windowed
    document = "\n".join(lines) if mode == "lines" else "  ".join(x[:1].upper() + x[1:] for x in lines)
    parts = lines if mode == "lines" else [x[:1].upper() + x[1:] for x in lines]
    body = {"aggregation": strategy, "segmentation": mode}
    r = await client.post("/v1/models/ner/ner", json={"inputs": document, **body})
    assert r.status_code == 200, r.text
    (got,) = r.json()["results"]
    r = await client.post("/v1/models/ner/ner", json={"inputs": parts, **body})
    one_by_one = r.json()["results"]
    tokenizer = TextTokenizer(repo / "ner" / "1" / "tokenizer.json", max_length=10_000)
    want: list[dict[str, Any]] = []
    cursor = tokens = 0
    for part, entities, enc in zip(parts, one_by_one, tokenizer.encode_documents(parts), strict=True):
        assert entities == expected_whole_text(repo, part, strategy)  # each part is read alone
        chars = document.index(part, cursor)  # where the test put this part, not the segmenter
        want += shifted(entities, chars, tokens)
        cursor = chars + len(part)
        tokens += len(enc.ids)
    # the same entities, their spans moved to where each part sits in the document (and their
    # text, cut from the part alone, therefore equal to the document's characters there)
    assert got == want and len(got) > 20
    if strategy == "none":
        # read whole, the same document has one [CLS] ... [SEP], so token positions differ after the
        # first segment: the setting is not a no-op (the fake model's scores ignore context, so the
        # grouped strategies may legitimately agree)
        r = await client.post("/v1/models/ner/ner", json={"inputs": document, "aggregation": strategy})
        assert r.json()["results"][0] != got


async def test_model_yaml_sets_the_default_segmentation(tmp_path: Path) -> None:
    import yaml

    repo = write_fake_repo(tmp_path / "repo")
    path = repo / "ner" / "model.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["segmentation"] = "lines"
    path.write_text(yaml.safe_dump(raw))
    settings = Settings(repo=repo, backend="fake")  # type: ignore[arg-type]
    text = "john smith lives in new york\nthe united nations"
    async with serve_app(settings, FakeBackends(), wait_ready_s=30) as served:
        client = served.client
        default = (
            await client.post("/v1/models/ner/ner", json={"inputs": text, "aggregation": "none"})
        ).json()
        lines = await client.post(
            "/v1/models/ner/ner", json={"inputs": text, "aggregation": "none", "segmentation": "lines"}
        )
        whole = await client.post(
            "/v1/models/ner/ner", json={"inputs": text, "aggregation": "none", "segmentation": "none"}
        )
        info = (await client.get("/v1/models/ner")).json()
        cls_info = (await client.get("/v1/models/cls")).json()
    assert default == lines.json() != whole.json()
    assert info["segmentation"] == "lines" and info["tag_scheme"] is not None
    assert cls_info["segmentation"] is None and cls_info["tag_scheme"] is None


async def test_ner_shapes_ignore_labels_and_metrics(fake_client: tuple[httpx.AsyncClient, Path, Any]) -> None:
    client, _, _ = fake_client
    text = "john smith lives in new york"
    r = await client.post("/v1/models/ner/ner", json={"inputs": text, "aggregation": "none"})
    assert r.status_code == 200
    tokens = r.json()["results"][0]
    assert tokens and all({"entity", "index", "score", "start", "end", "text"} <= t.keys() for t in tokens)
    assert all(t["entity"] != "O" for t in tokens)
    r = await client.post("/v1/models/ner/ner", json={"inputs": [text]})
    default = r.json()["results"][0]
    assert default and all(g["entity_group"] != "O" for g in default)
    r = await client.post("/v1/models/ner/ner", json={"inputs": [text], "ignore_labels": []})
    everything = r.json()["results"][0]
    assert {tuple(g.values()) for g in default} <= {tuple(g.values()) for g in everything}
    types = sorted({g["entity_group"] for g in everything})
    r = await client.post("/v1/models/ner/ner", json={"inputs": [text], "ignore_labels": types})
    assert r.json()["results"] == [[]]
    metrics = (await client.get("/metrics")).text
    assert 'bertserve_requests_total{code="200",endpoint="ner",model="ner"} 4.0' in metrics


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/models/cls/ner", {"inputs": "text"}, 400),
        ("/v1/models/ner/classify", {"inputs": "text"}, 400),
        ("/v1/models/nope/ner", {"inputs": "text"}, 404),
        ("/v1/models/ner/ner", {"inputs": ""}, 422),
        ("/v1/models/ner/ner", {"inputs": []}, 422),
        ("/v1/models/ner/ner", {"inputs": "x", "aggregation": "longest"}, 422),
        ("/v1/models/ner/ner", {"inputs": [["a", "b"]]}, 422),
        ("/v1/models/ner/ner", {"inputs": "x", "segmentation": "paragraphs"}, 422),
    ],
)
async def test_ner_errors_use_the_envelope(
    fake_client: tuple[httpx.AsyncClient, Path, Any], path: str, body: dict[str, Any], status: int
) -> None:
    client, _, _ = fake_client
    r = await client.post(path, json=body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and {"type", "message"} <= r.json()["error"].keys()


async def test_character_cap_applies_to_ner(tmp_path: Path) -> None:
    repo = write_fake_repo(tmp_path / "repo")
    settings = Settings(repo=repo, backend="fake", max_input_chars=50)  # type: ignore[arg-type]
    async with serve_app(settings, FakeBackends(), wait_ready_s=30) as served:
        r = await served.client.post("/v1/models/ner/ner", json={"inputs": "x" * 51})
        assert r.status_code == 413
        assert "51 characters" in r.json()["error"]["message"]


# --- real backends on the exported tiny tagger, against the transformers pipeline --------------


@pytest.fixture(scope="module")
def reference_pipeline(bert_ner_checkpoint: Any) -> Callable[[str, str], list[dict[str, Any]]]:
    from transformers import pipeline

    pipe = pipeline("token-classification", model=str(bert_ner_checkpoint.path), device="cpu")

    def run(text: str, strategy: str) -> list[dict[str, Any]]:
        return list(pipe(text, aggregation_strategy=strategy))

    return run


@pytest.mark.parametrize("backend", ["onnxruntime-cpu", "openvino-cpu"])
async def test_exported_tagger_agrees_with_the_transformers_pipeline(
    exported_repo: Path, reference_pipeline: Callable[[str, str], list[dict[str, Any]]], backend: str
) -> None:
    settings = Settings(repo=exported_repo, models=["bert-ner"], backend=backend, intra_op_threads=1)  # type: ignore[arg-type]
    rng = random.Random(3)
    texts = [random_text(rng, rng.randint(1, 20)) for _ in range(25)]
    async with serve_app(settings, wait_ready_s=60) as served:
        c = served.client
        compared = 0
        for strategy in ("simple", "first", "average", "max"):
            r = await c.post("/v1/models/bert-ner/ner", json={"inputs": texts, "aggregation": strategy})
            assert r.status_code == 200, r.text
            for text, got in zip(texts, r.json()["results"], strict=True):
                want = reference_pipeline(text, strategy)
                assert [(e["entity_group"], e["start"], e["end"]) for e in got] == [
                    (e["entity_group"], e["start"], e["end"]) for e in want
                ], (strategy, text)
                for g, w in zip(got, want, strict=True):
                    assert abs(g["score"] - float(w["score"])) < 1e-3
                    assert g["text"] == text[w["start"] : w["end"]]  # the pipeline's span
                compared += len(want)
        assert compared > 50  # the random tagger does tag things: the comparison has content

        # a text far beyond the model's 128 tokens: windowed, exact spans, no duplicates
        long_text, word_of = placed_text(rng, 600)
        r = await c.post("/v1/models/bert-ner/ner", json={"inputs": long_text})
        entities = r.json()["results"][0]
        assert entities and entities[-1]["end"] > len(long_text) // 2
        assert_on_words(entities, word_of)
        assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(entities))
