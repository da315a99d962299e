"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService` on its own port
(`--grpc-port`, off by default), in the same process and event loop as the HTTP server, so that
it shares the models' batchers, the limits, the deadlines, the API key, the metrics and the drain.

RPCs: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer (what
`tritonclient.grpc`, perf_analyzer and KServe speak; the tensors are api/oip.py's). The messages
are the protocol's (KServe's `grpc_predict_v2.proto`, which Triton's `grpc_service.proto`
extends); their descriptor is built here, in a pool of its own, so no generated code and no
protoc step is needed, and a process that also imports a client's generated classes (same
package `inference`) sees no clash. tests/unit/service/api/test_grpc_messages.py checks every
field against tritonclient's generated descriptor.

- API key: metadata `authorization: Bearer <key>` on every RPC but ServerLive and ServerReady
  (the health probes), else UNAUTHENTICATED.
- Deadline: the call's gRPC deadline is the request deadline (it may only shorten the server's).
- Errors: the status of the same error on REST, mapped to a gRPC code (`GRPC_CODES`).
- At most `max_inflight_requests` RPCs at once (gRPC answers RESOURCE_EXHAUSTED beyond), and
  messages up to `max_body_bytes`.
- Request ids: metadata `x-request-id` (or a new one) is in every log line about the call and is
  sent back as initial metadata.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from bertserve.service import tracing
from bertserve.service.api import oip
from bertserve.service.api.errors import status_for
from bertserve.service.api.routes import AppState, observe
from bertserve.service.errors import InvalidInputError, ServiceError, UnauthorizedError
from bertserve.service.limits import REQUEST_WORK, WorkBudget
from bertserve.service.logs import REQUEST_ID, log_request

log = logging.getLogger(__name__)

SERVICE: Final = "inference.GRPCInferenceService"
ENDPOINT: Final = "grpc_infer"  # the `endpoint` label of gRPC inference
PUBLIC_METHODS: Final = frozenset({"ServerLive", "ServerReady"})

# --- the messages -------------------------------------------------------------------------------

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS: Final = {
    "bool": _F.TYPE_BOOL,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "uint32": _F.TYPE_UINT32,
    "uint64": _F.TYPE_UINT64,
    "float": _F.TYPE_FLOAT,
    "double": _F.TYPE_DOUBLE,
}
_PARAMETERS: Final = "map<InferParameter>"
# message -> [(number, name, type, repeated)]; a type not in _SCALARS is a message of this file;
# _PARAMETERS is `map<string, InferParameter>`. InferParameter's fields form the oneof
# `parameter_choice`. Nested messages are named Outer.Inner.
_MESSAGES: Final[Mapping[str, Sequence[tuple[int, str, str, bool]]]] = {
    "ServerLiveRequest": [],
    "ServerLiveResponse": [(1, "live", "bool", False)],
    "ServerReadyRequest": [],
    "ServerReadyResponse": [(1, "ready", "bool", False)],
    "ModelReadyRequest": [(1, "name", "string", False), (2, "version", "string", False)],
    "ModelReadyResponse": [(1, "ready", "bool", False)],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [
        (1, "name", "string", False),
        (2, "version", "string", False),
        (3, "extensions", "string", True),
    ],
    "ModelMetadataRequest": [(1, "name", "string", False), (2, "version", "string", False)],
    "ModelMetadataResponse.TensorMetadata": [
        (1, "name", "string", False),
        (2, "datatype", "string", False),
        (3, "shape", "int64", True),
    ],
    "ModelMetadataResponse": [
        (1, "name", "string", False),
        (2, "versions", "string", True),
        (3, "platform", "string", False),
        (4, "inputs", "ModelMetadataResponse.TensorMetadata", True),
        (5, "outputs", "ModelMetadataResponse.TensorMetadata", True),
    ],
    "InferParameter": [
        (1, "bool_param", "bool", False),
        (2, "int64_param", "int64", False),
        (3, "string_param", "string", False),
        (4, "double_param", "double", False),
        (5, "uint64_param", "uint64", False),
    ],
    "InferTensorContents": [
        (1, "bool_contents", "bool", True),
        (2, "int_contents", "int32", True),
        (3, "int64_contents", "int64", True),
        (4, "uint_contents", "uint32", True),
        (5, "uint64_contents", "uint64", True),
        (6, "fp32_contents", "float", True),
        (7, "fp64_contents", "double", True),
        (8, "bytes_contents", "bytes", True),
    ],
    "ModelInferRequest.InferInputTensor": [
        (1, "name", "string", False),
        (2, "datatype", "string", False),
        (3, "shape", "int64", True),
        (4, "parameters", _PARAMETERS, False),
        (5, "contents", "InferTensorContents", False),
    ],
    "ModelInferRequest.InferRequestedOutputTensor": [
        (1, "name", "string", False),
        (2, "parameters", _PARAMETERS, False),
    ],
    "ModelInferRequest": [
        (1, "model_name", "string", False),
        (2, "model_version", "string", False),
        (3, "id", "string", False),
        (4, "parameters", _PARAMETERS, False),
        (5, "inputs", "ModelInferRequest.InferInputTensor", True),
        (6, "outputs", "ModelInferRequest.InferRequestedOutputTensor", True),
        (7, "raw_input_contents", "bytes", True),
    ],
    "ModelInferResponse.InferOutputTensor": [
        (1, "name", "string", False),
        (2, "datatype", "string", False),
        (3, "shape", "int64", True),
        (4, "parameters", _PARAMETERS, False),
        (5, "contents", "InferTensorContents", False),
    ],
    "ModelInferResponse": [
        (1, "model_name", "string", False),
        (2, "model_version", "string", False),
        (3, "id", "string", False),
        (4, "parameters", _PARAMETERS, False),
        (5, "outputs", "ModelInferResponse.InferOutputTensor", True),
        (6, "raw_output_contents", "bytes", True),
    ],
}
# rpc -> (request, response)
RPCS: Final[Mapping[str, tuple[str, str]]] = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="bertserve/open_inference.proto", package="inference", syntax="proto3"
    )
    protos: dict[str, descriptor_pb2.DescriptorProto] = {}

    def proto_of(path: str) -> descriptor_pb2.DescriptorProto:
        if path not in protos:
            outer, _, inner = path.rpartition(".")
            protos[path] = (proto_of(outer).nested_type if outer else fdp.message_type).add(name=inner)
        return protos[path]

    for path, fields in _MESSAGES.items():
        message = proto_of(path)
        for number, name, kind, repeated in fields:
            field = message.field.add(name=name, number=number, json_name=_json_name(name))
            field.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
            if kind == _PARAMETERS:  # map<string, InferParameter>: a repeated nested entry message
                entry = message.nested_type.add(name="ParametersEntry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
                entry.field.add(
                    name="value",
                    number=2,
                    type=_F.TYPE_MESSAGE,
                    type_name=".inference.InferParameter",
                    label=_F.LABEL_OPTIONAL,
                )
                field.label = _F.LABEL_REPEATED
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".inference.{path}.ParametersEntry"
            elif kind in _SCALARS:
                field.type = _SCALARS[kind]
            else:
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".inference.{kind}"
            if path == "InferParameter":
                field.oneof_index = 0
        if path == "InferParameter":
            message.oneof_decl.add(name="parameter_choice")
    service = fdp.service.add(name="GRPCInferenceService")
    for rpc, (request, response) in RPCS.items():
        service.method.add(name=rpc, input_type=f".inference.{request}", output_type=f".inference.{response}")
    return fdp


def _json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


POOL: Final = descriptor_pool.DescriptorPool()
POOL.Add(_file_descriptor())


def message_class(path: str) -> Any:
    """The class of message `path`; typed Any, as protobuf's dynamic classes are to mypy."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"inference.{path}"))


M: Final[Mapping[str, Any]] = {path: message_class(path) for path in _MESSAGES}

# --- errors -------------------------------------------------------------------------------------

# the HTTP status of an error (api/errors.py's one table) -> its gRPC code
GRPC_CODES: Final[Mapping[int, grpc.StatusCode]] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.UNAVAILABLE,  # retryable, as Triton answers a full queue
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code(exc: BaseException) -> grpc.StatusCode:
    return GRPC_CODES.get(status_for(exc), grpc.StatusCode.INTERNAL)


# --- tensors on the wire ------------------------------------------------------------------------

# datatype -> the InferTensorContents field that carries it when not sent raw
_CONTENTS: Final[Mapping[str, str]] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _parameters(entries: Any) -> dict[str, oip.ParameterValue]:
    out: dict[str, oip.ParameterValue] = {}
    for key, value in entries.items():
        which = value.WhichOneof("parameter_choice")
        if which is None:
            raise InvalidInputError(f"parameter {key!r} has no value")
        out[key] = getattr(value, which)
    return out


def decode_request(msg: Any, limit: int) -> oip.InferRequest:
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInputError(
            f"{len(raw)} raw_input_contents for {len(msg.inputs)} inputs: send one per input, or none"
        )
    inputs: list[oip.Tensor] = []
    for i, t in enumerate(msg.inputs):
        shape = [int(d) for d in t.shape]
        if len(shape) > 8:
            raise InvalidInputError(f"input {t.name!r}: more than 8 dimensions")
        extra = set(t.parameters) - {"binary_data_size"}
        if extra:
            raise InvalidInputError(f"input {t.name!r}: unknown parameter(s) {', '.join(sorted(extra))}")
        oip.check_datatype(t.datatype, t.name)
        if raw:
            if t.HasField("contents"):
                raise InvalidInputError(f"input {t.name!r}: both contents and raw_input_contents")
            inputs.append(oip.tensor_from_raw(t.name, t.datatype, shape, raw[i], limit))
            continue
        if t.datatype not in _CONTENTS:
            raise InvalidInputError(f"input {t.name!r}: {t.datatype} goes in raw_input_contents")
        values = getattr(t.contents, _CONTENTS[t.datatype])
        if t.datatype == oip.BYTES:
            inputs.append(oip.tensor_from_values(t.name, t.datatype, shape, list(values)))
        else:
            array = np.asarray(values, dtype=oip.NUMPY_TYPES[t.datatype])
            inputs.append(oip.tensor_from_values(t.name, t.datatype, shape, array))
    outputs = [oip.RequestedOutput(o.name, _parameters(o.parameters)) for o in msg.outputs] or None
    return oip.InferRequest(inputs, outputs, msg.id, _parameters(msg.parameters))


def encode_response(out: oip.InferResponse) -> Any:
    msg = M["ModelInferResponse"](model_name=out.model_name, model_version=out.model_version, id=out.id)
    for t in out.outputs:
        msg.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
        msg.raw_output_contents.append(oip.raw_of(t))
    return msg


# --- the service --------------------------------------------------------------------------------

Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class InferenceService:
    """The RPCs over the app's state (the same registry, settings and metrics as HTTP)."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        key = state.settings.api_key
        self._key = key.get_secret_value().encode() if key is not None else None

    def handlers(self) -> grpc.GenericRpcHandler:
        methods = {}
        for rpc, (request, response) in RPCS.items():
            methods[rpc] = grpc.unary_unary_rpc_method_handler(
                self._guarded(rpc, getattr(self, rpc)),
                request_deserializer=M[request].FromString,
                response_serializer=M[response].SerializeToString,
            )
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    def _authorized(self, context: grpc.aio.ServicerContext[Any, Any]) -> bool:
        if self._key is None:
            return True
        header = dict(context.invocation_metadata() or ()).get("authorization", "")
        scheme, _, token = str(header).partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._key)

    def _guarded(self, rpc: str, handler: Handler) -> Handler:
        public = rpc in PUBLIC_METHODS

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            metadata = dict(context.invocation_metadata() or ())
            sent = str(metadata.get("x-request-id", ""))
            request_id = sent if 0 < len(sent) <= 128 and sent.isascii() and sent.isprintable() else ""
            request_id = request_id or uuid.uuid4().hex
            REQUEST_ID.set(request_id)
            try:
                await context.send_initial_metadata((("x-request-id", request_id),))
                if not public and not self._authorized(context):
                    raise UnauthorizedError(
                        "missing or invalid API key; send metadata authorization: Bearer <key>"
                    )
                return await handler(request, context)
            except ServiceError as exc:
                await context.abort(grpc_code(exc), exc.message)
            except (grpc.aio.AbortError, KeyboardInterrupt):  # an abort already under way
                raise
            except Exception:
                log.exception("unhandled error in gRPC %s", rpc)
                await context.abort(grpc.StatusCode.INTERNAL, "internal server error")

        return call

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return M["ServerLiveResponse"](live=not self.state.registry.liveness_problems())

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return M["ServerReadyResponse"](ready=not self.state.registry.readiness_problems())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        ready = oip.model_ready(self.state.registry, request.name, request.version or None)
        return M["ModelReadyResponse"](ready=ready)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        name, version, extensions = oip.server_metadata()
        return M["ServerMetadataResponse"](name=name, version=version, extensions=list(extensions))

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        meta = oip.model_metadata(self.state.registry, request.name, request.version or None)
        tensor = M["ModelMetadataResponse.TensorMetadata"]
        return M["ModelMetadataResponse"](
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=[tensor(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in meta.inputs],
            outputs=[tensor(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in meta.outputs],
        )

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        state = self.state
        drain = state.registry.drain
        if drain.draining:  # as the HTTP admission notes arrivals: the drain waits for quiet
            drain.last_request = time.monotonic()
        access: dict[str, object] | None = None
        work: list[WorkBudget] | None = None
        if state.settings.access_log:
            access, work = {}, []
            REQUEST_WORK.set(work)
        start = time.perf_counter()
        status = 500
        headers = {str(k): str(v) for k, v in context.invocation_metadata() or ()}
        try:
            with (
                tracing.server_span(f"/{SERVICE}/ModelInfer", headers, model=request.model_name),
                observe(state, request.model_name, ENDPOINT, access),
            ):
                parsed = decode_request(request, state.settings.max_inputs)
                out = await oip.infer(
                    state.registry,
                    state.settings,
                    request.model_name,
                    request.model_version or None,
                    parsed,
                    transport_timeout_s=context.time_remaining(),
                )
                reply = encode_response(out)
            status = 200
            return reply
        except BaseException as exc:
            status = status_for(exc) if isinstance(exc, Exception) else 499
            raise
        finally:
            if access is not None and work is not None:
                log_request("gRPC", f"/{SERVICE}/ModelInfer", status, start, access, work)


class GrpcServer:
    """The gRPC listener, started and stopped by the app's lifespan."""

    def __init__(self, state: AppState) -> None:
        settings = state.settings
        limit = settings.max_body_bytes
        self.server = grpc.aio.server(
            maximum_concurrent_rpcs=settings.max_inflight_requests,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),  # a second server on the port is an error, not a share
            ],
        )
        self.server.add_generic_rpc_handlers((InferenceService(state).handlers(),))
        self.address = f"{settings.host}:{settings.grpc_port}"
        self.port = 0

    async def start(self) -> int:
        try:
            self.port = self.server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise OSError(
                f"cannot listen for gRPC on {self.address} (in use, or not an address of this host)"
            ) from exc
        await self.server.start()
        log.info("gRPC (Open Inference Protocol) on %s", self.address.rsplit(":", 1)[0] + f":{self.port}")
        return self.port

    async def stop(self, grace_s: float) -> None:
        await self.server.stop(grace_s)
