"""Validation of exported artifacts against the PyTorch model they came from.

Every artifact runs the same inputs as PyTorch: real-looking sentences of several lengths, random
token sequences from short to `max_length`, a truncated long text, and (for classification)
sentence pairs, always in padded batches larger than one. fp32 artifacts must match the PyTorch
logits within an absolute tolerance on real (non-padding) positions; reduced-precision artifacts
are judged by how often they make the same decision as PyTorch and, with an eval file, by the
change in accuracy / entity F1.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from bertserve.export.errors import ExportError
from bertserve.modelrepo import ProblemType, TagScheme, Task

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
Feeds = Mapping[str, IntArray]

FP32_ATOL = 1e-4

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


class LogitsRunner(Protocol):
    """Anything that turns a feed of int64 inputs into a logits array."""

    def run(self, feeds: Feeds) -> FloatArray: ...


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
    agreement: float  # fraction of decisions (argmax / thresholded label / token tag) that agree
    decisions: int


@dataclass(frozen=True)
class ClassificationExample:
    text: str
    pair: str | None
    gold: frozenset[int]


@dataclass(frozen=True)
class TaggedSentence:
    words: tuple[str, ...]
    tags: tuple[str, ...]


@dataclass(frozen=True)
class EvalSet:
    path: Path
    metric: str  # accuracy | entity_f1
    classification: tuple[ClassificationExample, ...] = ()
    tagged: tuple[TaggedSentence, ...] = ()

    def __len__(self) -> int:
        return len(self.classification) or len(self.tagged)


# ---------------------------------------------------------------------------------------------
# Runners
# ---------------------------------------------------------------------------------------------


class TorchRunner:
    def __init__(self, model: PreTrainedModel) -> None:
        self._model = model

    def run(self, feeds: Feeds) -> FloatArray:
        import torch

        with torch.inference_mode():
            out = self._model(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()})
        return np.asarray(out.logits.float().numpy(), dtype=np.float32)


class OnnxRuntimeRunner:
    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]

    def run(self, feeds: Feeds) -> FloatArray:
        (logits,) = self._session.run(["logits"], {name: feeds[name] for name in self._inputs})
        return np.asarray(logits, dtype=np.float32)


class OpenVinoRunner:
    def __init__(self, xml: Path) -> None:
        import openvino as ov

        core = ov.Core()
        # NOTE: on CPUs with bf16/AMX support OpenVINO defaults to bf16 inference, which would be
        # measured here as export error; validation pins f32 execution (the weights' precision is
        # what is being judged).
        self._compiled = core.compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self._inputs = [port.get_any_name() for port in self._compiled.inputs]
        self._output = self._compiled.output("logits")

    def run(self, feeds: Feeds) -> FloatArray:
        result = self._compiled({name: feeds[name] for name in self._inputs})
        return np.asarray(result[self._output], dtype=np.float32)


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
    if task == Task.TEXT_CLASSIFICATION:
        first, second = zip(*PAIRS, strict=True)
        batches.append(
            ValidationBatch("pairs", encode(tokenizer, first, input_names, max_length, pairs=second))
        )
    return batches


# ---------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------


def decisions(logits: FloatArray, mask: IntArray, task: Task, problem_type: ProblemType | None) -> IntArray:
    """The discrete outputs a user sees: class per row, label set per row, or tag per real token."""
    if task == Task.TOKEN_CLASSIFICATION:
        return np.asarray(logits.argmax(-1)[mask.astype(bool)], dtype=np.int64)
    if problem_type == ProblemType.MULTI_LABEL:
        return np.asarray((logits > 0).reshape(-1), dtype=np.int64)
    return np.asarray(logits.argmax(-1), dtype=np.int64)


def real_positions(logits: FloatArray, mask: IntArray, task: Task) -> FloatArray:
    if task == Task.TOKEN_CLASSIFICATION:
        return np.asarray(logits[mask.astype(bool)], dtype=np.float32)
    return logits


def compare(
    reference: Sequence[FloatArray],
    runner: LogitsRunner,
    batches: Sequence[ValidationBatch],
    task: Task,
    problem_type: ProblemType | None,
) -> Comparison:
    max_diff = 0.0
    agree = total = 0
    for expected, batch in zip(reference, batches, strict=True):
        actual = runner.run(batch.feeds)
        if actual.shape != expected.shape:
            raise ExportError(f"artifact output shape {actual.shape} differs from PyTorch's {expected.shape}")
        diff = np.abs(real_positions(actual, batch.mask, task) - real_positions(expected, batch.mask, task))
        max_diff = max(max_diff, float(diff.max(initial=0.0)))
        want = decisions(expected, batch.mask, task, problem_type)
        got = decisions(actual, batch.mask, task, problem_type)
        agree += int((want == got).sum())
        total += int(want.size)
    return Comparison(max_abs_diff=max_diff, agreement=agree / total if total else 1.0, decisions=total)


# ---------------------------------------------------------------------------------------------
# Eval files
# ---------------------------------------------------------------------------------------------


def load_eval_file(path: Path, task: Task, labels: Sequence[str]) -> EvalSet:
    if not path.is_file():
        raise ExportError(f"eval file {path} does not exist")
    if task == Task.TOKEN_CLASSIFICATION:
        return _load_conll(path, labels)
    return _load_tsv(path, labels)


def _parse_label(raw: str, labels: Sequence[str]) -> int | None:
    raw = raw.strip()
    if raw in labels:
        return labels.index(raw)
    if raw.lstrip("-").isdigit() and 0 <= int(raw) < len(labels):
        return int(raw)
    return None


def _load_tsv(path: Path, labels: Sequence[str]) -> EvalSet:
    """`text<TAB>label` or `text<TAB>text_pair<TAB>label`; multi-label gold as `a,b`. A header line
    (whose label column is not a label) is skipped."""
    examples: list[ClassificationExample] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) not in (2, 3):
            raise ExportError(f"{path}:{lineno}: expected text<TAB>label (or text<TAB>pair<TAB>label)")
        parts = [p for p in cols[-1].split(",") if p.strip()]
        gold = [_parse_label(p, labels) for p in parts]
        if not parts or any(g is None for g in gold):
            if not examples and lineno == 1:
                continue  # header
            raise ExportError(
                f"{path}:{lineno}: unknown label {cols[-1].strip()!r}; labels are {list(labels)}"
            )
        examples.append(
            ClassificationExample(
                text=cols[0].strip(),
                pair=cols[1].strip() if len(cols) == 3 else None,
                gold=frozenset(g for g in gold if g is not None),
            )
        )
    if not examples:
        raise ExportError(f"eval file {path} has no examples")
    return EvalSet(path=path, metric="accuracy", classification=tuple(examples))


def _load_conll(path: Path, labels: Sequence[str]) -> EvalSet:
    """CoNLL: one `token ... tag` per line (tag in the last column), blank line between sentences."""
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    known = set(labels)
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        cols = line.split()
        if not cols or cols[0] == "-DOCSTART-":
            if words:
                sentences.append(TaggedSentence(tuple(words), tuple(tags)))
                words, tags = [], []
            continue
        if len(cols) < 2:
            raise ExportError(f"{path}:{lineno}: expected `token tag`")
        if cols[-1] not in known:
            raise ExportError(
                f"{path}:{lineno}: unknown tag {cols[-1]!r}; the model's tags are {list(labels)}"
            )
        words.append(cols[0])
        tags.append(cols[-1])
    if words:
        sentences.append(TaggedSentence(tuple(words), tuple(tags)))
    if not sentences:
        raise ExportError(f"eval file {path} has no sentences")
    return EvalSet(path=path, metric="entity_f1", tagged=tuple(sentences))


def extract_entities(tags: Sequence[str], scheme: TagScheme | None = None) -> set[tuple[int, int, str]]:
    """Spans (start, end exclusive, type) in the conlleval manner, for IOB1, IOB2 and BIOES/BILOU."""
    entities: set[tuple[int, int, str]] = set()
    start: int | None = None
    kind = ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-") if "-" in tag else ("O" if tag == "O" else "I", "", tag)
        prefix = prefix.upper()
        begins = prefix in ("B", "S", "U") or (prefix in ("I", "E", "L") and (start is None or label != kind))
        if start is not None and (prefix == "O" or begins):
            entities.add((start, i, kind))
            start = None
        if prefix != "O" and begins:
            start, kind = i, label
        if start is not None and prefix in ("E", "L", "S", "U"):
            entities.add((start, i + 1, kind))
            start = None
    return entities


def _f1(gold: Iterable[set[tuple[int, int, str]]], pred: Iterable[set[tuple[int, int, str]]]) -> float:
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred, strict=True):
        tp += len(g & p)
        n_gold += len(g)
        n_pred += len(p)
    if tp == 0:
        return 0.0
    precision, recall = tp / n_pred, tp / n_gold
    return 2 * precision * recall / (precision + recall)


def evaluate(
    runner: LogitsRunner,
    eval_set: EvalSet,
    tokenizer: PreTrainedTokenizerFast,
    input_names: Sequence[str],
    max_length: int,
    task: Task,
    problem_type: ProblemType | None,
    labels: Sequence[str],
    batch_size: int = 32,
) -> float:
    """Accuracy (single-label; exact label set for multi-label) or entity-level micro F1."""
    if eval_set.metric == "entity_f1":
        return _evaluate_tagger(
            runner, eval_set.tagged, tokenizer, input_names, max_length, labels, batch_size
        )
    examples = eval_set.classification
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].text) + len(examples[i].pair or ""))
    correct = 0
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start : start + batch_size]]
        has_pairs = any(e.pair is not None for e in chunk)
        pairs = [e.pair or "" for e in chunk] if has_pairs else None
        logits = runner.run(encode(tokenizer, [e.text for e in chunk], input_names, max_length, pairs=pairs))
        for example, row in zip(chunk, logits, strict=True):
            if problem_type == ProblemType.MULTI_LABEL:
                predicted = frozenset(int(i) for i in np.flatnonzero(row > 0))
            else:
                predicted = frozenset({int(row.argmax())})
            correct += predicted == example.gold
    return correct / len(examples)


def _evaluate_tagger(
    runner: LogitsRunner,
    sentences: Sequence[TaggedSentence],
    tokenizer: PreTrainedTokenizerFast,
    input_names: Sequence[str],
    max_length: int,
    labels: Sequence[str],
    batch_size: int,
) -> float:
    gold: list[set[tuple[int, int, str]]] = []
    pred: list[set[tuple[int, int, str]]] = []
    for start in range(0, len(sentences), batch_size):
        chunk = sentences[start : start + batch_size]
        encoded = tokenizer(
            [list(s.words) for s in chunk],
            is_split_into_words=True,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        logits = runner.run(_graph_feeds(dict(encoded), input_names))
        for row, sentence in enumerate(chunk):
            # Each word takes the tag of its first sub-token; words cut off by truncation are "O".
            tags = ["O"] * len(sentence.words)
            seen: set[int] = set()
            for position, word in enumerate(encoded.word_ids(row)):
                if word is not None and word not in seen:
                    seen.add(word)
                    tags[word] = labels[int(logits[row, position].argmax())]
            gold.append(extract_entities(sentence.tags))
            pred.append(extract_entities(tags))
    return _f1(gold, pred)


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
    runners: Mapping[str, LogitsRunner], feeds: Feeds, *, rounds: int = 4, runs_per_round: int = 2
) -> dict[str, Timing]:
    """Time every runner on the same batch, interleaving rounds so background load hits all alike."""
    for runner in runners.values():
        runner.run(feeds)  # warm-up: session initialisation, allocator growth
    samples: dict[str, list[float]] = {key: [] for key in runners}
    for _ in range(rounds):
        for key, runner in runners.items():
            for _ in range(runs_per_round):
                start = time.perf_counter()
                runner.run(feeds)
                samples[key].append((time.perf_counter() - start) * 1000.0)
    return {
        key: Timing(round(statistics.median(values), 3), round(min(values), 3))
        for key, values in samples.items()
    }
