"""A retrained model with the same graph gets its own TensorRT engine (needs an NVIDIA GPU).

ONNX Runtime names cached engines by the graph's structure and file name, not its weights; the
loader keys the cache folder by the artifact's sha256, so version 2 must answer with its own
weights even though version 1's engine for an identical graph is already in the cache.
"""

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
from bertserve.service.settings import BackendKind, Settings

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def _needs_tensorrt() -> None:
    problem = Environment.probe().tensorrt_problem()
    if problem is not None:
        pytest.skip(f"TensorRT unavailable: {problem}")


def graph(path: Path, scale: float) -> None:
    """logits = float(input_ids) x scale: the same structure for every scale, other weights."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "tokens"])
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "scale"], ["logits"]),
    ]
    init = [numpy_helper.from_array(np.array([scale], np.float32), "scale")]
    model = helper.make_model(helper.make_graph(nodes, "g", [ids], [out], init))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))


def config(vdir: Path, version: int) -> ModelConfig:
    files = {"model.onnx": sha256_file(vdir / "model.onnx")}
    artifact = Artifact(format=ArtifactFormat.ONNX, precision=Precision.FP32, files=files)
    return ModelConfig(
        name="m",
        task=Task.TEXT_CLASSIFICATION,
        architecture="bert",
        labels=["a", "b"],
        max_length=16,
        inputs=["input_ids"],
        default_version=version,
        versions={version: VersionConfig(artifacts=[artifact], tokenizer_files={"tokenizer.json": "0" * 64})},
    )


def test_a_retrained_version_does_not_reuse_the_old_engine(tmp_path: Path) -> None:
    settings = Settings(
        backend=BackendKind.TENSORRT, tensorrt_fp16=False, tensorrt_cache_dir=tmp_path / "cache"
    )
    ids = np.array([[1, 2, 3]], np.int64)
    for version, scale in ((1, 2.0), (2, 3.0), (1, 2.0)):
        vdir = tmp_path / "repo" / "m" / str(version)
        if not (vdir / "model.onnx").is_file():
            graph(vdir / "model.onnx", scale)
        backend = BackendLoader(settings.runtime_options())(config(vdir, version), vdir)
        try:
            np.testing.assert_allclose(backend.infer({"input_ids": ids}), ids * scale)
        finally:
            backend.close()
    engines = sorted(p.name for p in (tmp_path / "cache" / "m").iterdir() if p.is_dir())
    assert len(engines) == 2 and all(name.endswith("-fp32") for name in engines)
