"""Sanity of the demo's committed training data: composed from the sources, balanced, valid IOB2,
and a held-out split that shares no text (sentiment) and no entity name (NER) with training."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from bertserve.evaluation.datasets import TaggedSentence, read_conll, read_labelled_texts
from bertserve.training.finetune import check_iob2
from tests.unit.demo.conftest import DEMO_DIR

DATA = DEMO_DIR / "data"


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def _entities(sentences: list[TaggedSentence]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for sentence in sentences:
        current: list[str] = []
        kind = ""
        for token, tag in [*zip(sentence.words, sentence.tags, strict=True), ("", "O")]:
            if current and not tag.startswith("I-"):
                found.setdefault(kind, set()).add(" ".join(current).lower())
                current = []
            if tag.startswith("B-"):
                current, kind = [token], tag[2:]
            elif tag.startswith("I-"):
                current.append(token)
    return found


def test_committed_data_is_what_the_sources_compose_to(compose: ModuleType) -> None:
    files = compose.compose_all()
    for rel, text in files.items():
        assert (DATA / rel).read_text("utf-8") == text, f"{rel} is stale: run python models/demo/compose.py"


def test_sentiment_sizes_and_balance() -> None:
    train = read_labelled_texts(DATA / "sentiment" / "train.tsv")
    heldout = read_labelled_texts(DATA / "sentiment" / "heldout.tsv")
    assert len(train) >= 5000 and len(heldout) >= 500
    for examples in (train, heldout):
        counts = Counter(e.label for e in examples)
        assert set(counts) == {"NEGATIVE", "POSITIVE"}
        assert 0.4 <= counts["POSITIVE"] / len(examples) <= 0.6


def test_sentiment_variety() -> None:
    train = read_labelled_texts(DATA / "sentiment" / "train.tsv")
    lengths = [len(e.text.split()) for e in train]
    assert min(lengths) <= 2 and max(lengths) >= 25  # single words to long, mixed reviews
    lowered = sum(e.text == e.text.lower() for e in train) / len(train)
    assert 0.2 <= lowered <= 0.8  # both as written and lower-cased, tokenised snippets
    assert len({_key(e.text) for e in train}) == len(train)  # no exact duplicates


def test_sentiment_heldout_shares_no_text_with_train() -> None:
    train = {_key(e.text) for e in read_labelled_texts(DATA / "sentiment" / "train.tsv")}
    heldout = {_key(e.text) for e in read_labelled_texts(DATA / "sentiment" / "heldout.tsv")}
    assert not train & heldout


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_ner_is_valid_iob2_with_every_type(split: str) -> None:
    path = DATA / "ner" / f"{split}.conll"
    sentences = read_conll(path)
    check_iob2(sentences, path)
    tags = Counter(tag for s in sentences for tag in s.tags)
    assert {t.partition("-")[2] for t in tags if t != "O"} == {"PER", "ORG", "LOC", "MISC"}
    multi_token = sum(tags[f"I-{kind}"] for kind in ("PER", "ORG", "LOC", "MISC"))
    assert multi_token > 0
    without_entities = sum(all(t == "O" for t in s.tags) for s in sentences)
    assert 0.02 <= without_entities / len(sentences) <= 0.2


def test_ner_sizes() -> None:
    assert len(read_conll(DATA / "ner" / "train.conll")) >= 2500
    assert len(read_conll(DATA / "ner" / "heldout.conll")) >= 300


def test_ner_heldout_entities_are_unseen_in_training() -> None:
    train = _entities(read_conll(DATA / "ner" / "train.conll"))
    heldout = _entities(read_conll(DATA / "ner" / "heldout.conll"))
    for kind in ("ORG", "LOC", "MISC"):
        assert heldout[kind] and not heldout[kind] & train[kind], kind
    # people: first and last names are split separately, so full names never repeat across splits
    full_names = {name for name in heldout["PER"] if " " in name}
    assert full_names and not full_names & train["PER"]


def test_heldout_split_is_decided_per_item(compose: ModuleType) -> None:
    items = [f"item {i}" for i in range(2000)]
    share = sum(compose.in_heldout(item) for item in items) / len(items)
    assert abs(share - compose.HELDOUT_PERCENT / 100) < 0.03
    assert compose.in_heldout("Paris") == compose.in_heldout("  paris ")


def test_tokenizer_keeps_names_whole(compose: ModuleType) -> None:
    assert compose.tokenize("McDonald's and H&M met Coca-Cola in Paris.") == [
        "McDonald's",
        "and",
        "H&M",
        "met",
        "Coca-Cola",
        "in",
        "Paris",
        ".",
    ]
    assert compose.entity_tokens("the United Nations", "ORG") == [
        ("the", "O"),
        ("United", "B-ORG"),
        ("Nations", "I-ORG"),
    ]


def test_sources_exist_and_are_substantial(compose: ModuleType) -> None:
    sentiment = compose.load_sentiment_sources()
    assert len(sentiment.sentences) >= 300 and len(sentiment.phrases) >= 250
    ner = compose.load_ner_sources()
    for pool in (ner.first_names, ner.last_names, ner.locations, ner.organizations):
        assert len(pool) >= 150
    assert len(ner.templates) >= 150
    assert Path(compose.SOURCES).is_dir()


def test_editing_sentiment_sources_leaves_ner_data_alone(compose: ModuleType, tmp_path: Path) -> None:
    sources = tmp_path / "sources"
    shutil.copytree(compose.SOURCES, sources)
    with (sources / "sentiment_sentences.tsv").open("a", encoding="utf-8") as fh:
        fh.write("POSITIVE\tA brand new sentence that only this test writes.\n")
    before, after = compose.compose_all(), compose.compose_all(sources)
    assert after["sentiment/train.tsv"] != before["sentiment/train.tsv"] or (
        after["sentiment/heldout.tsv"] != before["sentiment/heldout.tsv"]
    )
    assert after["ner/train.conll"] == before["ner/train.conll"]
    assert after["ner/heldout.conll"] == before["ner/heldout.conll"]
