"""`bertserve export --fp16` on tiny random checkpoints: the fp16 graph for GPU backends, checked with
plain onnx / onnxruntime against PyTorch, and chosen by the CUDA backend (its run on a GPU is
`make gpu-check`'s)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from bertserve.export.exporter import ExportOptions, run_export
from bertserve.export.onnx_export import FP16_EXTRA_BLOCKED_OPS
from bertserve.export.options import FP16_ATOL
from bertserve.modelrepo import ArtifactFormat, Precision, load_model_config, verify_files
from bertserve.runtime.base import BackendKind
from bertserve.runtime.selection import choose_artifact
from tests.helpers.checkpoints import TinyCheckpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fp16_repo(
    tmp_path_factory: pytest.TempPathFactory,
    bert_cls_checkpoint: TinyCheckpoint,
    bert_ner_checkpoint: TinyCheckpoint,
    sentence_transformer_checkpoint: TinyCheckpoint,
) -> Path:
    repo = tmp_path_factory.mktemp("fp16-repo")
    for ckpt, task, name in (
        (bert_cls_checkpoint, "text-classification", "cls"),
        (bert_ner_checkpoint, "token-classification", "ner"),
        (sentence_transformer_checkpoint, "feature-extraction", "embed"),
    ):
        options = ExportOptions(
            model=str(ckpt.path),
            task=task,
            name=name,
            repo=repo,
            formats=("onnx",),
            fp16=True,
            measure_speed=False,
            quiet=True,
        )
        run_export(options)
    return repo


@pytest.mark.parametrize("name", ["cls", "ner", "embed"])
def test_the_fp16_graph_is_listed_verified_and_reported(fp16_repo: Path, name: str) -> None:
    config = load_model_config(fp16_repo, name)
    artifact = config.version.find(ArtifactFormat.ONNX_OPTIMIZED, Precision.FP16)
    assert artifact is not None and artifact.main_file == "model.fp16.onnx"
    vdir = fp16_repo / name / "1"
    verify_files(vdir, artifact.files)
    assert config.version.default_precision == Precision.FP32  # fp16 is the GPU's choice, not the model's
    report = json.loads((vdir / "export_report.json").read_text())
    (result,) = [a for a in report["artifacts"] if a["path"] == "model.fp16.onnx"]
    assert result["check"] == "parity" and result["passed"]
    assert result["tolerance"] == FP16_ATOL and result["max_abs_diff"] <= FP16_ATOL
    assert result["agreement"] >= 0.99
    assert any("gpu-check" in note for note in report["notes"])
    assert any(op.startswith("fp16:") for op in report["fusions"])


def _elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    """The element type of every tensor whose type the graph states: inputs, initializers,
    value_info, and Cast outputs (their `to`)."""
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.value_info, *graph.input]}
    types.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:
        if node.op_type == "Cast":
            (to,) = [a.i for a in node.attribute if a.name == "to"]
            types[node.output[0]] = to
    return types


@pytest.mark.parametrize("name", ["cls", "ner", "embed"])
def test_the_fp16_graph_keeps_io_types_and_fp32_normalizations(fp16_repo: Path, name: str) -> None:
    graph = onnx.load(str(fp16_repo / name / "1" / "model.fp16.onnx")).graph
    assert {i.type.tensor_type.elem_type for i in graph.input} == {TensorProto.INT64}
    assert {o.type.tensor_type.elem_type for o in graph.output} == {TensorProto.FLOAT}
    weights = [t for t in graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    fp16 = [t for t in weights if t.data_type == TensorProto.FLOAT16]
    assert len(fp16) > len(weights) / 2  # the weights really are half precision
    fused = {n.op_type for n in graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= fused  # the GPU fusions happened
    # the ops kept in fp32 get Casts around them: every input of theirs is fp32 (or an int axis)
    types = _elem_types(graph)
    blocked = [n for n in graph.node if n.op_type in FP16_EXTRA_BLOCKED_OPS]
    for node in blocked:
        assert all(types.get(i) in (TensorProto.FLOAT, TensorProto.INT64) for i in node.input), node.name
    if name == "embed":  # mean pooling: the sums over the tokens stayed fp32
        assert [n.op_type for n in blocked].count("ReduceSum") == 2


def test_the_fp16_graph_matches_pytorch_on_cpu(
    fp16_repo: Path, bert_cls_checkpoint: TinyCheckpoint, bert_ner_checkpoint: TinyCheckpoint
) -> None:
    """Independently of the export's own validation: plain onnxruntime against the checkpoint."""
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 300, size=(4, 24)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    mask[3, 3:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    for name, ckpt, cls in (
        ("cls", bert_cls_checkpoint, AutoModelForSequenceClassification),
        ("ner", bert_ner_checkpoint, AutoModelForTokenClassification),
    ):
        session = ort.InferenceSession(
            str(fp16_repo / name / "1" / "model.fp16.onnx"), providers=["CPUExecutionProvider"]
        )
        wanted = {i.name for i in session.get_inputs()}
        (got,) = session.run(["logits"], {k: v for k, v in feeds.items() if k in wanted})
        with torch.inference_mode():
            ref = cls.from_pretrained(ckpt.path).eval()(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        expected = ref.logits.numpy()
        if name == "ner":
            got, expected = got[mask.astype(bool)], expected[mask.astype(bool)]
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=FP16_ATOL, rtol=0)


def test_cuda_picks_the_fp16_graph_and_fp32_on_request(fp16_repo: Path) -> None:
    config = load_model_config(fp16_repo, "cls")
    assert choose_artifact(BackendKind.ORT_CUDA, config, None).main_file == "model.fp16.onnx"
    assert choose_artifact(BackendKind.ORT_CUDA, config, Precision.FP32).main_file == "model.ort.onnx"
    assert choose_artifact(BackendKind.TENSORRT, config, None).main_file == "model.onnx"
    assert choose_artifact(BackendKind.ORT_CPU, config, None).main_file == "model.ort.onnx"


def test_fp16_needs_the_onnx_format(tmp_path: Path, bert_cls_checkpoint: TinyCheckpoint) -> None:
    from bertserve.export.errors import ExportError

    options = ExportOptions(
        model=str(bert_cls_checkpoint.path),
        task="text-classification",
        name="m",
        repo=tmp_path,
        formats=("openvino",),
        fp16=True,
        quiet=True,
    )
    with pytest.raises(ExportError, match="--fp16 writes an ONNX graph"):
        run_export(options)
