"""Aggregation strategies and tag schemes on hand-made scores, with expected entities worked out
by hand (see the comments next to each expectation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from bertserve.modelrepo import ModelConfig, TagScheme, detect_tag_scheme
from bertserve.service.heads.token_classification import (
    AggregationStrategy,
    Entity,
    TagPrefix,
    TokenClassificationHead,
    aggregate,
    group_units,
    softmax,
    split_tag,
)
from tests.helpers.spans import spans_in_order

IOB2 = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


def probs(labels: Sequence[str], **mass: float) -> list[float]:
    """A probability row: the given masses (keys use `_` for `-`), the rest spread evenly."""
    named = {key.replace("_", "-"): value for key, value in mass.items()}
    rest = (1.0 - sum(named.values())) / (len(labels) - len(named))
    return [named.get(label, rest) for label in labels]


# "Angela Merkel visits Zürich" as a WordPiece tokenizer splits it; [CLS]/[SEP] carry confident
# B-PER scores so that any failure to skip special tokens shows up as an extra entity.
TEXT = "Angela Merkel visits Zürich"
OFFSETS = [(0, 0), (0, 2), (2, 6), (7, 10), (10, 13), (14, 20), (21, 23), (23, 27), (0, 0)]
WORD_IDS = [None, 0, 0, 1, 1, 2, 3, 3, None]
SPECIAL = [1, 0, 0, 0, 0, 0, 0, 0, 1]
SCORES = np.array(
    [
        probs(IOB2, B_PER=0.99),  # [CLS]
        probs(IOB2, B_PER=0.9),  # an
        probs(IOB2, I_PER=0.5, B_LOC=0.3),  # ##gela
        probs(IOB2, I_PER=0.8),  # mer
        probs(IOB2, I_LOC=0.6, I_PER=0.3),  # ##kel
        probs(IOB2, O=0.7),  # visits
        probs(IOB2, B_LOC=0.4, O=0.35),  # zu
        probs(IOB2, I_LOC=0.95),  # ##rich
        probs(IOB2, B_PER=0.99),  # [SEP]
    ]
)


def run(strategy: str, scheme: TagScheme = TagScheme.IOB2, ignore: Sequence[str] = ("O",)) -> list[Entity]:
    return aggregate(
        TEXT, OFFSETS, WORD_IDS, SPECIAL, SCORES, IOB2, scheme, AggregationStrategy(strategy), ignore
    )


def spans(entities: Sequence[Entity]) -> list[tuple[str, int, int, str]]:
    return [(e.label, e.start, e.end, e.text) for e in entities]


def test_none_is_one_entry_per_token_with_its_encoding_index() -> None:
    entities = run("none")
    assert [(e.label, e.index, e.start, e.end, e.text) for e in entities] == [
        ("B-PER", 1, 0, 2, "An"),
        ("I-PER", 2, 2, 6, "gela"),
        ("I-PER", 3, 7, 10, "Mer"),
        ("I-LOC", 4, 10, 13, "kel"),
        ("B-LOC", 6, 21, 23, "Zü"),  # "visits" (O) is ignored
        ("I-LOC", 7, 23, 27, "rich"),
    ]
    assert [e.score for e in entities] == pytest.approx([0.9, 0.5, 0.8, 0.6, 0.4, 0.95])
    assert entities[0].as_dict() == {
        "entity": "B-PER",
        "index": 1,
        "score": entities[0].score,
        "start": 0,
        "end": 2,
        "text": "An",
    }


def test_simple_groups_tokens_and_may_split_a_word() -> None:
    entities = run("simple")
    # B-PER I-PER I-PER | I-LOC (a new type starts a new entity, mid-word) | O | B-LOC I-LOC
    assert spans(entities) == [
        ("PER", 0, 10, "Angela Mer"),
        ("LOC", 10, 13, "kel"),
        ("LOC", 21, 27, "Zürich"),
    ]
    assert [e.score for e in entities] == pytest.approx([(0.9 + 0.5 + 0.8) / 3, 0.6, (0.4 + 0.95) / 2])
    assert entities[0].index is None
    assert set(entities[0].as_dict()) == {"entity_group", "score", "start", "end", "text"}


def test_first_uses_each_words_first_token() -> None:
    entities = run("first")
    # words: an->B-PER .9, mer->I-PER .8, visits->O, zu->B-LOC .4
    assert spans(entities) == [("PER", 0, 13, "Angela Merkel"), ("LOC", 21, 27, "Zürich")]
    assert [e.score for e in entities] == pytest.approx([(0.9 + 0.8) / 2, 0.4])


def test_average_uses_the_mean_score_vector_of_each_word() -> None:
    entities = run("average")
    o_rest = (1 - 0.5 - 0.3) / 3
    # Angela: B-PER (0.9 + rest(.5,.3)) / 2 beats I-PER (0.025 + 0.5) / 2
    angela = (0.9 + o_rest) / 2
    # Merkel: I-PER (0.8 + 0.3) / 2 = 0.55 beats I-LOC (0.05 + 0.6) / 2
    merkel = (0.8 + 0.3) / 2
    # Zürich: I-LOC (rest(.4,.35) + 0.95) / 2 beats B-LOC (0.4 + 0.0125) / 2
    zurich = ((1 - 0.4 - 0.35) / 3 + 0.95) / 2
    assert spans(entities) == [("PER", 0, 13, "Angela Merkel"), ("LOC", 21, 27, "Zürich")]
    assert [e.score for e in entities] == pytest.approx([(angela + merkel) / 2, zurich])


def test_max_uses_each_words_most_confident_token() -> None:
    entities = run("max")
    # Angela: an (.9) over ##gela (.5); Merkel: mer (.8) over ##kel (.6); Zürich: ##rich (.95)
    assert spans(entities) == [("PER", 0, 13, "Angela Merkel"), ("LOC", 21, 27, "Zürich")]
    assert [e.score for e in entities] == pytest.approx([(0.9 + 0.8) / 2, 0.95])


def test_ignore_labels_empty_returns_the_outside_stretches_too() -> None:
    entities = run("first", ignore=())
    assert spans(entities) == [
        ("PER", 0, 13, "Angela Merkel"),
        ("O", 14, 20, "visits"),
        ("LOC", 21, 27, "Zürich"),
    ]


def test_ignore_labels_match_the_group_type_or_for_none_the_full_label() -> None:
    assert spans(run("first", ignore=("O", "PER"))) == [("LOC", 21, 27, "Zürich")]
    assert [e.label for e in run("none", ignore=("O", "I-PER", "I-LOC"))] == ["B-PER", "B-LOC"]


# --- tag schemes -------------------------------------------------------------------------------
# (scheme, tags, expected groups as (first, stop, type)), the "O" groups included.
SCHEME_CASES = [
    # IOB2: B- always starts; I- continues its own type; an I- without B- starts (lenient)
    (TagScheme.IOB2, ["B-PER", "I-PER", "B-PER", "O"], [(0, 2, "PER"), (2, 3, "PER"), (3, 4, "O")]),
    (TagScheme.IOB2, ["O", "I-PER", "I-PER", "I-LOC"], [(0, 1, "O"), (1, 3, "PER"), (3, 4, "LOC")]),
    (TagScheme.IOB2, ["B-PER", "B-LOC", "I-PER"], [(0, 1, "PER"), (1, 2, "LOC"), (2, 3, "PER")]),
    # IOB1: I- is the normal tag; B- only separates two adjacent entities of the same type
    (TagScheme.IOB1, ["I-PER", "I-PER", "B-PER", "I-PER"], [(0, 2, "PER"), (2, 4, "PER")]),
    (
        TagScheme.IOB1,
        ["I-ORG", "I-LOC", "O", "I-LOC"],
        [(0, 1, "ORG"), (1, 2, "LOC"), (2, 3, "O"), (3, 4, "LOC")],
    ),
    # BIOES: S- is a one-token entity, E- closes, nothing continues a closed entity
    (TagScheme.BIOES, ["B-PER", "I-PER", "E-PER", "S-PER"], [(0, 3, "PER"), (3, 4, "PER")]),
    (TagScheme.BIOES, ["S-LOC", "S-LOC", "I-LOC"], [(0, 1, "LOC"), (1, 2, "LOC"), (2, 3, "LOC")]),
    (TagScheme.BIOES, ["B-PER", "E-PER", "I-PER", "E-PER"], [(0, 2, "PER"), (2, 4, "PER")]),
    (TagScheme.BIOES, ["B-PER", "E-PER", "E-PER"], [(0, 2, "PER"), (2, 3, "PER")]),
    (TagScheme.BIOES, ["B-PER", "B-PER", "E-LOC"], [(0, 1, "PER"), (1, 2, "PER"), (2, 3, "LOC")]),
    (TagScheme.BIOES, ["O", "I-ORG", "I-ORG", "O"], [(0, 1, "O"), (1, 3, "ORG"), (3, 4, "O")]),
    (TagScheme.BIOES, ["S-PER", "I-PER", "E-PER"], [(0, 1, "PER"), (1, 3, "PER")]),
    # BILOU spells E- as L- and S- as U-
    (
        TagScheme.BIOES,
        ["B-ORG", "I-ORG", "L-ORG", "U-ORG", "U-LOC"],
        [(0, 3, "ORG"), (3, 4, "ORG"), (4, 5, "LOC")],
    ),
    # labels without a prefix: each is its own type, runs of one label form one group
    (
        TagScheme.NONE,
        ["PER", "PER", "LOC", "O", "O", "PER"],
        [(0, 2, "PER"), (2, 3, "LOC"), (3, 5, "O"), (5, 6, "PER")],
    ),
    # under NONE a hyphenated label is not split
    (TagScheme.NONE, ["B-X", "B-X", "I-X"], [(0, 2, "B-X"), (2, 3, "I-X")]),
    # prefixes are read case-insensitively, types are kept as written
    (TagScheme.IOB2, ["b-per", "i-per", "B-per"], [(0, 2, "per"), (2, 3, "per")]),
    (TagScheme.IOB2, [], []),
]


@pytest.mark.parametrize(("scheme", "tags", "expected"), SCHEME_CASES)
def test_group_units_follows_the_tag_scheme(
    scheme: TagScheme, tags: list[str], expected: list[tuple[int, int, str]]
) -> None:
    parsed = [split_tag(tag, scheme) for tag in tags]
    assert [(first, stop, parsed[first][1]) for first, stop in group_units(parsed)] == expected


def test_split_tag_only_knows_the_prefixes_of_its_scheme() -> None:
    assert split_tag("S-PER", TagScheme.BIOES) == (TagPrefix.SINGLE, "PER")
    assert split_tag("L-PER", TagScheme.BIOES) == (TagPrefix.END, "PER")
    assert split_tag("S-PER", TagScheme.IOB2) == (TagPrefix.INSIDE, "S-PER")
    assert split_tag("B-", TagScheme.IOB2) == (TagPrefix.INSIDE, "B-")
    assert split_tag("BB-X", TagScheme.IOB2) == (TagPrefix.INSIDE, "BB-X")
    assert split_tag("O", TagScheme.BIOES) == (TagPrefix.INSIDE, "O")


@dataclass(frozen=True)
class Sentence:
    """One token per word, words separated by one space, wrapped in [CLS] ... [SEP]."""

    text: str
    offsets: list[tuple[int, int]]
    word_ids: list[int | None]
    special_tokens_mask: list[int]


def sentence(words: Sequence[str]) -> Sentence:
    offsets, cursor = [(0, 0)], 0
    for word in words:
        offsets.append((cursor, cursor + len(word)))
        cursor += len(word) + 1
    offsets.append((0, 0))
    word_ids: list[int | None] = [None, *range(len(words)), None]
    return Sentence(" ".join(words), offsets, word_ids, [1, *([0] * len(words)), 1])


def one_hot_scores(tags: Sequence[str], labels: Sequence[str], confidence: float) -> np.ndarray:
    rows = [probs(labels, O=0.9)]  # [CLS]
    rows += [probs(labels, **{tag.replace("-", "_"): confidence}) for tag in tags]
    rows.append(probs(labels, O=0.9))  # [SEP]
    return np.array(rows)


BIOES_LABELS = ("O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC")
IOB1_LABELS = ("O", "I-PER", "B-PER", "I-LOC", "B-LOC")
BILOU_LABELS = ("O", "B-PER", "I-PER", "L-PER", "U-PER", "U-LOC")
PLAIN_LABELS = ("O", "PER", "LOC")

# (labels, words, per-word tags, expected (type, text) groups, "O" ignored)
END_TO_END = [
    (
        IOB2,
        ["Angela", "Merkel", "Emmanuel", "Macron", "in", "Brussels"],
        ["B-PER", "I-PER", "B-PER", "I-PER", "O", "B-LOC"],
        [("PER", "Angela Merkel"), ("PER", "Emmanuel Macron"), ("LOC", "Brussels")],
    ),
    (
        IOB1_LABELS,
        ["Angela", "Merkel", "Emmanuel", "Macron", "in", "Brussels"],
        ["I-PER", "I-PER", "B-PER", "I-PER", "O", "I-LOC"],
        [("PER", "Angela Merkel"), ("PER", "Emmanuel Macron"), ("LOC", "Brussels")],
    ),
    (
        BIOES_LABELS,
        ["Angela", "Dorothea", "Merkel", "Macron", "in", "Brussels", "Paris"],
        ["B-PER", "I-PER", "E-PER", "S-PER", "O", "S-LOC", "S-LOC"],
        [("PER", "Angela Dorothea Merkel"), ("PER", "Macron"), ("LOC", "Brussels"), ("LOC", "Paris")],
    ),
    (
        BILOU_LABELS,
        ["Angela", "Merkel", "Macron", "in", "Brussels"],
        ["B-PER", "L-PER", "U-PER", "O", "U-LOC"],
        [("PER", "Angela Merkel"), ("PER", "Macron"), ("LOC", "Brussels")],
    ),
    (
        PLAIN_LABELS,
        ["Angela", "Merkel", "in", "Brussels", "Paris"],
        ["PER", "PER", "O", "LOC", "LOC"],
        [("PER", "Angela Merkel"), ("LOC", "Brussels Paris")],
    ),
    (  # the same words more than once: each entity must point at its own occurrence
        IOB2,
        ["Paris", "and", "Paris", "Hilton", "in", "Paris"],
        ["B-LOC", "O", "B-PER", "I-PER", "O", "B-LOC"],
        [("LOC", "Paris"), ("PER", "Paris Hilton"), ("LOC", "Paris")],
    ),
]


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
@pytest.mark.parametrize(("labels", "words", "tags", "expected"), END_TO_END)
def test_each_scheme_with_each_strategy(
    strategy: str,
    labels: tuple[str, ...],
    words: list[str],
    tags: list[str],
    expected: list[tuple[str, str]],
) -> None:
    s = sentence(words)
    scores = one_hot_scores(tags, labels, confidence=0.8)
    scheme = detect_tag_scheme(list(labels))
    entities = aggregate(
        s.text,
        s.offsets,
        s.word_ids,
        s.special_tokens_mask,
        scores,
        labels,
        scheme,
        AggregationStrategy(strategy),
    )
    assert [(e.label, e.text) for e in entities] == expected
    assert [(e.start, e.end) for e in entities] == spans_in_order(s.text, [text for _, text in expected])
    assert [e.score for e in entities] == pytest.approx([0.8] * len(expected))


def test_bioes_word_strategies_vote_per_word_before_grouping() -> None:
    # "Zürich" is two tokens: zu (B-LOC .5) ##rich (E-LOC .9) -> first: B-LOC alone is still an
    # entity; max/average: E-LOC alone stands as a one-token entity; simple: B-LOC + E-LOC.
    text = "in Zürich"
    offsets = [(0, 0), (0, 2), (3, 5), (5, 9), (0, 0)]
    word_ids: list[int | None] = [None, 0, 1, 1, None]
    scores = np.array(
        [
            probs(BIOES_LABELS, O=0.9),
            probs(BIOES_LABELS, O=0.9),
            probs(BIOES_LABELS, B_LOC=0.5),
            probs(BIOES_LABELS, E_LOC=0.9),
            probs(BIOES_LABELS, O=0.9),
        ]
    )
    results = {
        strategy: aggregate(
            text, offsets, word_ids, [1, 0, 0, 0, 1], scores, BIOES_LABELS, TagScheme.BIOES, strategy
        )
        for strategy in AggregationStrategy
        if strategy is not AggregationStrategy.NONE
    }
    rest_b = 0.5 / 8
    expected_scores = {
        "simple": (0.5 + 0.9) / 2,
        "first": 0.5,
        "max": 0.9,
        "average": (rest_b + 0.9) / 2,
    }
    for strategy, entities in results.items():
        assert [(e.label, e.start, e.end, e.text) for e in entities] == [("LOC", 3, 9, "Zürich")], strategy
        assert entities[0].score == pytest.approx(expected_scores[strategy]), strategy


def test_words_come_from_word_ids_not_from_token_text() -> None:
    # "e\u0301cole" as the uncased tokenizer splits it: e | ##c | ##o | ##le, the combining accent
    # in no token's span. The word still runs from its first token's start to its last one's end.
    text = "Joe e\u0301cole"
    offsets = [(0, 0), (0, 3), (4, 5), (6, 7), (7, 8), (8, 10), (0, 0)]
    word_ids: list[int | None] = [None, 0, 1, 1, 1, 1, None]
    scores = np.array(
        [probs(IOB2, O=0.9), probs(IOB2, B_PER=0.9), probs(IOB2, B_LOC=0.9)]
        + [probs(IOB2, B_PER=0.6)] * 3
        + [probs(IOB2, O=0.9)]
    )
    entities = aggregate(
        text,
        offsets,
        word_ids,
        [1, 0, 0, 0, 0, 0, 1],
        scores,
        IOB2,
        TagScheme.IOB2,
        AggregationStrategy.FIRST,
    )
    assert spans(entities) == [("PER", 0, 3, "Joe"), ("LOC", 4, 10, "e\u0301cole")]


def test_softmax_is_stable_and_normalised() -> None:
    logits = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]], dtype=np.float32)
    out = softmax(logits)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[0], softmax(np.array([1.0, 2.0, 0.0], dtype=np.float32)), rtol=1e-6)
    np.testing.assert_allclose(out[1], [1 / 3] * 3, rtol=1e-6)


def test_inconsistent_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        aggregate(TEXT, OFFSETS, WORD_IDS, SPECIAL, SCORES[:, :3], IOB2, TagScheme.IOB2)
    with pytest.raises(ValueError, match="differ in length"):
        aggregate(TEXT, OFFSETS[:-1], WORD_IDS, SPECIAL, SCORES, IOB2, TagScheme.IOB2)
    with pytest.raises(ValueError, match="outside"):
        aggregate(TEXT[:10], OFFSETS, WORD_IDS, SPECIAL, SCORES, IOB2, TagScheme.IOB2)


def test_head_from_model_config_applies_softmax_and_the_configured_scheme() -> None:
    config = ModelConfig.model_validate(
        {
            "name": "ner",
            "task": "token-classification",
            "architecture": "bert",
            "labels": list(BILOU_LABELS),
            "max_length": 128,
            "inputs": ["input_ids", "attention_mask"],
            "versions": {
                1: {"artifacts": [{"format": "onnx", "precision": "fp32", "files": {"m.onnx": "0"}}]}
            },
        }
    )
    head = TokenClassificationHead.from_config(config)
    assert head.scheme is TagScheme.BIOES
    s = sentence(["Angela", "Merkel", "Macron"])
    logits = np.log(one_hot_scores(["B-PER", "L-PER", "U-PER"], BILOU_LABELS, confidence=0.7))
    entities = head.postprocess(s.text, s, logits.astype(np.float32), AggregationStrategy.FIRST)
    assert [(e.label, e.text) for e in entities] == [("PER", "Angela Merkel"), ("PER", "Macron")]
    assert [e.score for e in entities] == pytest.approx([0.7, 0.7], rel=1e-5)

    classifier = config.model_copy(update={"task": "text-classification"})
    with pytest.raises(ValueError, match="not token classification"):
        TokenClassificationHead.from_config(classifier)


def test_a_text_without_content_tokens_has_no_entities() -> None:
    scores = np.array([probs(IOB2, B_PER=0.9)] * 2)
    for strategy in AggregationStrategy:
        assert (
            aggregate("  ", [(0, 0)] * 2, [None, None], [1, 1], scores, IOB2, TagScheme.IOB2, strategy) == []
        )
        assert aggregate("", [], [], [], np.zeros((0, 5)), IOB2, TagScheme.IOB2, strategy) == []


def test_max_strategy_survives_a_nan_row() -> None:
    scores = SCORES.copy()
    scores[2] = np.nan  # "##gela": the word's other token decides
    entities = aggregate(
        TEXT, OFFSETS, WORD_IDS, SPECIAL, scores, IOB2, TagScheme.IOB2, AggregationStrategy.MAX
    )
    assert spans(entities) == [("PER", 0, 13, "Angela Merkel"), ("LOC", 21, 27, "Zürich")]
