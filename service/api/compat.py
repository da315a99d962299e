"""The routes other servers' clients already speak, over the same pipelines as the native routes.

- **TEI** (Hugging Face Text Embeddings Inference): `/embed`, `/predict`, `/rerank`, `/tokenize`,
  `/info`, with TEI's request and response shapes and its error body `{"error", "error_type"}`
  (413 / 422 / 424 / 429). The model is the deployment's default for the route
  (`BERTSERVE_DEFAULT_EMBEDDING_MODEL`, `..._CLASSIFICATION_MODEL`, `..._RERANK_MODEL`; each
  defaults to the one served model that fits). `/embed_all` (per-token vectors) is not offered:
  the served graphs pool inside the model.
- **Hugging Face Inference API** shape: `POST /models/{model}` (and
  `/models/{model}/pipeline/feature-extraction`) with `{"inputs", "parameters"}`, answered by the
  model's task: what `huggingface_hub.InferenceClient` sends to a URL for text_classification,
  token_classification and feature_extraction.
- **OpenAI** `POST /v1/embeddings` with OpenAI's body, float or base64 vectors, `dimensions`,
  usage, and OpenAI's error body.

Every route counts in the same metrics (its own `endpoint` label), obeys the same limits and
deadlines, and is batched with every other route's sequences of the same model.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal, cast

import numpy as np
from fastapi import APIRouter, Request
from pydantic import ConfigDict, Field, StrictBool
from typing_extensions import TypedDict

from bertserve.service.api.errors import ErrorStyle, openapi_error_responses
from bertserve.service.api.routes import (
    INFERENCE_ERROR_TYPES,
    AppState,
    JsonBody,
    RequestTimeoutHeader,
    app_state,
    embeddings_of,
    observe_request,
    ranked,
    rerank_scores,
    timeout_s,
    tokens_of,
    unless_disconnected,
)
from bertserve.service.api.schemas import Count, PositiveCount, RankedOut, RequestBody, Text, TextPair
from bertserve.service.errors import (
    InvalidInputError,
    ModelNotFoundError,
    UnauthorizedError,
    UnsupportedTaskError,
)
from bertserve.service.heads.classification import Activation, LabelScore
from bertserve.service.heads.token_classification import DEFAULT_IGNORE_LABELS, AggregationStrategy, Entity
from bertserve.service.limits import normalize_inputs
from bertserve.service.pipeline import (
    ClassificationPipeline,
    EmbeddingPipeline,
    TokenClassificationPipeline,
)
from bertserve.service.tokenization import Encoded, TextInput

_ERRORS = openapi_error_responses(*INFERENCE_ERROR_TYPES, style=ErrorStyle.TEI)
_OPENAI_ERRORS = openapi_error_responses(*INFERENCE_ERROR_TYPES, style=ErrorStyle.OPENAI)
router = APIRouter()


# --- shared rules -------------------------------------------------------------------------------


# TEI cuts either end of a text; bertserve cuts the end only, so the schema offers only "Right", and
# TEI's `prompt_name` (prompts stored with the model) is not offered at all: both are refused (422)
# by validation rather than ignored.
Direction = Annotated[
    Literal["Right", "right"] | None, Field(description="Only Right: the end of a text is cut.")
]


def _label_scores(row: list[LabelScore]) -> list[TeiPrediction]:
    return [{"label": s.label, "score": s.score} for s in row]


# --- TEI request bodies -------------------------------------------------------------------------

TokenIds = Annotated[list[int], Field(min_length=1)]


class TeiEmbedRequest(RequestBody):
    model_config = ConfigDict(extra="forbid")

    inputs: Text | Annotated[list[Text], Field(min_length=1)] = Field(
        description="A text or a list of texts."
    )
    normalize: StrictBool = Field(True, description="L2-normalize (TEI's default: true).")
    truncate: StrictBool | None = Field(
        None, description="Cut texts over max_length (TEI's default: refuse, 413)."
    )
    truncation_direction: Direction = None
    dimensions: PositiveCount | None = Field(
        None, description="Matryoshka truncation to this many dimensions."
    )


class PredictParameters(RequestBody):
    """The Hugging Face Inference API's text-classification parameters (huggingface_hub's
    `text_classification` sends them to /predict)."""

    model_config = ConfigDict(extra="forbid")

    top_k: PositiveCount | None = None
    function_to_apply: Activation | None = None


class TeiPredictRequest(RequestBody):
    model_config = ConfigDict(extra="forbid")

    inputs: Text | TextPair | Annotated[list[Text | TextPair], Field(min_length=1)] = Field(
        description="A text, a pair [a, b] (a list of exactly two texts is a pair, as in TEI), or a "
        "list of texts and pairs."
    )
    raw_scores: StrictBool = Field(False, description="Logits instead of probabilities.")
    parameters: PredictParameters | None = Field(
        None,
        description="The HF Inference API's shape: with it, every input answers a list (as that API "
        "does), `top_k` labels, `function_to_apply` instead of raw_scores.",
    )
    truncate: StrictBool | None = None
    truncation_direction: Direction = None


class TeiRerankRequest(RequestBody):
    model_config = ConfigDict(extra="forbid")

    query: Text
    texts: Annotated[list[Text], Field(min_length=1)]
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool | None = None
    truncation_direction: Direction = None


class TeiTokenizeRequest(RequestBody):
    model_config = ConfigDict(extra="forbid")

    inputs: Text | Annotated[list[Text], Field(min_length=1)]
    add_special_tokens: StrictBool = True


# --- TEI response bodies ------------------------------------------------------------------------


class TeiPrediction(TypedDict):
    label: str
    score: float


class TeiToken(TypedDict):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class TeiEmbeddingType(TypedDict):
    pooling: str


class TeiClassifierType(TypedDict):
    id2label: dict[str, str]
    label2id: dict[str, int]


class TeiModelType(TypedDict, total=False):
    embedding: TeiEmbeddingType
    classifier: TeiClassifierType
    reranker: TeiClassifierType


class TeiInfo(TypedDict):
    model_id: str
    model_sha: str | None
    model_dtype: str
    model_type: TeiModelType
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    tokenization_workers: int
    version: str
    backend: str


# --- TEI routes ---------------------------------------------------------------------------------


@router.post(
    "/embed",
    name="tei_embed",
    response_model=list[list[float]],
    responses=_ERRORS,
    tags=["tei"],
    summary="TEI: embeddings of the default embedding model",
)
async def tei_embed(
    body: TeiEmbedRequest, request: Request, timeout_ms: RequestTimeoutHeader = None
) -> JsonBody[list[list[float]]]:
    state = app_state(request)
    with observe_request(request, _label(state, "embedding"), "tei_embed"):
        out = await embeddings_of(
            request,
            state,
            state.registry.default_model("embedding"),
            body.inputs,
            normalize=body.normalize,
            dimensions=body.dimensions,
            truncate=bool(body.truncate),
            timeout_ms=timeout_ms,
        )
        return JsonBody(out.vectors.tolist())


def _predict_inputs(raw: str | tuple[str, str] | list[str | tuple[str, str]]) -> tuple[list[TextInput], bool]:
    """(inputs, whether the request was one input): TEI reads a list of exactly two texts as one
    pair, anything else as a batch."""
    if isinstance(raw, str):
        return [raw], True
    if isinstance(raw, tuple):
        return [raw], True
    if len(raw) == 2 and all(isinstance(x, str) for x in raw):
        return [(cast(str, raw[0]), cast(str, raw[1]))], True
    return list(raw), False


@router.post(
    "/predict",
    name="tei_predict",
    response_model=list[TeiPrediction] | list[list[TeiPrediction]],
    responses=_ERRORS,
    tags=["tei"],
    summary="TEI: classify with the default classification model (one input: a flat list)",
)
async def tei_predict(
    body: TeiPredictRequest, request: Request, timeout_ms: RequestTimeoutHeader = None
) -> JsonBody[list[TeiPrediction] | list[list[TeiPrediction]]]:
    state = app_state(request)
    with observe_request(request, _label(state, "classification"), "tei_predict"):
        model = state.registry.default_model("classification")
        pipeline = state.registry.get(model, ClassificationPipeline)
        inputs, single = _predict_inputs(body.inputs)
        normalize_inputs(inputs, state.settings)
        params = body.parameters
        if params is not None and body.raw_scores:
            raise InvalidInputError("send raw_scores or parameters.function_to_apply, not both")
        out = await unless_disconnected(
            request,
            pipeline.classify(
                inputs,
                top_k=params.top_k if params is not None else None,
                truncate=bool(body.truncate),
                timeout_s=timeout_s(timeout_ms),
                function="none" if body.raw_scores else (params.function_to_apply if params else None),
            ),
        )
        rows = [_label_scores(row) for row in out.results]
        return JsonBody(rows[0] if single and params is None else rows)


@router.post(
    "/rerank",
    name="tei_rerank",
    response_model=list[RankedOut],
    responses=_ERRORS,
    tags=["tei"],
    summary="TEI: rank texts against a query with the default rerank model, most relevant first",
)
async def tei_rerank(
    body: TeiRerankRequest, request: Request, timeout_ms: RequestTimeoutHeader = None
) -> JsonBody[list[RankedOut]]:
    state = app_state(request)
    with observe_request(request, _label(state, "rerank"), "tei_rerank"):
        model = state.registry.default_model("rerank")
        texts = list(body.texts)
        out = await rerank_scores(
            request,
            state,
            model,
            body.query,
            texts,
            raw_scores=body.raw_scores,
            # NOTE: TEI refuses an over-long pair unless truncate; bertserve's rerank cuts by default,
            # which TEI's clients (which send truncate=false only on purpose) cannot tell apart.
            truncate=body.truncate is not False,
            timeout_ms=timeout_ms,
        )
        # the native /rerank's results: TEI's shape is the same list
        return JsonBody(ranked(out, texts, None, body.return_text))


def _tei_tokens(enc: Encoded, text: str) -> list[TeiToken]:
    """The native /tokenize's tokens in TEI's shape: `stop` for `end`, no offsets on special tokens."""
    return [
        {"id": t["id"], "text": t["text"], "special": True, "start": None, "stop": None}
        if t["special"]
        else {"id": t["id"], "text": t["text"], "special": False, "start": t["start"], "stop": t["end"]}
        for t in tokens_of(enc, text)
    ]


def _label(state: AppState, role: str) -> str:
    """The metric label of a default-model route: its model, or "" (counted as unknown) when the
    route has none, so that the 404 it then answers is counted too."""
    try:
        return state.registry.default_model(role)
    except ModelNotFoundError:
        return ""


def _tokenizer_model(state: AppState) -> str:
    """/tokenize and /info describe the default embedding model, else the classification one,
    else the first served model."""
    for role in ("embedding", "classification"):
        try:
            return state.registry.default_model(role)
        except ModelNotFoundError:
            continue
    first = state.registry.pipelines()
    if not first:
        raise ModelNotFoundError("no model is served")
    return first[0].name


@router.post(
    "/tokenize",
    name="tei_tokenize",
    response_model=list[list[TeiToken]],
    responses=_ERRORS,
    tags=["tei"],
    summary="TEI: the default model's tokens for each text",
)
async def tei_tokenize(body: TeiTokenizeRequest, request: Request) -> JsonBody[list[list[TeiToken]]]:
    state = app_state(request)
    try:
        label = _tokenizer_model(state)
    except ModelNotFoundError:
        label = ""
    with observe_request(request, label, "tei_tokenize"):
        model = _tokenizer_model(state)
        pipeline = state.registry.describe(model)
        texts = cast(list[str], normalize_inputs(body.inputs, state.settings))
        encodings = await pipeline.tokenize(texts, add_special_tokens=body.add_special_tokens)
        return JsonBody([_tei_tokens(enc, text) for text, enc in zip(texts, encodings, strict=True)])


@router.get(
    "/info",
    name="tei_info",
    response_model=TeiInfo,
    responses=openapi_error_responses(UnauthorizedError, ModelNotFoundError, style=ErrorStyle.TEI),
    tags=["tei"],
    summary="TEI: what the default model is and the server's limits",
)
async def tei_info(request: Request) -> JsonBody[TeiInfo]:
    from importlib.metadata import version

    state = app_state(request)
    pipeline = state.registry.describe(_tokenizer_model(state))
    config, settings = pipeline.config, state.settings
    model_type: TeiModelType
    if config.embedding is not None:
        model_type = {"embedding": {"pooling": str(config.embedding.pooling)}}
    else:
        classes: TeiClassifierType = {
            "id2label": {str(i): label for i, label in enumerate(config.labels)},
            "label2id": {label: i for i, label in enumerate(config.labels)},
        }
        model_type = {"reranker": classes} if len(config.labels) == 1 else {"classifier": classes}
    limits = pipeline.batcher.limits
    return JsonBody(
        {
            "model_id": config.name,
            "model_sha": None,
            "model_dtype": str(pipeline.backend.precision),
            "model_type": model_type,
            "max_concurrent_requests": settings.max_inflight_requests,
            "max_input_length": config.max_length,
            "max_batch_tokens": limits.max_batch_tokens,
            "max_batch_requests": limits.max_batch_size,
            "max_client_batch_size": settings.max_inputs,
            "tokenization_workers": settings.tokenizer_threads,
            "version": version("bertserve"),
            "backend": pipeline.backend.name,
        }
    )


# --- Hugging Face Inference API shape -----------------------------------------------------------


class HfParameters(RequestBody):
    model_config = ConfigDict(extra="forbid")

    # text classification
    top_k: PositiveCount | None = None
    function_to_apply: Activation | None = None
    # token classification
    aggregation_strategy: AggregationStrategy | None = None
    ignore_labels: list[str] | None = None
    stride: Count | None = None
    # feature extraction (huggingface_hub sends these at the top level; accepted here as well)
    normalize: StrictBool | None = None
    truncate: StrictBool | None = None
    truncation_direction: Direction = None


class HfRequest(RequestBody):
    model_config = ConfigDict(extra="forbid")

    inputs: Text | Annotated[list[Text], Field(min_length=1)]
    parameters: HfParameters = Field(default_factory=HfParameters)
    options: dict[str, Any] | None = Field(
        None, description="Hub client options (wait_for_model...): ignored."
    )
    # feature-extraction parameters at the top level (huggingface_hub's feature_extraction)
    normalize: StrictBool | None = None
    truncate: StrictBool | None = None
    truncation_direction: Direction = None


class HfEntity(TypedDict):
    entity_group: str
    score: float
    word: str
    start: int
    end: int


HfAnswer = list[list[float]] | list[list[TeiPrediction]] | list[HfEntity] | list[list[HfEntity]]


def _hf_entity(e: Entity) -> HfEntity:
    return {"entity_group": e.label, "score": e.score, "word": e.text, "start": e.start, "end": e.end}


_PARAMETERS_OF = {
    "classification": {"top_k", "function_to_apply"},
    "tokens": {"aggregation_strategy", "ignore_labels", "stride"},
    "embedding": {"normalize", "truncate", "truncation_direction"},
}


def _refuse_foreign_parameters(body: HfRequest, pipeline: object) -> None:
    """A parameter of another task would be ignored: refused instead (422)."""
    top_level = body.model_fields_set & _PARAMETERS_OF["embedding"]  # huggingface_hub's placement
    given = body.parameters.model_fields_set | top_level
    kind = (
        "embedding"
        if isinstance(pipeline, EmbeddingPipeline)
        else "tokens"
        if isinstance(pipeline, TokenClassificationPipeline)
        else "classification"
    )
    foreign = sorted(given - _PARAMETERS_OF[kind])
    if foreign:
        raise InvalidInputError(f"parameters {foreign} do not apply to this model's task")


async def _hf_answer(model: str, body: HfRequest, request: Request, timeout_ms: float | None) -> HfAnswer:
    state = app_state(request)
    params = body.parameters
    pipeline = state.registry.describe(model)
    single = isinstance(body.inputs, str)
    _refuse_foreign_parameters(body, pipeline)
    if isinstance(pipeline, EmbeddingPipeline):
        normalize = body.normalize if body.normalize is not None else params.normalize
        truncate = body.truncate if body.truncate is not None else params.truncate
        out = await embeddings_of(
            request,
            state,
            model,
            body.inputs,  # embeddings_of applies the input limits
            normalize=normalize,
            dimensions=None,
            truncate=truncate is not False,
            timeout_ms=timeout_ms,
        )
        return cast(list[list[float]], out.vectors.tolist())
    texts = cast(list[str], normalize_inputs(body.inputs, state.settings))
    if isinstance(pipeline, ClassificationPipeline):
        pipeline = state.registry.get(model, ClassificationPipeline)
        result = await unless_disconnected(
            request,
            pipeline.classify(
                texts,
                top_k=params.top_k,
                function=params.function_to_apply,
                timeout_s=timeout_s(timeout_ms),
            ),
        )
        return [_label_scores(row) for row in result.results]
    if isinstance(pipeline, TokenClassificationPipeline):
        if params.stride is not None:
            raise InvalidInputError(
                "stride is the server's setting (BERTSERVE_NER_STRIDE), not a request parameter; leave it out"
            )
        pipeline = state.registry.get(model, TokenClassificationPipeline)
        entities = await unless_disconnected(
            request,
            pipeline.recognize(
                texts,
                strategy=params.aggregation_strategy or AggregationStrategy.SIMPLE,
                ignore_labels=tuple(
                    params.ignore_labels if params.ignore_labels is not None else DEFAULT_IGNORE_LABELS
                ),
                timeout_s=timeout_s(timeout_ms),
            ),
        )
        rows = [[_hf_entity(e) for e in row] for row in entities]
        return rows[0] if single else rows
    raise UnsupportedTaskError(f"model {model!r} is a {pipeline.config.task} model, not served on this route")


@router.post(
    "/models/{model}",
    name="hf_inference",
    response_model=HfAnswer,
    responses=_ERRORS,
    tags=["hf-inference"],
    summary="Hugging Face Inference API shape: {inputs, parameters}, answered by the model's task",
)
async def hf_inference(
    model: str, body: HfRequest, request: Request, timeout_ms: RequestTimeoutHeader = None
) -> JsonBody[HfAnswer]:
    with observe_request(request, model, "hf_inference"):
        return JsonBody(await _hf_answer(model, body, request, timeout_ms))


@router.post(
    "/models/{model}/pipeline/feature-extraction",
    name="hf_feature_extraction",
    response_model=list[list[float]],
    responses=_ERRORS,
    tags=["hf-inference"],
    summary="Hugging Face Inference API shape: embeddings of a feature-extraction model",
)
async def hf_feature_extraction(
    model: str, body: HfRequest, request: Request, timeout_ms: RequestTimeoutHeader = None
) -> JsonBody[list[list[float]]]:
    with observe_request(request, model, "hf_feature_extraction"):
        state = app_state(request)
        state.registry.get(model, EmbeddingPipeline)  # 400 for another task, before any work
        return JsonBody(cast(list[list[float]], await _hf_answer(model, body, request, timeout_ms)))


# --- OpenAI embeddings --------------------------------------------------------------------------


class OpenAiEmbeddingsRequest(RequestBody):
    model_config = ConfigDict(extra="forbid")

    input: (
        Text
        | Annotated[list[Text], Field(min_length=1)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1)]
    ) = Field(description="A text, a list of texts, a list of token ids, or a list of those lists.")
    model: str = Field(description="A served feature-extraction model's name.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector as little-endian float32 bytes."
    )
    dimensions: PositiveCount | None = Field(
        None, description="Matryoshka truncation to this many dimensions."
    )
    user: str | None = Field(None, description="Accepted and ignored (OpenAI's end-user id).")


class OpenAiEmbedding(TypedDict):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class OpenAiUsage(TypedDict):
    prompt_tokens: int
    total_tokens: int


class OpenAiEmbeddingsResponse(TypedDict):
    object: Literal["list"]
    data: list[OpenAiEmbedding]
    model: str
    usage: OpenAiUsage


def _openai_inputs(raw: str | list[str] | list[int] | list[list[int]]) -> list[str] | list[list[int]]:
    if isinstance(raw, str):
        return [raw]
    if raw and isinstance(raw[0], int):
        return [raw]
    return cast(list[str] | list[list[int]], raw)


def _b64(vector: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


@router.post(
    "/v1/embeddings",
    name="openai_embeddings",
    response_model=OpenAiEmbeddingsResponse,
    responses=_OPENAI_ERRORS,
    tags=["openai"],
    summary="OpenAI: embeddings (float or base64), with usage",
)
async def openai_embeddings(
    body: OpenAiEmbeddingsRequest, request: Request, timeout_ms: RequestTimeoutHeader = None
) -> JsonBody[OpenAiEmbeddingsResponse]:
    state = app_state(request)
    model = body.model
    with observe_request(request, model, "openai_embeddings"):
        if model not in state.registry:
            raise ModelNotFoundError(
                "no such model is served; /v1/models lists the served ones (name a feature-extraction model)"
            )
        # OpenAI's vectors are unit length; a too-long input is an error there (truncate=False)
        out = await embeddings_of(
            request,
            state,
            model,
            _openai_inputs(body.input),
            normalize=True,
            dimensions=body.dimensions,
            truncate=False,
            timeout_ms=timeout_ms,
        )
        data: list[OpenAiEmbedding] = [
            {
                "object": "embedding",
                "index": i,
                "embedding": _b64(vector) if body.encoding_format == "base64" else vector.tolist(),
            }
            for i, vector in enumerate(out.vectors)
        ]
        return JsonBody(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": out.tokens, "total_tokens": out.tokens},
            }
        )
