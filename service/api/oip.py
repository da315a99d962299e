"""The Open Inference Protocol (KServe v2), one meaning for both transports.

REST (`api/v2.py`) and gRPC (`api/grpc.py`) only decode their wire format into an `InferRequest`
and encode the `InferResponse` back; what a model takes and answers, the checks on tensors, and
the call into the model's pipeline (its batcher, limits and deadline) are here, so that both
protocols answer alike and both answer like the native routes.

Tensors per task (each model's metadata lists its own; README "Open Inference Protocol"):

- text-classification and rerank: inputs `text` BYTES [n] and optionally `text_pair` BYTES [n];
  outputs `label` BYTES [n] (the best label), `score` FP32 [n] (its score), `scores` FP32
  [n, labels] (every label, in the model's label order) and, for a model with thresholds,
  `above_threshold` BOOL [n, labels].
- token-classification: input `text` BYTES [n]; output `entities` BYTES [n], one JSON array per
  text with the entities /ner answers.
- feature-extraction: input `text` BYTES [n], or `input_ids` INT64 [n, t] with an optional
  `attention_mask` for clients that tokenize themselves (the model's whole input, special tokens
  included, as its tokenizer gives it; padding is where the mask is 0); output `embedding` FP32
  [n, d].

A [n, 1] shape is read as [n]. Request parameters: `timeout` (microseconds, Triton's; may only
shorten the server's deadline), for NER `aggregation`, for embeddings `normalize` and
`dimensions`; Triton's reserved scheduling parameters are accepted and ignored (`sequence_id`
must be 0: there is no sequence batching). Anything else is refused, so that a misspelt
parameter is an error and not a silent default.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar, cast

import numpy as np
from numpy.typing import NDArray

import bertserve
from bertserve.service.errors import InvalidInputError, ModelNotFoundError, PayloadTooLargeError
from bertserve.service.heads.token_classification import AggregationStrategy, Entity
from bertserve.service.limits import check_input_count, normalize_inputs
from bertserve.service.pipeline import (
    Classification,
    ClassificationPipeline,
    EmbeddingPipeline,
    Embeddings,
    Pipeline,
    TokenClassificationPipeline,
)
from bertserve.service.registry import ModelRegistry
from bertserve.service.settings import Settings
from bertserve.service.tokenization import TextInput

T = TypeVar("T")

SERVER_NAME: Final = "bertserve"
EXTENSIONS: Final = ("binary_tensor_data",)  # REST: inputs and outputs as raw bytes after the JSON

# datatype -> numpy dtype, little-endian as the protocol's binary format is
NUMPY_TYPES: Final[Mapping[str, np.dtype[np.generic]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
BYTES: Final = "BYTES"
DATATYPES: Final = frozenset({*NUMPY_TYPES, BYTES})
INTEGER_TYPES: Final = frozenset({"INT32", "INT64"})  # what token ids may come as

# Triton's request parameters that schedule rather than mean: accepted, ignored (see module doc)
_RESERVED_PARAMETERS: Final = frozenset(
    {"priority", "sequence_start", "sequence_end", "headers", "binary_data_output"}
)
ParameterValue = bool | int | float | str
ModelVersion = tuple[str, int | None]  # a model and the version asked (None: its default one)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size
    optional: bool = False


@dataclass(slots=True)
class Tensor:
    """An input as received or an output to send. `values`: a flat list of bytes for BYTES, a
    numpy array (any shape, read flat) otherwise."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: list[bytes] | NDArray[np.generic]
    parameters: dict[str, ParameterValue] = field(default_factory=dict)

    def strings(self, what: str) -> list[str]:
        if self.datatype != BYTES or not isinstance(self.values, list):
            raise InvalidInputError(f"input {self.name!r} must be BYTES (UTF-8 text), not {self.datatype}")
        try:
            texts = [v.decode("utf-8") for v in self.values]
        except UnicodeDecodeError:
            raise InvalidInputError(f"input {self.name!r}: {what} must be UTF-8") from None
        if any("\x00" in t for t in texts):
            raise InvalidInputError(f"input {self.name!r}: {what} must not contain NUL characters")
        return texts

    def array(self) -> NDArray[np.generic]:
        if isinstance(self.values, list):
            raise InvalidInputError(f"input {self.name!r} must be numeric, not BYTES")
        return self.values.reshape(self.shape)


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    parameters: dict[str, ParameterValue] = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None  # None: every output of the model
    id: str = ""
    parameters: dict[str, ParameterValue] = field(default_factory=dict)


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]


# --- tensors ------------------------------------------------------------------------------------


def element_count(shape: Sequence[int], name: str) -> int:
    if any(d < 0 for d in shape):
        raise InvalidInputError(f"input {name!r}: shape {list(shape)} has a negative dimension")
    count = 1
    for d in shape:
        count *= d
    return count


def check_datatype(datatype: str, name: str) -> None:
    if datatype not in DATATYPES:
        raise InvalidInputError(
            f"input {name!r}: unknown datatype {datatype!r}; one of {', '.join(sorted(DATATYPES))}"
        )


def tensor_from_values(
    name: str, datatype: str, shape: Sequence[int], values: list[bytes] | NDArray[np.generic]
) -> Tensor:
    """A tensor whose element count must match its shape."""
    check_datatype(datatype, name)
    count = element_count(shape, name)
    have = len(values) if isinstance(values, list) else int(values.size)
    if have != count:
        raise InvalidInputError(f"input {name!r}: shape {list(shape)} needs {count} elements, got {have}")
    return Tensor(name, datatype, tuple(shape), values)


def deserialize_bytes(raw: bytes, name: str, limit: int) -> list[bytes]:
    """The protocol's binary BYTES layout: each element a 4-byte little-endian length, then the bytes.
    At most `limit` elements are read: a hostile buffer of empty elements cannot cost more."""
    out: list[bytes] = []
    view = memoryview(raw)
    pos = 0
    while pos < len(view):
        if len(out) >= limit:
            raise PayloadTooLargeError(f"input {name!r} holds more than {limit} elements")
        if pos + 4 > len(view):
            raise InvalidInputError(f"input {name!r}: truncated BYTES element length")
        size = int.from_bytes(view[pos : pos + 4], "little")
        pos += 4
        if pos + size > len(view):
            raise InvalidInputError(f"input {name!r}: BYTES element longer than the data sent")
        out.append(bytes(view[pos : pos + size]))
        pos += size
    return out


def serialize_bytes(values: Sequence[bytes]) -> bytes:
    return b"".join(len(v).to_bytes(4, "little") + v for v in values)


def tensor_from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes, limit: int) -> Tensor:
    """A tensor sent as raw bytes (REST binary extension, gRPC raw_input_contents)."""
    check_datatype(datatype, name)
    if datatype == BYTES:
        return tensor_from_values(name, datatype, shape, deserialize_bytes(raw, name, limit))
    dtype = NUMPY_TYPES[datatype]
    if len(raw) % dtype.itemsize:
        raise InvalidInputError(f"input {name!r}: {len(raw)} bytes is not a whole number of {datatype}")
    return tensor_from_values(name, datatype, shape, np.frombuffer(raw, dtype=dtype))


def raw_of(tensor: Tensor) -> bytes:
    if isinstance(tensor.values, list):
        return serialize_bytes(tensor.values)
    return np.ascontiguousarray(tensor.values, dtype=NUMPY_TYPES[tensor.datatype]).tobytes()


# --- the models' signatures ---------------------------------------------------------------------


def signature(pipeline: Pipeline) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of a served model, as its metadata shows them."""
    config = pipeline.config
    if isinstance(pipeline, EmbeddingPipeline):
        return (
            [
                TensorSpec("text", BYTES, (-1,), optional=True),
                TensorSpec("input_ids", "INT64", (-1, -1), optional=True),
                TensorSpec("attention_mask", "INT64", (-1, -1), optional=True),
            ],
            [TensorSpec("embedding", "FP32", (-1, config.output_width))],
        )
    if isinstance(pipeline, TokenClassificationPipeline):
        return [TensorSpec("text", BYTES, (-1,))], [TensorSpec("entities", BYTES, (-1,))]
    labels = len(config.labels)
    outputs = [
        TensorSpec("label", BYTES, (-1,)),
        TensorSpec("score", "FP32", (-1,)),
        TensorSpec("scores", "FP32", (-1, labels)),
    ]
    if config.thresholds:
        outputs.append(TensorSpec("above_threshold", "BOOL", (-1, labels)))
    return [TensorSpec("text", BYTES, (-1,)), TensorSpec("text_pair", BYTES, (-1,), optional=True)], outputs


def platform(pipeline: Pipeline) -> str:
    return f"{SERVER_NAME}_{pipeline.backend.name}"


def requested_version(registry: ModelRegistry, model: str, version: str | None) -> int | None:
    """The version a request names ("" or None: the model's default one); one that is not served
    (or not a version number at all) is not found."""
    if not version:
        registry.describe(model)
        return None
    if not version.isdigit() or len(version) > 9:
        registry.describe(model)  # an unknown model is reported first
        raise ModelNotFoundError(f"version {version!r} of this model is not served")
    number = int(version)
    registry.describe(model, number)
    return number


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


def model_metadata(registry: ModelRegistry, model: str, version: str | None) -> ModelMetadata:
    pipeline = registry.describe(model, requested_version(registry, model, version))
    inputs, outputs = signature(pipeline)
    versions = [str(v) for v in registry.served_versions(model)]
    return ModelMetadata(model, versions, platform(pipeline), inputs, outputs)


def model_ready(registry: ModelRegistry, model: str, version: str | None) -> bool:
    # an unknown model or version is not found, as the metadata answers
    pipeline = registry.describe(model, requested_version(registry, model, version))
    return registry.is_ready and pipeline.batcher.health_problem is None and not registry.draining


# --- inference ----------------------------------------------------------------------------------


def _parameter(params: Mapping[str, ParameterValue], key: str, kind: type[T], what: str) -> T | None:
    value = params.get(key)
    if value is None:
        return None
    # NOTE: bool is an int in Python: a boolean is never accepted as a number, nor a number as one
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise InvalidInputError(f"parameter {key!r} must be {what}")
    return value


def _check_parameters(params: Mapping[str, ParameterValue], allowed: frozenset[str]) -> None:
    unknown = sorted(set(params) - allowed - _RESERVED_PARAMETERS - {"timeout", "sequence_id"})
    if unknown:
        known = ", ".join(sorted(allowed | {"timeout"})) or "timeout"
        raise InvalidInputError(f"unknown parameter(s) {', '.join(unknown)}; this model takes {known}")
    sequence_id = params.get("sequence_id")
    if sequence_id not in (None, 0, ""):
        raise InvalidInputError("sequence_id: bertserve has no sequence batching; send 0 or nothing")


def request_timeout_s(params: Mapping[str, ParameterValue], transport_s: float | None) -> float | None:
    """The tighter of Triton's `timeout` parameter (microseconds) and the transport's deadline."""
    micros = _parameter(params, "timeout", int, "an integer number of microseconds")
    if micros is not None and micros <= 0:
        raise InvalidInputError("parameter 'timeout' must be positive (microseconds)")
    from_param = None if micros is None else micros / 1e6
    given = [t for t in (from_param, transport_s) if t is not None]
    return min(given) if given else None


def _by_name(request: InferRequest, specs: Sequence[TensorSpec]) -> dict[str, Tensor]:
    known = {s.name: s for s in specs}
    got: dict[str, Tensor] = {}
    for tensor in request.inputs:
        spec = known.get(tensor.name)
        if spec is None:
            raise InvalidInputError(
                f"unknown input {tensor.name!r}; this model takes {', '.join(s.name for s in specs)}"
            )
        if tensor.name in got:
            raise InvalidInputError(f"input {tensor.name!r} is given twice")
        got[tensor.name] = tensor
    for spec in specs:
        if not spec.optional and spec.name not in got:
            raise InvalidInputError(
                f"missing input {spec.name!r} ({spec.datatype}, shape {list(spec.shape)})"
            )
    return got


def _rows(tensor: Tensor) -> int:
    """n of a [n] or [n, 1] text tensor."""
    shape = tensor.shape
    if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
        return shape[0]
    raise InvalidInputError(f"input {tensor.name!r}: shape must be [n] or [n, 1], not {list(shape)}")


def _texts(tensor: Tensor) -> list[str]:
    _rows(tensor)
    return tensor.strings("text")


def _requested(request: InferRequest, specs: Sequence[TensorSpec]) -> list[str]:
    names = [s.name for s in specs]
    if request.outputs is None:
        return names
    seen: set[str] = set()
    for out in request.outputs:
        if out.name not in names:
            raise InvalidInputError(f"unknown output {out.name!r}; this model answers {', '.join(names)}")
        if out.name in seen:
            raise InvalidInputError(f"output {out.name!r} is requested twice")
        extra = sorted(set(out.parameters) - {"binary_data"})
        if extra:
            raise InvalidInputError(f"output {out.name!r}: unknown parameter(s) {', '.join(extra)}")
        seen.add(out.name)
    return [o.name for o in request.outputs]


Run = Callable[[Awaitable[Any]], Awaitable[Any]]


async def _plain(work: Awaitable[Any]) -> Any:
    return await work


async def infer(
    registry: ModelRegistry,
    settings: Settings,
    model: str,
    version: str | None,
    request: InferRequest,
    *,
    transport_timeout_s: float | None = None,
    run: Run = _plain,
) -> InferResponse:
    """Run one v2 request through the model's pipeline: its batcher, limits and deadline. `run`
    wraps the pipeline call (REST cancels it when the client disconnects; gRPC's cancellation
    needs nothing)."""
    number = requested_version(registry, model, version)
    pipeline = registry.describe(model, number)
    served = str(pipeline.config.default_version)
    inputs, outputs = signature(pipeline)
    tensors = _by_name(request, inputs)
    wanted = _requested(request, outputs)
    params = request.parameters
    timeout = request_timeout_s(params, transport_timeout_s)
    produced: dict[str, Tensor]
    if isinstance(pipeline, EmbeddingPipeline):
        _check_parameters(params, frozenset({"normalize", "dimensions"}))
        produced = await _embed(registry, settings, (model, number), tensors, params, timeout, run)
    elif isinstance(pipeline, TokenClassificationPipeline):
        _check_parameters(params, frozenset({"aggregation"}))
        produced = await _recognize(registry, settings, (model, number), tensors, params, timeout, run)
    elif isinstance(pipeline, ClassificationPipeline):
        _check_parameters(params, frozenset())
        produced = await _classify(registry, settings, (model, number), tensors, timeout, run)
    else:  # pragma: no cover - every served task is one of the above
        raise InvalidInputError(f"the {pipeline.config.task} task has no v2 inference")
    return InferResponse(model, served, request.id, [produced[name] for name in wanted])


async def _classify(
    registry: ModelRegistry,
    settings: Settings,
    model: ModelVersion,
    tensors: dict[str, Tensor],
    timeout: float | None,
    run: Run,
) -> dict[str, Tensor]:
    texts = _texts(tensors["text"])
    items: list[TextInput] = list(texts)
    pair = tensors.get("text_pair")
    if pair is not None:
        seconds = _texts(pair)
        if len(seconds) != len(texts):
            raise InvalidInputError(f"text_pair has {len(seconds)} elements, text has {len(texts)}")
        items = list(zip(texts, seconds, strict=True))
    normalize_inputs(items, settings)
    pipeline = registry.get(model[0], ClassificationPipeline, version=model[1])
    out = cast(Classification, await run(pipeline.classify(items, top_k=None, timeout_s=timeout)))
    labels = list(pipeline.config.labels)
    column = {label: i for i, label in enumerate(labels)}
    n, width = len(texts), len(labels)
    scores = np.zeros((n, width), dtype=np.float32)
    above = np.zeros((n, width), dtype=np.bool_)
    top_score = np.zeros(n, dtype=np.float32)
    top: list[bytes] = []
    for row, ranked in enumerate(out.results):  # each row best first
        for s in ranked:
            scores[row, column[s.label]] = s.score
            above[row, column[s.label]] = bool(s.above_threshold)
        top.append(ranked[0].label.encode())
        top_score[row] = ranked[0].score
    return {
        "label": Tensor("label", BYTES, (n,), top),
        "score": Tensor("score", "FP32", (n,), top_score),
        "scores": Tensor("scores", "FP32", (n, width), scores),
        "above_threshold": Tensor("above_threshold", "BOOL", (n, width), above),
    }


async def _recognize(
    registry: ModelRegistry,
    settings: Settings,
    model: ModelVersion,
    tensors: dict[str, Tensor],
    params: Mapping[str, ParameterValue],
    timeout: float | None,
    run: Run,
) -> dict[str, Tensor]:
    texts = cast(list[str], normalize_inputs(_texts(tensors["text"]), settings))
    choices = ", ".join(a.value for a in AggregationStrategy)
    raw = _parameter(params, "aggregation", str, f"one of {choices}")
    try:
        strategy = AggregationStrategy(raw) if raw is not None else AggregationStrategy.SIMPLE
    except ValueError:
        raise InvalidInputError(f"parameter 'aggregation' must be one of {choices}") from None
    pipeline = registry.get(model[0], TokenClassificationPipeline, version=model[1])
    results = cast(
        "list[list[Entity]]", await run(pipeline.recognize(texts, strategy=strategy, timeout_s=timeout))
    )
    encoded = [json.dumps([e.as_dict() for e in row], separators=(",", ":")).encode() for row in results]
    return {"entities": Tensor("entities", BYTES, (len(texts),), encoded)}


def _token_rows(tensors: dict[str, Tensor], settings: Settings) -> list[list[int]]:
    ids = tensors["input_ids"]
    if ids.datatype not in INTEGER_TYPES:
        raise InvalidInputError(f"input 'input_ids' must be INT64 or INT32, not {ids.datatype}")
    grid = ids.array()
    if grid.ndim != 2:
        raise InvalidInputError(f"input 'input_ids': shape must be [n, tokens], not {list(ids.shape)}")
    check_input_count(grid.shape[0], settings)
    mask_tensor = tensors.get("attention_mask")
    if mask_tensor is None:
        return [[int(t) for t in row] for row in grid]
    if mask_tensor.datatype not in INTEGER_TYPES:
        raise InvalidInputError(f"input 'attention_mask' must be INT64 or INT32, not {mask_tensor.datatype}")
    mask = mask_tensor.array()
    if mask.shape != grid.shape:
        raise InvalidInputError(
            f"attention_mask has shape {list(mask.shape)}, input_ids {list(grid.shape)}: they must match"
        )
    return [
        [int(t) for t, m in zip(row, keep, strict=True) if m] for row, keep in zip(grid, mask, strict=True)
    ]


async def _embed(
    registry: ModelRegistry,
    settings: Settings,
    model: ModelVersion,
    tensors: dict[str, Tensor],
    params: Mapping[str, ParameterValue],
    timeout: float | None,
    run: Run,
) -> dict[str, Tensor]:
    normalize = _parameter(params, "normalize", bool, "a boolean")
    dimensions = _parameter(params, "dimensions", int, "a positive integer")
    if dimensions is not None and dimensions < 1:
        raise InvalidInputError("parameter 'dimensions' must be a positive integer")
    has_text, has_ids = "text" in tensors, "input_ids" in tensors
    if has_text == has_ids:
        raise InvalidInputError("send either 'text' (BYTES) or 'input_ids' (INT64), exactly one of them")
    if "attention_mask" in tensors and not has_ids:
        raise InvalidInputError("'attention_mask' goes with 'input_ids'")
    items: list[str] | list[list[int]]
    if has_text:
        items = cast(list[str], normalize_inputs(_texts(tensors["text"]), settings))
    else:
        items = _token_rows(tensors, settings)
    pipeline = registry.get(model[0], EmbeddingPipeline, version=model[1])
    out = cast(
        Embeddings,
        await run(
            pipeline.embed(
                items, normalize=normalize, dimensions=dimensions, timeout_s=timeout, framed_ids=has_ids
            )
        ),
    )
    vectors = np.ascontiguousarray(out.vectors, dtype=np.float32)
    return {"embedding": Tensor("embedding", "FP32", tuple(vectors.shape), vectors)}


def server_metadata() -> tuple[str, str, tuple[str, ...]]:
    return SERVER_NAME, bertserve.__version__, EXTENSIONS
