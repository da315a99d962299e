"""The task pipelines without HTTP (service/pipeline.py): tokenizer -> batcher/backend -> head, as
`open_pipeline` wires them for the registry and for offline scoring."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from bertserve.modelrepo import load_model_config, version_dir
from bertserve.runtime.fake import fake_logits
from bertserve.service.errors import DeadlineExceededError, PayloadTooLargeError
from bertserve.service.heads.classification import softmax
from bertserve.service.metrics import Metrics
from bertserve.service.pipeline import ClassificationPipeline, Pipeline, TokenClassificationPipeline
from bertserve.service.registry import open_pipeline
from bertserve.service.settings import Settings
from bertserve.service.tokenization import TextTokenizer
from tests.helpers.fake_repo import FakeBackends, write_fake_repo

OpenPipeline = Callable[..., Pipeline]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_repo(tmp_path_factory.mktemp("pipeline-repo"))


@pytest.fixture
async def open_model(repo: Path) -> AsyncIterator[OpenPipeline]:
    opened: list[Pipeline] = []

    def open_(name: str, **overrides: object) -> Pipeline:
        settings = Settings(repo=repo, backend="fake", **overrides)  # type: ignore[arg-type]
        config = load_model_config(repo, name)
        pipeline = open_pipeline(
            settings, Metrics(process=False), config, version_dir(repo, name, 1), FakeBackends()
        )
        pipeline.start(asyncio.get_running_loop())
        opened.append(pipeline)
        return pipeline

    yield open_
    for pipeline in reversed(opened):
        await pipeline.stop()


def _expected_scores(repo: Path, pipeline: Pipeline, text: str) -> dict[str, float]:
    """Label -> probability recomputed from the fake model's deterministic logits."""
    tokenizer = TextTokenizer(
        repo / pipeline.config.name / "1" / "tokenizer.json", pipeline.config.max_length
    )
    (enc,) = tokenizer.encode([text], truncate=True)
    x = enc.model_input("token_type_ids" in pipeline.backend.input_names)
    types = None if x.type_ids is None else x.type_ids[None]
    logits = fake_logits(
        x.ids[None], np.ones((1, x.length), np.int64), types, len(pipeline.config.labels), False
    )
    return dict(zip(pipeline.config.labels, softmax(logits)[0].tolist(), strict=True))


async def test_classification_answers_each_input_with_the_models_scores(
    repo: Path, open_model: OpenPipeline
) -> None:
    pipeline = open_model("cls")
    assert isinstance(pipeline, ClassificationPipeline)
    texts = ["the movie was great", "worst service ever", "the movie was great"]
    answer = await pipeline.classify(texts)
    assert len(answer.results) == 3 and answer.truncated == []
    for text, row in zip(texts, answer.results, strict=True):
        want = _expected_scores(repo, pipeline, text)
        assert [s.label for s in row] == sorted(want, key=lambda label: -want[label])  # best first
        for s in row:
            assert s.score == pytest.approx(want[s.label], abs=1e-6)
    assert answer.results[0] == answer.results[2]  # batched with others, the same answer
    top = await pipeline.classify(texts[:1], top_k=1)
    assert [s.label for s in top.results[0]] == [answer.results[0][0].label]


async def test_truncation_is_reported_per_input(open_model: OpenPipeline) -> None:
    pipeline = open_model("cls")
    long_text = " ".join(["great"] * 200)  # far beyond the fake model's max_length
    answer = await pipeline.classify(["short", long_text])
    assert answer.truncated == [1]


async def test_work_beyond_the_request_limits_is_refused_before_it_runs(open_model: OpenPipeline) -> None:
    pipeline = open_model("cls", max_request_sequences=2)
    with pytest.raises(PayloadTooLargeError, match="more than 2 sequences"):
        await pipeline.classify(["a", "b", "c"])
    assert len((await pipeline.classify(["a", "b"])).results) == 2  # still serving


async def test_a_passed_deadline_answers_504_without_running(open_model: OpenPipeline) -> None:
    pipeline = open_model("cls")
    with pytest.raises(DeadlineExceededError):
        await pipeline.classify(["a"], timeout_s=-1.0)


async def test_entities_point_into_the_text_they_came_from(open_model: OpenPipeline) -> None:
    pipeline = open_model("ner")
    assert isinstance(pipeline, TokenClassificationPipeline)
    texts = ["john smith lives in new york", "", "the united nations met in paris"]
    results = await pipeline.recognize(texts)
    assert len(results) == 3 and results[1] == []
    assert any(results[0]) or any(results[2])  # the fake tagger tags something
    for text, entities in zip(texts, results, strict=True):
        for e in entities:
            assert 0 <= e.start < e.end <= len(text)
            assert e.label != "O"


@pytest.mark.parametrize("name", ["tensorrt", "onnxruntime-cuda", "onnxruntime-cpu"])
async def test_only_a_tensorrt_backend_gets_bucket_padding(repo: Path, name: str) -> None:
    """The registry plans TensorRT's buckets from the same limits as the loader's engine profiles;
    answers stay those of each text alone (padding is masked)."""
    from bertserve.runtime.fake import FakeBackend
    from bertserve.runtime.shapes import ShapePlan

    settings = Settings(repo=repo, backend="fake", max_batch_size=8, max_batch_tokens=512)
    config = load_model_config(repo, "cls")
    backend = FakeBackend(len(config.labels), input_names=tuple(config.inputs), name=name)
    pipeline = open_pipeline(
        settings, Metrics(process=False), config, version_dir(repo, "cls", 1), lambda c, v: backend
    )
    pipeline.start(asyncio.get_running_loop())
    try:
        expected = ShapePlan.for_batching(8, 512, config.max_length) if name == "tensorrt" else None
        assert pipeline.batcher.limits.padding == expected
        assert isinstance(pipeline, ClassificationPipeline)
        answer = await pipeline.classify(["the movie was great", "ok"])
        want = _expected_scores(repo, pipeline, "ok")
        assert {s.label: s.score for s in answer.results[1]} == pytest.approx(want, abs=1e-6)
        lengths = {length for _, length in backend.batch_shapes}
        if expected is not None:
            assert lengths <= set(expected.lengths)  # padded to a bucket
    finally:
        await pipeline.stop()
