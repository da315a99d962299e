"""The model repository contract (bertserve/modelrepo.py): model.yaml validation, path safety,
checksums, the name/folder rule and atomic saves."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from bertserve.modelrepo import (
    Artifact,
    BatchingConfig,
    ModelConfig,
    ProblemType,
    RepositoryError,
    TagScheme,
    Task,
    check_relative_path,
    detect_tag_scheme,
    list_models,
    load_model_config,
    resolve_inside,
    save_model_config,
    sha256_file,
    verify_files,
)

SHA = "0" * 64


def _raw(name: str = "m", **changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": name,
        "task": "text-classification",
        "architecture": "bert",
        "labels": ["NEGATIVE", "POSITIVE"],
        "max_length": 128,
        "inputs": ["input_ids", "attention_mask"],
        "versions": {
            1: {
                "artifacts": [{"format": "onnx", "precision": "fp32", "files": {"model.onnx": SHA}}],
                "tokenizer_files": {"tokenizer.json": SHA},
            }
        },
    }
    raw.update(changes)
    return raw


def _write(repo: Path, raw: dict[str, Any], folder: str | None = None) -> Path:
    path = repo / (folder or raw["name"]) / "model.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_defaults_are_filled_in_by_task() -> None:
    cls = ModelConfig.model_validate(_raw())
    assert cls.problem_type == ProblemType.SINGLE_LABEL and cls.tag_scheme is None
    assert cls.version is cls.versions[1]
    ner = ModelConfig.model_validate(
        _raw(task="token-classification", labels=["O", "B-PER", "I-PER"], problem_type=None)
    )
    assert ner.tag_scheme == TagScheme.IOB2


@pytest.mark.parametrize(
    ("labels", "scheme"),
    [
        (["O", "B-PER", "I-PER"], TagScheme.IOB2),
        (["O", "I-PER"], TagScheme.IOB1),
        (["O", "B-LOC", "I-LOC", "E-LOC", "S-LOC"], TagScheme.BIOES),
        (["O", "U-ORG", "L-ORG", "B-ORG"], TagScheme.BIOES),
        (["NEGATIVE", "POSITIVE"], TagScheme.NONE),
    ],
)
def test_tag_scheme_detection(labels: list[str], scheme: TagScheme) -> None:
    assert detect_tag_scheme(labels) == scheme


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"labels": ["A", "A"]}, "labels must be unique"),
        ({"default_version": 2}, "default_version 2 has no entry"),
        ({"name": "../etc"}, "name"),
        ({"unknown_key": 1}, "unknown_key"),
        ({"labels": []}, "needs its labels"),
        ({"task": "feature-extraction"}, "needs an `embedding` section"),
        ({"embedding": {"pooling": "mean", "dimensions": 8}}, "belongs to feature-extraction"),
        (
            {"task": "feature-extraction", "embedding": {"pooling": "mean", "dimensions": 8}},
            "has no labels",
        ),
        ({"task": "rerank"}, "one relevance logit, not 2"),
        ({"task": "rerank", "labels": ["s"], "problem_type": "multi_label_classification"}, "sigmoid"),
        (
            {"task": "feature-extraction", "labels": [], "embedding": {"pooling": "sum", "dimensions": 8}},
            "pooling",
        ),
        ({"thresholds": {"NEGATIVE": 0.3, "POSITIVE": 0.7}}, "two labels, for one of them"),
        ({"thresholds": {"NEUTRAL": 0.3}}, "labels the model does not have"),
        ({"thresholds": {"POSITIVE": 1.0}}, "strictly between 0 and 1"),
        (
            {"task": "token-classification", "labels": ["O", "B-X"], "thresholds": {"O": 0.5}},
            "classification models",
        ),
    ],
)
def test_inconsistent_configs_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig.model_validate(_raw(**changes))


def test_every_file_a_runtime_reads_must_be_listed() -> None:
    with pytest.raises(ValueError, match=r"model\.bin are not listed"):
        Artifact.model_validate({"format": "openvino", "precision": "fp32", "files": {"model.xml": SHA}})
    with pytest.raises(ValueError, match=r"opens its \.xml file first"):
        Artifact.model_validate({"format": "openvino", "precision": "fp32", "files": {"model.bin": SHA}})
    raw = _raw()
    raw["versions"][1]["tokenizer_files"] = {"vocab.txt": SHA}
    with pytest.raises(ValueError, match=r"does not list tokenizer\.json"):
        ModelConfig.model_validate(raw)


def test_artifact_digest_covers_every_file() -> None:
    single = Artifact.model_validate(
        {"format": "onnx", "precision": "fp32", "files": {"model.onnx": "a" * 64}}
    )
    assert single.digest == "a" * 64
    files = {"model.onnx": "a" * 64, "model.onnx.data": "b" * 64}
    both = Artifact.model_validate({"format": "onnx", "precision": "fp32", "files": files})
    other = Artifact.model_validate(
        {"format": "onnx", "precision": "fp32", "files": {**files, "model.onnx.data": "c" * 64}}
    )
    expected = hashlib.sha256(f"model.onnx {'a' * 64}\nmodel.onnx.data {'b' * 64}\n".encode()).hexdigest()
    assert both.digest == expected != other.digest


@pytest.mark.parametrize("rel", ["/etc/passwd", "\\x", "../up", "a/../../b", " ", ""])
def test_paths_in_model_yaml_stay_relative(rel: str) -> None:
    with pytest.raises(ValueError, match="must be relative"):
        check_relative_path(rel)


def test_symlinks_out_of_the_repository_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (tmp_path / "secret").write_text("x")
    os.symlink(tmp_path / "secret", root / "link")
    with pytest.raises(RepositoryError, match="resolves outside"):
        resolve_inside(root, "link")
    (root / "ok").write_text("y")
    assert resolve_inside(root, "ok") == (root / "ok").resolve()


def test_load_checks_the_name_against_its_folder(tmp_path: Path) -> None:
    _write(tmp_path, _raw("sentiment"), folder="other")
    with pytest.raises(RepositoryError, match="does not match its folder 'other'"):
        load_model_config(tmp_path, "other")
    with pytest.raises(RepositoryError, match=r"no model\.yaml for model .absent."):
        load_model_config(tmp_path, "absent")


def test_load_reports_errors_without_echoing_input(tmp_path: Path) -> None:
    _write(tmp_path, _raw(max_length="zanzibar-4711"))
    with pytest.raises(RepositoryError) as info:
        load_model_config(tmp_path, "m")
    assert "max_length" in str(info.value) and "zanzibar-4711" not in str(info.value)
    (tmp_path / "m" / "model.yaml").write_text("a: [unclosed", encoding="utf-8")
    with pytest.raises(RepositoryError, match="invalid model config"):
        load_model_config(tmp_path, "m")


def test_save_then_load_round_trips_and_leaves_no_temporary(tmp_path: Path) -> None:
    config = ModelConfig.model_validate(_raw("roundtrip"))
    path = save_model_config(tmp_path, config)
    assert load_model_config(tmp_path, "roundtrip") == config
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.yaml"]
    assert list_models(tmp_path) == ["roundtrip"]
    assert list_models(tmp_path / "missing") == []


def test_verify_files_checks_presence_and_checksums(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"graph")
    good = sha256_file(tmp_path / "model.onnx")
    assert good == hashlib.sha256(b"graph").hexdigest()
    verify_files(tmp_path, {"model.onnx": good})
    with pytest.raises(RepositoryError, match="does not match the sha256"):
        verify_files(tmp_path, {"model.onnx": SHA})
    with pytest.raises(RepositoryError, match=r"missing file absent\.onnx"):
        verify_files(tmp_path, {"absent.onnx": good})


def test_task_values_are_the_hugging_face_pipeline_names() -> None:
    assert {t.value for t in Task} >= {"text-classification", "token-classification", "feature-extraction"}


def test_batching_overrides_replace_only_what_is_set() -> None:
    base = BatchingConfig()
    assert base.with_overrides(max_batch_size=None) == base
    changed = base.with_overrides(max_batch_size=4, max_queue_delay_ms=0.5, max_queue_size=None)
    assert (changed.max_batch_size, changed.max_queue_delay_ms) == (4, 0.5)
    assert (changed.max_batch_tokens, changed.max_queue_size) == (base.max_batch_tokens, base.max_queue_size)
    with pytest.raises(TypeError, match="max_batch"):
        base.with_overrides(max_batches=3)


def test_embedding_and_rerank_models_and_their_output_width() -> None:
    embed = ModelConfig.model_validate(
        _raw(task="feature-extraction", labels=[], embedding={"pooling": "lasttoken", "dimensions": 384})
    )
    assert embed.embedding is not None and embed.embedding.normalize  # normalized unless told not to
    assert embed.output_width == 384 and embed.problem_type is None
    rerank = ModelConfig.model_validate(_raw(task="rerank", labels=["relevance"]))
    assert rerank.output_width == 1 and rerank.problem_type == ProblemType.SINGLE_LABEL
    assert ModelConfig.model_validate(_raw()).output_width == 2


def test_version_policy_is_exactly_one_choice() -> None:
    from bertserve.modelrepo import VersionPolicy

    assert VersionPolicy(latest=2).select([3, 1, 2, 5]) == [3, 5]
    assert VersionPolicy(all=True).select([2, 1]) == [1, 2]
    assert VersionPolicy(specific=[2, 2, 1]).select([1, 2, 3]) == [1, 2]
    for bad in ({}, {"latest": 1, "all": True}, {"all": False}, {"latest": 0}, {"specific": []}):
        with pytest.raises(ValueError):
            VersionPolicy.model_validate(bad)
