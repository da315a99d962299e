"""Score an artifact through the served pipeline: the figures describe what the API answers.

`ServedModel` opens a model version with the registry's own wiring (`open_pipeline`: the verified
tokenizer, the runtime's `BackendLoader` choosing the artifact for a backend and precision, the
dynamic batcher with its collation, the task's pipeline and head) and sends texts through it as a
client would, in requests of `Settings.max_inputs` texts, without HTTP. Its answers are the API's:
labels for classification, entities with the ``simple`` aggregation and character offsets for NER
(the model's own segmentation).

The export gates, `make demo-eval` and the scripts all score through `score`, so an int8 figure
in export_report.json is the figure `make demo-eval` prints for the same file.

NER gold: the words of a CoNLL sentence joined by single spaces are the text sent; gold entities
are decoded from the tags (`metrics.decode_spans`) and placed on that text by the words' character
offsets, then compared as ``(type, start, end)`` with the entities the API returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from bertserve.evaluation.datasets import (
    DatasetError,
    LabelledText,
    TaggedSentence,
    gold_labels,
    read_conll,
    read_labelled_texts,
    resolve_gold,
)
from bertserve.evaluation.metrics import Span, SpanScores, accuracy, decode_spans, entity_scores
from bertserve.modelrepo import ModelConfig, Precision, ProblemType, TagScheme, Task, detect_tag_scheme
from bertserve.runtime.base import BackendKind
from bertserve.runtime.selection import BackendFactory, BackendLoader
from bertserve.service.heads.classification import LabelScore
from bertserve.service.heads.token_classification import AggregationStrategy, Entity
from bertserve.service.metrics import Metrics
from bertserve.service.pipeline import ClassificationPipeline, Pipeline, TokenClassificationPipeline
from bertserve.service.registry import open_pipeline
from bertserve.service.settings import Settings
from bertserve.service.tokenization import TextInput

__all__ = [
    "ACCURACY",
    "ENTITY_F1",
    "EvalScore",
    "EvalSet",
    "ServedModel",
    "gold_spans",
    "load_eval_set",
    "predicted_labels",
    "score",
    "tagger_spans",
]

ACCURACY = "accuracy"
ENTITY_F1 = "entity_f1"
MULTI_LABEL_THRESHOLD = 0.5  # a multi-label answer: every label scored above it
# Scoring waits for its answers however busy the machine is: a timeout would drop examples.
SCORING_TIMEOUT_MS = 24 * 3600 * 1000


class ServedModel:
    """One model version opened exactly as `bertserve serve` opens it, answering without HTTP.

    `backend` and `precision` choose the artifact as `--backend`/`--precision` do; `factory`
    replaces the runtime's loader (the export scores PyTorch through the same pipeline);
    `aggregation` is the NER request's ``aggregation`` (the API's default unless a caller asks
    what another strategy would answer)."""

    def __init__(
        self,
        config: ModelConfig,
        version_dir: Path,
        *,
        backend: BackendKind = BackendKind.ORT_CPU,
        precision: Precision | None = None,
        factory: BackendFactory | None = None,
        aggregation: AggregationStrategy = AggregationStrategy.SIMPLE,
    ) -> None:
        self.aggregation = aggregation
        self.settings = Settings(
            repo=version_dir.parent.parent,
            models=[config.name],
            backend=backend,
            precision=precision,
            request_timeout_ms=SCORING_TIMEOUT_MS,
        )
        self.config = config
        self._runner = asyncio.Runner()
        loader = factory or BackendLoader(self.settings.runtime_options())
        self.pipeline: Pipeline = open_pipeline(
            self.settings, Metrics(process=False), config, version_dir, loader
        )
        try:
            self.pipeline.start(self._runner.get_loop())
            self._runner.run(self.pipeline.warm_up())
        except BaseException:
            self.close()
            raise

    @property
    def artifact(self) -> str:
        """What answers: backend and precision, e.g. ``onnxruntime-cpu int8``."""
        backend = self.pipeline.backend
        return f"{backend.name} {backend.precision.value}"

    def _requests(self, items: Sequence[TextInput]) -> Iterator[Sequence[TextInput]]:
        size = self.settings.max_inputs
        for start in range(0, len(items), size):
            yield items[start : start + size]

    def classify(self, inputs: Sequence[TextInput]) -> list[list[LabelScore]]:
        """Every label with its score per input, best first: the /classify answer."""
        pipeline = self.pipeline
        if not isinstance(pipeline, ClassificationPipeline):
            raise TypeError(f"model {self.config.name!r} is a {self.config.task} model")
        results: list[list[LabelScore]] = []
        for request in self._requests(inputs):
            results.extend(self._runner.run(pipeline.classify(request, truncate=True)).results)
        return results

    def recognize(self, texts: Sequence[str]) -> list[list[Entity]]:
        """Entities per text as /ner answers them: `aggregation` (default ``simple``, the API's),
        the model's segmentation."""
        pipeline = self.pipeline
        if not isinstance(pipeline, TokenClassificationPipeline):
            raise TypeError(f"model {self.config.name!r} is a {self.config.task} model")
        results: list[list[Entity]] = []
        for request in self._requests(texts):
            texts_ = [str(t) for t in request]
            results.extend(self._runner.run(pipeline.recognize(texts_, strategy=self.aggregation)))
        return results

    def close(self) -> None:
        try:
            self._runner.run(self.pipeline.stop())
        finally:
            self._runner.close()

    def __enter__(self) -> ServedModel:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# ------------------------------------------------------------------------------------------ eval sets


@dataclass(frozen=True)
class EvalSet:
    """A held-out file read for one model: gold label sets, or tagged sentences."""

    path: Path
    metric: str  # ACCURACY | ENTITY_F1
    examples: tuple[LabelledText, ...] = ()
    gold: tuple[frozenset[str], ...] = ()
    sentences: tuple[TaggedSentence, ...] = ()

    def __len__(self) -> int:
        return len(self.examples) or len(self.sentences)


def load_eval_set(path: Path, task: Task, labels: Sequence[str]) -> EvalSet:
    """An eval file for a model with `labels`: CoNLL for token classification, else labelled
    TSV/CSV (text pairs allowed). A first row whose label is no label is a header."""
    if task == Task.TOKEN_CLASSIFICATION:
        sentences = read_conll(path)
        known = set(labels)
        for sentence in sentences:
            unknown = next((tag for tag in sentence.tags if tag not in known), None)
            if unknown is not None:
                raise DatasetError(f"{path}: unknown tag {unknown!r}; the model's tags are {list(labels)}")
        return EvalSet(path, ENTITY_F1, sentences=tuple(sentences))
    examples = read_labelled_texts(path, pairs=True)
    if examples and examples[0].line == 1 and resolve_gold(examples[0].label, labels) is None:
        examples = examples[1:]  # a header naming other columns than text/label
    if not examples:
        raise DatasetError(f"eval file {path} has no examples")
    gold = gold_labels(path, examples, labels)
    return EvalSet(path, ACCURACY, examples=tuple(examples), gold=tuple(gold))


# ---------------------------------------------------------------------------------------------- scores


def predicted_labels(row: Sequence[LabelScore], problem_type: ProblemType | None) -> frozenset[str]:
    """The decision in a /classify answer: the labels its thresholds decide (model.yaml
    `thresholds`), else the best label, or every label above 0.5 for a multi-label model."""
    if row and row[0].above_threshold is not None:
        return frozenset(s.label for s in row if s.above_threshold)
    if problem_type == ProblemType.MULTI_LABEL:
        return frozenset(s.label for s in row if s.score > MULTI_LABEL_THRESHOLD)
    return frozenset({row[0].label})


def gold_spans(sentence: TaggedSentence, scheme: TagScheme | None = None) -> set[Span]:
    """The gold entities of a sentence on its text (`TaggedSentence.text`), in characters."""
    offsets = sentence.word_offsets()
    return {
        (kind, offsets[first][0], offsets[stop - 1][1])
        for kind, first, stop in decode_spans(sentence.tags, scheme)
    }


def entity_spans(entities: Sequence[Entity]) -> set[Span]:
    return {(e.label, e.start, e.end) for e in entities}


def tagger_spans(
    model: ServedModel, sentences: Sequence[TaggedSentence], scheme: TagScheme | None = None
) -> tuple[list[set[Span]], list[set[Span]]]:
    """(gold, predicted) character spans per sentence; `scheme` of the gold tags (None: read
    from the tags)."""
    if scheme is None:
        scheme = detect_tag_scheme(sorted({tag for s in sentences for tag in s.tags}))
    predicted = model.recognize([s.text for s in sentences])
    return [gold_spans(s, scheme) for s in sentences], [entity_spans(row) for row in predicted]


@dataclass(frozen=True)
class EvalScore:
    metric: str
    value: float  # accuracy, or entity-level micro F1
    examples: int
    entities: SpanScores | None = None
    by_type: Mapping[str, SpanScores] = field(default_factory=dict)


def score(model: ServedModel, eval_set: EvalSet) -> EvalScore:
    """Accuracy (exact label set for multi-label) or entity-level micro F1 of what the API answers."""
    if eval_set.metric == ENTITY_F1:
        gold, predicted = tagger_spans(model, eval_set.sentences, model.config.tag_scheme)
        micro = entity_scores(gold, predicted)
        kinds = sorted({s[0] for spans in (*gold, *predicted) for s in spans})
        by_type = {kind: entity_scores(gold, predicted, kind) for kind in kinds}
        return EvalScore(ENTITY_F1, micro.f1, len(eval_set), micro, by_type)
    inputs: list[TextInput] = [e.text if e.pair is None else (e.text, e.pair) for e in eval_set.examples]
    answers = model.classify(inputs)
    predicted_sets = [predicted_labels(row, model.config.problem_type) for row in answers]
    return EvalScore(ACCURACY, accuracy(list(eval_set.gold), predicted_sets), len(eval_set))
