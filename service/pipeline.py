"""Per-model pipelines: tokenizer -> batcher/backend -> head, one class per task.

`Pipeline` holds what every task shares (tokenizer, backend, batcher, tokenization pool, metrics);
a task subclass adds its endpoint method and head. The registry picks the class from `PIPELINES`
by the model's task, so no code switches on the task.

NER: each text is tokenized whole (`TextTokenizer.encode_documents`), `service/windowing.py`
cuts texts longer than the model into overlapping windows, every window is one sequence for the
batcher (windows of all texts of all requests batch together), and the stitched per-token logits
of each text are aggregated once by `heads/token_classification.py`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import ClassVar, TypeVar

import numpy as np

from bertserve.modelrepo import ModelConfig, ProblemType, Segmentation, Task
from service.backends.base import Backend, Logits
from service.batching import DynamicBatcher
from service.heads.classification import ClassificationHead, LabelScore
from service.heads.token_classification import (
    DEFAULT_IGNORE_LABELS,
    AggregationStrategy,
    Entity,
    TokenClassificationHead,
)
from service.metrics import Metrics
from service.segmentation import segment
from service.tokenization import Encoded, ModelInput, TextInput, TextTokenizer
from service.windowing import WindowPlan, plan_windows

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ModelParts:
    """What the registry loads for one model; handed to the task's pipeline class."""

    config: ModelConfig
    version: int
    tokenizer: TextTokenizer
    backend: Backend
    batcher: DynamicBatcher
    pool: Executor  # shared tokenization thread pool
    metrics: Metrics
    request_timeout_s: float
    ner_stride: int = 128  # tokens shared by consecutive windows of a long NER text


class Pipeline:
    task: ClassVar[Task]

    def __init__(self, parts: ModelParts) -> None:
        self.parts = parts
        self.config = parts.config
        self.name = parts.config.name
        self.tokenizer = parts.tokenizer
        self.backend = parts.backend
        self.batcher = parts.batcher
        self._pool = parts.pool
        self._m_tokenize = parts.metrics.tokenize_duration.labels(self.name)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.batcher.start(loop)

    async def stop(self, timeout_s: float = 30.0) -> None:
        await self.batcher.stop(timeout_s)
        self.backend.close()

    async def warm_up(self) -> None:
        """One inference through every stage; readiness waits for it."""
        raise NotImplementedError

    async def prepare(self, fn: Callable[[], T]) -> T:
        """Run tokenization work in the pool, announced to the batcher so that a batch closing
        meanwhile may wait (up to max_queue_delay) for this request's sequences.
        The caller must pass the result to `submit_sequences(..., announced=True)`."""
        self.batcher.announce()
        try:
            start = time.perf_counter()
            result = await asyncio.get_running_loop().run_in_executor(self._pool, fn)
            self._m_tokenize.observe(time.perf_counter() - start)
        except BaseException:
            self.batcher.withdraw()
            raise
        return result

    async def submit_sequences(
        self, sequences: Sequence[ModelInput], deadline: float, *, announced: bool
    ) -> list[Logits]:
        """Logits per sequence, in order; `deadline` is a `time.monotonic()` instant."""
        return await self.batcher.submit(
            sequences, announced=announced, timeout_s=deadline - time.monotonic()
        )

    def deadline(self, timeout_s: float | None = None) -> float:
        """The request's deadline: the service's timeout, or the client's when that is shorter."""
        limit = self.parts.request_timeout_s
        if timeout_s is not None:
            limit = min(limit, timeout_s)
        return time.monotonic() + limit


@dataclass(frozen=True, slots=True)
class Classification:
    results: list[list[LabelScore]]
    truncated: list[int]


class ClassificationPipeline(Pipeline):
    task = Task.TEXT_CLASSIFICATION

    def __init__(self, parts: ModelParts) -> None:
        super().__init__(parts)
        self.head = ClassificationHead(
            self.config.labels, self.config.problem_type or ProblemType.SINGLE_LABEL
        )
        self._type_ids = "token_type_ids" in self.backend.input_names

    def _encode(self, inputs: Sequence[TextInput], truncate: bool) -> tuple[list[ModelInput], list[int]]:
        encoded = self.tokenizer.encode(inputs, truncate=truncate)
        return (
            [e.model_input(self._type_ids) for e in encoded],
            [i for i, e in enumerate(encoded) if e.truncated],
        )

    async def classify(
        self,
        inputs: Sequence[TextInput],
        *,
        top_k: int | None = None,
        truncate: bool = True,
        timeout_s: float | None = None,
    ) -> Classification:
        deadline = self.deadline(timeout_s)
        sequences, truncated = await self.prepare(lambda: self._encode(inputs, truncate))
        rows = await self.submit_sequences(sequences, deadline, announced=True)
        return Classification(self.head.postprocess(np.stack(rows), top_k), truncated)

    async def warm_up(self) -> None:
        await self.classify(["warm-up"], top_k=1)


@dataclass(frozen=True, slots=True)
class _Document:
    """One segment of an input text (the whole text unless the model reads lines or sentences)."""

    text: str
    encoding: Encoded
    plan: WindowPlan
    sequences: list[ModelInput]
    source: int  # index of the input text it belongs to
    offset: int  # its first character's position in that text


class TokenClassificationPipeline(Pipeline):
    task = Task.TOKEN_CLASSIFICATION

    def __init__(self, parts: ModelParts) -> None:
        super().__init__(parts)
        self.head = TokenClassificationHead.from_config(self.config)
        self._type_ids = "token_type_ids" in self.backend.input_names
        capacity = self.config.max_length - self.tokenizer.num_special_tokens
        # NOTE: a stride of half a window or more would make windows advance by less than they
        # overlap; clamp rather than refuse, so one setting serves models of any max_length.
        self.stride = min(parts.ner_stride, max(capacity // 2, 0))

    def _plan(self, texts: Sequence[str], segmentation: Segmentation) -> list[_Document]:
        pieces = [
            (source, start, text[start:end])
            for source, text in enumerate(texts)
            for start, end in segment(text, segmentation, self.config.language)
        ]
        segments = [piece for _, _, piece in pieces]
        documents = []
        for (source, start, text), enc in zip(pieces, self.tokenizer.encode_documents(segments), strict=True):
            mask, word_ids = enc.special_tokens_mask, enc.word_ids
            plan = plan_windows(mask, word_ids, self.config.max_length, self.stride)
            ids, types = enc.ids, enc.type_ids
            sequences = []
            for k in range(len(plan.windows)):
                window = plan.window_inputs(k, ids, types)
                sequences.append(
                    ModelInput(window.input_ids, window.token_type_ids if self._type_ids else None)
                )
            documents.append(_Document(text, enc, plan, sequences, source, start))
        return documents

    def _aggregate(
        self,
        documents: list[_Document],
        rows: list[Logits],
        strategy: AggregationStrategy,
        ignore_labels: Sequence[str],
        n_texts: int,
    ) -> list[list[Entity]]:
        results: list[list[Entity]] = [[] for _ in range(n_texts)]
        tokens_before = [0] * n_texts  # token positions (strategy none) count across segments
        row = 0
        for doc in documents:
            count = len(doc.sequences)
            logits = doc.plan.stitch(rows[row : row + count])
            row += count
            entities = self.head.postprocess(doc.text, doc.encoding, logits, strategy, ignore_labels)
            if doc.offset or tokens_before[doc.source]:
                shift, before = doc.offset, tokens_before[doc.source]
                entities = [
                    replace(
                        e,
                        start=e.start + shift,
                        end=e.end + shift,
                        index=None if e.index is None else e.index + before,
                    )
                    for e in entities
                ]
            results[doc.source].extend(entities)
            tokens_before[doc.source] += len(doc.encoding.ids)
        return results

    async def recognize(
        self,
        texts: Sequence[str],
        *,
        strategy: AggregationStrategy = AggregationStrategy.SIMPLE,
        ignore_labels: Sequence[str] = DEFAULT_IGNORE_LABELS,
        segmentation: Segmentation | None = None,
        timeout_s: float | None = None,
    ) -> list[list[Entity]]:
        """Entities per text. `segmentation` None: the model's own (model.yaml)."""
        deadline = self.deadline(timeout_s)
        mode = self.config.segmentation if segmentation is None else segmentation
        documents = await self.prepare(lambda: self._plan(texts, mode))
        rows = await self.submit_sequences(
            [x for doc in documents for x in doc.sequences], deadline, announced=True
        )
        # Aggregation of a long document takes milliseconds of numpy: keep it off the event loop.
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: self._aggregate(documents, rows, strategy, ignore_labels, len(texts))
        )

    async def warm_up(self) -> None:
        await self.recognize(["Warm-up in Paris."])


PIPELINES: dict[Task, type[Pipeline]] = {
    Task.TEXT_CLASSIFICATION: ClassificationPipeline,
    Task.TOKEN_CLASSIFICATION: TokenClassificationPipeline,
}
