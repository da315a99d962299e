"""The CUDA and TensorRT backends on a real GPU (skipped without one): IOBinding answers what the
CPU answers, and TensorRT serves every bucket of its shape plan after the loader's warm-up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bertserve.modelrepo import (
    Artifact,
    ArtifactFormat,
    ModelConfig,
    Precision,
    Task,
    VersionConfig,
    sha256_file,
)
from bertserve.runtime.selection import BackendLoader, Environment
from bertserve.runtime.shapes import ShapePlan
from bertserve.service.settings import BackendKind, Settings

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def env() -> Environment:
    env = Environment.probe()
    problem = env.cuda_problem()
    if problem is not None:
        pytest.skip(f"CUDA unavailable: {problem}")
    return env


def graph(path: Path) -> None:
    """logits[b, t] = 3 x float(input_ids) + float(attention_mask)."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "tokens"])
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "three"], ["f3"]),
        helper.make_node("Add", ["f3", "m"], ["logits"]),
    ]
    init = [numpy_helper.from_array(np.array([3.0], np.float32), "three")]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [ids, mask], [out], init), opset_imports=[helper.make_opsetid("", 17)]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))


def config(vdir: Path) -> ModelConfig:
    files = {"model.onnx": sha256_file(vdir / "model.onnx")}
    artifacts = [
        Artifact(format=fmt, precision=Precision.FP32, files=files)
        for fmt in (ArtifactFormat.ONNX, ArtifactFormat.ONNX_OPTIMIZED)
    ]
    return ModelConfig(
        name="m",
        task=Task.TEXT_CLASSIFICATION,
        architecture="bert",
        labels=["a", "b"],
        max_length=128,
        inputs=["input_ids", "attention_mask"],
        versions={1: VersionConfig(artifacts=artifacts, tokenizer_files={"tokenizer.json": "0" * 64})},
    )


def feeds(batch: int, tokens: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 1000 + tokens)
    return {
        "input_ids": rng.integers(0, 2000, (batch, tokens), dtype=np.int64),
        "attention_mask": rng.integers(0, 2, (batch, tokens), dtype=np.int64),
    }


@pytest.mark.parametrize("kind", [BackendKind.ORT_CUDA, BackendKind.TENSORRT])
def test_gpu_backends_answer_through_io_binding(env: Environment, kind: BackendKind, tmp_path: Path) -> None:
    if kind == BackendKind.TENSORRT and env.tensorrt_problem() is not None:
        pytest.skip(f"TensorRT unavailable: {env.tensorrt_problem()}")
    vdir = tmp_path / "repo" / "m" / "1"
    graph(vdir / "model.onnx")
    settings = Settings(
        backend=kind,
        tensorrt_fp16=False,
        tensorrt_cache_dir=tmp_path / "cache",
        max_batch_size=16,
        max_batch_tokens=1024,
    )
    backend = BackendLoader(settings.runtime_options())(config(vdir), vdir)
    try:
        assert backend.io is not None  # type: ignore[attr-defined]
        plan = ShapePlan.for_batching(16, 1024, 128)
        shapes = [(1, 1), (3, 7), *plan.warmup_shapes(), (2, 128)]
        for batch, tokens in shapes:
            if kind == BackendKind.TENSORRT:
                tokens = plan.bucket_length(tokens)  # the batcher pads to the bucket on TensorRT
            f = feeds(batch, tokens)
            np.testing.assert_array_equal(backend.infer(f), 3.0 * f["input_ids"] + f["attention_mask"])
    finally:
        backend.close()
