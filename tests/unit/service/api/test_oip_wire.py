"""The Open Inference Protocol's wire formats: bertserve's gRPC messages against the ones
Triton's client generated from its .proto (every field's number, type, label and message type,
and the RPCs), the binary BYTES layout, the REST request parser and the gRPC request decoder."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest

from bertserve.service.api import grpc_server, oip
from bertserve.service.api.v2 import inflate, parse_request
from bertserve.service.errors import InvalidInputError, PayloadTooLargeError


def _fields(descriptor: object) -> list[tuple[int, str, int, bool, str | None]]:
    out = []
    for f in descriptor.fields:  # type: ignore[attr-defined]
        kind = f.message_type.full_name if f.message_type is not None else None
        out.append((f.number, f.name, f.type, f.is_repeated, kind))
    return sorted(out)


@pytest.mark.parametrize("path", sorted(grpc_server._MESSAGES))
def test_messages_match_tritons_generated_ones(path: str) -> None:
    from tritonclient.grpc import service_pb2

    theirs = service_pb2.DESCRIPTOR.message_types_by_name[path.split(".")[0]]
    for part in path.split(".")[1:]:
        theirs = theirs.nested_types_by_name[part]
    ours = grpc_server.POOL.FindMessageTypeByName(f"inference.{path}")
    assert _fields(ours) == _fields(theirs)
    for nested in theirs.nested_types:  # the map entries (ParametersEntry)
        if nested.GetOptions().map_entry:
            assert _fields(ours.nested_types_by_name[nested.name]) == _fields(nested)
    assert [o.name for o in ours.oneofs] == [o.name for o in theirs.oneofs]


def test_rpcs_match_tritons_service() -> None:
    from tritonclient.grpc import service_pb2

    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    ours = grpc_server.POOL.FindServiceByName(grpc_server.SERVICE)
    assert ours.full_name == theirs.full_name
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            other.input_type.full_name,
            other.output_type.full_name,
        )


def test_a_message_encoded_by_tritonclient_decodes_here() -> None:
    from tritonclient.grpc import service_pb2

    theirs = service_pb2.ModelInferRequest(model_name="m", id="r1")
    tensor = theirs.inputs.add(name="text", datatype="BYTES", shape=[2])
    tensor.parameters["binary_data_size"].int64_param = 3
    theirs.parameters["timeout"].int64_param = 5000
    theirs.raw_input_contents.append(oip.serialize_bytes([b"ab", "é".encode()]))
    ours = grpc_server.M["ModelInferRequest"].FromString(theirs.SerializeToString())
    request = grpc_server.decode_request(ours, limit=10)
    assert request.id == "r1" and request.parameters == {"timeout": 5000}
    assert request.inputs[0].strings("text") == ["ab", "é"]


def test_bytes_layout_round_trips_and_refuses_garbage() -> None:
    values = [b"", b"a", "naïve".encode(), b"x" * 300]
    raw = oip.serialize_bytes(values)
    assert raw[:4] == b"\x00\x00\x00\x00" and oip.deserialize_bytes(raw, "t", 10) == values
    with pytest.raises(InvalidInputError, match="truncated"):
        oip.deserialize_bytes(raw + b"\x01", "t", 10)
    with pytest.raises(InvalidInputError, match="longer than"):
        oip.deserialize_bytes(b"\xff\x00\x00\x00ab", "t", 10)
    with pytest.raises(PayloadTooLargeError):  # a flood of empty elements stops at the limit
        oip.deserialize_bytes(b"\x00\x00\x00\x00" * 1000, "t", 10)


def _binary(doc: dict[str, object], blobs: list[bytes]) -> tuple[bytes, str]:
    head = json.dumps(doc).encode()
    return head + b"".join(blobs), str(len(head))


def test_rest_binary_extension() -> None:
    texts = oip.serialize_bytes([b"one", b"two"])
    ids = np.array([[101, 7, 102]], dtype="<i8").tobytes()
    doc = {
        "inputs": [
            {
                "name": "text",
                "shape": [2, 1],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(texts)},
            },
            {
                "name": "input_ids",
                "shape": [1, 3],
                "datatype": "INT64",
                "parameters": {"binary_data_size": 24},
            },
        ]
    }
    body, length = _binary(doc, [texts, ids])
    request = parse_request(body, length, 10)
    assert request.inputs[0].strings("text") == ["one", "two"]
    assert request.inputs[1].array().tolist() == [[101, 7, 102]]
    with pytest.raises(InvalidInputError, match="belong to no input"):
        parse_request(body + b"extra", length, 10)
    with pytest.raises(InvalidInputError, match="not a length"):
        parse_request(body, str(len(body) + 1), 10)
    short = {"inputs": [{**doc["inputs"][1], "parameters": {"binary_data_size": 20}}]}  # type: ignore[index]
    body, length = _binary(short, [ids[:20]])
    with pytest.raises(InvalidInputError, match="whole number"):
        parse_request(body, length, 10)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"name": "t", "shape": [2], "datatype": "BYTES", "data": ["a"]}, "needs 2 elements"),
        ({"name": "t", "shape": [1], "datatype": "STRING", "data": ["a"]}, "unknown datatype"),
        ({"name": "t", "shape": [1], "datatype": "BYTES", "data": [1]}, "JSON strings"),
        ({"name": "t", "shape": [1], "datatype": "INT64", "data": ["1"]}, "must be numbers"),
        ({"name": "t", "shape": [1], "datatype": "INT8", "data": [1000]}, "does not fit"),
        ({"name": "t", "shape": [1], "datatype": "BOOL", "data": [1]}, "true or false"),
        ({"name": "t", "shape": [1], "datatype": "BYTES"}, "has no data"),
        ({"name": "t", "shape": [-1], "datatype": "BYTES", "data": ["a"]}, "greater than or equal"),
        ({"name": "t", "shape": [1], "datatype": "BYTES", "data": [[[[[[[[["a"]]]]]]]]]}, "deeper"),
    ],
)
def test_rest_json_tensors_are_checked(tensor: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_request(json.dumps({"inputs": [tensor]}).encode(), None, 10)


def test_nested_json_data_is_row_major() -> None:
    doc = {"inputs": [{"name": "t", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]}]}
    tensor = parse_request(json.dumps(doc).encode(), None, 10).inputs[0]
    assert tensor.array().tolist() == [[1.0, 2.0], [3.0, 4.5]]


def test_compressed_bodies_are_inflated_within_the_limit() -> None:
    body = b'{"inputs": []}'
    assert inflate(gzip.compress(body), "gzip", 100) == body
    assert inflate(zlib.compress(body), "deflate", 100) == body
    assert inflate(body, None, 100) == body
    bomb = gzip.compress(b"0" * 1_000_000)
    with pytest.raises(PayloadTooLargeError):
        inflate(bomb, "gzip", 1000)
    with pytest.raises(InvalidInputError, match="not supported"):
        inflate(body, "br", 100)
    with pytest.raises(InvalidInputError, match="not valid gzip"):
        inflate(b"not gzip", "gzip", 100)


def test_grpc_contents_and_raw_inputs() -> None:
    message = grpc_server.M["ModelInferRequest"](model_name="m")
    tensor = message.inputs.add(name="input_ids", datatype="INT64", shape=[1, 2])  # type: ignore[attr-defined]
    tensor.contents.int64_contents.extend([5, 6])
    request = grpc_server.decode_request(message, limit=10)
    assert request.inputs[0].array().tolist() == [[5, 6]]
    message.raw_input_contents.append(b"\x00" * 16)  # type: ignore[attr-defined]
    with pytest.raises(InvalidInputError, match="both contents and raw"):
        grpc_server.decode_request(message, limit=10)
    two = grpc_server.M["ModelInferRequest"](model_name="m")
    two.inputs.add(name="a", datatype="BYTES", shape=[1])  # type: ignore[attr-defined]
    two.inputs.add(name="b", datatype="BYTES", shape=[1])  # type: ignore[attr-defined]
    two.raw_input_contents.append(oip.serialize_bytes([b"x"]))  # type: ignore[attr-defined]
    with pytest.raises(InvalidInputError, match="one per input"):
        grpc_server.decode_request(two, limit=10)
