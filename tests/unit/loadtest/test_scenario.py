"""Scenario parsing, corpora and request bodies (no locust import: gevent patches the process)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from loadtest.corpus import Corpus, classify_corpus, ner_corpus, read_conll_sentences, read_tsv_column
from loadtest.scenario import RequestFactory, ScenarioConfig, parse_inputs_per_request, parse_task_mix


def test_task_mix_parsing() -> None:
    assert parse_task_mix("classify=3,ner=1") == {"classify": 3.0, "ner": 1.0}
    assert parse_task_mix("classify") == {"classify": 1.0}
    assert parse_task_mix("classify=1,ner=0") == {"classify": 1.0}
    for bad in ("ner=0", "sentiment=1", "classify=x", "classify=-1", ""):
        with pytest.raises(ValueError):
            parse_task_mix(bad)


def test_inputs_per_request_parsing() -> None:
    assert parse_inputs_per_request("1") == (1, 1)
    assert parse_inputs_per_request("2-8") == (2, 8)
    for bad in ("0", "4-2", "a", "1-"):
        with pytest.raises(ValueError):
            parse_inputs_per_request(bad)


def test_rate_is_shared_between_users() -> None:
    assert ScenarioConfig(rate=300.0).per_user_rate(64) == pytest.approx(300.0 / 64)
    assert ScenarioConfig(rate=0.0).per_user_rate(64) is None


def test_builtin_corpora_are_used_without_the_shared_data(tmp_path: Path) -> None:
    classify, ner = classify_corpus(data=tmp_path), ner_corpus(data=tmp_path)
    assert classify.source.startswith("built-in") and len(classify.texts) >= 30
    assert ner.source.startswith("built-in") and len(ner.texts) >= 20
    assert not any(t.startswith("#") for t in classify.texts + ner.texts)


def test_public_formats_are_read(tmp_path: Path) -> None:
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("sentence\tlabel\nit 's a charming journey . \t1\nbleak \t0\n")
    assert read_tsv_column(tsv, "sentence") == ["it 's a charming journey .", "bleak"]
    conll = tmp_path / "x.conll"
    conll.write_text("Paris\tB-location\nis\tO\n\t\nnice\tO\n\nok\tO\n")  # a tab-only line ends a sentence
    assert read_conll_sentences(conll) == ["Paris is", "nice", "ok"]


def test_factory_draws_calls_by_weight_with_the_configured_inputs() -> None:
    corpora = {"classify": Corpus(("good", "bad"), "test"), "ner": Corpus(("Ada in London",), "test")}
    config = ScenarioConfig(
        classify_model="sst2", ner_model="wnut", task_mix="classify=3,ner=1", inputs_per_request="2-3"
    )
    factory = RequestFactory(config, random.Random(7), corpora)  # type: ignore[arg-type]
    calls = [factory.next_call() for _ in range(400)]
    classify = [c for c in calls if c.task == "classify"]
    assert 0.65 < len(classify) / len(calls) < 0.85
    for call in calls:
        assert 2 <= call.inputs <= 3
        assert isinstance(call.body["inputs"], list) and len(call.body["inputs"]) == call.inputs
        expected = "/v1/models/sst2/classify" if call.task == "classify" else "/v1/models/wnut/ner"
        assert call.path == expected
    single = RequestFactory(ScenarioConfig(task_mix="ner=1"), random.Random(0), corpora).next_call()  # type: ignore[arg-type]
    assert single.body == {"inputs": "Ada in London", "aggregation": "simple"}
