"""Which files an ONNX graph will read besides itself, found without the `onnx` package.

A tensor may keep its data in an "external data" file named by a path inside the graph. A graph
naming `../../etc/passwd` (or a symlink out of the folder) would make the runtime read any file
the service can read. Recent ONNX Runtime releases refuse such paths themselves; this check does
not depend on the runtime's version and says what is wrong before a session is created: every
external-data file must lie inside the version folder and be one of the artifact's files listed
(with its sha256) in model.yaml.

The serving image has no `onnx` package, so the protobuf wire format is walked directly: only
the messages that can hold tensors are descended into, everything else (raw tensor bytes
included) is skipped by its length prefix without being read.
"""

from __future__ import annotations

import mmap
from collections.abc import Collection, Iterator
from pathlib import Path, PurePosixPath
from typing import Final

from bertserve.modelrepo import RepositoryError, resolve_inside

# Field numbers from onnx.proto: message -> {length-delimited field: message type it holds}.
_CHILDREN: Final[dict[str, dict[int, str]]] = {
    "model": {7: "graph", 20: "training_info", 25: "function"},
    "training_info": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse_tensor"},
    "function": {7: "node", 11: "attribute"},
    "node": {5: "attribute"},
    "attribute": {
        5: "tensor",
        6: "graph",
        10: "tensor",
        11: "graph",
        22: "sparse_tensor",
        23: "sparse_tensor",
    },
    "sparse_tensor": {1: "tensor", 2: "tensor"},
}
_TENSOR_EXTERNAL_DATA: Final = 13  # repeated StringStringEntryProto {key = 1, value = 2}
_MAX_DEPTH: Final = 64  # graphs nest through If/Loop attributes; a deeper file is not a model

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("malformed protobuf varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _length_delimited(buf: memoryview) -> Iterator[tuple[int, memoryview]]:
    """(field number, payload) of each length-delimited field of one message."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, pos = _varint(buf, pos)
        elif wire == _I64:
            pos += 8
        elif wire == _I32:
            pos += 4
        elif wire == _LEN:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise ValueError("truncated protobuf field")
            yield field, buf[pos : pos + size]
            pos += size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    if pos != end:
        raise ValueError("truncated protobuf message")


def _locations(buf: memoryview, kind: str, depth: int) -> Iterator[str]:
    if depth > _MAX_DEPTH:
        raise ValueError("ONNX graphs nested too deeply")
    children = _CHILDREN.get(kind, {})
    for field, payload in _length_delimited(buf):
        if kind == "tensor" and field == _TENSOR_EXTERNAL_DATA:
            entry = dict(_length_delimited(payload))
            if bytes(entry.get(1, b"")) == b"location":
                yield bytes(entry.get(2, b"")).decode("utf-8", errors="replace")
        elif field in children:
            yield from _locations(payload, children[field], depth + 1)


def external_data_locations(path: Path) -> list[str]:
    """The external-data paths named anywhere in the ONNX file at `path`, as written in it.
    Raises ValueError when the file is not a well-formed protobuf message."""
    with path.open("rb") as fh:
        if path.stat().st_size == 0:
            raise ValueError(f"{path.name} is empty")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                return sorted(set(_locations(view, "model", 0)))
            finally:
                view.release()


def check_external_data(version_dir: Path, main_file: str, verified_files: Collection[str]) -> None:
    """Refuse an ONNX graph whose external data lies outside `version_dir` (`..`, absolute paths,
    symlinks) or is not among `verified_files` (the artifact's sha256-checked files)."""
    listed = {PurePosixPath(rel) for rel in verified_files}
    base = PurePosixPath(main_file).parent
    try:
        locations = external_data_locations(version_dir / main_file)
    except ValueError as exc:
        raise RepositoryError(f"{main_file} is not a valid ONNX file: {exc}") from None
    for location in locations:
        rel = base / location
        try:
            resolve_inside(version_dir, str(rel))
        except (ValueError, RepositoryError):
            raise RepositoryError(
                f"{main_file} reads external data from {location!r}, outside its model folder; refused"
            ) from None
        if rel not in listed:
            raise RepositoryError(
                f"{main_file} reads external data from {location!r}, which model.yaml does not list "
                "with a sha256; re-export the model"
            )
