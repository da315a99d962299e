"""What the export lists for an ONNX artifact is everything the graph reads: the service's own
check (check_external_data) must accept it, and refuse the graph when an entry is missing."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from bertserve.export.specs import onnx_artifact_files
from bertserve.modelrepo import RepositoryError
from bertserve.runtime.onnx_files import check_external_data

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.external_data_helper import convert_model_to_external_data  # noqa: E402


def save_graph(path: Path, external: str | None) -> None:
    weight = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 64])],
        [weight],
    )
    model = helper.make_model(graph)
    if external is not None:
        convert_model_to_external_data(
            model, all_tensors_to_one_file=True, location=external, size_threshold=0
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))


def test_a_self_contained_graph_is_one_file(tmp_path: Path) -> None:
    save_graph(tmp_path / "model.onnx", external=None)
    assert onnx_artifact_files(tmp_path, "model.onnx") == ["model.onnx"]


@pytest.mark.parametrize("main", ["model.onnx", "sub/model.onnx"])
def test_external_data_is_listed_beside_its_graph(tmp_path: Path, main: str) -> None:
    save_graph(tmp_path / main, external="model.onnx_data")
    files = onnx_artifact_files(tmp_path, main)
    data = str(PurePosixPath(main).parent / "model.onnx_data")
    assert files == [main, data]
    assert (tmp_path / data).is_file()
    check_external_data(tmp_path, main, files)  # what the export lists, the service accepts
    with pytest.raises(RepositoryError, match="does not list"):
        check_external_data(tmp_path, main, files[:1])
