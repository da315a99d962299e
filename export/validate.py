"""Validation of exported artifacts against the PyTorch model they came from.

Every artifact runs the same inputs as PyTorch: real-looking sentences of several lengths, random
token sequences from short to `max_length`, a truncated long text, and (for classification)
sentence pairs, always in padded batches larger than one. fp32 artifacts must match the PyTorch
logits within an absolute tolerance on real (non-padding) positions; reduced-precision artifacts
are judged by how often they make the same decision as PyTorch and, with an eval file, by the
change in accuracy / entity F1 of what the served pipeline answers (`bertserve.evaluation.scoring`).

Artifacts run in the runtime's own backend classes with the options the service opens them with
(`runtime_backend`), and PyTorch behind the same `Backend` protocol (`TorchBackend`), so a logit
compared here is one the service would compute.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from bertserve.evaluation.datasets import DatasetError
from bertserve.evaluation.metrics import agreement, decisions, embedding_agreement
from bertserve.evaluation.scoring import EvalSet, load_eval_set
from bertserve.export.errors import ExportError
from bertserve.modelrepo import ArtifactFormat, EmbeddingConfig, ModelConfig, Precision, ProblemType, Task
from bertserve.runtime.base import Backend, BackendKind, Feeds, Logits
from bertserve.runtime.selection import open_file
from bertserve.service.settings import Settings

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

# Real-looking text: names, places and organisations (for taggers), sentiment, questions,
# punctuation, digits, casing and a few non-ASCII characters. Lengths vary on purpose so that
# every batch carries padding.
SENTENCES: tuple[str, ...] = (
    "The movie was great!",
    "I did not like this film at all; it was boring and far too long.",
    "An absolutely brilliant performance by the whole cast, from start to finish.",
    "Worst service ever.",
    "John Smith lives in New York and works for the United Nations.",
    "Angela Merkel met Emmanuel Macron in Brussels on Monday to discuss the budget.",
    "Microsoft and Apple announced new products at a conference in San Francisco.",
    "Is this the right way to the station?",
    "My flight to Tokyo was delayed by 3 hours and 45 minutes, again.",
    "The café in Zürich serves crème brûlée.",
    "ok",
    "Honestly, the sequel is better than the original - and I did not expect to say that.",
    "Amazon delivered the package to my neighbour in Dublin instead of to me.",
    "The report, published by the World Health Organization in 2021, covers 194 countries.",
    "wow wow wow",
    "She read the book twice because she enjoyed it so much.",
)
PAIRS: tuple[tuple[str, str], ...] = (
    ("A man is playing a guitar.", "Someone is making music."),
    ("The cat sat on the mat.", "A dog is running in the park."),
    ("How old are you?", "What is your age?"),
    ("Paris is the capital of France.", "The capital of France is Paris, a city on the Seine."),
    ("It rained all day.", "ok"),
)


@dataclass(frozen=True)
class ValidationBatch:
    kind: str  # sentences | pairs | random | long
    feeds: dict[str, IntArray]

    @property
    def mask(self) -> IntArray:
        return self.feeds["attention_mask"]

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.mask.shape
        return int(rows), int(cols)


@dataclass(frozen=True)
class Comparison:
    """How an artifact's outputs compare with PyTorch over every validation batch."""

    max_abs_diff: float
    # fraction of decisions (argmax / thresholded label / token tag) that agree; for embeddings,
    # of rows whose cosine similarity to PyTorch's is at least EMBEDDING_AGREEMENT_COSINE
    agreement: float
    decisions: int


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------


class TorchBackend:
    """The PyTorch checkpoint behind the runtime's `Backend` protocol: the reference every
    artifact is compared with, and scored through the same served pipeline."""

    name = "pytorch"
    precision = Precision.FP32

    def __init__(
        self, model: PreTrainedModel, input_names: Sequence[str], embedding: EmbeddingConfig | None = None
    ) -> None:
        self._model = model
        self.input_names = tuple(input_names)
        # an embedding model answers sentence-transformers' pooled (unnormalized) vector
        self._pooled = None
        if embedding is not None:
            from bertserve.export.embedding import PooledEncoder

            self._pooled = PooledEncoder(model, embedding.pooling, embedding.dimensions)

    def infer(self, feeds: Feeds) -> Logits:
        import torch

        tensors = {k: torch.from_numpy(np.ascontiguousarray(feeds[k])) for k in self.input_names}
        with torch.inference_mode():
            if self._pooled is not None:
                return np.asarray(self._pooled(**tensors).float().numpy(), dtype=np.float32)
            out = self._model(**tensors)
        return np.asarray(out.logits.float().numpy(), dtype=np.float32)

    def close(self) -> None:
        return None

    def factory(self, model: ModelConfig, version_dir: Path) -> Backend:
        """As a `BackendFactory`: the pipeline of any model version runs this checkpoint."""
        return self


def backend_kind(fmt: ArtifactFormat) -> BackendKind:
    """The CPU backend that serves an artifact format."""
    return BackendKind.OPENVINO_CPU if fmt == ArtifactFormat.OPENVINO else BackendKind.ORT_CPU


def runtime_backend(path: Path, fmt: ArtifactFormat, precision: Precision, output: str) -> Backend:
    """An exported file opened by the runtime's backend class, with the session / compile options
    `bertserve serve --backend <cpu kind>` would use (threads, providers, OpenVINO's f32 pin)."""
    kind = backend_kind(fmt)
    return open_file(kind, path, precision, output, Settings(backend=kind).runtime_options())


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def encode(
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    input_names: Sequence[str],
    max_length: int,
    pairs: Sequence[str] | None = None,
) -> dict[str, IntArray]:
    """Tokenize with padding to the longest row, as the service does, and keep the graph's inputs."""
    encoded = tokenizer(
        list(texts),
        list(pairs) if pairs is not None else None,
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    return _graph_feeds(dict(encoded), input_names)


def _graph_feeds(
    encoded: Mapping[str, npt.NDArray[np.int_]], input_names: Sequence[str]
) -> dict[str, IntArray]:
    mask = np.asarray(encoded["attention_mask"], dtype=np.int64)
    feeds: dict[str, IntArray] = {}
    for name in input_names:
        if name in encoded:
            feeds[name] = np.asarray(encoded[name], dtype=np.int64)
        elif name == "token_type_ids":  # tokenizers that do not emit segment ids: all zeros
            feeds[name] = np.zeros_like(mask)
        else:
            raise ExportError(f"the tokenizer does not produce the graph input {name!r}")
    feeds["attention_mask"] = mask
    return feeds


def random_sequences(
    tokenizer: PreTrainedTokenizerFast,
    lengths: Sequence[int],
    input_names: Sequence[str],
    rng: random.Random,
) -> dict[str, IntArray]:
    """Random (non-special) token ids wrapped in the tokenizer's own special-token template.

    The template is read from how the tokenizer encodes one word rather than by naming tokens
    ([CLS] vs <s>), so it holds for every BERT- or RoBERTa-style tokenizer.
    """
    probe = tokenizer("a", return_special_tokens_mask=True)
    ids: list[int] = list(probe["input_ids"])
    special: list[int] = list(probe["special_tokens_mask"])
    first = special.index(0)
    last = len(special) - 1 - special[::-1].index(0)
    prefix, suffix = ids[:first], ids[last + 1 :]
    candidates = sorted(set(range(len(tokenizer))) - set(tokenizer.all_special_ids))
    rows = [prefix + [rng.choice(candidates) for _ in range(n)] + suffix for n in lengths]
    width = max(len(r) for r in rows)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    input_ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return _graph_feeds({"input_ids": input_ids, "attention_mask": mask}, input_names)


def build_validation_batches(
    tokenizer: PreTrainedTokenizerFast,
    task: Task,
    input_names: Sequence[str],
    max_length: int,
    *,
    extra_texts: Sequence[str] = (),
    batch_size: int = 8,
    seed: int = 0,
) -> list[ValidationBatch]:
    rng = random.Random(seed)
    texts = list(SENTENCES) + list(extra_texts)
    batches = [
        ValidationBatch("sentences", encode(tokenizer, texts[i : i + batch_size], input_names, max_length))
        for i in range(0, len(texts), batch_size)
    ]
    # A text longer than max_length, truncated: exercises the last position embeddings.
    long_text = " ".join(SENTENCES * (max_length // 40 + 1))
    batches.append(
        ValidationBatch("long", encode(tokenizer, [long_text, SENTENCES[0]], input_names, max_length))
    )
    n_special = len(tokenizer("a")["input_ids"]) - 1
    longest = max_length - n_special
    lengths = sorted({1, min(7, longest), min(31, longest), max(1, longest // 2), longest})
    batches.append(ValidationBatch("random", random_sequences(tokenizer, lengths, input_names, rng)))
    batches.append(
        ValidationBatch(
            "random", random_sequences(tokenizer, [rng.randint(1, 48) for _ in range(6)], input_names, rng)
        )
    )
    if task in (Task.TEXT_CLASSIFICATION, Task.RERANK):
        first, second = zip(*PAIRS, strict=True)
        batches.append(
            ValidationBatch("pairs", encode(tokenizer, first, input_names, max_length, pairs=second))
        )
    return batches


# ---------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------


def real_positions(logits: FloatArray, mask: IntArray, task: Task) -> FloatArray:
    if task == Task.TOKEN_CLASSIFICATION:
        return np.asarray(logits[mask.astype(bool)], dtype=np.float32)
    return logits


def compare(
    reference: Sequence[FloatArray],
    backend: Backend,
    batches: Sequence[ValidationBatch],
    task: Task,
    problem_type: ProblemType | None,
) -> Comparison:
    max_diff = 0.0
    agree = total = 0
    for expected, batch in zip(reference, batches, strict=True):
        actual = backend.infer(batch.feeds)
        if actual.shape != expected.shape:
            raise ExportError(f"artifact output shape {actual.shape} differs from PyTorch's {expected.shape}")
        diff = np.abs(real_positions(actual, batch.mask, task) - real_positions(expected, batch.mask, task))
        max_diff = max(max_diff, float(diff.max(initial=0.0)))
        if task == Task.FEATURE_EXTRACTION:
            same, n = embedding_agreement(expected, actual)
        else:
            same, n = agreement(
                decisions(expected, batch.mask, task, problem_type),
                decisions(actual, batch.mask, task, problem_type),
            )
        agree += same
        total += n
    return Comparison(max_abs_diff=max_diff, agreement=agree / total if total else 1.0, decisions=total)


# ---------------------------------------------------------------------------------------------
# Eval files
# ---------------------------------------------------------------------------------------------


def load_eval_file(path: Path, task: Task, labels: Sequence[str]) -> EvalSet:
    """An --eval-file read for a model with `labels` (`bertserve.evaluation.scoring.load_eval_set`)."""
    if not path.is_file():
        raise ExportError(f"eval file {path} does not exist")
    try:
        return load_eval_set(path, task, labels)
    except DatasetError as exc:
        raise ExportError(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# Speed
# ---------------------------------------------------------------------------------------------


def speed_batch(
    tokenizer: PreTrainedTokenizerFast,
    input_names: Sequence[str],
    max_length: int,
    batch_size: int = 8,
    sequence_length: int = 128,
) -> dict[str, IntArray]:
    length = min(sequence_length, max_length)
    n_special = len(tokenizer("a")["input_ids"]) - 1
    return random_sequences(tokenizer, [length - n_special] * batch_size, input_names, random.Random(1234))


@dataclass(frozen=True)
class Timing:
    median_ms: float
    min_ms: float


def compare_speed(
    backends: Mapping[str, Backend], feeds: Feeds, *, rounds: int = 4, runs_per_round: int = 2
) -> dict[str, Timing]:
    """Time every backend on the same batch, interleaving rounds so background load hits all alike."""
    for backend in backends.values():
        backend.infer(feeds)  # warm-up: session initialisation, allocator growth
    samples: dict[str, list[float]] = {key: [] for key in backends}
    for _ in range(rounds):
        for key, backend in backends.items():
            for _ in range(runs_per_round):
                start = time.perf_counter()
                backend.infer(feeds)
                samples[key].append((time.perf_counter() - start) * 1000.0)
    return {
        key: Timing(round(statistics.median(values), 3), round(min(values), 3))
        for key, values in samples.items()
    }
