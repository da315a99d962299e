"""Parity of `bertserve.service.heads.token_classification.aggregate` with the transformers
TokenClassificationPipeline (the reference), and of windowed with whole-text inference.

A tiny random BertForTokenClassification with a real WordPiece fast tokenizer is run by the
pipeline and, separately, by torch on the backend tokenizer's encoding; our aggregation of those
logits must give the pipeline's entities: same (label, start, end), scores within 1e-5.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from tokenizers import Encoding
from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast, pipeline
from transformers.pipelines.token_classification import AggregationStrategy as PipelineStrategy
from transformers.pipelines.token_classification import TokenClassificationPipeline

from bertserve.modelrepo import TagScheme, detect_tag_scheme
from bertserve.service.heads.token_classification import (
    AggregationStrategy,
    TagPrefix,
    aggregate,
    softmax,
    split_tag,
)
from bertserve.service.windowing import plan_windows
from tests.helpers.checkpoints import NER_LABELS_BIOES, NER_LABELS_IOB2, bert_tokenizer

GROUPED = ("simple", "first", "average", "max")
MAX_POSITIONS = 1024

WORDS = (
    "the", "movie", "was", "great", "john", "smith", "lives", "in", "new", "york", "and", "works",
    "for", "united", "nations", "angela", "merkel", "met", "macron", "brussels", "google", "berlin",
    "Paris", "London", "Amsterdam", "Rembrandt", "van", "Gogh", "microsoft", "apple", "San",
    "Francisco", "unbelievable", "championship", "delivered", "neighbour", "Dublin", "honestly",
    # words the vocabulary lacks (split into pieces), accents, CJK, emoji, punctuation
    "Zürich", "São", "Paulo", "naïve", "Émile", "Ångström", "crème", "brûlée", "東京", "北京大学",
    "한국어", "🎉", "café😀", "👍🏽", "don't", "U.S.A.", "e-mail", "3.14", "1,000", "@user", "#tag",
    "(new)", ",", ".", "!", "?", "...", "—", "xyzzy", "quizzically", "Kaiserslautern",
)  # fmt: skip
SEPARATORS = (" ",) * 8 + ("  ", "   ", "\t", "\n")


def random_sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 24))]
        text = words[0]
        for word in words[1:]:
            text += rng.choice(SEPARATORS) + word
        sentences.append(rng.choice(("", " ")) + text)
    return sentences


def tiny_tagger(tokenizer: BertTokenizerFast, labels: Sequence[str], layers: int, seed: int) -> Any:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model = BertForTokenClassification(config).eval()
    with torch.no_grad():
        # A random head gives near-uniform scores; a wider one makes confident, varied tags (and
        # close calls between a word's pieces, which is what tells first/average/max apart).
        model.classifier.weight.normal_(0.0, 2.5 / config.hidden_size**0.5)
        model.classifier.bias.zero_()
        model.classifier.bias[0] = 1.0  # enough "O" that entities have edges
    return model


@pytest.fixture(scope="module")
def tokenizer() -> BertTokenizerFast:
    return bert_tokenizer(model_max_length=MAX_POSITIONS)


@pytest.fixture(scope="module")
def iob2_pipe(tokenizer: BertTokenizerFast) -> TokenClassificationPipeline:
    model = tiny_tagger(tokenizer, NER_LABELS_IOB2, layers=2, seed=0)
    pipe: TokenClassificationPipeline = pipeline("token-classification", model=model, tokenizer=tokenizer)
    return pipe


def logits_of(model: Any, enc: Encoding) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([enc.ids]), token_type_ids=torch.tensor([enc.type_ids]))
    result: np.ndarray = out.logits[0].numpy()
    return result


def ours(
    pipe: TokenClassificationPipeline, text: str, strategy: str, ignore: Sequence[str] = ("O",)
) -> list[tuple[str, int, int, float]]:
    enc = pipe.tokenizer.backend_tokenizer.encode(text)
    labels = [pipe.model.config.id2label[i] for i in range(pipe.model.config.num_labels)]
    entities = aggregate(
        text,
        enc.offsets,
        enc.word_ids,
        enc.special_tokens_mask,
        softmax(logits_of(pipe.model, enc)),
        labels,
        detect_tag_scheme(labels),
        AggregationStrategy(strategy),
        ignore,
    )
    for e in entities:
        assert text[e.start : e.end] == e.text
    return [(e.label, e.start, e.end, e.score) for e in entities]


def reference(
    pipe: TokenClassificationPipeline, text: str, strategy: str, ignore: Sequence[str] = ("O",)
) -> list[tuple[str, int, int, float]]:
    found = pipe(text, aggregation_strategy=strategy, ignore_labels=list(ignore))
    key = "entity" if strategy == "none" else "entity_group"
    return [(d[key], d["start"], d["end"], float(d["score"])) for d in found]


def assert_same(got: list[tuple[str, int, int, float]], expected: list[tuple[str, int, int, float]]) -> None:
    assert [g[:3] for g in got] == [e[:3] for e in expected]
    np.testing.assert_allclose([g[3] for g in got], [e[3] for e in expected], atol=1e-5, rtol=0)


@pytest.mark.parametrize("strategy", ["none", *GROUPED])
def test_iob2_matches_the_pipeline_on_random_sentences(
    iob2_pipe: TokenClassificationPipeline, strategy: str
) -> None:
    entities = 0
    for text in random_sentences(150, seed=11):
        expected = reference(iob2_pipe, text, strategy)
        assert_same(ours(iob2_pipe, text, strategy), expected)
        entities += len(expected)
    assert entities > 300  # the random tagger really produces entities to compare


def test_the_strategies_really_differ_on_these_sentences(iob2_pipe: TokenClassificationPipeline) -> None:
    # guards the parity test's power: on sentences where first/average/max disagree, all three match
    texts = random_sentences(60, seed=11)
    results = {s: [reference(iob2_pipe, t, s) for t in texts] for s in ("first", "average", "max")}
    differ = sum(len({tuple(x[:3] for x in results[s][i]) for s in results}) > 1 for i in range(len(texts)))
    assert differ > 5


@pytest.mark.parametrize("strategy", ["none", "simple", "average"])
def test_ignore_labels_match_the_pipeline(iob2_pipe: TokenClassificationPipeline, strategy: str) -> None:
    for ignore in ([], ["O", "PER"]):
        for text in random_sentences(30, seed=12):
            ignore_here = [f"B-{x}" if strategy == "none" and x != "O" else x for x in ignore]
            assert_same(
                ours(iob2_pipe, text, strategy, ignore_here),
                reference(iob2_pipe, text, strategy, ignore_here),
            )


def bioes_to_iob2(tags: list[str]) -> list[str]:
    """Re-spell a BIOES tag sequence in IOB2 so that the pipeline's IOB2 grouping, our reference,
    can chunk it: what starts an entity becomes B-, what continues one I-."""
    converted, open_type = [], None
    for tag in tags:
        prefix, kind = split_tag(tag, TagScheme.BIOES)
        if kind == "O":
            converted.append("O")
            open_type = None
            continue
        continues = open_type == kind and prefix in (TagPrefix.INSIDE, TagPrefix.END)
        converted.append(("I-" if continues else "B-") + kind)
        open_type = kind if prefix in (TagPrefix.BEGIN, TagPrefix.INSIDE) else None
    return converted


@pytest.mark.parametrize("strategy", GROUPED)
def test_a_bioes_tagger_groups_like_its_iob2_spelling_in_the_pipeline(
    tokenizer: BertTokenizerFast, strategy: str
) -> None:
    model = tiny_tagger(tokenizer, NER_LABELS_BIOES, layers=2, seed=1)
    pipe: TokenClassificationPipeline = pipeline("token-classification", model=model, tokenizer=tokenizer)
    agg = PipelineStrategy(strategy)
    starts = 0
    for text in random_sentences(80, seed=13):
        # the pipeline's own steps up to the per-word (or per-token) labels, BIOES ...
        inputs = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
        enc = tokenizer.backend_tokenizer.encode(text)
        scores = softmax(logits_of(model, enc))
        pre = pipe.gather_pre_entities(
            text,
            np.array(enc.ids),
            scores,
            inputs["offset_mapping"],
            np.array(inputs["special_tokens_mask"]),
            agg,
        )
        units = (
            pipe.aggregate(pre, PipelineStrategy.NONE)
            if strategy == "simple"
            else pipe.aggregate_words(pre, agg)
        )
        # ... re-spelled in IOB2 and grouped by the pipeline's IOB2 rule
        for unit, iob2 in zip(units, bioes_to_iob2([u["entity"] for u in units]), strict=True):
            unit["entity"] = iob2
        expected = [
            (g["entity_group"], g["start"], g["end"], float(g["score"]))
            for g in pipe.group_entities(units)
            if g["entity_group"] != "O"
        ]
        assert_same(ours(pipe, text, strategy), expected)
        starts += sum(u["entity"].startswith("B-") for u in units)
    assert starts > 50


def test_windowed_inference_equals_whole_text_for_a_context_free_model(tokenizer: BertTokenizerFast) -> None:
    """With no encoder layers and no position embeddings, a token's logits depend on the token
    alone, so running a long text in windows must reproduce the whole-text result exactly: any
    misplaced row in planning, window inputs or stitching would show."""
    model = tiny_tagger(tokenizer, NER_LABELS_IOB2, layers=0, seed=2)
    with torch.no_grad():
        model.bert.embeddings.position_embeddings.weight.zero_()
    text = "  ".join(random_sentences(30, seed=14))
    enc = tokenizer.backend_tokenizer.encode(text)
    assert 600 < len(enc.ids) < MAX_POSITIONS
    whole = logits_of(model, enc)
    plan = plan_windows(enc.special_tokens_mask, enc.word_ids, max_length=64, stride=16)
    assert len(plan.windows) > 10
    outputs = []
    for k in range(len(plan.windows)):
        inputs = plan.window_inputs(k, enc.ids, enc.type_ids)
        with torch.no_grad():
            out = model(
                input_ids=torch.from_numpy(inputs.input_ids)[None],
                token_type_ids=torch.from_numpy(inputs.token_type_ids)[None],
                attention_mask=torch.ones((1, len(inputs.input_ids)), dtype=torch.int64),
            )
        outputs.append(out.logits[0].numpy())
    stitched = plan.stitch(outputs)
    np.testing.assert_allclose(stitched, whole, atol=1e-5, rtol=0)

    cuts = [enc.offsets[w.end - 1][1] for w in plan.windows[:-1]]
    straddling = 0
    for strategy in AggregationStrategy:
        args = (text, enc.offsets, enc.word_ids, enc.special_tokens_mask)
        windowed = aggregate(*args, softmax(stitched), NER_LABELS_IOB2, TagScheme.IOB2, strategy)
        full = aggregate(*args, softmax(whole), NER_LABELS_IOB2, TagScheme.IOB2, strategy)
        assert [(e.label, e.start, e.end) for e in windowed] == [(e.label, e.start, e.end) for e in full]
        np.testing.assert_allclose([e.score for e in windowed], [e.score for e in full], atol=1e-5)
        assert len({(e.start, e.end) for e in windowed}) == len(windowed)  # no duplicates
        straddling += sum(any(e.start < cut < e.end for cut in cuts) for e in windowed)
    assert straddling > 0  # entities cut by a window edge were among those compared
