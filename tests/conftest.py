"""Shared session fixtures.

Export-stage fixtures (owned by the export tests, used by the service's integration tests):

- `bert_cls_checkpoint`, `distilbert_cls_checkpoint`, `bert_multilabel_checkpoint`,
  `bert_ner_checkpoint`: tiny random Hugging Face checkpoints (safetensors + a real fast WordPiece
  tokenizer) as `tests.helpers.checkpoints.TinyCheckpoint` (`.path`, `.labels`, ...).
- `exported_repo`: a model repository (a session-scoped temp folder, `pathlib.Path`) holding the
  four checkpoints above exported with `--formats onnx,openvino --int8`, each as version 1:

  ==================  =====================  ===================================================
  name                task                   notes
  ==================  =====================  ===================================================
  `bert-cls`          text-classification    labels NEGATIVE, POSITIVE; inputs incl. token_type_ids
  `distilbert-cls`    text-classification    labels NEGATIVE, POSITIVE; no token_type_ids input
  `bert-multilabel`   text-classification    multi_label_classification; 4 topic labels
  `bert-ner`          token-classification   IOB2: O, B-/I-PER, LOC, ORG, MISC
  `bert-scorer`       text-classification    one logit (cross-encoder shape): sigmoid scores
  `bert-rerank`       rerank                 `bert-scorer`'s checkpoint exported as a cross-encoder
  `bert-embed`        feature-extraction     a sentence-transformers folder: mean pooling, Normalize
  ==================  =====================  ===================================================

  Every version folder has tokenizer.json, model.onnx, model.ort.onnx, model.int8.onnx,
  openvino/model.xml|bin, openvino-int8/model.xml|bin and export_report.json; model.yaml lists
  them with sha256. The tiny random models do not pass the int8 agreement gate, so
  `default_precision` is fp32 (tests wanting int8 ask for it explicitly). Treat the folder as
  read-only: copy it (`shutil.copytree`) before modifying anything.

Heavy libraries (torch, transformers) are imported inside the fixtures, never at module level,
so that tests asserting "the service does not import torch" stay meaningful.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.helpers.checkpoints import TinyCheckpoint

# name in the repository -> (fixture that builds the checkpoint, task)
EXPORTED_MODELS: dict[str, tuple[str, str]] = {
    "bert-cls": ("bert_cls_checkpoint", "text-classification"),
    "distilbert-cls": ("distilbert_cls_checkpoint", "text-classification"),
    "bert-multilabel": ("bert_multilabel_checkpoint", "text-classification"),
    "bert-ner": ("bert_ner_checkpoint", "token-classification"),
    "bert-scorer": ("bert_scorer_checkpoint", "text-classification"),  # one logit: sigmoid scores
    "bert-rerank": ("bert_scorer_checkpoint", "rerank"),  # the same weights as a cross-encoder
    "bert-embed": ("sentence_transformer_checkpoint", "feature-extraction"),  # mean + normalize
}


@pytest.fixture(scope="session")
def checkpoints_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


def _build(checkpoints_dir: Path, name: str, builder: str) -> TinyCheckpoint:
    from tests.helpers import checkpoints

    build: Callable[[Path], TinyCheckpoint] = getattr(checkpoints, builder)
    return build(checkpoints_dir / name)


@pytest.fixture(scope="session")
def bert_cls_checkpoint(checkpoints_dir: Path) -> TinyCheckpoint:
    return _build(checkpoints_dir, "bert-cls", "build_bert_classifier")


@pytest.fixture(scope="session")
def distilbert_cls_checkpoint(checkpoints_dir: Path) -> TinyCheckpoint:
    return _build(checkpoints_dir, "distilbert-cls", "build_distilbert_classifier")


@pytest.fixture(scope="session")
def bert_multilabel_checkpoint(checkpoints_dir: Path) -> TinyCheckpoint:
    return _build(checkpoints_dir, "bert-multilabel", "build_bert_multilabel")


@pytest.fixture(scope="session")
def bert_scorer_checkpoint(checkpoints_dir: Path) -> TinyCheckpoint:
    return _build(checkpoints_dir, "bert-scorer", "build_bert_scorer")


@pytest.fixture(scope="session")
def sentence_transformer_checkpoint(checkpoints_dir: Path) -> TinyCheckpoint:
    return _build(checkpoints_dir, "sentence-transformer", "build_sentence_transformer")


@pytest.fixture(scope="session")
def bert_ner_checkpoint(checkpoints_dir: Path) -> TinyCheckpoint:
    return _build(checkpoints_dir, "bert-ner", "build_bert_token_classifier")


@pytest.fixture(scope="session")
def exported_repo(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A model repository with the EXPORTED_MODELS above (see the module doc)."""
    from bertserve.export.exporter import ExportOptions, run_export

    repo = tmp_path_factory.mktemp("model-repo")
    for name, (fixture, task) in EXPORTED_MODELS.items():
        checkpoint: TinyCheckpoint = request.getfixturevalue(fixture)
        run_export(
            ExportOptions(
                model=str(checkpoint.path),
                task=task,
                name=name,
                repo=repo,
                formats=("onnx", "openvino"),
                int8=True,
                quiet=True,
                measure_speed=False,
            )
        )
    return repo
