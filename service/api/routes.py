"""HTTP routes. Each is thin: validate, look up the pipeline, call it, serialise.

Each body is built as the TypedDict that is also its route's `response_model` (api/schemas.py),
so mypy checks the body against the OpenAPI schema; it is serialised with `json.dumps` into a
`JsonBody`, a raw `Response` typed by its body, and never re-validated per request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Final, Generic, TypeVar, cast

from fastapi import APIRouter, Header, Request
from fastapi import Path as FastApiPath
from pydantic import WithJsonSchema
from starlette.responses import Response
from starlette.types import Scope

from bertserve.modelrepo import Task
from bertserve.runtime.base import ServedPrecision
from bertserve.service import tracing
from bertserve.service.api.errors import (
    ErrorStyle,
    answered_status,
    openapi_error_responses,
    status_for,
    style_of_path,
)
from bertserve.service.api.fastpath import InferenceRoute
from bertserve.service.api.middleware import ACCESS_SCOPE_KEY
from bertserve.service.api.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    EmbedRequest,
    EmbedResponse,
    GateOut,
    HealthOut,
    ModelInfo,
    ModelList,
    NerRequest,
    NerResponse,
    RankedOut,
    ReloadedModel,
    ReloadResponse,
    RerankRequest,
    RerankResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenOut,
)
from bertserve.service.errors import (
    ClientClosedError,
    DeadlineExceededError,
    ForbiddenError,
    InferenceError,
    InvalidInputError,
    ModelNotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    QueueFullError,
    UnauthorizedError,
    UnhealthyError,
    UnsupportedTaskError,
)
from bertserve.service.heads.token_classification import Entity
from bertserve.service.limits import check_input_count, normalize_inputs
from bertserve.service.metrics import UNKNOWN_MODEL, Metrics
from bertserve.service.pipeline import (
    Classification,
    ClassificationPipeline,
    EmbeddingPipeline,
    Embeddings,
    Pipeline,
    Reranker,
    Reranking,
    TokenClassificationPipeline,
)
from bertserve.service.registry import ModelRegistry, ReloadOutcome
from bertserve.service.settings import Settings
from bertserve.service.tokenization import Encoded

T = TypeVar("T")
B = TypeVar("B")
JSON = "application/json"
CLIENT_CLOSED = 499  # nginx's convention for "client went away before the answer"
INFERENCE_ENDPOINTS: Final = (
    "classify",
    "ner",
    "embed",
    "rerank",
    "tokenize",
)  # route names = `endpoint` label values
# the routes other servers' clients speak (service/api/compat.py), by route name
COMPAT_ENDPOINTS: Final = (
    "tei_embed",
    "tei_predict",
    "tei_rerank",
    "tei_tokenize",
    "hf_inference",
    "hf_feature_extraction",
    "openai_embeddings",
    "v2_infer",  # the Open Inference Protocol's REST inference (service/api/v2.py)
)
_OBSERVED = "bertserve.observed"  # scope key: this request was counted by observe_request

RequestTimeoutHeader = Annotated[
    float | None,
    Header(
        alias="X-Request-Timeout-Ms",
        gt=0,
        description="Answer 504 if no result within this many milliseconds. May only shorten the "
        "server's BERTSERVE_REQUEST_TIMEOUT_MS, never extend it.",
    ),
    # An absent header is None; a header is never JSON null, so OpenAPI shows a plain number.
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0}),
]


VersionPath = Annotated[
    int, FastApiPath(ge=1, description="A served version of the model (model.yaml's version_policy).")
]


@dataclass(frozen=True, slots=True)
class AppState:
    settings: Settings
    registry: ModelRegistry
    metrics: Metrics


def app_state(request: Request) -> AppState:
    return cast(AppState, request.app.state.bertserve)


class JsonBody(Response, Generic[B]):
    """A JSON response whose body has the type `B`: a handler annotated `-> JsonBody[ModelInfo]`
    can only return a `ModelInfo` body (mypy), and its route's `response_model` is `ModelInfo`
    (tests/unit/service/api/test_schemas.py)."""

    media_type = JSON

    def __init__(self, body: B, status_code: int = 200) -> None:
        # NOTE: allow_nan=False: NaN/Infinity are not JSON; a value that slipped past the batcher's
        # finiteness check becomes a 500 envelope, never a body that clients cannot parse.
        content = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        super().__init__(content, status_code=status_code)


def json_response(payload: B, status: int = 200) -> JsonBody[B]:
    return JsonBody(payload, status)


@contextmanager
def observe(
    state: AppState,
    model: str,
    endpoint: str,
    access: dict[str, object] | None = None,
    style: ErrorStyle = ErrorStyle.NATIVE,
) -> Iterator[None]:
    """Admission (refused while draining), in-flight gauge, request counter by status code and
    latency histogram for one inference call, on any protocol (gRPC counts by the HTTP status of
    the same error). `access`: the access-log fields, which get the model and the endpoint;
    `style`: the error dialect, whose status is the one counted (what the client was answered)."""
    metrics = state.metrics
    label = model if model in state.registry else UNKNOWN_MODEL
    if access is not None:
        access.update(model=label, endpoint=endpoint)
    metrics.inflight.inc()
    start = time.perf_counter()
    code = 200
    try:
        with state.registry.admit():
            yield
    except BaseException as exc:
        code = answered_status(style, status_for(exc)) if isinstance(exc, Exception) else CLIENT_CLOSED
        raise
    finally:
        metrics.inflight.dec()
        metrics.requests.labels(label, endpoint, str(code)).inc()
        metrics.request_duration.labels(label, endpoint).observe(time.perf_counter() - start)


@contextmanager
def observe_request(request: Request, model: str, endpoint: str) -> Iterator[None]:
    """`observe` for an HTTP request (which is then not counted again by the error handler)."""
    request.scope[_OBSERVED] = True
    if tracing.enabled():
        route = request.scope.get("route")
        tracing.rename_current(f"{request.method} {getattr(route, 'path', request.url.path)}")
    access = request.scope.get(ACCESS_SCOPE_KEY)
    # NOTE: the scope's path, not request.url.path: the same routed path without building a URL
    with observe(app_state(request), model, endpoint, access, style_of_path(request.scope["path"])):
        yield


def count_unobserved_error(request: Request, status: int) -> None:
    """Count errors answered before an inference route ran (FastAPI's 422 for an invalid body, a
    413 for a body over the limit), so bertserve_requests_total sees every answer it gave."""
    route = request.scope.get("route")
    endpoint = getattr(route, "name", None)
    if request.scope.get(_OBSERVED) or endpoint not in (*INFERENCE_ENDPOINTS, *COMPAT_ENDPOINTS):
        return
    state = app_state(request)
    model = request.path_params.get("model")
    label = model if model in state.registry else UNKNOWN_MODEL
    state.metrics.requests.labels(label, endpoint, str(status)).inc()


def count_overloaded(registry: ModelRegistry, scope: Scope) -> None:
    """Count a request refused by the global in-flight cap (before any route ran)."""
    metrics = registry.metrics
    parts = str(scope.get("path", "")).split("/")
    model, endpoint = "", None
    if len(parts) == 5 and parts[1:3] == ["v1", "models"]:  # /v1/models/{model}/{endpoint}
        model = parts[3]
        endpoint = parts[4] if parts[4] in INFERENCE_ENDPOINTS else None
    elif len(parts) == 7 and parts[1:3] == ["v1", "models"] and parts[4] == "versions":
        model = parts[3]  # /v1/models/{model}/versions/{version}/{endpoint}
        endpoint = parts[6] if parts[6] in INFERENCE_ENDPOINTS else None
    elif len(parts) in (5, 7) and parts[1:3] == ["v2", "models"] and parts[-1] == "infer":
        model, endpoint = parts[3], "v2_infer"  # /v2/models/{model}[/versions/{v}]/infer
    label = model if model in registry else UNKNOWN_MODEL
    metrics.rejected.labels(label, "overloaded").inc()
    if endpoint is not None:
        metrics.requests.labels(label, endpoint, "429").inc()


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first.

    The body has been read by then, so the next ASGI message can only be `http.disconnect`.
    Cancelling the work cancels the batcher future, and the batch worker drops the request's
    queued sequences before inference: a client that gave up costs no backend time.

    NOTE: the work runs in the request's own task and one watcher task cancels it on a
    disconnect (one task per request instead of two plus an `asyncio.wait`: this runs on the
    event loop for every inference request).
    """
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def disconnected() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        current.cancel()

    watcher = asyncio.ensure_future(disconnected())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise  # cancelled from outside (shutdown): not the client's doing
        current.uncancel()
        raise ClientClosedError("client closed the connection before the answer") from None
    finally:
        watcher.cancel()


def timeout_s(header_ms: float | None) -> float | None:
    return None if header_ms is None else header_ms / 1000


def classify_body(model: str, out: Classification) -> ClassifyResponse:
    # NOTE: built inline in the return so that mypy checks each item against LabelScoreOut (a
    # comprehension assigned to a name first is inferred as plain dicts).
    return {
        "model": model,
        "results": [
            [
                {"label": s.label, "score": s.score}
                if s.above_threshold is None
                else {"label": s.label, "score": s.score, "above_threshold": s.above_threshold}
                for s in row
            ]
            for row in out.results
        ],
        "truncated": out.truncated,
        "windowed": out.windowed,
    }


def ner_body(model: str, results: list[list[Entity]]) -> NerResponse:
    return {"model": model, "results": [[e.as_dict() for e in row] for row in results]}


def embed_body(model: str, out: Embeddings) -> EmbedResponse:
    return {
        "model": model,
        "dimensions": int(out.vectors.shape[1]),
        "embeddings": out.vectors.tolist(),
        "usage": {"tokens": out.tokens},
        "truncated": out.truncated,
    }


def ranked(out: Reranking, texts: list[str], top_n: int | None, return_text: bool) -> list[RankedOut]:
    """Documents by descending score (ties keep request order), the best `top_n`."""
    order = sorted(range(len(out.scores)), key=lambda i: -out.scores[i])[:top_n]
    if return_text:
        return [{"index": i, "score": out.scores[i], "text": texts[i]} for i in order]
    return [{"index": i, "score": out.scores[i]} for i in order]


def rerank_body(model: str, out: Reranking, body: RerankRequest) -> RerankResponse:
    return {
        "model": model,
        "results": ranked(out, list(body.texts), body.top_n, body.return_text),
        "truncated": out.truncated,
    }


def tokens_of(enc: Encoded, text: str) -> list[TokenOut]:
    e = enc.encoding
    return [
        {
            "id": token_id,
            "text": text[a:b] if not special else token,
            "special": bool(special),
            "start": a,
            "end": b,
        }
        for token_id, token, special, (a, b) in zip(
            e.ids, e.tokens, e.special_tokens_mask, e.offsets, strict=True
        )
    ]


def tokenize_body(model: str, texts: list[str], encodings: list[Encoded]) -> TokenizeResponse:
    return {
        "model": model,
        "results": [
            {"tokens": tokens_of(enc, text), "count": enc.length, "truncated": enc.truncated}
            for text, enc in zip(texts, encodings, strict=True)
        ],
    }


def health_ok() -> HealthOut:
    return {"status": "ok", "reasons": []}


def model_info(
    pipeline: Pipeline,
    ready: bool,
    settings: Settings,
    reload_error: str | None = None,
    versions: list[int] | None = None,
) -> ModelInfo:
    """`versions`: every served version of the model (default: this pipeline's only)."""
    config, limits = pipeline.config, pipeline.batcher.limits
    reason, gate = _served_precision(pipeline.backend)
    return {
        "name": config.name,
        "version": config.default_version,
        "versions": versions or [config.default_version],
        "task": str(config.task),
        "problem_type": str(config.problem_type) if config.problem_type else None,
        "labels": list(config.labels),
        "tag_scheme": str(config.tag_scheme) if config.tag_scheme else None,
        "segmentation": str(config.segmentation) if config.task == Task.TOKEN_CLASSIFICATION else None,
        "thresholds": dict(config.thresholds) if config.thresholds else None,
        "embedding": (
            {
                "pooling": str(config.embedding.pooling),
                "normalize": config.embedding.normalize,
                "dimensions": config.embedding.dimensions,
            }
            if config.embedding is not None
            else None
        ),
        "backend": pipeline.backend.name,
        "precision": str(pipeline.backend.precision),
        "precision_reason": reason,
        "gate": gate,
        "max_length": config.max_length,
        "batching": {
            "max_batch_size": limits.max_batch_size,
            "max_batch_tokens": limits.max_batch_tokens,
            "max_queue_delay_ms": limits.max_queue_delay_s * 1000,
            "max_queue_size": limits.max_queue_size,
        },
        "limits": {
            "max_inputs": settings.max_inputs,
            "max_input_chars": settings.max_input_chars,
            "max_request_sequences": pipeline.limits.max_sequences,
            "max_request_tokens": pipeline.limits.max_tokens,
        },
        "ready": ready,
        "reload_error": reload_error,
    }


def _served_precision(backend: object) -> tuple[str | None, GateOut | None]:
    """Why a backend runs its precision and the export gate's figures, where the loader chose it
    (a GraphBackend; test backends have neither)."""
    served: ServedPrecision | None = getattr(backend, "served", None)
    if served is None:
        return None, None
    gate = cast(GateOut, served.gate.model_dump(exclude={"reasons"})) if served.gate is not None else None
    reason = served.reason if served.warning is None else f"{served.reason} (warning: {served.warning})"
    return reason, gate


# InferenceRoute: the plain request skips FastAPI's generic handler (api/fastpath.py)
router = APIRouter(route_class=InferenceRoute)

# what an inference route may answer, on every protocol (the compatible routes document it too)
INFERENCE_ERROR_TYPES: Final = (
    UnauthorizedError,
    InvalidInputError,
    PayloadTooLargeError,
    ModelNotFoundError,
    UnsupportedTaskError,
    QueueFullError,
    NotReadyError,
    DeadlineExceededError,
    ForbiddenError,
    InferenceError,
)
_INFERENCE_ERRORS = openapi_error_responses(*INFERENCE_ERROR_TYPES)


@router.post(
    "/v1/models/{model}/classify",
    response_model=ClassifyResponse,
    responses=_INFERENCE_ERRORS,
    tags=["inference"],
    summary="Classify texts or text pairs",
)
async def classify(
    model: str, body: ClassifyRequest, request: Request, timeout_ms: RequestTimeoutHeader = None
) -> JsonBody[ClassifyResponse]:
    return await _classify(model, None, body, request, timeout_ms)


@router.post(
    "/v1/models/{model}/versions/{version}/classify",
    name="classify",
    response_model=ClassifyResponse,
    responses=_INFERENCE_ERRORS,
    tags=["inference"],
    summary="Classify with one served version of the model",
)
async def classify_version(
    model: str,
    version: VersionPath,
    body: ClassifyRequest,
    request: Request,
    timeout_ms: RequestTimeoutHeader = None,
) -> JsonBody[ClassifyResponse]:
    return await _classify(model, version, body, request, timeout_ms)


async def _classify(
    model: str, version: int | None, body: ClassifyRequest, request: Request, timeout_ms: float | None
) -> JsonBody[ClassifyResponse]:
    state = app_state(request)
    with observe_request(request, model, "classify"):
        pipeline = state.registry.get(model, ClassificationPipeline, version=version)
        inputs = normalize_inputs(body.inputs, state.settings)
        out = await unless_disconnected(
            request,
            pipeline.classify(
                inputs,
                top_k=body.top_k,
                truncate=body.truncate,
                timeout_s=timeout_s(timeout_ms),
                long_text=body.long_text,
            ),
        )
        return JsonBody(classify_body(model, out))


@router.post(
    "/v1/models/{model}/ner",
    response_model=NerResponse,
    responses=_INFERENCE_ERRORS,
    tags=["inference"],
    summary="Named entities with exact character offsets, for texts of any length",
)
async def ner(
    model: str, body: NerRequest, request: Request, timeout_ms: RequestTimeoutHeader = None
) -> JsonBody[NerResponse]:
    return await _ner(model, None, body, request, timeout_ms)


@router.post(
    "/v1/models/{model}/versions/{version}/ner",
    name="ner",
    response_model=NerResponse,
    responses=_INFERENCE_ERRORS,
    tags=["inference"],
    summary="Named entities with one served version of the model",
)
async def ner_version(
    model: str,
    version: VersionPath,
    body: NerRequest,
    request: Request,
    timeout_ms: RequestTimeoutHeader = None,
) -> JsonBody[NerResponse]:
    return await _ner(model, version, body, request, timeout_ms)


async def _ner(
    model: str, version: int | None, body: NerRequest, request: Request, timeout_ms: float | None
) -> JsonBody[NerResponse]:
    state = app_state(request)
    with observe_request(request, model, "ner"):
        pipeline = state.registry.get(model, TokenClassificationPipeline, version=version)
        texts = cast(list[str], normalize_inputs(body.inputs, state.settings))
        results = await unless_disconnected(
            request,
            pipeline.recognize(
                texts,
                strategy=body.aggregation,
                ignore_labels=tuple(body.ignore_labels),
                segmentation=body.segmentation,
                timeout_s=timeout_s(timeout_ms),
            ),
        )
        return JsonBody(ner_body(model, results))


@router.post(
    "/v1/models/{model}/embed",
    response_model=EmbedResponse,
    responses=_INFERENCE_ERRORS,
    tags=["inference"],
    summary="Sentence embeddings (feature-extraction models)",
)
async def embed(
    model: str, body: EmbedRequest, request: Request, timeout_ms: RequestTimeoutHeader = None
) -> JsonBody[EmbedResponse]:
    return await _embed(model, None, body, request, timeout_ms)


@router.post(
    "/v1/models/{model}/versions/{version}/embed",
    name="embed",
    response_model=EmbedResponse,
    responses=_INFERENCE_ERRORS,
    tags=["inference"],
    summary="Sentence embeddings from one served version of the model",
)
async def embed_version(
    model: str,
    version: VersionPath,
    body: EmbedRequest,
    request: Request,
    timeout_ms: RequestTimeoutHeader = None,
) -> JsonBody[EmbedResponse]:
    return await _embed(model, version, body, request, timeout_ms)


async def _embed(
    model: str, version: int | None, body: EmbedRequest, request: Request, timeout_ms: float | None
) -> JsonBody[EmbedResponse]:
    state = app_state(request)
    with observe_request(request, model, "embed"):
        out = await embeddings_of(
            request,
            state,
            model,
            body.inputs,
            normalize=body.normalize,
            dimensions=body.dimensions,
            truncate=body.truncate,
            timeout_ms=timeout_ms,
            version=version,
        )
        return JsonBody(embed_body(model, out))


async def embeddings_of(
    request: Request,
    state: AppState,
    model: str,
    inputs: str | Sequence[str] | Sequence[Sequence[int]],
    *,
    normalize: bool | None,
    dimensions: int | None,
    truncate: bool,
    timeout_ms: float | None,
    version: int | None = None,
) -> Embeddings:
    """The embeddings of a feature-extraction model for texts (within the input limits) or for
    token-id lists a client tokenized itself (within the input count): every embedding route's."""
    pipeline = state.registry.get(model, EmbeddingPipeline, version=version)
    items: list[str] | list[list[int]]
    if isinstance(inputs, str) or (inputs and isinstance(inputs[0], str)):
        items = cast(list[str], normalize_inputs(cast(str | Sequence[str], inputs), state.settings))
    else:
        items = [list(ids) for ids in cast(Sequence[Sequence[int]], inputs)]
        check_input_count(len(items), state.settings)
    return await unless_disconnected(
        request,
        pipeline.embed(
            items,
            normalize=normalize,
            dimensions=dimensions,
            truncate=truncate,
            timeout_s=timeout_s(timeout_ms),
        ),
    )


async def rerank_scores(
    request: Request,
    state: AppState,
    model: str,
    query: str,
    texts: list[str],
    *,
    raw_scores: bool,
    truncate: bool,
    timeout_ms: float | None,
    version: int | None = None,
) -> Reranking:
    """A rerank on a cross-encoder (or one-logit classifier) or on an embedding model (cosine)."""
    # NOTE: `get` checked the kind; mypy sees only the common base of the two
    pipeline = cast(
        Reranker, state.registry.get(model, ClassificationPipeline, EmbeddingPipeline, version=version)
    )
    normalize_inputs([query, *texts], state.settings)  # the same input limits as every route
    return await unless_disconnected(
        request,
        pipeline.rerank(
            query, texts, raw_scores=raw_scores, truncate=truncate, timeout_s=timeout_s(timeout_ms)
        ),
    )


@router.post(
    "/v1/models/{model}/rerank",
    response_model=RerankResponse,
    responses=_INFERENCE_ERRORS,
    tags=["inference"],
    summary="Rank documents by relevance to a query (cross-encoder, or cosine on an embedding model)",
)
async def rerank(
    model: str, body: RerankRequest, request: Request, timeout_ms: RequestTimeoutHeader = None
) -> JsonBody[RerankResponse]:
    return await _rerank(model, None, body, request, timeout_ms)


@router.post(
    "/v1/models/{model}/versions/{version}/rerank",
    name="rerank",
    response_model=RerankResponse,
    responses=_INFERENCE_ERRORS,
    tags=["inference"],
    summary="Rerank with one served version of the model",
)
async def rerank_version(
    model: str,
    version: VersionPath,
    body: RerankRequest,
    request: Request,
    timeout_ms: RequestTimeoutHeader = None,
) -> JsonBody[RerankResponse]:
    return await _rerank(model, version, body, request, timeout_ms)


async def _rerank(
    model: str, version: int | None, body: RerankRequest, request: Request, timeout_ms: float | None
) -> JsonBody[RerankResponse]:
    state = app_state(request)
    with observe_request(request, model, "rerank"):
        out = await rerank_scores(
            request,
            state,
            model,
            body.query,
            list(body.texts),
            raw_scores=body.raw_scores,
            truncate=body.truncate,
            timeout_ms=timeout_ms,
            version=version,
        )
        return JsonBody(rerank_body(model, out, body))


@router.post(
    "/v1/models/{model}/tokenize",
    response_model=TokenizeResponse,
    responses=_INFERENCE_ERRORS,
    tags=["inference"],
    summary="The model's tokens for each text: ids, token texts, character offsets, count",
)
async def tokenize(model: str, body: TokenizeRequest, request: Request) -> JsonBody[TokenizeResponse]:
    return await _tokenize(model, None, body, request)


@router.post(
    "/v1/models/{model}/versions/{version}/tokenize",
    name="tokenize",
    response_model=TokenizeResponse,
    responses=_INFERENCE_ERRORS,
    tags=["inference"],
    summary="Tokens of one served version of the model",
)
async def tokenize_version(
    model: str, version: VersionPath, body: TokenizeRequest, request: Request
) -> JsonBody[TokenizeResponse]:
    return await _tokenize(model, version, body, request)


async def _tokenize(
    model: str, version: int | None, body: TokenizeRequest, request: Request
) -> JsonBody[TokenizeResponse]:
    state = app_state(request)
    with observe_request(request, model, "tokenize"):
        pipeline = state.registry.get(model, Pipeline, version=version)
        texts = cast(list[str], normalize_inputs(body.inputs, state.settings))
        encodings = await pipeline.tokenize(
            texts, add_special_tokens=body.add_special_tokens, truncate=body.truncate
        )
        return JsonBody(tokenize_body(model, texts, encodings))


@router.get(
    "/v1/models",
    response_model=ModelList,
    responses=openapi_error_responses(UnauthorizedError),
    tags=["models"],
    summary="Served models",
)
async def list_models(request: Request) -> JsonBody[ModelList]:
    state = app_state(request)
    reg = state.registry
    return JsonBody(
        {
            "models": [
                model_info(
                    p,
                    reg.is_ready,
                    state.settings,
                    reg.reload_errors.get(p.name),
                    reg.served_versions(p.name),
                )
                for p in reg.pipelines()
            ]
        }
    )


@router.get(
    "/v1/models/{model}",
    response_model=ModelInfo,
    responses=openapi_error_responses(UnauthorizedError, ModelNotFoundError),
    tags=["models"],
    summary="One served model: task, labels, backend, precision, batching",
)
async def get_model(model: str, request: Request) -> JsonBody[ModelInfo]:
    return JsonBody(_model_info(app_state(request), model, None))


@router.get(
    "/v1/models/{model}/versions/{version}",
    response_model=ModelInfo,
    responses=openapi_error_responses(UnauthorizedError, ModelNotFoundError),
    tags=["models"],
    summary="One served version of a model",
)
async def get_model_version(model: str, version: VersionPath, request: Request) -> JsonBody[ModelInfo]:
    return JsonBody(_model_info(app_state(request), model, version))


def _model_info(state: AppState, model: str, version: int | None) -> ModelInfo:
    reg = state.registry
    pipeline = reg.describe(model, version)
    return model_info(
        pipeline, reg.is_ready, state.settings, reg.reload_errors.get(model), reg.served_versions(model)
    )


@router.get(
    "/health/live",
    response_model=HealthOut,
    responses=openapi_error_responses(UnhealthyError),
    tags=["health"],
    summary="The process is up and can still become or stay ready; 503 when only a restart helps",
)
async def live(request: Request) -> JsonBody[HealthOut]:
    problems = app_state(request).registry.liveness_problems()
    if problems:
        raise UnhealthyError("; ".join(problems))
    return JsonBody(health_ok())


@router.get(
    "/health/ready",
    response_model=HealthOut,
    responses=openapi_error_responses(NotReadyError),
    tags=["health"],
    summary="Every model loaded and warmed up; 503 with reasons otherwise",
)
async def ready(request: Request) -> JsonBody[HealthOut]:
    problems = app_state(request).registry.readiness_problems()
    if problems:
        raise NotReadyError("; ".join(problems))
    return JsonBody(health_ok())


@router.get(
    "/metrics",
    responses=openapi_error_responses(UnauthorizedError),
    tags=["health"],
    summary="Prometheus metrics (needs the API key unless metrics_public)",
    response_class=Response,
)
async def metrics(request: Request) -> Response:
    body, content_type = app_state(request).metrics.render()
    return Response(body, media_type=content_type)


# --- repository control ---------------------------------------------------------------------------

_CONTROL_ERRORS = openapi_error_responses(
    UnauthorizedError, ForbiddenError, ModelNotFoundError, NotReadyError
)


def reload_body(outcomes: Sequence[ReloadOutcome]) -> ReloadResponse:
    models: list[ReloadedModel] = []
    for o in outcomes:
        entry: ReloadedModel = {"name": o.name, "result": o.result, "version": o.version}
        if o.error is not None:
            entry["error"] = o.error
        models.append(entry)
    return {"models": models}


def _repository_control(state: AppState) -> ModelRegistry:
    """Repository control changes what is served: only with an API key (which the middleware has
    checked by now), never on an open deployment."""
    if state.settings.api_key is None:
        raise ForbiddenError(
            "repository control needs an API key: set BERTSERVE_API_KEY (the reload endpoints are off "
            "without one; BERTSERVE_REPOSITORY_POLL_S reloads without any endpoint)"
        )
    return state.registry


@router.post(
    "/v1/repository/reload",
    response_model=ReloadResponse,
    responses=_CONTROL_ERRORS,
    tags=["repository"],
    summary="Reload every served model whose model.yaml changed, without a restart (needs the API key)",
)
async def reload_repository(request: Request) -> JsonBody[ReloadResponse]:
    return JsonBody(reload_body(await _repository_control(app_state(request)).reload()))


@router.post(
    "/v1/repository/models/{model}/load",
    response_model=ReloadResponse,
    responses=_CONTROL_ERRORS,
    tags=["repository"],
    summary="Reload one served model from the repository (needs the API key)",
)
async def load_model(model: str, request: Request) -> JsonBody[ReloadResponse]:
    return JsonBody(reload_body(await _repository_control(app_state(request)).reload([model])))
