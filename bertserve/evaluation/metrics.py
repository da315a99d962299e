"""The one implementation of each figure the project reports: accuracy, entity-level precision /
recall / F1, and how often two models make the same decision.

Entity scores are conlleval's: an entity counts as found only when its type and both ends match a
gold entity exactly; precision, recall and F1 are micro-averaged over every entity of every
sentence (and the same per type). Spans are ``(type, start, end)`` triples with an exclusive end,
in whatever unit the caller uses (tag positions or characters), so tag-level gold and the
character-level entities the API returns are scored by the same code.

Tag sequences become spans through the serving head's own grouping
(`bertserve.service.heads.token_classification.group_units`): the rules that decide what the
API returns as one entity also decide what counts as one gold entity.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from bertserve.modelrepo import TagScheme, detect_tag_scheme
from bertserve.runtime.decisions import (
    EMBEDDING_AGREEMENT_COSINE,
    agreement,
    cosine_similarity,
    decisions,
    embedding_agreement,
)
from bertserve.service.heads.token_classification import DEFAULT_IGNORE_LABELS, group_units, split_tag

__all__ = [
    "EMBEDDING_AGREEMENT_COSINE",
    "Span",
    "SpanScores",
    "accuracy",
    "agreement",
    "cosine_similarity",
    "decisions",
    "decode_spans",
    "embedding_agreement",
    "entity_scores",
    "entity_scores_by_type",
]

Span = tuple[str, int, int]  # (entity type, start, end exclusive)


def decode_spans(
    tags: Sequence[str], scheme: TagScheme | None = None, ignore: Iterable[str] = DEFAULT_IGNORE_LABELS
) -> list[Span]:
    """The entities of a BIO / IOB1 / IOB2 / BIOES (BILOU) tag sequence as ``(type, first, stop)``
    over tag positions. `scheme` None: read from the tags themselves (`detect_tag_scheme`)."""
    if scheme is None:
        scheme = detect_tag_scheme(list(tags))
    split = [split_tag(tag, scheme) for tag in tags]
    ignored = frozenset(ignore)
    spans = []
    for first, stop in group_units(split):
        kind = split[first][1]
        if kind not in ignored:
            spans.append((kind, first, stop))
    return spans


@dataclass(frozen=True)
class SpanScores:
    precision: float
    recall: float
    f1: float
    gold: int  # gold entities
    predicted: int
    correct: int  # predicted entities that match a gold one exactly


def _scores(correct: int, gold: int, predicted: int) -> SpanScores:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * correct / (gold + predicted) if correct else 0.0
    return SpanScores(precision, recall, f1, gold, predicted, correct)


def entity_scores(
    gold: Sequence[Collection[Span]], predicted: Sequence[Collection[Span]], kind: str | None = None
) -> SpanScores:
    """Micro-averaged exact-match scores over sentences (`gold[i]` and `predicted[i]` are the
    entities of sentence i); `kind` restricts both sides to one entity type."""
    correct = n_gold = n_pred = 0
    for g, p in zip(gold, predicted, strict=True):
        want = {s for s in g if kind is None or s[0] == kind}
        got = {s for s in p if kind is None or s[0] == kind}
        correct += len(want & got)
        n_gold += len(want)
        n_pred += len(got)
    return _scores(correct, n_gold, n_pred)


def entity_scores_by_type(
    gold: Sequence[Collection[Span]], predicted: Sequence[Collection[Span]]
) -> dict[str, SpanScores]:
    """`entity_scores` for every type that occurs on either side, in alphabetical order."""
    kinds = sorted({s[0] for spans in (*gold, *predicted) for s in spans})
    return {kind: entity_scores(gold, predicted, kind) for kind in kinds}


def accuracy(gold: Sequence[object], predicted: Sequence[object]) -> float:
    """Share of exact matches (for multi-label models compare label sets)."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold answers but {len(predicted)} predictions")
    if not gold:
        raise ValueError("accuracy of an empty data set")
    return sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold)
