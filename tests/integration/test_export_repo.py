"""The `exported_repo` fixture checked independently of the export code: plain onnxruntime and
openvino on the written files against PyTorch, the tokenizer the service loads, sha256 in model.yaml
and the export report's contents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

from bertserve.modelrepo import (
    ArtifactFormat,
    Precision,
    ProblemType,
    TagScheme,
    Task,
    load_model_config,
    sha256_file,
    verify_files,
)
from tests.conftest import EXPORTED_MODELS

TEXTS = [
    "the movie was great",
    "John Smith lives in New York and works for the United Nations in Geneva, Switzerland.",
    "ok",
    "worst service ever , the food was cold and the waiter was rude and nobody came back",
]
PAIRS = [("a man plays a guitar", "someone makes music"), ("it rained", "the weather in seattle is rainy")]


def _encode(version_dir: Path, inputs: list[str], pairs: bool) -> dict[str, np.ndarray]:
    """Tokenize the way the service does: tokenizers.Tokenizer.from_file + padding to the longest."""
    tok = Tokenizer.from_file(str(version_dir / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    encs = tok.encode_batch(PAIRS if pairs else TEXTS)
    feeds = {
        "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
    }
    assert (feeds["attention_mask"] == 0).any(), "the batch must be padded"
    return {name: feeds[name] for name in inputs}


def _torch_logits(checkpoint: Path, task: Task, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The checkpoint's logits; for an embedding model its masked mean of token states (the tiny
    sentence-transformers fixture pools by mean), written out here rather than taken from the
    export code or sentence-transformers."""
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
    if task == Task.FEATURE_EXTRACTION:
        encoder = AutoModel.from_pretrained(checkpoint).eval()
        with torch.inference_mode():
            states = encoder(**tensors).last_hidden_state
        mask = tensors["attention_mask"].unsqueeze(-1).float()
        return ((states * mask).sum(1) / mask.sum(1)).numpy()
    cls = (
        AutoModelForTokenClassification
        if task == Task.TOKEN_CLASSIFICATION
        else AutoModelForSequenceClassification
    )
    model = cls.from_pretrained(checkpoint).eval()
    with torch.inference_mode():
        return model(**tensors).logits.numpy()


def _real(logits: np.ndarray, mask: np.ndarray, task: Task) -> np.ndarray:
    return logits[mask.astype(bool)] if task == Task.TOKEN_CLASSIFICATION else logits


PARITY_CASES = [(name, False) for name in EXPORTED_MODELS] + [
    (name, True) for name, (_, task) in EXPORTED_MODELS.items() if task in ("text-classification", "rerank")
]


@pytest.mark.parametrize(("name", "pairs"), PARITY_CASES)
def test_fp32_artifacts_match_pytorch_independently(exported_repo: Path, request, name: str, pairs: bool):
    fixture, _ = EXPORTED_MODELS[name]
    checkpoint = request.getfixturevalue(fixture).path
    config = load_model_config(exported_repo, name)
    version_dir = exported_repo / name / str(config.default_version)
    feeds = _encode(version_dir, config.inputs, pairs)
    expected = _torch_logits(checkpoint, config.task, feeds)
    mask = feeds["attention_mask"]

    core = ov.Core()
    checked = 0
    for artifact in config.version.artifacts:
        path = version_dir / artifact.main_file
        if artifact.format == ArtifactFormat.OPENVINO:
            compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            actual = compiled(feeds)[compiled.output(config.outputs[0])]
        else:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            (actual,) = session.run(config.outputs[:1], feeds)
        assert actual.shape == expected.shape
        if artifact.precision == Precision.FP32:
            diff = np.abs(_real(actual, mask, config.task) - _real(expected, mask, config.task)).max()
            assert diff <= 1e-4, f"{artifact.main_file}: {diff}"
            checked += 1
        else:
            assert np.isfinite(actual).all()
    assert checked == 3  # model.onnx, model.ort.onnx, openvino/model.xml


@pytest.mark.parametrize("name", list(EXPORTED_MODELS))
def test_model_yaml_records_every_file_with_its_sha256(exported_repo: Path, name: str):
    config = load_model_config(exported_repo, name)
    version_dir = exported_repo / name / str(config.default_version)
    expected = {
        (ArtifactFormat.ONNX, Precision.FP32): ["model.onnx"],
        (ArtifactFormat.ONNX_OPTIMIZED, Precision.FP32): ["model.ort.onnx"],
        (ArtifactFormat.ONNX, Precision.INT8): ["model.int8.onnx"],
        (ArtifactFormat.OPENVINO, Precision.FP32): ["openvino/model.xml", "openvino/model.bin"],
        (ArtifactFormat.OPENVINO, Precision.INT8): ["openvino-int8/model.xml", "openvino-int8/model.bin"],
    }
    assert {(a.format, a.precision): list(a.files) for a in config.version.artifacts} == expected
    for artifact in config.version.artifacts:
        for rel, digest in artifact.files.items():
            assert sha256_file(version_dir / rel) == digest
    assert "tokenizer.json" in config.version.tokenizer_files
    verify_files(version_dir, config.version.tokenizer_files)
    onnx_artifacts = [a for a in config.version.artifacts if a.format != ArtifactFormat.OPENVINO]
    assert all(a.opset is not None and a.opset >= 17 for a in onnx_artifacts)


def test_model_yaml_describes_task_labels_and_graph_inputs(exported_repo: Path, request):
    cls = load_model_config(exported_repo, "bert-cls")
    assert cls.task == Task.TEXT_CLASSIFICATION and cls.problem_type == ProblemType.SINGLE_LABEL
    assert cls.labels == ["NEGATIVE", "POSITIVE"]
    assert cls.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert cls.outputs == ["logits"] and cls.max_length == 128 and cls.pad_token_id == 0
    distil = load_model_config(exported_repo, "distilbert-cls")
    assert distil.architecture == "distilbert" and distil.inputs == ["input_ids", "attention_mask"]
    multi = load_model_config(exported_repo, "bert-multilabel")
    assert multi.problem_type == ProblemType.MULTI_LABEL
    assert tuple(multi.labels) == request.getfixturevalue("bert_multilabel_checkpoint").labels
    ner = load_model_config(exported_repo, "bert-ner")
    assert ner.task == Task.TOKEN_CLASSIFICATION and ner.tag_scheme == TagScheme.IOB2
    assert ner.labels[:3] == ["O", "B-PER", "I-PER"] and len(ner.labels) == 9
    rerank = load_model_config(exported_repo, "bert-rerank")
    assert rerank.task == Task.RERANK and rerank.labels == ["relevance"] and rerank.outputs == ["logits"]
    embed = load_model_config(exported_repo, "bert-embed")
    assert (
        embed.task == Task.FEATURE_EXTRACTION
        and embed.labels == []
        and embed.outputs == ["sentence_embedding"]
    )
    assert embed.embedding is not None and (embed.embedding.pooling, embed.embedding.normalize) == (
        "mean",
        True,
    )
    assert embed.embedding.dimensions == 32 and embed.max_length == 48  # sentence_bert_config.json


@pytest.mark.parametrize("name", list(EXPORTED_MODELS))
def test_export_report_contents(exported_repo: Path, name: str):
    config = load_model_config(exported_repo, name)
    report = json.loads((exported_repo / name / "1" / "export_report.json").read_text())
    assert report["model"] == name and report["version"] == 1
    assert report["inputs"] == config.inputs and report["labels"] == config.labels
    assert report["default_precision"] == config.version.default_precision.value
    by_key = {a["key"]: a for a in report["artifacts"]}
    assert set(by_key) == {"onnx/fp32", "onnx-optimized/fp32", "onnx/int8", "openvino/fp32", "openvino/int8"}
    for key, art in by_key.items():
        assert 0.0 <= art["agreement"] <= 1.0 and art["decisions"] > 0
        if key.endswith("fp32"):
            assert art["check"] == "parity" and art["passed"] and art["max_abs_diff"] <= 1e-4
            assert art["agreement"] == 1.0
        else:
            assert art["check"] == "agreement" and art["passed"] == (art["agreement"] >= 0.99)
    gate = report["int8_gate"]
    assert gate["passed"] == all(by_key[k]["passed"] for k in ("onnx/int8", "openvino/int8"))
    # each low-precision artifact passes on its own: int8 is the default when one of them passed
    int8_keys = ("onnx/int8", "openvino/int8")
    assert (report["default_precision"] == "int8") == any(by_key[k]["passed"] for k in int8_keys)
    assert set(gate["passed_artifacts"]) == {k for k in int8_keys if by_key[k]["passed"]}
    for key in int8_keys:
        artifact = config.version.find(*key.split("/"))
        assert artifact is not None and artifact.gate is not None
        assert artifact.gate.passed == by_key[key]["passed"] and artifact.gate.needs == by_key[key]["needs"]
    validation = report["validation"]
    assert validation["fp32_atol"] == 1e-4
    assert {"sentences", "random", "long"} <= set(validation["kinds"])
    assert ("pairs" in validation["kinds"]) == (config.task in (Task.TEXT_CLASSIFICATION, Task.RERANK))
    assert max(shape[1] for shape in validation["shapes"]) == config.max_length
    assert report["fusions"].get("Attention", 0) >= 1  # the ORT graph really is fused
    assert {"torch", "onnxruntime", "openvino"} <= set(report["libraries"])
    assert report["steps"][0]["name"] == "load checkpoint"
