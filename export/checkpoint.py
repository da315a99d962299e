"""Load a fine-tuned checkpoint for export, refusing anything we could not export faithfully.

Checks, in order: the folder (or hub id) exists; the architecture is one optimum can export for the
task; the weights are safetensors (pickle only with `allow_pickle`); the checkpoint really has the
head the task needs (a bare encoder would otherwise get a silently random head); the labels are
consistent; the tokenizer is present and fast (the service uses the Rust `tokenizers` library).
`trust_remote_code` is never enabled: a checkpoint must not be able to run code on the export host.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from bertserve.export.embedding import read_sentence_transformer
from bertserve.export.errors import ExportError
from bertserve.modelrepo import EmbeddingConfig, Pooling, ProblemType, TagScheme, Task, detect_tag_scheme

SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# The longest sequence a BERT-family encoder is served with unless the checkpoint says otherwise.
DEFAULT_MAX_LENGTH = 512
# RoBERTa-style embeddings count positions from pad_token_id + 1, so two position slots are unusable.
_POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HEAD_SUFFIX = {
    Task.TEXT_CLASSIFICATION: "ForSequenceClassification",
    Task.TOKEN_CLASSIFICATION: "ForTokenClassification",
    Task.RERANK: "ForSequenceClassification",  # a cross-encoder is a one-logit sequence classifier
}
_TASK_OF_SUFFIX = {
    "ForSequenceClassification": Task.TEXT_CLASSIFICATION,
    "ForTokenClassification": Task.TOKEN_CLASSIFICATION,
}
# The task optimum exports each of ours as (a cross-encoder's graph is a classifier's).
OPTIMUM_TASK = {
    Task.TEXT_CLASSIFICATION: "text-classification",
    Task.TOKEN_CLASSIFICATION: "token-classification",
    Task.FEATURE_EXTRACTION: "feature-extraction",
    Task.RERANK: "text-classification",
}


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint that passed every check, ready to be exported."""

    source: str
    path: Path
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    task: Task
    architecture: str
    labels: tuple[str, ...]
    problem_type: ProblemType | None
    tag_scheme: TagScheme | None
    max_length: int
    num_heads: int
    hidden_size: int
    notes: tuple[str, ...] = ()
    embedding: EmbeddingConfig | None = None  # feature extraction: pooling, normalize, width
    # a sentence-transformers folder exported with its own pooling: its `encode` is a reference
    is_sentence_transformer: bool = False


def parse_task(value: str) -> Task:
    try:
        return Task(value)
    except ValueError:
        choices = ", ".join(t.value for t in Task)
        raise ExportError(f"unknown task {value!r}; choose one of: {choices}") from None


def resolve_source(source: str, *, allow_pickle: bool) -> Path:
    """A local checkpoint folder, or a hub id fetched (weights in the accepted formats only)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ExportError(f"checkpoint {source} is a file; pass the checkpoint folder")
    if not _HUB_ID.match(source):
        raise ExportError(f"checkpoint folder {source} does not exist")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.model", "*.safetensors"] + (["*.bin"] if allow_pickle else [])
    try:
        return Path(snapshot_download(source, allow_patterns=patterns))
    except Exception as exc:  # any hub/network failure is one user-facing error
        raise ExportError(
            f"{source} is not a local folder and could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'})"
        ) from exc


def _check_weights(path: Path, *, allow_pickle: bool) -> list[str]:
    if any((path / name).is_file() for name in SAFETENSORS_FILES):
        return []
    if any((path / name).is_file() for name in PICKLE_FILES):
        if not allow_pickle:
            raise ExportError(
                f"{path} only has pickle weights (pytorch_model.bin), which can run arbitrary code when "
                "loaded; convert them to safetensors or pass --allow-pickle if you trust the source"
            )
        return ["weights loaded from pickle (pytorch_model.bin) because --allow-pickle was given"]
    raise ExportError(f"{path} has no model weights (model.safetensors)")


def _check_head(config: PretrainedConfig, task: Task) -> None:
    """Compare the task with the head recorded in `architectures` (written by save_pretrained)."""
    architectures: list[str] = list(getattr(config, "architectures", None) or [])
    if not architectures:
        return  # old or hand-written config: the missing-weights check below still catches a bare encoder
    arch = architectures[0]
    if task == Task.FEATURE_EXTRACTION:
        return  # the encoder's token states are pooled; a head, if any, is not loaded
    if arch.endswith(_HEAD_SUFFIX[task]):
        return
    for suffix, other in _TASK_OF_SUFFIX.items():
        if arch.endswith(suffix):
            raise ExportError(f"checkpoint has a {other.value} head ({arch}) but --task is {task.value}")
    raise ExportError(
        f"checkpoint has no {task.value} head ({arch}); export a fine-tuned "
        f"*{_HEAD_SUFFIX[task]} checkpoint, not a bare encoder"
    )


def _labels(config: PretrainedConfig) -> tuple[str, ...]:
    id2label: dict[Any, Any] = dict(getattr(config, "id2label", None) or {})
    num_labels = int(config.num_labels)
    try:
        ids = sorted(int(key) for key in id2label)
    except ValueError:
        raise ExportError("config.json id2label has non-integer ids") from None
    if ids != list(range(num_labels)):
        raise ExportError(
            f"label count mismatch: config.json has num_labels={num_labels} but id2label ids {ids}"
        )
    labels = tuple(str(id2label.get(i, id2label.get(str(i)))) for i in ids)
    if len(set(labels)) != len(labels):
        raise ExportError(f"config.json id2label has duplicate label names: {list(labels)}")
    return labels


def _load_model(path: Path, task: Task, num_labels: int, *, allow_pickle: bool) -> PreTrainedModel:
    loader: Any = {
        Task.TEXT_CLASSIFICATION: AutoModelForSequenceClassification,
        Task.RERANK: AutoModelForSequenceClassification,
        Task.TOKEN_CLASSIFICATION: AutoModelForTokenClassification,
        Task.FEATURE_EXTRACTION: AutoModel,
    }[task]
    try:
        with warnings.catch_warnings():
            # "Some weights were newly initialized" is turned into an error below, not a warning.
            warnings.simplefilter("ignore")
            model, info = loader.from_pretrained(
                path,
                trust_remote_code=False,
                use_safetensors=None if allow_pickle else True,
                output_loading_info=True,
                dtype="float32",
            )
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line.strip() for line in first if "size mismatch" in line), first[0] if first else "")
        if "size mismatch" in str(exc):
            raise ExportError(
                f"label count mismatch: config.json lists {num_labels} labels but the head's weights "
                f"have another size ({detail})"
            ) from exc
        raise ExportError(f"cannot load the checkpoint: {detail}") from exc
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"cannot load the checkpoint: {str(exc).strip().splitlines()[0]}") from exc
    missing = list(info.get("missing_keys", []))
    if task == Task.FEATURE_EXTRACTION:
        # the pooler (a dense layer over [CLS] for next-sentence prediction) is never used by
        # sentence pooling; sentence-transformers checkpoints often leave it out
        missing = [key for key in missing if not key.startswith("pooler.")]
    mismatched = list(info.get("mismatched_keys", []))
    if mismatched:
        raise ExportError(f"label count mismatch between config.json and the weights: {mismatched[0]}")
    if missing:
        head = [key for key in missing if "classifier" in key or "score" in key]
        if head:
            raise ExportError(
                f"checkpoint has no {task.value} head (weights missing: {', '.join(head[:3])}); "
                "export a fine-tuned checkpoint, not a bare encoder"
            )
        raise ExportError(f"checkpoint is missing weights: {', '.join(missing[:5])}")
    if not isinstance(model, PreTrainedModel):
        raise ExportError(f"cannot load the checkpoint: got {type(model).__name__}, not a transformers model")
    model.train(False)  # inference mode: no dropout (same as .eval(), which transformers leaves untyped)
    return model


def _load_tokenizer(path: Path) -> tuple[PreTrainedTokenizerFast, list[str]]:
    notes: list[str] = []
    has_fast_file = (path / "tokenizer.json").is_file()
    try:
        tokenizer = AutoTokenizer.from_pretrained(  # type: ignore[no-untyped-call]
            path, use_fast=True, trust_remote_code=False
        )
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ExportError(f"{path} has no usable tokenizer ({str(exc).strip().splitlines()[0]})") from exc
    if isinstance(tokenizer, bool) or tokenizer is None:  # AutoTokenizer returns False/None when absent
        raise ExportError(f"{path} has no tokenizer files")
    if not getattr(tokenizer, "is_fast", False) or not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ExportError(
            f"{path} only has a slow (Python) tokenizer ({type(tokenizer).__name__}); the service needs a "
            "fast tokenizer with tokenizer.json"
        )
    if not has_fast_file:
        notes.append("tokenizer.json was converted from the slow tokenizer files by transformers")
    if tokenizer.pad_token_id is None:
        raise ExportError(f"{path}: the tokenizer has no padding token; batching needs one")
    return tokenizer, notes


def _max_length(config: PretrainedConfig, tokenizer: PreTrainedTokenizerFast, requested: int | None) -> int:
    positions = getattr(config, "max_position_embeddings", None)
    limit = int(positions) - _POSITION_OFFSET.get(config.model_type, 0) if positions else DEFAULT_MAX_LENGTH
    if requested is not None:
        if requested > limit:
            raise ExportError(f"--max-length {requested} exceeds the model's {limit} positions")
        if requested < 8:
            raise ExportError("--max-length must be at least 8")
        return requested
    # tokenizers without a limit report a huge sentinel (int(1e30)); those fall back to the model's.
    declared = int(tokenizer.model_max_length)
    candidates = [limit, DEFAULT_MAX_LENGTH] + ([declared] if declared < 100_000 else [])
    return min(candidates)


def _embedding(
    path: Path, hidden_size: int, requested: str | None
) -> tuple[EmbeddingConfig, int | None, bool, list[str]]:
    """Pooling (the checkpoint's, unless one is requested), normalization, the sentence-transformers
    max length, whether the folder is a sentence-transformers model, and notes."""
    info = read_sentence_transformer(path)
    notes = []
    if requested is not None:
        try:
            pooling = Pooling(requested)
        except ValueError:
            choices = ", ".join(p.value for p in Pooling)
            raise ExportError(f"unknown pooling {requested!r}; choose one of: {choices}") from None
        if info.pooling is not None and info.pooling != pooling:
            notes.append(f"pooling {pooling.value} replaces the checkpoint's {info.pooling.value}")
    elif info.pooling is not None:
        pooling = info.pooling
    else:
        pooling = Pooling.MEAN
        notes.append("no sentence-transformers pooling config (1_Pooling/config.json): mean pooling")
    embedding = EmbeddingConfig(pooling=pooling, normalize=info.normalize, dimensions=hidden_size)
    # sentence-transformers' own encode is the reference only for the pooling it was saved with
    as_saved = info.is_sentence_transformer and pooling == info.pooling
    return embedding, info.max_seq_length, as_saved, notes


def load_checkpoint(
    source: str,
    task: Task,
    *,
    allow_pickle: bool = False,
    max_length: int | None = None,
    pooling: str | None = None,
) -> LoadedCheckpoint:
    path = resolve_source(source, allow_pickle=allow_pickle)
    if not (path / "config.json").is_file():
        raise ExportError(f"{path} is not a Hugging Face checkpoint (no config.json)")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"{path}/config.json: {str(exc).strip().splitlines()[0]}") from exc

    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX export configs)
    from optimum.exporters.tasks import TasksManager

    try:
        supported = TasksManager.get_supported_tasks_for_model_type(
            config.model_type, "onnx", library_name="transformers"
        )
    except KeyError:
        supported = {}
    if OPTIMUM_TASK[task] not in supported:
        raise ExportError(f"architecture {config.model_type!r} cannot be exported for {task.value}")
    if pooling is not None and task != Task.FEATURE_EXTRACTION:
        raise ExportError("--pooling applies to feature-extraction models only")

    notes = _check_weights(path, allow_pickle=allow_pickle)
    _check_head(config, task)
    labels = () if task == Task.FEATURE_EXTRACTION else _labels(config)
    if task == Task.RERANK and len(labels) != 1:
        raise ExportError(
            f"a rerank model (cross-encoder) has one relevance logit; this checkpoint has {len(labels)} "
            "labels; export it with --task text-classification"
        )
    tokenizer, tokenizer_notes = _load_tokenizer(path)
    model = _load_model(path, task, len(labels), allow_pickle=allow_pickle)
    notes += tokenizer_notes
    if task in (Task.TEXT_CLASSIFICATION, Task.TOKEN_CLASSIFICATION) and all(
        re.fullmatch(r"LABEL_\d+", label) for label in labels
    ):
        notes.append(
            "labels are the generic LABEL_<n> names; set id2label in config.json for readable output"
        )

    problem_type: ProblemType | None = None
    tag_scheme: TagScheme | None = None
    embedding: EmbeddingConfig | None = None
    is_st = False
    if task == Task.TEXT_CLASSIFICATION:
        raw = getattr(config, "problem_type", None)
        if raw == "regression":
            raise ExportError("regression heads are not supported (problem_type=regression)")
        problem_type = ProblemType(raw) if raw else ProblemType.SINGLE_LABEL
    elif task == Task.RERANK:
        # cross-encoders are saved with problem_type regression or none: one logit, sigmoid score
        problem_type = ProblemType.SINGLE_LABEL
    elif task == Task.TOKEN_CLASSIFICATION:
        tag_scheme = detect_tag_scheme(list(labels))
    else:
        embedding, st_max_length, is_st, embedding_notes = _embedding(path, int(config.hidden_size), pooling)
        notes += embedding_notes
        if max_length is None and st_max_length is not None:
            max_length = min(st_max_length, _max_length(config, tokenizer, None))

    return LoadedCheckpoint(
        source=source,
        path=path,
        model=model,
        tokenizer=tokenizer,
        task=task,
        architecture=str(config.model_type),
        labels=labels,
        problem_type=problem_type,
        tag_scheme=tag_scheme,
        max_length=_max_length(config, tokenizer, max_length),
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
        notes=tuple(notes),
        embedding=embedding,
        is_sentence_transformer=is_st,
    )
