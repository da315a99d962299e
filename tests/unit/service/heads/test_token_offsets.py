"""Exact Unicode offsets whatever the text, with a real fast tokenizer's offsets: every entity's
span is checked against where the test itself placed each word (never against `entity.text`, which
the code cuts from the same span), and `text[start:end] == entity.text` holds."""

from __future__ import annotations

import itertools
import random
import unicodedata

import numpy as np
import pytest
from tokenizers import Tokenizer

from bertserve.modelrepo import TagScheme
from bertserve.service.heads.token_classification import AggregationStrategy, aggregate, softmax
from tests.helpers.spans import spans_in_order

LABEL_SETS = {
    TagScheme.IOB2: ("O", "B-PER", "I-PER", "B-LOC", "I-LOC"),
    TagScheme.IOB1: ("O", "I-PER", "B-PER", "I-LOC"),
    TagScheme.BIOES: ("O", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "S-PER"),
    TagScheme.NONE: ("O", "PER", "LOC"),
}

PIECES = (
    "Angela", "Merkel", "Zoë", "São", "Paulo", "Zürich", "naïve", "e\u0301cole", "Å", "İstanbul",
    "東京", "北京大学", "한국어", "🎉", "👩\u200d👩\u200d👧", "🇩🇪", "👍🏽", "café😀", "a\u200bb",
    "don't", "U.S.A.", "(new)", "york,", "3.14", "@user", "#tag", "—", "...", "ﬁne", "x\u0000y",
)  # fmt: skip
DROPPED = ("Cc", "Cf", "Mn")  # Unicode categories the BERT normalizer removes
SEPARATORS = (" ", " ", " ", "  ", "   ", "\t", "\n", " \n ", "\u00a0", "\u3000")


def random_text(rng: random.Random) -> tuple[str, list[tuple[int, int]]]:
    """A text and the (start, end) at which each of its words was placed, in code points."""
    text = rng.choice(("", " ", "  "))
    spans = []
    for i in range(rng.randint(1, 14)):
        if i:
            text += rng.choice(SEPARATORS)
        word = rng.choice(PIECES)
        spans.append((len(text), len(text) + len(word)))
        text += word
    return text + rng.choice(("", " ", "\n")), spans


def test_each_word_is_one_entity_with_its_exact_text(wordpiece: Tokenizer) -> None:
    # words repeat, so a span found by searching for the entity's text would point at the first one
    text = "Zoë  and 東京 🎉 👩\u200d👩\u200d👧 café\tMerkel\n\ne\u0301cole 🇩🇪x\u3000Zoë 東京 café"
    enc = wordpiece.encode(text)
    labels = LABEL_SETS[TagScheme.IOB2]
    # per token: B-LOC on a word's first token, I-LOC on the others ("simple" then finds each word);
    # the word-level strategies get B-LOC on every token, so whatever they vote, each word is B-LOC
    starts_word = [
        word is not None and (i == 0 or enc.word_ids[i - 1] != word) for i, word in enumerate(enc.word_ids)
    ]

    def logits_for(tags: list[str]) -> np.ndarray:
        return np.array(
            [[4.0 if label == tag else 0.0 for label in labels] for tag in tags], dtype=np.float32
        )

    special = [bool(flag) for flag in enc.special_tokens_mask]
    by_token = logits_for(
        ["O" if sp else ("B-LOC" if st else "I-LOC") for sp, st in zip(special, starts_word, strict=True)]
    )
    by_word = logits_for(["O" if sp else "B-LOC" for sp in special])
    expected = ["Zoë", "and", "東", "京", "🎉", "👩\u200d👩\u200d👧", "café", "Merkel", "e\u0301cole", "🇩🇪x"]
    expected += ["Zoë", "東", "京", "café"]
    for strategy in ("simple", "first", "average", "max"):
        entities = aggregate(
            text,
            enc.offsets,
            enc.word_ids,
            enc.special_tokens_mask,
            softmax(by_token if strategy == "simple" else by_word),
            labels,
            TagScheme.IOB2,
            AggregationStrategy(strategy),
        )
        assert [e.text for e in entities] == expected, strategy
        assert [(e.start, e.end) for e in entities] == spans_in_order(text, expected), strategy


@pytest.mark.parametrize("scheme", list(LABEL_SETS))
def test_offsets_invariant_on_random_unicode(wordpiece: Tokenizer, scheme: TagScheme) -> None:
    rng = random.Random(f"unicode-{scheme}")
    np_rng = np.random.default_rng(len(scheme))
    labels = LABEL_SETS[scheme]
    for _ in range(60):
        text, words = random_text(rng)
        word_of = {i: w for w, (start, end) in enumerate(words) for i in range(start, end)}
        # the normalizer drops format and control characters (zero-width space, NUL, ZWJ) and, as
        # it strips accents, combining marks: a token may leave those out, every other must be in one
        visible = {i for i in word_of if unicodedata.category(text[i]) not in DROPPED}
        enc = wordpiece.encode(text)
        scores = softmax(np_rng.normal(0.0, 3.0, size=(len(enc.ids), len(labels))).astype(np.float32))
        for strategy in AggregationStrategy:
            entities = aggregate(
                text,
                enc.offsets,
                enc.word_ids,
                enc.special_tokens_mask,
                scores,
                labels,
                scheme,
                strategy,
                ignore_labels=(),
            )
            assert entities, (text, strategy)
            for e in entities:
                assert 0 <= e.start < e.end <= len(text)
                # spans start and end on characters of placed words, never on separators
                assert e.start in visible and e.end - 1 in visible, (text, strategy, e)
                assert text[e.start : e.end] == e.text
                assert e.text == e.text.strip()
            # nothing is ignored, so together the spans cover every character of every word
            covered = {i for e in entities for i in range(e.start, e.end)}
            assert covered >= visible, (text, strategy)
            if strategy is AggregationStrategy.NONE:
                content = [i for i, special in enumerate(enc.special_tokens_mask) if not special]
                assert [e.index for e in entities] == content
                # one token never crosses a separator, and the tokens cover the words and only them
                assert all(word_of[e.start] == word_of[e.end - 1] for e in entities), text
                assert covered <= word_of.keys(), text
            else:
                # groups partition the text's tokens: in order, never overlapping
                assert all(a.end <= b.start for a, b in itertools.pairwise(entities))
