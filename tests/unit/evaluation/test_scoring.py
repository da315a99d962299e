"""Scoring through the served pipeline: its answers are the HTTP API's, and the figures it reports
are counts over those answers.

A rule-based backend (a token's label decided by its id) makes the expected figures countable by
hand; the tiny exported tagger checks the export's int8 gate against scoring the written model and
against /ner itself.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from bertserve.evaluation.scoring import ServedModel, gold_spans, load_eval_set, score
from bertserve.modelrepo import ModelConfig, Precision, Task, load_model_config, version_dir
from bertserve.runtime.base import Backend, BackendKind, Feeds, Logits
from bertserve.service.settings import Settings
from tests.helpers.asgi import serve_app
from tests.helpers.fake_repo import write_fake_repo

# fake_repo's `ner` labels: O, B-PER, I-PER, B-LOC, I-LOC
RULES = {"john": "B-PER", "smith": "I-PER", "new": "B-LOC", "york": "I-LOC", "seattle": "B-PER"}
# (words, gold tags); the rules get sentence 1 right, call seattle a person and miss the city
CONLL = (
    (("john", "smith", "lives", "in", "new", "york"), ("B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC")),
    (("the", "weather", "in", "seattle", "is", "rainy"), ("O", "O", "O", "B-LOC", "O", "O")),
    (("john", "works", "for", "the", "city"), ("B-PER", "O", "O", "O", "B-LOC")),
)
# gold entities placed by hand on the words joined by spaces
GOLD = ({("PER", 0, 10), ("LOC", 20, 28)}, {("LOC", 15, 22)}, {("PER", 0, 4), ("LOC", 19, 23)})
REVIEWS = (
    ("the movie was great", "POSITIVE"),
    ("worst service ever", "NEGATIVE"),
    ("a quiet story", "POSITIVE"),  # the rule says NEGATIVE
)


class RuleBackend:
    """Logits from a table of token ids: tags for the tagger, POSITIVE iff 'great' for the classifier."""

    name = "rule"
    precision = Precision.FP32

    def __init__(self, config: ModelConfig, version_dir: Path) -> None:
        tokenizer = Tokenizer.from_file(str(version_dir / "tokenizer.json"))
        self.input_names = tuple(config.inputs)
        self._labels = list(config.labels)
        self._token_level = config.task == Task.TOKEN_CLASSIFICATION
        self._tag_of = {tokenizer.token_to_id(word): tag for word, tag in RULES.items()}
        self._great = tokenizer.token_to_id("great")

    def infer(self, feeds: Feeds) -> Logits:
        ids = feeds["input_ids"]
        if not self._token_level:
            positive = (ids == self._great).any(axis=1)
            return np.stack([~positive, positive], axis=1).astype(np.float32) * 4.0
        logits = np.zeros((*ids.shape, len(self._labels)), dtype=np.float32)
        for (row, col), token in np.ndenumerate(ids):
            logits[row, col, self._labels.index(self._tag_of.get(int(token), "O"))] = 4.0
        return logits

    def close(self) -> None:
        return None


def rule_factory(config: ModelConfig, version_dir: Path) -> Backend:
    return RuleBackend(config, version_dir)


def http_results(settings: Settings, factory: Any, model: str, endpoint: str, texts: list[str]) -> list[Any]:
    """What the API answers for `texts`, in requests of at most max_inputs texts."""

    async def ask() -> list[Any]:
        out: list[Any] = []
        async with serve_app(settings, factory) as app:
            for start in range(0, len(texts), settings.max_inputs):
                body = {"inputs": texts[start : start + settings.max_inputs]}
                response = await app.client.post(f"/v1/models/{model}/{endpoint}", json=body)
                response.raise_for_status()
                out.extend(response.json()["results"])
        return out

    return asyncio.run(ask())


@pytest.fixture
def fake_repo(tmp_path: Path) -> Path:
    return write_fake_repo(tmp_path / "repo")


def open_fake(repo: Path, name: str) -> ServedModel:
    config = load_model_config(repo, name)
    return ServedModel(config, version_dir(repo, name, config.default_version), factory=rule_factory)


def test_ner_figures_are_counts_over_the_api_answers(fake_repo: Path, tmp_path: Path) -> None:
    conll = tmp_path / "dev.conll"
    conll.write_text(
        "\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(*s, strict=True)) for s in CONLL) + "\n",
        encoding="utf-8",
    )
    with open_fake(fake_repo, "ner") as model:
        eval_set = load_eval_set(conll, Task.TOKEN_CLASSIFICATION, model.config.labels)
        assert [gold_spans(s) for s in eval_set.sentences] == list(GOLD)
        result = score(model, eval_set)
        texts = [s.text for s in eval_set.sentences] * 15  # 45 texts: more than one request
        served = [[e.as_dict() for e in row] for row in model.recognize(texts)]
    settings = Settings(repo=fake_repo, models=["ner"], backend=BackendKind.FAKE)
    api = http_results(settings, rule_factory, "ner", "ner", texts)
    assert served == api
    # an independent count over the API's own answers
    predicted = [{(e["entity_group"], e["start"], e["end"]) for e in row} for row in api[: len(CONLL)]]
    correct = sum(len(g & p) for g, p in zip(GOLD, predicted, strict=True))
    n_gold, n_pred = sum(map(len, GOLD)), sum(map(len, predicted))
    assert (correct, n_gold, n_pred) == (3, 5, 4)
    assert result.value == pytest.approx(2 * correct / (n_gold + n_pred)) == pytest.approx(6 / 9)
    assert result.entities is not None and result.entities.precision == pytest.approx(3 / 4)
    assert result.by_type["PER"].correct == 2 and result.by_type["LOC"].correct == 1


def test_accuracy_is_a_count_over_the_api_answers(fake_repo: Path, tmp_path: Path) -> None:
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("text\tlabel\n" + "".join(f"{t}\t{g}\n" for t, g in REVIEWS), encoding="utf-8")
    with open_fake(fake_repo, "cls") as model:
        result = score(model, load_eval_set(tsv, Task.TEXT_CLASSIFICATION, model.config.labels))
        served = [[(s.label, s.score) for s in row] for row in model.classify([t for t, _ in REVIEWS])]
    api = http_results(
        Settings(repo=fake_repo, models=["cls"], backend=BackendKind.FAKE),
        rule_factory,
        "cls",
        "classify",
        [t for t, _ in REVIEWS],
    )
    assert served == [[(s["label"], s["score"]) for s in row] for row in api]
    correct = sum(row[0]["label"] == gold for row, (_, gold) in zip(api, REVIEWS, strict=True))
    assert correct == 2 and result.value == pytest.approx(correct / 3)


def test_export_gate_equals_scoring_the_written_model_and_the_api(
    bert_ner_checkpoint, tmp_path: Path
) -> None:
    from bertserve.export.exporter import ExportOptions, run_export

    conll = tmp_path / "dev.conll"
    conll.write_text(
        "John B-PER\nSmith I-PER\nlives O\nin O\nParis B-LOC\n.\tO\n\n"
        "Angela B-PER\nMerkel I-PER\nmet O\nthe O\nUnited B-ORG\nNations I-ORG\n\n"
        "The O\nweather O\nin O\nSeattle B-LOC\nis O\nrainy O\n",
        encoding="utf-8",
    )
    repo = tmp_path / "repo"
    run_export(
        ExportOptions(
            model=str(bert_ner_checkpoint.path),
            task="token-classification",
            name="tagger",
            repo=repo,
            formats=("onnx",),
            int8=True,
            eval_file=conll,
            measure_speed=False,
            quiet=True,
        )
    )
    config = load_model_config(repo, "tagger")
    vdir = version_dir(repo, "tagger", config.default_version)
    report = json.loads((vdir / "export_report.json").read_text("utf-8"))
    eval_set = load_eval_set(conll, config.task, config.labels)
    with ServedModel(config, vdir, backend=BackendKind.ORT_CPU, precision=Precision.INT8) as model:
        assert model.artifact == "onnxruntime-cpu int8"
        assert score(model, eval_set).value == report["eval"]["scores"]["onnx/int8"]
        texts = [s.text for s in eval_set.sentences]
        served = [[e.as_dict() for e in row] for row in model.recognize(texts)]
    settings = Settings(repo=repo, backend=BackendKind.ORT_CPU, precision=Precision.INT8)
    assert served == http_results(settings, None, "tagger", "ner", texts)
