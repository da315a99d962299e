"""A model repository for the fake backend: model.yaml + a real (tiny) WordPiece tokenizer.

Builds in milliseconds without torch, so service tests that do not need real weights stay fast.
The artifact entry points at a placeholder file: the fake backend never opens it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from bertserve.modelrepo import (
    Artifact,
    ArtifactFormat,
    BatchingConfig,
    EmbeddingConfig,
    ModelConfig,
    Precision,
    ProblemType,
    Segmentation,
    Task,
    VersionConfig,
    WindowPooling,
    save_model_config,
    sha256_file,
)
from bertserve.runtime.base import Backend
from bertserve.runtime.fake import FakeBackend, FaultHooks

CORPUS = (
    "the movie was great and the actors were wonderful",
    "i did not like this film at all , it was boring and far too long",
    "john smith lives in new york and works for the united nations",
    "the weather in seattle is rainy but the city is beautiful",
    "worst service ever , the food was cold and the waiter was rude",
    "a quiet , thoughtful story about family and friendship",
)
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_tokenizer(vocab_size: int = 200) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(
        CORPUS, trainer=trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL))
    )
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok


@dataclass(frozen=True)
class FakeModelSpec:
    name: str
    task: Task = Task.TEXT_CLASSIFICATION
    labels: tuple[str, ...] = ("NEGATIVE", "POSITIVE")
    problem_type: ProblemType | None = None
    inputs: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    max_length: int = 32
    segmentation: Segmentation = Segmentation.NONE  # token classification: the unit the model reads
    batching: BatchingConfig = field(default_factory=lambda: BatchingConfig(max_queue_delay_ms=5.0))
    embedding: EmbeddingConfig | None = None  # feature extraction: pooling and width
    window_pooling: WindowPooling = WindowPooling.MEAN  # classification of texts read in windows


DEFAULT_SPECS = (
    FakeModelSpec("cls"),
    FakeModelSpec("multi", labels=("sports", "politics", "business"), problem_type=ProblemType.MULTI_LABEL),
    FakeModelSpec("distil", inputs=("input_ids", "attention_mask")),
    FakeModelSpec("ner", task=Task.TOKEN_CLASSIFICATION, labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC")),
)


def write_fake_repo(root: Path, specs: tuple[FakeModelSpec, ...] = DEFAULT_SPECS) -> Path:
    tokenizer = build_tokenizer()
    for spec in specs:
        vdir = root / spec.name / "1"
        vdir.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(vdir / "tokenizer.json"))
        (vdir / "model.onnx").write_bytes(b"placeholder: the fake backend opens no file")
        config = ModelConfig(
            name=spec.name,
            task=spec.task,
            architecture="bert",
            problem_type=spec.problem_type,
            labels=list(spec.labels),
            segmentation=spec.segmentation,
            embedding=spec.embedding,
            window_pooling=spec.window_pooling,
            max_length=spec.max_length,
            inputs=list(spec.inputs),
            batching=spec.batching,
            versions={
                1: VersionConfig(
                    artifacts=[
                        Artifact(
                            format=ArtifactFormat.ONNX,
                            precision=Precision.FP32,
                            files={"model.onnx": sha256_file(vdir / "model.onnx")},
                        )
                    ],
                    tokenizer_files={"tokenizer.json": sha256_file(vdir / "tokenizer.json")},
                )
            },
        )
        save_model_config(root, config)
    return root


@dataclass
class FakeBackends:
    """A BackendFactory handing out FakeBackends (token-level for NER models); `made` keeps each
    model's backend so tests can read its counters.

    Every backend answers to two sets of fault hooks: its model's own (`faults_for(name)`: break one
    model and watch the others) and `faults`, shared by all models (one counter: `fail_batches = 1`
    fails the next batch of whichever model runs one)."""

    faults: FaultHooks = field(default_factory=FaultHooks)
    made: dict[str, FakeBackend] = field(default_factory=dict)
    per_model: dict[str, FaultHooks] = field(default_factory=dict)

    def faults_for(self, model: str) -> FaultHooks:
        """The hooks of one model only; usable before the model is loaded (e.g. to hang its warm-up)."""
        return self.per_model.setdefault(model, FaultHooks())

    def __call__(self, model: ModelConfig, version_dir: Path) -> Backend:
        backend = FakeBackend(
            model.output_width,
            token_level=model.task == Task.TOKEN_CLASSIFICATION,
            input_names=tuple(model.inputs),
            faults=self.faults_for(model.name),
            shared_faults=self.faults,
        )
        self.made[model.name] = backend
        return backend
