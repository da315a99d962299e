"""External-data references found by the service's own protobuf walk, checked against `onnx`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bertserve.modelrepo import RepositoryError, sha256_file
from bertserve.runtime.onnx_files import check_external_data, external_data_locations

onnx = pytest.importorskip("onnx")  # the export extra; the service itself never imports it
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def external(tensor: TensorProto, location: str) -> TensorProto:
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    for key, value in (("offset", "0"), ("length", "32")):
        extra = tensor.external_data.add()
        extra.key, extra.value = key, value
    return tensor


def model_with(locations: dict[str, str]) -> bytes:
    """A graph with external data in an initializer, in a Constant inside an If branch's subgraph,
    and in a sparse initializer's values: `locations` maps those three places to paths."""
    weight = numpy_helper.from_array(np.ones((4, 2), np.float32), "W")
    const = numpy_helper.from_array(np.ones(3, np.float32), "c")
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=external(const, locations["subgraph"]))],
        "branch",
        [],
        [helper.make_tensor_value_info("k", TensorProto.FLOAT, [3])],
    )
    sparse = helper.make_sparse_tensor(
        external(numpy_helper.from_array(np.ones(2, np.float32), "sv"), locations["sparse"]),
        numpy_helper.from_array(np.array([0, 3], np.int64), "si"),
        [4],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["b"], ["o"], then_branch=branch, else_branch=branch)],
        "g",
        [helper.make_tensor_value_info("b", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, [3])],
        [external(weight, locations["initializer"])],
        sparse_initializer=[sparse],
    )
    return bytes(helper.make_model(graph).SerializeToString())


PLACES = {"initializer": "w.bin", "subgraph": "sub/k.bin", "sparse": "s.bin"}


def test_finds_every_external_location(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(model_with(PLACES))
    assert external_data_locations(path) == sorted(PLACES.values())
    plain = helper.make_model(
        helper.make_graph([], "g", [], [], [numpy_helper.from_array(np.ones(2, np.float32), "x")])
    )
    path.write_bytes(plain.SerializeToString())
    assert external_data_locations(path) == []


@pytest.mark.parametrize("data", [b"", b"\xff\xff\xff", b"\x3a\x10short", b"\x0f garbage"])
def test_malformed_files_are_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    with pytest.raises(ValueError):
        external_data_locations(path)


def test_check_accepts_listed_files_inside_the_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "model.onnx").write_bytes(model_with(PLACES))
    for rel in PLACES.values():
        (tmp_path / rel).write_bytes(b"\0" * 32)
    files = {rel: sha256_file(tmp_path / rel) for rel in ("model.onnx", *PLACES.values())}
    check_external_data(tmp_path, "model.onnx", files)


@pytest.mark.parametrize(
    ("place", "location", "message"),
    [
        ("initializer", "../w.bin", "outside its model folder"),
        ("subgraph", "/etc/passwd", "outside its model folder"),
        ("sparse", "link.bin", "outside its model folder"),  # a symlink out of the folder
        ("initializer", "unlisted.bin", "does not list"),
    ],
)
def test_check_refuses_escapes_and_unverified_files(
    tmp_path: Path, place: str, location: str, message: str
) -> None:
    vdir = tmp_path / "1"
    (vdir / "sub").mkdir(parents=True)
    (tmp_path / "secret.bin").write_bytes(b"\0" * 32)
    (vdir / "link.bin").symlink_to(tmp_path / "secret.bin")
    (vdir / "unlisted.bin").write_bytes(b"\0" * 32)
    (vdir / "model.onnx").write_bytes(model_with({**PLACES, place: location}))
    for rel in PLACES.values():
        (vdir / rel).write_bytes(b"\0" * 32)
    files = {rel: sha256_file(vdir / rel) for rel in ("model.onnx", *PLACES.values())}
    with pytest.raises(RepositoryError, match=message):
        check_external_data(vdir, "model.onnx", files)
