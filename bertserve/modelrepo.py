"""The model repository: the contract between the export stage and the service.

Layout (Triton-like: one folder per model, versioned sub-folders, the config beside them)::

    models/
      <name>/
        model.yaml               # ModelConfig below; the only file committed to git
        <version>/               # e.g. 1/
          tokenizer.json         # fast (Rust) tokenizer; plus tokenizer_config.json, vocab, ...
          model.onnx             # portable ONNX (standard ops, dynamic axes): TensorRT, OpenVINO, fallback
          model.ort.onnx         # onnxruntime.transformers-fused graph: ORT CPU / CUDA
          model.int8.onnx        # dynamically quantized (optional)
          model.fp16.onnx        # GPU-fused, float16 (optional, `--fp16`): ORT CUDA's default
          openvino/model.xml|bin # OpenVINO IR fp32 (optionally fp16-compressed weights)
          openvino-int8/...      # NNCF-quantized IR (optional)
          export_report.json     # parity / agreement figures from the export

This module must stay importable without torch or transformers: the serving process reads it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MODEL_CONFIG_FILE = "model.yaml"
SCHEMA_VERSION = 1
# The one tokenizer file the service reads; it must be listed (with its sha256) in tokenizer_files.
TOKENIZER_FILE = "tokenizer.json"
IR_XML_SUFFIX, IR_BIN_SUFFIX = ".xml", ".bin"


class Task(StrEnum):
    TEXT_CLASSIFICATION = "text-classification"
    TOKEN_CLASSIFICATION = "token-classification"
    FEATURE_EXTRACTION = "feature-extraction"  # sentence embeddings: one pooled vector per text
    RERANK = "rerank"  # a cross-encoder: (query, document) pairs -> one relevance logit


class Pooling(StrEnum):
    """How a sentence-embedding model turns its token states into one vector (sentence-transformers'
    pooling modes): the mean of the real tokens, the first ([CLS]) token, the last real token, or
    the element-wise maximum over the real tokens."""

    MEAN = "mean"
    CLS = "cls"
    LAST_TOKEN = "lasttoken"
    MAX = "max"


class ProblemType(StrEnum):
    SINGLE_LABEL = "single_label_classification"
    MULTI_LABEL = "multi_label_classification"


def uses_sigmoid(num_labels: int, problem_type: ProblemType | None) -> bool:
    """Whether scores are independent sigmoids: multi-label models, and models with one logit
    (cross-encoders, binary scorers), whose softmax would always be 1.0. The transformers
    text-classification pipeline and TEI decide the same way."""
    return problem_type == ProblemType.MULTI_LABEL or num_labels == 1


class TagScheme(StrEnum):
    IOB1 = "IOB1"
    IOB2 = "IOB2"
    BIOES = "BIOES"  # also covers BILOU (U- = S-, L- = E-)
    NONE = "NONE"  # labels without prefixes: every label is its own group


class Segmentation(StrEnum):
    """How a token-classification model reads a text: whole (in overlapping windows when it is
    longer than the model), or one line / one sentence at a time (each still windowed if long)."""

    NONE = "none"
    LINES = "lines"
    SENTENCES = "sentences"


class WindowPooling(StrEnum):
    """How the window scores of a text longer than a classifier are combined (`long_text:
    windows`): the mean of the windows' logits, or per label the largest logit of any window
    (a label any part of the text shows)."""

    MEAN = "mean"
    MAX = "max"


class ArtifactFormat(StrEnum):
    ONNX = "onnx"  # portable graph, standard ops only
    ONNX_OPTIMIZED = "onnx-optimized"  # ORT transformer fusions (com.microsoft ops)
    OPENVINO = "openvino"  # OpenVINO IR (.xml + .bin)


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"  # fp16-compressed weights (OpenVINO) or fp16 graph
    INT8 = "int8"
    BF16 = "bf16"  # the fp32 IR run with bf16 inference precision (OpenVINO on AVX-512-BF16/AMX CPUs)


class BatchingConfig(BaseModel):
    """Per-model batching defaults; the service's BERTSERVE_* settings override them."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(32, ge=1, description="Sequences per executed batch at most.")
    max_batch_tokens: int = Field(
        8192, ge=1, description="Padded tokens (batch size x longest sequence) per batch at most."
    )
    max_queue_delay_ms: float = Field(
        2.0, ge=0, description="How long the first queued item may wait for company."
    )
    max_queue_size: int = Field(1024, ge=1, description="Queued sequences before requests get 429.")

    def with_overrides(self, **values: float | None) -> BatchingConfig:
        """A copy with every value that is not None replacing the field of that name."""
        unknown = values.keys() - type(self).model_fields.keys()
        if unknown:
            raise TypeError(f"no batching field {sorted(unknown)}")
        return self.model_copy(update={k: v for k, v in values.items() if v is not None})


class EmbeddingConfig(BaseModel):
    """How a feature-extraction model's served graph pools, and what the head does after it.

    The pooling runs inside the exported graph (its output is `[batch, dimensions]`), so the
    batcher moves one vector per sequence; normalization and Matryoshka truncation run in the head,
    per request."""

    model_config = ConfigDict(extra="forbid")

    pooling: Pooling = Field(description="The pooling the graph applies (read from the checkpoint).")
    normalize: bool = Field(
        True, description="L2-normalize by default (the checkpoint's Normalize module); per request too."
    )
    dimensions: int = Field(ge=1, description="Width of the pooled vector.")


class ArtifactGate(BaseModel):
    """How a low-precision artifact kept PyTorch's answers at export, and what CPU it needs to
    keep them: the figures `--precision auto` chooses by and `GET /v1/models/{m}` shows."""

    model_config = ConfigDict(extra="forbid")

    passed: bool = Field(description="Agreement and eval-score drop within the export's bounds.")
    agreement: float = Field(description="Share of decisions that agree with PyTorch (validation text).")
    min_agreement: float = Field(description="The agreement bound it was held to.")
    metric: str | None = Field(None, description="Eval-file metric (accuracy, entity_f1), if scored.")
    drop_points: float | None = Field(None, description="PyTorch minus artifact on the eval file, points.")
    max_drop_points: float | None = Field(None, description="The drop bound it was held to.")
    speedup: float | None = Field(None, description="fp32 time / its time at export, same backend.")
    needs: list[str] = Field(
        default_factory=list,
        description="CPU features (vnni, bf16) it needs to run as measured; `auto` skips it without.",
    )
    variant: str | None = Field(None, description="How it was built (quantization recipe).")
    reasons: list[str] = Field(default_factory=list, description="Why it failed the gate.")

    def summary(self) -> str:
        """ "gate passed -0.30 pt, 99.5 % agreement" """
        drop = f" {-self.drop_points:+.2f} pt {self.metric}," if self.drop_points is not None else ""
        verdict = "passed" if self.passed else "failed"
        return f"gate {verdict}{drop} {self.agreement:.1%} agreement"


class Artifact(BaseModel):
    """One runnable graph. `files` maps paths relative to the version folder to sha256 hex digests;
    the first entry is the file a runtime opens (model.onnx, model.xml). Every other file the
    runtime reads is listed too, so that it is checked before it is read: an OpenVINO IR's weights
    (`model.bin` beside `model.xml`), an ONNX graph's external-data files."""

    model_config = ConfigDict(extra="forbid")

    format: ArtifactFormat
    precision: Precision
    files: dict[str, str]
    opset: int | None = None
    gate: ArtifactGate | None = None  # low precision only

    @field_validator("files")
    @classmethod
    def _relative_paths(cls, files: dict[str, str]) -> dict[str, str]:
        if not files:
            raise ValueError("an artifact lists at least one file")
        for rel in files:
            check_relative_path(rel)
        return files

    @model_validator(mode="after")
    def _ir_weights_listed(self) -> Artifact:
        if self.format == ArtifactFormat.OPENVINO:
            if not self.main_file.endswith(IR_XML_SUFFIX):
                raise ValueError(
                    f"an OpenVINO artifact opens its {IR_XML_SUFFIX} file first, not {self.main_file}"
                )
            if self.ir_weights not in self.files:
                raise ValueError(
                    f"OpenVINO artifact {self.main_file}: its weights {self.ir_weights} are not listed "
                    "in files with a sha256, so they would be read unchecked; re-export the model "
                    "(or add the file and its sha256 under files)"
                )
        return self

    @property
    def main_file(self) -> str:
        return next(iter(self.files))

    @property
    def ir_weights(self) -> str:
        """The weights file OpenVINO reads for this IR: the .xml's sibling `.bin`."""
        return self.main_file.removesuffix(IR_XML_SUFFIX) + IR_BIN_SUFFIX

    @property
    def digest(self) -> str:
        """One sha256 for everything the artifact reads: the main file's own sha256 when it is the
        only file, else the sha256 of its sorted `path sha256` lines (weights kept in an external
        data file change this digest too)."""
        if len(self.files) == 1:
            return self.files[self.main_file]
        lines = "".join(f"{rel} {sha}\n" for rel, sha in sorted(self.files.items()))
        return hashlib.sha256(lines.encode("utf-8")).hexdigest()


class VersionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    artifacts: list[Artifact]
    default_precision: Precision = Precision.FP32
    tokenizer_files: dict[str, str] = Field(
        default_factory=dict, description="Tokenizer files (relative path -> sha256)."
    )
    created: str | None = None

    @field_validator("tokenizer_files")
    @classmethod
    def _tokenizer_listed(cls, files: dict[str, str]) -> dict[str, str]:
        for rel in files:
            check_relative_path(rel)
        if TOKENIZER_FILE not in files:
            raise ValueError(
                f"tokenizer_files does not list {TOKENIZER_FILE}, the file the service reads, so it "
                f"would be loaded unchecked; re-export the model (or add {TOKENIZER_FILE} and its "
                "sha256 under tokenizer_files)"
            )
        return files

    def find(self, fmt: ArtifactFormat, precision: Precision) -> Artifact | None:
        for artifact in self.artifacts:
            if artifact.format == fmt and artifact.precision == precision:
                return artifact
        return None


class VersionPolicy(BaseModel):
    """Which versions of a model are served beside its default one (Triton's version policy):
    exactly one of `latest: N` (the N highest), `all: true`, or `specific: [versions]`."""

    model_config = ConfigDict(extra="forbid")

    latest: int | None = Field(None, ge=1, description="The N highest versions.")
    all: bool = Field(False, description="Every version under `versions`.")
    specific: list[int] | None = Field(None, min_length=1, description="These versions.")

    @model_validator(mode="after")
    def _exactly_one(self) -> VersionPolicy:
        chosen = (self.latest is not None) + self.all + (self.specific is not None)
        if chosen != 1:
            raise ValueError("a version_policy is exactly one of latest: N, all: true, specific: [...]")
        return self

    def select(self, versions: Sequence[int]) -> list[int]:
        ordered = sorted(versions)
        if self.latest is not None:
            return ordered[-self.latest :]
        if self.all:
            return ordered
        return sorted(set(self.specific or ()))


class ModelConfig(BaseModel):
    """`models/<name>/model.yaml`."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    task: Task
    architecture: str = Field(description="Hugging Face model_type, e.g. bert, distilbert.")
    problem_type: ProblemType | None = None
    labels: list[str] = Field(
        default_factory=list,
        description="Label names in id order (none for feature-extraction; one for rerank).",
    )
    tag_scheme: TagScheme | None = None
    segmentation: Segmentation = Field(
        Segmentation.NONE,
        description="Token classification: none (the text is read whole, in overlapping windows "
        "when long), lines or sentences (each line or sentence is its own sequence). A tagger "
        "trained on single sentences answers a document best one sentence at a time.",
    )
    language: str = Field("en", description="Language code for sentence segmentation.")
    window_pooling: WindowPooling = Field(
        WindowPooling.MEAN,
        description="Text classification of texts longer than the model (a request's `long_text: "
        "windows`): mean of the windows' logits, or max per label.",
    )
    max_length: int = Field(ge=8, description="Longest sequence (in tokens) the graph is run with.")
    inputs: list[str] = Field(description="The graph's actual input names, in order.")
    outputs: list[str] = Field(default_factory=lambda: ["logits"])
    pad_token_id: int = 0
    thresholds: dict[str, float] | None = Field(
        None,
        description="Decision thresholds by label (probabilities in (0, 1)): for multi-label and "
        "one-logit models any labels (the others keep 0.5); for a two-label softmax model one "
        "label (the other is decided when that label's probability is below its threshold). "
        "Answers then mark each label's `above_threshold`.",
    )
    embedding: EmbeddingConfig | None = Field(None, description="Feature extraction: pooling and width.")
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    instances: Annotated[int, Field(ge=1)] | Literal["adaptive", "auto"] | None = Field(
        None,
        description="Backend sessions this model is served by (as Triton's instance groups), each "
        "with its own batch worker on the model's one queue and the model's threads split between "
        "them; `adaptive`: one session with all the model's threads for lone requests and one "
        "single-thread session per thread that take over as soon as requests queue; `auto`: "
        "adaptive where it was measured to pay and its memory fits, else 1. Unset: auto, or the "
        "service's `instances` setting, which overrides this for every model.",
    )
    default_version: int = 1
    versions: dict[int, VersionConfig]
    version_policy: VersionPolicy | None = Field(
        None,
        description="Versions served beside the default one (at /v1/models/{name}/versions/{v}/...): "
        "latest N, all, or specific ones; unset serves the default version only.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.default_version not in self.versions:
            raise ValueError(f"default_version {self.default_version} has no entry under versions")
        if self.version_policy is not None and self.version_policy.specific is not None:
            missing = sorted(set(self.version_policy.specific) - set(self.versions))
            if missing:
                raise ValueError(
                    f"version_policy names versions that have no entry under versions: {missing}"
                )
        if self.task == Task.FEATURE_EXTRACTION:
            if self.embedding is None:
                raise ValueError(
                    "a feature-extraction model needs an `embedding` section (pooling, dimensions)"
                )
            if self.labels:
                raise ValueError("a feature-extraction model has no labels")
        elif self.embedding is not None:
            raise ValueError(f"`embedding` belongs to feature-extraction models, not {self.task}")
        elif not self.labels:
            raise ValueError(f"a {self.task} model needs its labels")
        if self.task == Task.RERANK:
            if len(self.labels) != 1:
                raise ValueError(f"a rerank model has one relevance logit, not {len(self.labels)} labels")
            if self.problem_type not in (None, ProblemType.SINGLE_LABEL):
                raise ValueError("a rerank model scores one logit with a sigmoid; problem_type must be unset")
        if self.task in (Task.TEXT_CLASSIFICATION, Task.RERANK) and self.problem_type is None:
            self.problem_type = ProblemType.SINGLE_LABEL
        if self.thresholds is not None:
            self._check_thresholds(self.thresholds)
        if self.task == Task.TOKEN_CLASSIFICATION and self.tag_scheme is None:
            self.tag_scheme = detect_tag_scheme(self.labels)
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        return self

    def _check_thresholds(self, thresholds: dict[str, float]) -> None:
        if self.task not in (Task.TEXT_CLASSIFICATION, Task.RERANK):
            raise ValueError(f"thresholds belong to classification models, not {self.task}")
        unknown = sorted(set(thresholds) - set(self.labels))
        if unknown:
            raise ValueError(f"thresholds name labels the model does not have: {unknown}")
        if not all(0.0 < t < 1.0 for t in thresholds.values()):
            raise ValueError("thresholds are probabilities strictly between 0 and 1")
        independent = self.problem_type == ProblemType.MULTI_LABEL or len(self.labels) == 1
        if not independent and (len(self.labels) != 2 or len(thresholds) != 1):
            raise ValueError(
                "a single-label model takes a threshold only when it has two labels, for one of them "
                "(its probability decides between the two)"
            )

    @property
    def version(self) -> VersionConfig:
        return self.versions[self.default_version]

    @property
    def served_versions(self) -> list[int]:
        """The versions to serve: the policy's, and the default one always."""
        chosen = self.version_policy.select(list(self.versions)) if self.version_policy else []
        return sorted({*chosen, self.default_version})

    def as_version(self, version: int) -> ModelConfig:
        """This model with `version` as its default: what a pipeline serving that version reads."""
        return self.model_copy(update={"default_version": version})

    @property
    def output_width(self) -> int:
        """Values per row of the graph's output: labels, or the embedding's dimensions."""
        return self.embedding.dimensions if self.embedding is not None else len(self.labels)


def detect_tag_scheme(labels: list[str]) -> TagScheme:
    """Guess the tag scheme from label names (`B-PER`, `S-LOC`, `U-ORG`, ...)."""
    prefixes = {label.split("-", 1)[0].upper() for label in labels if "-" in label}
    if not prefixes:
        return TagScheme.NONE
    if prefixes & {"S", "E", "U", "L"}:
        return TagScheme.BIOES
    if "B" in prefixes:
        return TagScheme.IOB2
    if "I" in prefixes:
        return TagScheme.IOB1
    return TagScheme.NONE


class RepositoryError(Exception):
    """The model repository is missing, malformed, tampered with or escapes its folder."""


def check_relative_path(rel: str) -> None:
    """Refuse absolute paths and `..` components in paths recorded in model.yaml."""
    p = Path(rel)
    if p.is_absolute() or rel.startswith(("/", "\\")) or ".." in p.parts or not rel.strip():
        raise ValueError(f"path {rel!r} must be relative and stay inside the version folder")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_inside(root: Path, rel: str) -> Path:
    """Resolve `rel` under `root`, following symlinks, and refuse anything that lands outside."""
    check_relative_path(rel)
    root_real = root.resolve()
    target = (root / rel).resolve()
    if target != root_real and root_real not in target.parents:
        raise RepositoryError(f"{rel} resolves outside {root}")
    return target


def model_dir(repo: Path, name: str) -> Path:
    return repo / name


def version_dir(repo: Path, name: str, version: int) -> Path:
    return repo / name / str(version)


def load_model_config(repo: Path, name: str) -> ModelConfig:
    """`repo/name/model.yaml`, validated; its `name` must be the folder's name."""
    path = resolve_inside(repo, f"{name}/{MODEL_CONFIG_FILE}")
    if not path.is_file():
        raise RepositoryError(f"no {MODEL_CONFIG_FILE} for model {name!r} in {repo}")
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
        config = ModelConfig.model_validate(raw)
    except ValidationError as exc:
        raise RepositoryError(f"{path}: invalid model config: {_one_line(exc)}") from exc
    except (yaml.YAMLError, ValueError) as exc:
        raise RepositoryError(f"{path}: invalid model config: {exc}") from exc
    if config.name != name:
        # NOTE: the folder is what clients ask for (list_models), `name` is what metrics and
        # answers carry; two names for one model would serve one under the other's label.
        raise RepositoryError(
            f"{path}: name {config.name!r} does not match its folder {name!r}; set `name: {name}` "
            f"in {MODEL_CONFIG_FILE} or rename the folder to {config.name!r}"
        )
    return config


def _one_line(exc: ValidationError) -> str:
    """Pydantic's errors as `location: message; ...`, without the offending input echoed back."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in error["loc"])
        parts.append(f"{loc}: {error['msg']}" if loc else str(error["msg"]))
    return "; ".join(parts)


def save_model_config(repo: Path, config: ModelConfig) -> Path:
    path = model_dir(repo, config.name) / MODEL_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config.model_dump(mode="json", exclude_none=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    os.replace(tmp, path)
    return path


def list_models(repo: Path) -> list[str]:
    if not repo.is_dir():
        return []
    return sorted(p.name for p in repo.iterdir() if (p / MODEL_CONFIG_FILE).is_file())


def verify_files(root: Path, files: dict[str, str]) -> None:
    """Check every listed file exists inside `root` and matches its recorded sha256."""
    for rel, expected in files.items():
        path = resolve_inside(root, rel)
        if not path.is_file():
            raise RepositoryError(f"missing file {rel} in {root}")
        actual = sha256_file(path)
        if actual != expected:
            raise RepositoryError(
                f"{rel} in {root} does not match the sha256 recorded in model.yaml "
                "(corrupt or modified after export); re-run `bertserve export`"
            )
