"""The demo recipe: its config, the recipe hash that decides rebuilds, and the up-to-date check."""

from __future__ import annotations

import dataclasses
import json
import shutil
import typing
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import ValidationError

from bertserve.export.options import ExportOptions, described
from tests.helpers.fake_repo import FakeModelSpec, write_fake_repo
from tests.unit.demo.conftest import DEMO_DIR


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    """A copy of the recipe's data and code that a test may modify."""
    root = tmp_path / "demo"
    shutil.copytree(DEMO_DIR / "data", root / "data")
    for name in ("demo.yaml", "build.py"):
        shutil.copy(DEMO_DIR / name, root / name)
    return root


def _hash(build: ModuleType, root: Path, name: str) -> str:
    config = build.load_config(root / "demo.yaml")
    return str(build.recipe_hash(config, name, root=root, code=(root / "build.py",)))


def test_demo_config_declares_its_three_models(build: ModuleType) -> None:
    config = build.load_config()
    assert set(config.models) == {"sentiment", "ner", "embed"}
    assert set(config.trained()) == {"sentiment", "ner"}
    embed = config.models["embed"]
    assert (embed.task, embed.source) == ("feature-extraction", "packaged-minilm")
    assert (DEMO_DIR / embed.calibration).is_file()
    assert config.models["sentiment"].labels == ["NEGATIVE", "POSITIVE"]
    assert {label.partition("-")[2] for label in config.models["ner"].labels} - {""} == {
        "PER",
        "ORG",
        "LOC",
        "MISC",
    }
    for section in config.trained().values():
        assert (DEMO_DIR / section.train).is_file() and (DEMO_DIR / section.heldout).is_file()


def test_unknown_config_keys_are_refused(build: ModuleType, recipe_dir: Path) -> None:
    path = recipe_dir / "demo.yaml"
    path.write_text(path.read_text("utf-8").replace("epochs:", "epoch_count:", 1), "utf-8")
    with pytest.raises(ValidationError):
        build.load_config(path)


def test_recipe_hash_is_stable(build: ModuleType, recipe_dir: Path) -> None:
    assert _hash(build, recipe_dir, "sentiment") == _hash(build, recipe_dir, "sentiment")
    assert _hash(build, recipe_dir, "sentiment") != _hash(build, recipe_dir, "ner")


@pytest.mark.parametrize("changed", ["data/sentiment/train.tsv", "data/sentiment/heldout.tsv", "build.py"])
def test_recipe_hash_follows_data_and_code(build: ModuleType, recipe_dir: Path, changed: str) -> None:
    before = _hash(build, recipe_dir, "sentiment")
    ner_before = _hash(build, recipe_dir, "ner")
    with (recipe_dir / changed).open("a", encoding="utf-8") as fh:
        fh.write("\n")
    assert _hash(build, recipe_dir, "sentiment") != before
    # another model's data is not part of the hash: editing sentiment data does not retrain NER
    assert (_hash(build, recipe_dir, "ner") == ner_before) == changed.startswith("data/")


def test_recipe_hash_follows_its_config_section(build: ModuleType, recipe_dir: Path) -> None:
    before = {name: _hash(build, recipe_dir, name) for name in ("sentiment", "ner")}
    path = recipe_dir / "demo.yaml"
    text = path.read_text("utf-8")
    head, _, tail = text.partition("  ner:")
    path.write_text(head + "  ner:" + tail.replace("seed: 13", "seed: 14", 1), "utf-8")
    assert _hash(build, recipe_dir, "ner") != before["ner"]
    assert _hash(build, recipe_dir, "sentiment") == before["sentiment"]


def test_not_current_without_stamp_or_with_another_recipe(build: ModuleType, tmp_path: Path) -> None:
    assert not build.is_current(tmp_path, "sentiment", "abc")
    (tmp_path / "sentiment").mkdir()
    (tmp_path / "sentiment" / build.STAMP_FILE).write_text(json.dumps({"recipe": "other"}), "utf-8")
    assert not build.is_current(tmp_path, "sentiment", "abc")


def test_current_needs_intact_files(build: ModuleType, tmp_path: Path) -> None:
    repo = write_fake_repo(tmp_path / "repo", (FakeModelSpec("sentiment"),))
    (repo / "sentiment" / build.STAMP_FILE).write_text(json.dumps({"recipe": "abc"}), "utf-8")
    assert build.is_current(repo, "sentiment", "abc")
    onnx = repo / "sentiment" / "1" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    assert not build.is_current(repo, "sentiment", "abc")


def test_foreign_model_folder_is_never_replaced(
    build: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "sentiment").mkdir()
    (tmp_path / "sentiment" / "model.yaml").write_text("name: sentiment\n", "utf-8")
    assert build.main(["--repo", str(tmp_path), "--only", "sentiment"]) == 2
    assert "was not built by the demo recipe" in capsys.readouterr().err
    assert (tmp_path / "sentiment" / "model.yaml").read_text("utf-8") == "name: sentiment\n"


def test_curl_examples_are_valid_requests(build: ModuleType) -> None:
    text = build.curl_examples("127.0.0.1", 8000)
    assert "http://127.0.0.1:8000/v1/models/sentiment/classify" in text
    assert "http://127.0.0.1:8000/v1/models/ner/ner" in text
    bodies = [line.strip()[4:-1] for line in text.splitlines() if line.strip().startswith("-d '")]
    payloads = [json.loads(body) for body in bodies]
    assert payloads[0] == {"inputs": list(build.CLASSIFY_EXAMPLE)}
    assert payloads[1] == {"inputs": build.NER_EXAMPLE, "aggregation": "simple"}
    assert "http://127.0.0.1:8000/v1/models/embed/embed" in text
    assert "http://127.0.0.1:8000/v1/models/embed/rerank" in text
    assert payloads[2] == {"inputs": list(build.EMBED_EXAMPLE)}
    assert payloads[3]["query"] == build.RERANK_QUERY and payloads[3]["texts"] == list(build.RERANK_TEXTS)
    assert payloads[4] == {"model": "embed", "input": build.EMBED_EXAMPLE[0]}


def test_export_section_reuses_the_export_options(build: ModuleType) -> None:
    """The recipe's export settings are `bertserve export`'s own options (type and help), and
    what the recipe hash reads of them is what it read before they were shared."""
    types = typing.get_type_hints(ExportOptions)
    option_names = {f.name for f in dataclasses.fields(ExportOptions)}
    taken = {
        build.ExportSection: {"formats", "int8", "bf16", "max_length"},
        build.ModelSection: {"segmentation"},
    }
    for section, names in taken.items():
        for name in names:
            field = section.model_fields[name]
            assert field.annotation == types[name] and field.description == described(name).help
    # beside the shared options, the export section has only what the recipe adds
    assert set(build.ExportSection.model_fields) - option_names == {"calibration_sentences"}
    assert build.ExportSection().model_dump(mode="json") == {
        "formats": ["onnx", "openvino"],
        "int8": True,
        "bf16": True,
        "max_length": 128,
        "calibration_sentences": 300,
    }
    options = ExportOptions(
        model="ckpt", task="text-classification", name="m", **build.ExportSection().export_options()
    )
    assert (options.formats, options.int8, options.max_length) == (("onnx", "openvino"), True, 128)


def test_the_packaged_models_hash_follows_its_calibration_data_only(
    build: ModuleType, recipe_dir: Path
) -> None:
    before = _hash(build, recipe_dir, "embed")
    with (recipe_dir / "data/ner/train.conll").open("a", encoding="utf-8") as fh:
        fh.write("\n")
    assert _hash(build, recipe_dir, "embed") == before
    with (recipe_dir / "data/sentiment/train.tsv").open("a", encoding="utf-8") as fh:
        fh.write("\n")
    assert _hash(build, recipe_dir, "embed") != before
