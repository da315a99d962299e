"""The Open Inference Protocol (KServe v2) over REST: what Triton's, KServe's and OVMS's clients
send (`tritonclient.http`, perf_analyzer, KServe inference graphs).

`GET /v2`, `/v2/health/live|ready`, `/v2/models/{m}[/versions/{v}][/ready]`, `POST
/v2/models/{m}[/versions/{v}]/infer`, with the protocol's JSON and its binary tensor extension
(header `Inference-Header-Content-Length`: the JSON, then the raw tensors). A request body may be
gzip- or deflate-compressed (`Content-Encoding`), within the same byte limit once inflated.
Health answers are a bare status (200 true, 400 false) as the protocol says; every other error is
`{"error": message}` (api/errors.py, style V2). The meaning of the tensors is in api/oip.py,
shared with gRPC.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Annotated, Any, Final

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError
from starlette.responses import Response
from typing_extensions import TypedDict

from bertserve.service.api import oip
from bertserve.service.api.errors import ErrorStyle, openapi_error_responses, validation_message
from bertserve.service.api.routes import (
    INFERENCE_ERROR_TYPES,
    JsonBody,
    RequestTimeoutHeader,
    app_state,
    observe_request,
    timeout_s,
    unless_disconnected,
)
from bertserve.service.errors import (
    BodyTooLargeError,
    InvalidInputError,
    ModelNotFoundError,
    UnauthorizedError,
)

router = APIRouter()
HEADER_LENGTH: Final = "inference-header-content-length"
ENDPOINT: Final = "v2_infer"  # the `endpoint` label of v2 REST inference
MAX_RANK: Final = 8
_ERRORS = openapi_error_responses(*INFERENCE_ERROR_TYPES, style=ErrorStyle.V2)

Parameter = StrictBool | StrictInt | StrictFloat | StrictStr
Parameters = Annotated[dict[str, Parameter], Field(max_length=64)]
Name = Annotated[str, Field(min_length=1, max_length=256)]


class V2InputTensor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    shape: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_RANK)]
    datatype: Annotated[str, Field(max_length=16, description="BYTES for text, INT64 for token ids")]
    parameters: Parameters | None = None
    data: list[Any] | None = Field(
        None, description="Row-major values, flat or nested; absent when sent as binary data."
    )


class V2RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    parameters: Parameters | None = None


class V2InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(max_length=256)] | None = None
    parameters: Parameters | None = None
    inputs: Annotated[list[V2InputTensor], Field(min_length=1, max_length=16)]
    outputs: Annotated[list[V2RequestedOutput], Field(max_length=16)] | None = None


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its `$defs` written in place, for an OpenAPI request body that
    FastAPI does not build itself (the route reads its body raw: it may be binary)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


class V2Tensor(TypedDict, total=False):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]
    parameters: dict[str, Any]


class V2InferResponse(TypedDict, total=False):
    model_name: str
    model_version: str
    id: str
    outputs: list[V2Tensor]


class V2TensorMetadata(TypedDict):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(TypedDict):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2ServerMetadata(TypedDict):
    name: str
    version: str
    extensions: list[str]


# --- decoding -----------------------------------------------------------------------------------


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A gzip/deflate body inflated to at most `limit` bytes (a small bomb cannot grow past it)."""
    if not encoding or encoding == "identity":
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.lower())
    if wbits is None:
        raise InvalidInputError(f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or none")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise InvalidInputError(f"the body is not valid {encoding} data") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise BodyTooLargeError(limit)
    return out


def flatten(data: list[Any], name: str) -> list[Any]:
    out: list[Any] = []

    def walk(items: list[Any], depth: int) -> None:
        if depth > MAX_RANK:
            raise InvalidInputError(f"input {name!r}: data nested deeper than {MAX_RANK}")
        for item in items:
            if isinstance(item, list):
                walk(item, depth + 1)
            else:
                out.append(item)

    walk(data, 1)
    return out


def tensor_from_json(t: V2InputTensor) -> oip.Tensor:
    assert t.data is not None
    oip.check_datatype(t.datatype, t.name)
    values = flatten(t.data, t.name)
    if t.datatype == oip.BYTES:
        if not all(isinstance(v, str) for v in values):
            raise InvalidInputError(f"input {t.name!r}: BYTES data must be JSON strings")
        return oip.tensor_from_values(t.name, t.datatype, t.shape, [v.encode("utf-8") for v in values])
    if t.datatype == "BOOL":
        if not all(isinstance(v, bool) for v in values):
            raise InvalidInputError(f"input {t.name!r}: BOOL data must be true or false")
    elif not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise InvalidInputError(f"input {t.name!r}: {t.datatype} data must be numbers")
    try:
        array = np.asarray(values, dtype=oip.NUMPY_TYPES[t.datatype])
    except (ValueError, OverflowError, TypeError):
        raise InvalidInputError(f"input {t.name!r}: a value does not fit {t.datatype}") from None
    return oip.tensor_from_values(t.name, t.datatype, t.shape, array)


def parse_request(body: bytes, header_length: str | None, max_inputs: int) -> oip.InferRequest:
    """An `InferRequest` from a v2 REST body: JSON only, or JSON then binary tensors."""
    binary = b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidInputError(
                f"Inference-Header-Content-Length {header_length!r} is not a length within the body"
            )
        head = int(header_length)
        body, binary = body[:head], body[head:]
    try:
        doc = V2InferRequest.model_validate_json(body)
    except PydanticValidationError as exc:
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            raise InvalidInputError("request body is not valid JSON") from None
        raise InvalidInputError(validation_message(exc)) from None
    inputs: list[oip.Tensor] = []
    offset = 0
    for t in doc.inputs:
        params: dict[str, Parameter] = dict(t.parameters or {})
        size: Parameter | None = params.pop("binary_data_size", None)
        if params:
            raise InvalidInputError(f"input {t.name!r}: unknown parameter(s) {', '.join(sorted(params))}")
        if size is not None:
            if t.data is not None:
                raise InvalidInputError(f"input {t.name!r}: both data and binary_data_size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise InvalidInputError(f"input {t.name!r}: binary_data_size beyond the binary data sent")
            raw = binary[offset : offset + size]
            offset += size
            inputs.append(oip.tensor_from_raw(t.name, t.datatype, t.shape, raw, max_inputs))
        elif t.data is not None:
            inputs.append(tensor_from_json(t))
        else:
            raise InvalidInputError(f"input {t.name!r} has no data (nor binary_data_size)")
    if offset != len(binary):
        raise InvalidInputError(f"{len(binary) - offset} bytes of binary data belong to no input")
    outputs = None
    if doc.outputs is not None:
        outputs = [oip.RequestedOutput(o.name, dict(o.parameters or {})) for o in doc.outputs]
    return oip.InferRequest(inputs, outputs, doc.id or "", dict(doc.parameters or {}))


# --- encoding -----------------------------------------------------------------------------------


def _json_values(tensor: oip.Tensor) -> list[Any]:
    if isinstance(tensor.values, list):
        return [v.decode("utf-8") for v in tensor.values]
    values: list[Any] = np.asarray(tensor.values).reshape(-1).tolist()
    return values


def encode_response(out: oip.InferResponse, request: oip.InferRequest) -> Response:
    """JSON, or JSON then raw tensors for the outputs asked in binary (per output `binary_data`,
    else the request's `binary_data_output`)."""
    default_binary = request.parameters.get("binary_data_output") is True
    asked = {o.name: o.parameters.get("binary_data") for o in request.outputs or ()}
    tensors: list[V2Tensor] = []
    chunks: list[bytes] = []
    for t in out.outputs:
        entry: V2Tensor = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        flag = asked.get(t.name)
        if flag is True or (flag is None and default_binary):
            raw = oip.raw_of(t)
            chunks.append(raw)
            entry["parameters"] = {"binary_data_size": len(raw)}
        else:
            entry["data"] = _json_values(t)
        tensors.append(entry)
    body: V2InferResponse = {"model_name": out.model_name, "model_version": out.model_version}
    if out.id:
        body["id"] = out.id
    body["outputs"] = tensors
    head = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    if not chunks:
        return Response(head, media_type="application/json")
    return Response(
        b"".join([head, *chunks]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )


def metadata_body(meta: oip.ModelMetadata) -> V2ModelMetadata:
    def specs(items: Sequence[oip.TensorSpec]) -> list[V2TensorMetadata]:
        return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in items]

    return {
        "name": meta.name,
        "versions": meta.versions,
        "platform": meta.platform,
        "inputs": specs(meta.inputs),
        "outputs": specs(meta.outputs),
    }


# --- routes -------------------------------------------------------------------------------------

_HEALTH: dict[int | str, dict[str, Any]] = {
    200: {"description": "true (no body)"},
    400: {"description": "false (no body)"},
}
_INFER_BODY: Final = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(V2InferRequest)},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "The binary tensor extension: Inference-Header-Content-Length bytes of "
                "JSON, then the tensors.",
            },
        },
    }
}
_BINARY_RESPONSE: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "content": {
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "Outputs asked in binary: Inference-Header-Content-Length bytes of "
                "JSON, then the tensors.",
            }
        }
    }
}


@router.get(
    "/v2",
    response_model=V2ServerMetadata,
    responses=openapi_error_responses(UnauthorizedError, style=ErrorStyle.V2),
    tags=["v2"],
    summary="Server metadata (Open Inference Protocol)",
)
async def server_metadata(request: Request) -> JsonBody[V2ServerMetadata]:
    name, version, extensions = oip.server_metadata()
    return JsonBody({"name": name, "version": version, "extensions": list(extensions)})


@router.get(
    "/v2/health/live",
    responses=_HEALTH,
    tags=["v2"],
    summary="200 when live, 400 otherwise",
    response_class=Response,
)
async def v2_live(request: Request) -> Response:
    return Response(status_code=400 if app_state(request).registry.liveness_problems() else 200)


@router.get(
    "/v2/health/ready",
    responses=_HEALTH,
    tags=["v2"],
    summary="200 when every model is ready, 400 otherwise",
    response_class=Response,
)
async def v2_ready(request: Request) -> Response:
    return Response(status_code=400 if app_state(request).registry.readiness_problems() else 200)


_META_ERRORS = openapi_error_responses(UnauthorizedError, ModelNotFoundError, style=ErrorStyle.V2)


@router.get(
    "/v2/models/{model}",
    response_model=V2ModelMetadata,
    responses=_META_ERRORS,
    tags=["v2"],
    summary="Model metadata: versions, platform, input and output tensors",
)
async def v2_model_metadata(model: str, request: Request) -> JsonBody[V2ModelMetadata]:
    return JsonBody(metadata_body(oip.model_metadata(app_state(request).registry, model, None)))


@router.get(
    "/v2/models/{model}/versions/{version}",
    response_model=V2ModelMetadata,
    responses=_META_ERRORS,
    tags=["v2"],
    summary="Metadata of one version of a model",
)
async def v2_version_metadata(model: str, version: str, request: Request) -> JsonBody[V2ModelMetadata]:
    return JsonBody(metadata_body(oip.model_metadata(app_state(request).registry, model, version)))


_READY: dict[int | str, dict[str, Any]] = {
    **_HEALTH,
    **openapi_error_responses(UnauthorizedError, ModelNotFoundError, style=ErrorStyle.V2),
}


@router.get(
    "/v2/models/{model}/ready",
    responses=_READY,
    tags=["v2"],
    summary="200 when the model is ready, 400 otherwise",
    response_class=Response,
)
async def v2_model_ready(model: str, request: Request) -> Response:
    return Response(status_code=200 if oip.model_ready(app_state(request).registry, model, None) else 400)


@router.get(
    "/v2/models/{model}/versions/{version}/ready",
    responses=_READY,
    tags=["v2"],
    summary="200 when the model version is ready, 400 otherwise",
    response_class=Response,
)
async def v2_version_ready(model: str, version: str, request: Request) -> Response:
    return Response(status_code=200 if oip.model_ready(app_state(request).registry, model, version) else 400)


async def _infer(model: str, version: str | None, request: Request, timeout_ms: float | None) -> Response:
    state = app_state(request)
    with observe_request(request, model, ENDPOINT):
        body = inflate(
            await request.body(), request.headers.get("content-encoding"), state.settings.max_body_bytes
        )
        parsed = parse_request(body, request.headers.get(HEADER_LENGTH), state.settings.max_inputs)
        out = await oip.infer(
            state.registry,
            state.settings,
            model,
            version,
            parsed,
            transport_timeout_s=timeout_s(timeout_ms),
            run=lambda work: unless_disconnected(request, work),
        )
        return encode_response(out, parsed)


@router.post(
    "/v2/models/{model}/infer",
    name=ENDPOINT,
    response_model=V2InferResponse,
    responses={**_ERRORS, **_BINARY_RESPONSE},
    openapi_extra=_INFER_BODY,
    tags=["v2"],
    summary="Inference (Open Inference Protocol)",
)
async def v2_infer(model: str, request: Request, timeout_ms: RequestTimeoutHeader = None) -> Response:
    return await _infer(model, None, request, timeout_ms)


@router.post(
    "/v2/models/{model}/versions/{version}/infer",
    name=ENDPOINT,
    response_model=V2InferResponse,
    responses={**_ERRORS, **_BINARY_RESPONSE},
    openapi_extra=_INFER_BODY,
    tags=["v2"],
    summary="Inference on one version of a model",
)
async def v2_version_infer(
    model: str, version: str, request: Request, timeout_ms: RequestTimeoutHeader = None
) -> Response:
    return await _infer(model, version, request, timeout_ms)
