"""Token classification head: per-token scores -> entities with exact character spans.

Reference: `transformers.TokenClassificationPipeline` (transformers 4.57.6,
`pipelines/token_classification.py`). For IOB2 labels the results equal the pipeline's, entity
for entity (label, start, end, score), for every aggregation strategy:

- ``none``: one entry per non-special token, its arg-max label and that label's probability.
- ``simple``: the per-token arg-max labels are grouped into entities (below); an entity's score
  is the mean of its tokens' scores.
- ``first`` / ``average`` / ``max``: the tokens of one word first agree on a single label (the
  first token's arg-max; the arg-max of the mean score vector; the arg-max of the token whose best
  score is highest), then words are grouped like tokens in ``simple``.

Where the pipeline decides that a token continues a word by comparing the token string's length
with its span (`len("##ing") != len("ing")`), this module uses the fast tokenizer's word ids: a
token continues a word iff its word id equals the previous content token's. For WordPiece
tokenizers both agree (they could only differ where normalization made a token's text and its
span differ in length); for other tokenizers the word ids are the ground truth the heuristic
approximates. Special tokens are recognised by the tokenizer's special-tokens mask, never by
their strings.

Grouping (tag schemes, `bertserve.modelrepo.TagScheme`). A label is split into a prefix and an
entity type; a label without a recognised prefix (``O``, ``DATE``) counts as ``I-`` of a type
named by the whole label, so consecutive equal labels form one group, as in the pipeline.

- IOB2 and IOB1 (prefixes ``B-``, ``I-``): a token joins the open group iff it has the same type
  and is not ``B-``. This is the pipeline's rule and decodes both schemes correctly: in IOB1,
  ``B-`` appears only to separate two adjacent entities of the same type, and an ``I-`` after a
  different type (or after ``O``) starts a new entity; IOB2 read leniently (an ``I-`` without a
  ``B-`` starts an entity, as conlleval does) is the same rule.
- BIOES / BILOU (``B-``, ``I-``, ``E-``/``L-``, ``S-``/``U-``): ``S-`` is a one-token entity;
  ``B-`` opens an entity; ``I-`` continues an open entity of its type, else opens one; ``E-``
  closes an open entity of its type, else stands alone as a one-token entity. After ``S-`` or
  ``E-`` nothing continues the closed entity.
- NONE: no prefixes at all; every label is its own type.

Prefixes are matched case-insensitively (``b-per`` is ``B-PER``), like `detect_tag_scheme`.
Entities whose group (or, for ``none``, whose label) is in ``ignore_labels`` are dropped last,
as in the pipeline, so ``ignore_labels=[]`` returns the ``O`` stretches too.

Every entity's text is ``text[start:end]``, the slice of the caller's own string (offsets are in
Unicode code points, Python's string indices), so ``text[e.start:e.end] == e.text`` holds for
any input — accents, CJK, emoji, runs of spaces.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Annotated, NotRequired, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import Field
from typing_extensions import TypedDict

from bertserve.modelrepo import ModelConfig, TagScheme, Task
from bertserve.service.heads.activations import softmax

DEFAULT_IGNORE_LABELS: tuple[str, ...] = ("O",)

FloatArray = npt.NDArray[np.floating]
IntArray = npt.NDArray[np.int64]


class AggregationStrategy(StrEnum):
    """How token scores become entities; the names and semantics of the transformers pipeline."""

    NONE = "none"
    SIMPLE = "simple"
    FIRST = "first"
    AVERAGE = "average"
    MAX = "max"


class TokenAlignment(Protocol):
    """What aggregation needs from a tokenization; a `tokenizers.Encoding` satisfies it."""

    @property
    def offsets(self) -> Sequence[tuple[int, int]]: ...

    @property
    def word_ids(self) -> Sequence[int | None]: ...

    @property
    def special_tokens_mask(self) -> Sequence[int]: ...


# NOTE: the one definition of an entity (or, for aggregation none, a token) in a response body:
# `Entity.as_dict` builds it (mypy checks every key and type) and the API's OpenAPI schema
# `EntityOut` is generated from it. A TypedDict is a plain dict at run time, so a body costs what a
# dict literal costs and nothing validates it per request. (No docstring: it would become the
# schema's description.)
class EntityOut(TypedDict):
    entity_group: NotRequired[Annotated[str | None, Field(description="Entity type (grouped strategies).")]]
    entity: NotRequired[Annotated[str | None, Field(description="Token tag, e.g. B-PER (aggregation none).")]]
    index: NotRequired[
        Annotated[int | None, Field(description="Token position in the encoding (aggregation none).")]
    ]
    score: float
    start: Annotated[int, Field(description="Character offset in the input; input[start:end] == text.")]
    end: int
    text: str


@dataclass(frozen=True, slots=True)
class Entity:
    """One result item. For strategy ``none`` a token (`label` is the full tag, e.g. ``B-PER``,
    and `index` its position in the encoding); otherwise an entity group (`label` is the type,
    e.g. ``PER``, and `index` is None)."""

    label: str
    score: float
    start: int
    end: int
    text: str
    index: int | None = None

    def as_dict(self) -> EntityOut:
        """The pipeline-shaped mapping the API returns: ``entity``/``index`` for tokens,
        ``entity_group`` for groups."""
        if self.index is not None:
            return {
                "entity": self.label,
                "index": self.index,
                "score": self.score,
                "start": self.start,
                "end": self.end,
                "text": self.text,
            }
        return {
            "entity_group": self.label,
            "score": self.score,
            "start": self.start,
            "end": self.end,
            "text": self.text,
        }


class TagPrefix(Enum):
    """The role of a tag in its entity, whatever letter the scheme spells it with."""

    BEGIN = "B"
    INSIDE = "I"
    END = "E"
    SINGLE = "S"


_PREFIXES: dict[TagScheme, dict[str, TagPrefix]] = {
    TagScheme.IOB1: {"B": TagPrefix.BEGIN, "I": TagPrefix.INSIDE},
    TagScheme.IOB2: {"B": TagPrefix.BEGIN, "I": TagPrefix.INSIDE},
    TagScheme.BIOES: {
        "B": TagPrefix.BEGIN,
        "I": TagPrefix.INSIDE,
        "E": TagPrefix.END,
        "L": TagPrefix.END,
        "S": TagPrefix.SINGLE,
        "U": TagPrefix.SINGLE,
    },
    TagScheme.NONE: {},
}


def split_tag(label: str, scheme: TagScheme) -> tuple[TagPrefix, str]:
    """``B-PER`` -> (BEGIN, ``PER``); a label without a prefix of `scheme` is INSIDE of itself."""
    head, sep, rest = label.partition("-")
    if sep and rest and len(head) == 1:
        prefix = _PREFIXES[scheme].get(head.upper())
        if prefix is not None:
            return prefix, rest
    return TagPrefix.INSIDE, label


def group_units(tags: Sequence[tuple[TagPrefix, str]]) -> list[tuple[int, int]]:
    """Chunk a tag sequence into entities by the rules in the module docstring.

    Returns half-open ranges ``(first, stop)`` of tag positions, one per group, in order."""
    groups: list[tuple[int, int]] = []
    group_start = 0
    open_type: str | None = None  # the type an INSIDE/END tag may continue; None when closed
    for i, (prefix, kind) in enumerate(tags):
        continues = open_type == kind and prefix in (TagPrefix.INSIDE, TagPrefix.END)
        if i > 0 and not continues:
            groups.append((group_start, i))
            group_start = i
        open_type = kind if prefix in (TagPrefix.BEGIN, TagPrefix.INSIDE) else None
    if tags:
        groups.append((group_start, len(tags)))
    return groups


def _nanmean_segments(values: FloatArray, starts: IntArray) -> FloatArray:
    """`np.nanmean` over each segment ``values[starts[i]:starts[i + 1]]`` (along axis 0), in
    `values`' dtype like `np.nanmean` itself: a sum of the non-NaN entries over their count."""
    valid = ~np.isnan(values)
    sums = np.add.reduceat(np.where(valid, values, 0), starts, axis=0)
    counts = np.add.reduceat(valid, starts, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):  # an all-NaN segment is NaN, as in nanmean
        result: FloatArray = np.true_divide(sums, counts, out=sums, casting="unsafe")
    return result


def _word_starts(word_ids: Sequence[int | None], positions: IntArray) -> IntArray:
    """Indices (into `positions`) of the content tokens that start a word: a token continues a
    word iff it carries the same, non-null word id as the content token before it."""
    ids = np.array([-1 if word_ids[p] is None else word_ids[p] for p in positions.tolist()], dtype=np.int64)
    continues = np.zeros(ids.shape, dtype=bool)
    continues[1:] = (ids[1:] == ids[:-1]) & (ids[1:] >= 0)
    return np.flatnonzero(~continues)


def _word_scores(content: FloatArray, starts: IntArray, strategy: AggregationStrategy) -> FloatArray:
    """One score vector per word (rows of `content` from `starts[i]` to the next start)."""
    if strategy is AggregationStrategy.FIRST:
        return content[starts]
    if strategy is AggregationStrategy.AVERAGE:
        return _nanmean_segments(content, starts)
    if strategy is AggregationStrategy.MAX:
        # the token whose best label is the most confident decides; the first such token on ties
        token_best = np.nan_to_num(content.max(axis=-1), nan=-np.inf)  # a NaN row never wins
        word_of = np.repeat(np.arange(starts.size), np.diff(np.append(starts, len(content))))
        winners = np.flatnonzero(token_best == np.maximum.reduceat(token_best, starts)[word_of])
        _, first_winner = np.unique(word_of[winners], return_index=True)
        chosen: IntArray = winners[first_winner]
        return content[chosen]
    raise ValueError(f"{strategy} is not a word-level strategy")


def _check_inputs(
    text: str,
    offsets: IntArray,
    word_ids: Sequence[int | None],
    special_mask: Sequence[int],
    scores: FloatArray,
    labels: Sequence[str],
) -> None:
    n = len(special_mask)
    if len(offsets) != n or len(word_ids) != n:
        raise ValueError(
            f"offsets ({len(offsets)}), word_ids ({len(word_ids)}) and special_mask ({n}) differ in length"
        )
    if scores.ndim != 2 or scores.shape != (n, len(labels)):
        raise ValueError(f"scores have shape {scores.shape}, expected ({n}, {len(labels)})")
    content = offsets[~np.asarray(special_mask, dtype=bool)]
    bad = (content[:, 0] < 0) | (content[:, 0] > content[:, 1]) | (content[:, 1] > len(text))
    if bad.any():
        start, end = content[int(np.argmax(bad))].tolist()
        raise ValueError(f"a token has offsets ({start}, {end}) outside a text of {len(text)} characters")


def aggregate(
    text: str,
    offsets: Sequence[tuple[int, int]],
    word_ids: Sequence[int | None],
    special_mask: Sequence[int],
    scores: FloatArray,
    labels: Sequence[str],
    scheme: TagScheme,
    strategy: AggregationStrategy = AggregationStrategy.SIMPLE,
    ignore_labels: Iterable[str] = DEFAULT_IGNORE_LABELS,
) -> list[Entity]:
    """Turn per-token probabilities into entities, as the transformers pipeline does.

    Args:
        text: the string that was tokenized; offsets index into it.
        offsets: per token ``(start, end)`` character offsets (the fast tokenizer's, in code points).
        word_ids: per token word index from the fast tokenizer (None for special tokens).
        special_mask: per token 1 for special tokens ([CLS], [SEP], ...), skipped entirely.
        scores: ``[n_tokens, n_labels]`` probabilities (see `softmax`), aligned with the above.
        labels: label names in id order.
        scheme: how label prefixes are read (`TagScheme`); see the module docstring.
        strategy: `AggregationStrategy`.
        ignore_labels: labels (strategy ``none``) or entity types (the others) left out.

    Returns:
        Entities in text order; for ``none`` tokens (`Entity.index` set), else groups.
    """
    spans = np.asarray(offsets, dtype=np.int64).reshape(len(offsets), 2)
    _check_inputs(text, spans, word_ids, special_mask, scores, labels)
    strategy = AggregationStrategy(strategy)  # a plain "first" from a caller works too
    ignored = frozenset(ignore_labels)
    positions = np.flatnonzero(~np.asarray(special_mask, dtype=bool))
    if positions.size == 0:
        return []
    # NOTE: vectorised over the whole text, as a long document has thousands of tokens; values
    # stay in the scores' dtype (float32 from the model), as in the pipeline.
    content, content_spans = scores[positions], spans[positions]

    if strategy is AggregationStrategy.NONE:
        best = np.argmax(content, axis=-1)
        entities = []
        for i, (pos, label_id) in enumerate(zip(positions.tolist(), best.tolist(), strict=True)):
            if labels[label_id] in ignored:
                continue
            start, end = content_spans[i].tolist()
            entities.append(
                Entity(labels[label_id], float(content[i, label_id]), start, end, text[start:end], pos)
            )
        return entities

    if strategy is AggregationStrategy.SIMPLE:
        unit_scores, unit_starts = content, content_spans[:, 0]
        unit_ends = content_spans[:, 1]
    else:
        starts = _word_starts(word_ids, positions)
        unit_scores = _word_scores(content, starts, strategy)
        unit_starts = content_spans[starts, 0]
        unit_ends = content_spans[np.append(starts[1:], len(positions)) - 1, 1]
    unit_labels = np.argmax(unit_scores, axis=-1)
    unit_best = unit_scores[np.arange(len(unit_labels)), unit_labels]

    tag_of_label = [split_tag(label, scheme) for label in labels]
    tags = [tag_of_label[label_id] for label_id in unit_labels.tolist()]
    groups = group_units(tags)
    firsts = np.array([first for first, _ in groups], dtype=np.int64)
    group_scores = _nanmean_segments(unit_best, firsts).tolist()
    entities = []
    for (first, stop), score in zip(groups, group_scores, strict=True):
        kind = tags[first][1]
        if kind in ignored:
            continue
        start, end = int(unit_starts[first]), int(unit_ends[stop - 1])
        entities.append(Entity(kind, score, start, end, text[start:end]))
    return entities


@dataclass(frozen=True)
class TokenClassificationHead:
    """Post-processing for a token-classification model: logits -> entities."""

    labels: tuple[str, ...]
    scheme: TagScheme

    @classmethod
    def from_config(cls, config: ModelConfig) -> TokenClassificationHead:
        if config.task != Task.TOKEN_CLASSIFICATION:
            raise ValueError(f"model {config.name!r} is a {config.task} model, not token classification")
        # ModelConfig fills tag_scheme from the label names unless model.yaml overrides it
        scheme = config.tag_scheme if config.tag_scheme is not None else TagScheme.NONE
        return cls(tuple(config.labels), scheme)

    def postprocess(
        self,
        text: str,
        alignment: TokenAlignment,
        logits: FloatArray,
        strategy: AggregationStrategy = AggregationStrategy.SIMPLE,
        ignore_labels: Iterable[str] = DEFAULT_IGNORE_LABELS,
    ) -> list[Entity]:
        """`logits` is ``[n_tokens, n_labels]`` for the whole encoding in `alignment` (one
        sequence, padding removed; for long texts the stitched result of `bertserve.service.windowing`)."""
        return aggregate(
            text,
            alignment.offsets,
            alignment.word_ids,
            alignment.special_tokens_mask,
            softmax(logits),
            self.labels,
            self.scheme,
            strategy,
            ignore_labels,
        )
