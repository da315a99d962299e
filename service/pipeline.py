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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import ClassVar, Generic, TypeVar, cast

import numpy as np
from numpy.typing import NDArray

from bertserve.modelrepo import ModelConfig, ProblemType, Segmentation, Task, WindowPooling
from bertserve.runtime.base import Backend, Logits
from bertserve.runtime.collation import ModelInput
from bertserve.service import tracing
from bertserve.service.batching import DynamicBatcher
from bertserve.service.errors import (
    DeadlineExceededError,
    PayloadTooLargeError,
    UnsupportedTaskError,
)
from bertserve.service.heads.classification import Activation, ClassificationHead, LabelScore
from bertserve.service.heads.embedding import EmbeddingHead, cosine_scores
from bertserve.service.heads.token_classification import (
    DEFAULT_IGNORE_LABELS,
    AggregationStrategy,
    Entity,
    TokenClassificationHead,
)
from bertserve.service.limits import RequestLimits, WorkBudget
from bertserve.service.metrics import Metrics
from bertserve.service.segmentation import iter_segments
from bertserve.service.tokenization import Encoded, EncodedPair, TextInput, TextTokenizer, text_chars
from bertserve.service.windowing import WindowPlan, plan_windows

T = TypeVar("T")

# Segments tokenized per call while a request's NER documents are planned (at most this many, and
# fewer once they hold this many characters): the budget is checked between calls, so a request
# over its limits is refused after at most one chunk more than allowed.
_TOKENIZE_CHUNK = 64
_TOKENIZE_CHUNK_CHARS = 16_384


@dataclass(frozen=True, slots=True)
class ModelParts:
    """What the registry loads for one model; handed to the task's pipeline class."""

    config: ModelConfig
    tokenizer: TextTokenizer
    backend: Backend
    batcher: DynamicBatcher
    pool: Executor  # this model's own tokenization threads: one model's inputs cannot starve another's
    metrics: Metrics
    request_timeout_s: float
    limits: RequestLimits
    ner_stride: int = 128  # tokens shared by consecutive windows of a long text (NER, long_text: windows)
    # A request of at most this many characters is tokenized (and post-processed) on the event
    # loop instead of in `pool`: see `Pipeline.prepare`.
    inline_chars: int = 0


@dataclass(frozen=True, slots=True)
class Prepared(Generic[T]):
    """What `Pipeline.prepare` made, and whether the batcher was told it was coming (`announced`,
    to pass on to `submit_sequences`)."""

    value: T
    announced: bool


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
        self.limits = parts.limits
        # requests holding this pipeline (ModelRegistry.get within admit): a reload retires a
        # replaced pipeline only once none does
        self.users = 0
        self._m_tokenize = parts.metrics.tokenize_duration.labels(self.name)
        self._m_rejected_deadline = parts.metrics.rejected.labels(self.name, "deadline")
        self._m_rejected_large = parts.metrics.rejected.labels(self.name, "too_large")
        self._type_ids = "token_type_ids" in self.backend.input_names
        capacity = self.config.max_length - self.tokenizer.num_special_tokens
        # NOTE: a stride of half a window or more would make windows advance by less than they
        # overlap; clamp rather than refuse, so one setting serves models of any max_length.
        self.stride = min(parts.ner_stride, max(capacity // 2, 0))

    def windows(self, enc: Encoded, budget: WorkBudget) -> tuple[WindowPlan, list[ModelInput]]:
        """A whole-text encoding cut into overlapping windows that fit the model
        (`service/windowing.py`), one model input each, counted against the request's budget (its
        first window was counted as the input's own sequence already)."""
        plan = plan_windows(enc.special_tokens_mask, enc.word_ids, self.config.max_length, self.stride)
        budget.add_sequences(len(plan.windows) - 1)
        budget.add_tokens(sum(plan.sequence_length(k) for k in range(len(plan.windows))))
        # Converted once: window_inputs slices these for every window.
        ids = np.asarray(enc.encoding.ids, dtype=np.int64)
        types = np.asarray(enc.encoding.type_ids, dtype=np.int64)
        sequences = []
        for k in range(len(plan.windows)):
            window = plan.window_inputs(k, ids, types)  # type: ignore[arg-type]
            sequences.append(ModelInput(window.input_ids, window.token_type_ids if self._type_ids else None))
        return plan, sequences

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.batcher.start(loop)

    async def stop(self, timeout_s: float = 30.0) -> None:
        await self.batcher.stop(timeout_s)
        for backend in self.batcher.backends:
            backend.close()
        if isinstance(self._pool, ThreadPoolExecutor):
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def warm_up(self) -> None:
        """One inference through every stage, then one straight on each other backend session of
        the model (instances, the adaptive layout's), so that none meets its first-run costs
        with a client waiting; readiness waits for it."""
        await self.warm_up_stages()
        if len(self.batcher.backends) > 1:
            (enc,) = self.tokenizer.encode(["warm-up"], truncate=True)
            await asyncio.to_thread(self.batcher.warm_other_sessions, [enc.model_input(self._type_ids)])

    async def warm_up_stages(self) -> None:
        """One inference through every stage of the task."""
        raise NotImplementedError

    def budget(self, deadline: float) -> WorkBudget:
        return WorkBudget(self.limits, deadline)

    def refuse_too_large(self, budget: WorkBudget, sequences: int) -> None:
        """A count known before any work (e.g. one sequence per input) checked on the loop."""
        try:
            budget.add_sequences(sequences)
        except PayloadTooLargeError:
            self._m_rejected_large.inc()
            raise

    def inline(self, chars: int | None) -> bool:
        """Whether a request of `chars` characters is tokenized on the event loop."""
        return chars is not None and chars <= self.parts.inline_chars

    async def prepare(
        self, fn: Callable[[WorkBudget], T], budget: WorkBudget, *, chars: int | None = None
    ) -> Prepared[T]:
        """Run tokenization work for a request of `chars` characters (None: unknown).

        A short request (`inline`: at most `inline_chars`, default 512, ~0.3 ms of Rust tokenizer)
        is tokenized right here on the event loop: a round trip through the pool costs the loop
        about as much as the work itself, and the sequences are queued in the same step, so the
        batcher has nothing to wait for. Anything longer runs in the model's pool, announced to the
        batcher so that a batch closing meanwhile may wait (up to max_queue_delay) for this
        request's sequences. Pass `Prepared.announced` on to `submit_sequences`.

        The wait for the pool is bounded by the request's deadline (504 when it passes, also while
        the work still queues behind other requests' tokenization), and work nobody waits for any
        more stops at its next budget check instead of running on.
        """
        remaining = budget.remaining_s()
        if remaining is not None and remaining <= 0:
            self._m_rejected_deadline.inc()
            raise DeadlineExceededError(f"model {self.name}: request deadline passed before tokenization")
        start = time.perf_counter()
        if self.inline(chars):
            try:
                with tracing.span("tokenize", model=self.name):
                    value = fn(budget)
            except BaseException as exc:
                self._count_refusal(exc)
                raise
            self._m_tokenize.observe(time.perf_counter() - start)
            return Prepared(value, announced=False)
        self.batcher.announce()
        try:
            with tracing.span("tokenize", model=self.name):
                work = asyncio.get_running_loop().run_in_executor(self._pool, fn, budget)
                result = await asyncio.wait_for(work, remaining)
        except TimeoutError:
            budget.cancel()
            self.batcher.withdraw()
            self._m_rejected_deadline.inc()
            raise DeadlineExceededError(
                f"model {self.name}: request deadline passed while its inputs were being tokenized"
            ) from None
        except BaseException as exc:
            budget.cancel()
            self.batcher.withdraw()
            self._count_refusal(exc)
            raise
        self._m_tokenize.observe(time.perf_counter() - start)
        return Prepared(result, announced=True)

    def _count_refusal(self, exc: BaseException) -> None:
        if isinstance(exc, DeadlineExceededError):
            self._m_rejected_deadline.inc()
        elif isinstance(exc, PayloadTooLargeError):
            self._m_rejected_large.inc()

    async def finish(
        self, fn: Callable[[WorkBudget], T], budget: WorkBudget, *, chars: int | None = None
    ) -> T:
        """Post-processing in the model's pool (on the loop for a short request, as `prepare`),
        bounded by the request's deadline like `prepare`."""
        remaining = budget.remaining_s()
        try:
            if remaining is not None and remaining <= 0:
                raise TimeoutError
            with tracing.span("postprocess", model=self.name):
                if self.inline(chars):
                    return fn(budget)
                work = asyncio.get_running_loop().run_in_executor(self._pool, fn, budget)
                return await asyncio.wait_for(work, remaining)
        except (TimeoutError, DeadlineExceededError):
            budget.cancel()
            self._m_rejected_deadline.inc()
            raise DeadlineExceededError(
                f"model {self.name}: request deadline passed during post-processing"
            ) from None
        except BaseException:
            budget.cancel()
            raise

    async def submit_sequences(
        self, sequences: Sequence[ModelInput], deadline: float, *, announced: bool
    ) -> list[Logits]:
        """Logits per sequence, in order; `deadline` is a `time.monotonic()` instant."""
        return await self.batcher.submit(
            sequences, announced=announced, timeout_s=deadline - time.monotonic()
        )

    async def tokenize(
        self, texts: Sequence[str], *, add_special_tokens: bool = True, truncate: bool = False
    ) -> list[Encoded]:
        """The model's tokens for each text (the `/tokenize` routes), within the request's limits,
        tokenized in the model's pool (off the event loop) and bounded by the request's deadline."""
        budget = self.budget(self.deadline())
        self.refuse_too_large(budget, len(texts))

        def work(b: WorkBudget) -> list[Encoded]:
            encodings = self.tokenizer.tokenize(
                texts, add_special_tokens=add_special_tokens, truncate=truncate
            )
            b.add_tokens(sum(e.length for e in encodings))
            return encodings

        try:
            return await self.finish(work, budget)
        except PayloadTooLargeError:
            self._m_rejected_large.inc()
            raise

    def deadline(self, timeout_s: float | None = None) -> float:
        """The request's deadline: the service's timeout, or the client's when that is shorter."""
        limit = self.parts.request_timeout_s
        if timeout_s is not None:
            limit = min(limit, timeout_s)
        return time.monotonic() + limit


class LongText(StrEnum):
    """What text classification does with an input longer than the model when it may not be cut
    (`truncate: false`): refuse it (413), or read it in overlapping windows."""

    ERROR = "error"
    WINDOWS = "windows"


@dataclass(frozen=True, slots=True)
class Classification:
    results: list[list[LabelScore]]
    truncated: list[int]
    windowed: list[int] = field(default_factory=list)  # inputs read in windows (long_text: windows)


class ClassificationPipeline(Pipeline):
    task = Task.TEXT_CLASSIFICATION

    def __init__(self, parts: ModelParts) -> None:
        super().__init__(parts)
        self.head = ClassificationHead(
            self.config.labels, self.config.problem_type or ProblemType.SINGLE_LABEL, self.config.thresholds
        )

    def _encode(
        self, inputs: Sequence[TextInput], truncate: bool, budget: WorkBudget
    ) -> tuple[list[ModelInput], list[int]]:
        encoded = self.tokenizer.encode(inputs, truncate=truncate)
        budget.add_tokens(sum(e.length for e in encoded))
        return (
            [e.model_input(self._type_ids) for e in encoded],
            [i for i, e in enumerate(encoded) if e.truncated],
        )

    def _encode_windowed(
        self, inputs: Sequence[TextInput], budget: WorkBudget
    ) -> tuple[list[ModelInput], list[int]]:
        """Every input whole; single texts longer than the model become overlapping windows
        (`service/windowing.py`), each one more sequence for the batcher. A text pair is not
        windowed (which part would a window hold?): one that fits is read as it is, a longer one
        is refused (413) as without windows. Returns the sequences in input order (an input's
        windows consecutive) and each input's count of them."""
        encodings = self.tokenizer.encode_documents(inputs)
        sequences: list[ModelInput] = []
        counts: list[int] = []
        for index, (item, enc) in enumerate(zip(inputs, encodings, strict=True)):
            budget.check_alive()
            if enc.length <= self.config.max_length:
                budget.add_tokens(enc.length)
                windows = [enc.model_input(self._type_ids)]
            elif not isinstance(item, str):
                raise PayloadTooLargeError(
                    f"input {index} is a text pair of {enc.length} tokens, more than the model's maximum "
                    f"of {self.config.max_length} (pairs are not read in windows); shorten it or send "
                    "truncate=true"
                )
            else:
                _, windows = self.windows(enc, budget)
            sequences.extend(windows)
            counts.append(len(windows))
        return sequences, counts

    def _pool_windows(self, rows: list[Logits], counts: list[int]) -> NDArray[np.float32]:
        """One logits row per input: a long input's windows pooled (mean, or max per label)."""
        pool = np.max if self.config.window_pooling == WindowPooling.MAX else np.mean
        out: list[Logits] = []
        row = 0
        for n in counts:
            out.append(
                rows[row] if n == 1 else pool(np.stack(rows[row : row + n]), axis=0).astype(np.float32)
            )
            row += n
        return np.stack(out)

    async def classify(
        self,
        inputs: Sequence[TextInput],
        *,
        top_k: int | None = None,
        truncate: bool = True,
        timeout_s: float | None = None,
        function: Activation | None = None,
        long_text: LongText = LongText.ERROR,
    ) -> Classification:
        deadline = self.deadline(timeout_s)
        budget = self.budget(deadline)
        self.refuse_too_large(budget, len(inputs))  # one sequence per input, known before any work
        if not truncate and long_text == LongText.WINDOWS:
            prepared = await self.prepare(
                lambda b: self._encode_windowed(inputs, b), budget, chars=text_chars(inputs)
            )
            windowed, counts = prepared.value
            rows = await self.submit_sequences(windowed, deadline, announced=prepared.announced)
            with tracing.span("postprocess", model=self.name):
                logits = self._pool_windows(rows, counts)
                long = [i for i, n in enumerate(counts) if n > 1]  # a text over max_length is 2+ windows
                return Classification(self.head.postprocess(logits, top_k, function), [], long)
        prepared = await self.prepare(
            lambda b: self._encode(inputs, truncate, b), budget, chars=text_chars(inputs)
        )
        sequences, truncated = prepared.value
        rows = await self.submit_sequences(sequences, deadline, announced=prepared.announced)
        with tracing.span("postprocess", model=self.name):
            return Classification(self.head.postprocess(np.stack(rows), top_k, function), truncated)

    async def warm_up_stages(self) -> None:
        await self.classify(["warm-up"], top_k=1)

    async def rerank(
        self,
        query: str,
        texts: Sequence[str],
        *,
        raw_scores: bool = False,
        truncate: bool = True,
        timeout_s: float | None = None,
    ) -> Reranking:
        """Relevance of each text to the query: the model's one logit on the (query, text) pair,
        through a sigmoid unless `raw_scores` (as TEI's /rerank)."""
        if len(self.config.labels) != 1:
            raise UnsupportedTaskError(
                f"model {self.name!r} has {len(self.config.labels)} labels; reranking needs a model "
                "with one relevance logit (a cross-encoder)"
            )
        deadline = self.deadline(timeout_s)
        budget = self.budget(deadline)
        self.refuse_too_large(budget, len(texts))
        pairs: list[TextInput] = [(query, text) for text in texts]
        prepared = await self.prepare(
            lambda b: self._encode(pairs, truncate, b), budget, chars=text_chars(pairs)
        )
        sequences, truncated = prepared.value
        rows = await self.submit_sequences(sequences, deadline, announced=prepared.announced)
        logits = np.stack(rows)[:, 0]
        scores = logits if raw_scores else self.head.scores(logits[:, None])[:, 0]
        return Reranking([float(x) for x in scores], truncated)


@dataclass(frozen=True, slots=True)
class Reranking:
    scores: list[float]  # per text, in request order
    truncated: list[int]


class RerankPipeline(ClassificationPipeline):
    """A cross-encoder exported as `rerank`: a one-logit classifier whose inputs are (query,
    document) pairs. It answers /rerank, and /classify for pairs as any classifier."""

    task = Task.RERANK

    async def warm_up_stages(self) -> None:
        await self.rerank("warm-up", ["warm-up"])


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: np.ndarray  # [n, dimensions] float32, in input order
    tokens: int  # tokens the model read, special tokens included (usage)
    truncated: list[int]


class EmbeddingPipeline(Pipeline):
    """Feature extraction: the graph pools (model.yaml `embedding`), the head truncates and
    normalizes; texts batch like any sequence."""

    task = Task.FEATURE_EXTRACTION

    def __init__(self, parts: ModelParts) -> None:
        super().__init__(parts)
        if self.config.embedding is None:  # ModelConfig refuses this; a guard for hand-made configs
            raise ValueError(f"model {self.name}: feature-extraction without an embedding section")
        self.head = EmbeddingHead(self.config.embedding)

    def _encode(
        self,
        inputs: Sequence[str] | Sequence[Sequence[int]],
        truncate: bool,
        budget: WorkBudget,
        framed: bool = False,
    ) -> tuple[list[ModelInput], list[int], int]:
        """(sequences, indices of truncated inputs, tokens) of texts, or of token-id lists that a
        client tokenized itself (framed by the model's special tokens as a text would be, unless
        `framed`: they hold them already)."""
        encoded: Sequence[Encoded | EncodedPair]
        if inputs and not isinstance(inputs[0], str):
            encoded = self.tokenizer.frame_ids(
                cast(Sequence[Sequence[int]], inputs), truncate=truncate, framed=framed
            )
        else:
            encoded = self.tokenizer.encode(cast(Sequence[str], inputs), truncate=truncate)
        tokens = sum(e.length for e in encoded)
        budget.add_tokens(tokens)
        return (
            [e.model_input(self._type_ids) for e in encoded],
            [i for i, e in enumerate(encoded) if e.truncated],
            tokens,
        )

    async def embed(
        self,
        inputs: Sequence[str] | Sequence[Sequence[int]],
        *,
        normalize: bool | None = None,
        dimensions: int | None = None,
        truncate: bool = True,
        timeout_s: float | None = None,
        framed_ids: bool = False,
    ) -> Embeddings:
        """`framed_ids`: token-id inputs already hold the model's special tokens."""
        width = self.head.check_dimensions(dimensions)  # 422 before any work
        deadline = self.deadline(timeout_s)
        budget = self.budget(deadline)
        self.refuse_too_large(budget, len(inputs))
        prepared = await self.prepare(
            lambda b: self._encode(inputs, truncate, b, framed_ids), budget, chars=text_chars(inputs)
        )
        sequences, truncated, tokens = prepared.value
        rows = await self.submit_sequences(sequences, deadline, announced=prepared.announced)
        with tracing.span("postprocess", model=self.name):
            vectors = self.head.postprocess(np.stack(rows), normalize=normalize, dimensions=width)
        return Embeddings(vectors, tokens, truncated)

    async def rerank(
        self,
        query: str,
        texts: Sequence[str],
        *,
        raw_scores: bool = False,
        truncate: bool = True,
        timeout_s: float | None = None,
    ) -> Reranking:
        """Bi-encoder reranking: the cosine similarity of each text's embedding with the query's
        (`raw_scores` changes nothing: a cosine has no activation)."""
        out = await self.embed([query, *texts], normalize=True, truncate=truncate, timeout_s=timeout_s)
        scores = cosine_scores(out.vectors[0], out.vectors[1:])
        truncated = [i - 1 for i in out.truncated if i > 0]
        return Reranking([float(x) for x in scores], truncated)

    async def warm_up_stages(self) -> None:
        await self.embed(["warm-up"])


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

    def _plan(self, texts: Sequence[str], segmentation: Segmentation, budget: WorkBudget) -> list[_Document]:
        """Segments -> document encodings -> windows, counted against the request's budget as
        they are produced: segmentation stops at the first segment past the sequence limit, and
        tokenization (in chunks) at the first chunk past either limit."""
        pieces: list[tuple[int, int, int]] = []  # (source, start, end)
        for source, text in enumerate(texts):
            for start, end in iter_segments(text, segmentation, self.config.language):
                budget.add_sequences(1)  # every segment is at least one window
                pieces.append((source, start, end))
            budget.check_alive()
        documents = []
        for chunk in _chunks(pieces):
            budget.check_alive()
            encodings = self.tokenizer.encode_documents([texts[src][a:b] for src, a, b in chunk])
            for (source, start, end), enc in zip(chunk, encodings, strict=True):
                documents.append(self._document(texts[source][start:end], enc, source, start, budget))
        return documents

    def _document(self, text: str, enc: Encoded, source: int, offset: int, budget: WorkBudget) -> _Document:
        plan, sequences = self.windows(enc, budget)
        return _Document(text, enc, plan, sequences, source, offset)

    def _aggregate(
        self,
        documents: list[_Document],
        rows: list[Logits],
        strategy: AggregationStrategy,
        ignore_labels: Sequence[str],
        n_texts: int,
        budget: WorkBudget | None = None,
    ) -> list[list[Entity]]:
        results: list[list[Entity]] = [[] for _ in range(n_texts)]
        tokens_before = [0] * n_texts  # token positions (strategy none) count across segments
        row = 0
        for doc in documents:
            if budget is not None:
                budget.check_alive()
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
        budget = self.budget(deadline)
        mode = self.config.segmentation if segmentation is None else segmentation
        chars = text_chars(texts)
        prepared = await self.prepare(lambda b: self._plan(texts, mode, b), budget, chars=chars)
        documents = prepared.value
        rows = await self.submit_sequences(
            [x for doc in documents for x in doc.sequences], deadline, announced=prepared.announced
        )
        # Aggregation of a long document takes milliseconds of numpy: keep it off the event loop
        # (a short one's takes less than the trip to the pool).
        return await self.finish(
            lambda b: self._aggregate(documents, rows, strategy, ignore_labels, len(texts), b),
            budget,
            chars=chars,
        )

    async def warm_up_stages(self) -> None:
        await self.recognize(["Warm-up in Paris."])


def _chunks(pieces: list[tuple[int, int, int]]) -> Iterator[list[tuple[int, int, int]]]:
    chunk: list[tuple[int, int, int]] = []
    chars = 0
    for piece in pieces:
        chunk.append(piece)
        chars += piece[2] - piece[1]
        if len(chunk) >= _TOKENIZE_CHUNK or chars >= _TOKENIZE_CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


PIPELINES: dict[Task, type[Pipeline]] = {
    Task.TEXT_CLASSIFICATION: ClassificationPipeline,
    Task.TOKEN_CLASSIFICATION: TokenClassificationPipeline,
    Task.FEATURE_EXTRACTION: EmbeddingPipeline,
    Task.RERANK: RerankPipeline,
}
# Pipelines that answer /rerank: cross-encoders (and one-logit classifiers) and embedding models.
Reranker = ClassificationPipeline | EmbeddingPipeline
