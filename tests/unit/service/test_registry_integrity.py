"""Every file a model reads is listed in model.yaml with its sha256 and checked before it is read,
and a model.yaml describes the folder it lies in: refused at startup, with what to fix, otherwise.

Runs the real registry and OpenVINO backend on a tiny IR built with OpenVINO's own opset (no torch).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
import yaml

from bertserve.modelrepo import (
    MODEL_CONFIG_FILE,
    Artifact,
    ArtifactFormat,
    ModelConfig,
    Precision,
    RepositoryError,
    Task,
    VersionConfig,
    load_model_config,
    save_model_config,
    sha256_file,
)
from bertserve.service.errors import StartupError
from bertserve.service.metrics import Metrics
from bertserve.service.registry import ModelRegistry
from bertserve.service.settings import BackendKind, Settings
from tests.helpers.fake_repo import build_tokenizer

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def tiny_ir(folder: Path) -> None:
    """logits[b] = mean over tokens of input_ids[b] x W (1 x 2): dynamic batch and length, real
    weights in model.bin."""
    params = [ops.parameter([-1, -1], ov.Type.i64, name=name) for name in INPUTS]
    ids = ops.convert(params[0], ov.Type.f32)
    mean = ops.reduce_mean(ids, ops.constant(np.array([1], np.int64)), keep_dims=True)
    weights = ops.constant(np.array([[0.5, -0.25]], np.float32))
    logits = ops.matmul(mean, weights, transpose_a=False, transpose_b=False)
    logits.output(0).get_tensor().set_names({"logits"})
    model = ov.Model([logits], params, "tiny")
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)


@pytest.fixture(scope="module")
def ir_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("ir-repo")
    vdir = repo / "tiny" / "1"
    tiny_ir(vdir / "openvino")
    build_tokenizer().save(str(vdir / "tokenizer.json"))
    files = ("openvino/model.xml", "openvino/model.bin")
    config = ModelConfig(
        name="tiny",
        task=Task.TEXT_CLASSIFICATION,
        architecture="bert",
        labels=["NEGATIVE", "POSITIVE"],
        max_length=32,
        inputs=list(INPUTS),
        versions={
            1: VersionConfig(
                artifacts=[
                    Artifact(
                        format=ArtifactFormat.OPENVINO,
                        precision=Precision.FP32,
                        files={rel: sha256_file(vdir / rel) for rel in files},
                    )
                ],
                tokenizer_files={"tokenizer.json": sha256_file(vdir / "tokenizer.json")},
            )
        },
    )
    save_model_config(repo, config)
    return repo


def copy_repo(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def edit_yaml(repo: Path, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Change model.yaml as a person with an editor would, bypassing the validating writer."""
    path = repo / name / MODEL_CONFIG_FILE
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def first_version(data: dict[str, Any]) -> dict[str, Any]:
    version: dict[str, Any] = next(iter(data["versions"].values()))
    return version


def load(repo: Path) -> ModelRegistry:
    settings = Settings(repo=repo, backend=BackendKind.OPENVINO_CPU, intra_op_threads=1)
    registry = ModelRegistry(settings, Metrics(process=False))
    registry.load()
    return registry


def test_the_intact_repository_loads_and_runs_its_weights(ir_repo: Path) -> None:
    registry = load(ir_repo)
    try:
        backend = registry.describe("tiny").backend
        ids = np.array([[2, 4, 6]], np.int64)
        logits = backend.infer({n: ids for n in INPUTS})
        np.testing.assert_allclose(logits, [[2.0, -1.0]], rtol=1e-6)
    finally:
        registry.close()


def test_a_tampered_openvino_bin_stops_startup(ir_repo: Path, tmp_path: Path) -> None:
    repo = copy_repo(ir_repo, tmp_path / "repo")
    with (repo / "tiny" / "1" / "openvino" / "model.bin").open("r+b") as fh:
        fh.write(b"\x7f\x7f\x7f\x7f")  # same size, other weights: a file OpenVINO would happily run
    with pytest.raises(StartupError, match=r"openvino/model\.bin.*sha256"):
        load(repo)


def test_an_openvino_artifact_without_its_bin_listed_is_refused(ir_repo: Path, tmp_path: Path) -> None:
    repo = copy_repo(ir_repo, tmp_path / "repo")

    def drop_bin(data: dict[str, Any]) -> None:
        del first_version(data)["artifacts"][0]["files"]["openvino/model.bin"]

    edit_yaml(repo, "tiny", drop_bin)
    # ... even with weights that no longer match anything: they must not be read unchecked
    (repo / "tiny" / "1" / "openvino" / "model.bin").write_bytes(b"\0" * 8)
    with pytest.raises(RepositoryError, match=r"weights openvino/model\.bin are not listed"):
        load_model_config(repo, "tiny")
    with pytest.raises(StartupError, match=r"tiny.*openvino/model\.bin are not listed.*re-export"):
        load(repo)


def test_a_model_yaml_without_tokenizer_json_listed_is_refused(ir_repo: Path, tmp_path: Path) -> None:
    repo = copy_repo(ir_repo, tmp_path / "repo")

    def drop_tokenizer(data: dict[str, Any]) -> None:
        first_version(data)["tokenizer_files"] = {}

    edit_yaml(repo, "tiny", drop_tokenizer)
    with pytest.raises(StartupError, match=r"tokenizer_files does not list tokenizer\.json.*re-export"):
        load(repo)


def test_a_model_yaml_whose_name_is_not_its_folder_is_refused(ir_repo: Path, tmp_path: Path) -> None:
    repo = copy_repo(ir_repo, tmp_path / "repo")
    edit_yaml(repo, "tiny", lambda data: data.update(name="other"))
    with pytest.raises(RepositoryError, match=r"name 'other' does not match its folder 'tiny'.*name: tiny"):
        load_model_config(repo, "tiny")
    with pytest.raises(StartupError, match="does not match its folder"):
        load(repo)


def test_a_renamed_folder_is_refused_too(ir_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(ir_repo / "tiny", repo / "tiny-copy")
    with pytest.raises(StartupError, match=r"name 'tiny' does not match its folder 'tiny-copy'"):
        load(repo)


def test_invalid_config_errors_are_one_line_without_the_input(ir_repo: Path, tmp_path: Path) -> None:
    repo = copy_repo(ir_repo, tmp_path / "repo")
    edit_yaml(repo, "tiny", lambda data: data.update(labels=["SECRET-LABEL", "SECRET-LABEL"], max_length=2))
    with pytest.raises(RepositoryError) as info:
        load_model_config(repo, "tiny")
    message = str(info.value)
    assert "\n" not in message
    assert "max_length" in message
    assert "SECRET" not in message.split("max_length")[1]  # the value given is not echoed back
