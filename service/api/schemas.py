"""The public HTTP contract: pydantic request models and the TypedDicts every response body is
built as, with the examples shown at /docs."""

from __future__ import annotations

from typing import Annotated, Any, NotRequired

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from bertserve.modelrepo import Segmentation
from bertserve.service.heads.token_classification import DEFAULT_IGNORE_LABELS, AggregationStrategy, EntityOut
from bertserve.service.logs import REQUEST_ID
from bertserve.service.pipeline import LongText


def _plain_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # JSON may escape a lone surrogate (\ud800) that no UTF-8 tokenizer can take.
            raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


# The pattern documents the NUL rule in OpenAPI (so generated clients and fuzzers know it);
# `_plain_text` enforces it with a readable message.
Text = Annotated[
    str,
    StringConstraints(min_length=1),
    AfterValidator(_plain_text),
    Field(json_schema_extra={"pattern": "^[^\u0000]*$"}),
]
TextPair = tuple[Text, Text]


def _number_not_switch(value: Any) -> Any:
    if isinstance(value, bool | str):
        raise ValueError("must be an integer (not a boolean or a string)")
    return value


# A count in a request: a JSON integer (563.0 is one too, as JSON Schema reads it), never `true` or
# "2", which pydantic would otherwise read as 1 and 2, against the schema.
Count = Annotated[int, BeforeValidator(_number_not_switch)]
# NOTE: the bound sits before the validator, inside the Annotated: applied to the plain int there,
# it is documented as JSON Schema's `minimum` (a `ge=1` on the field would not be).
PositiveCount = Annotated[int, Field(ge=1), BeforeValidator(_number_not_switch)]


class RequestBody(BaseModel):
    """A request body: unknown fields are refused with one error, before any field is validated.
    Switches are `StrictBool`: `true`/`false` only, never 0, 1 or "yes" (which pydantic would
    otherwise read as booleans, against the schema); counts are `Count`s.

    NOTE: with only `extra="forbid"` pydantic reports one error per unknown key, and a 2 MB body of
    150,000 keys then costs 1.5 s of validation on the event loop, stalling every other request."""

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sum(1 for key in data if key not in cls.model_fields)
            if unknown:
                # NOTE: the keys are input: counted, never echoed.
                known = ", ".join(cls.model_fields)
                raise ValueError(f"{unknown} unknown field(s); the body takes {known}")
        return data


class ClassifyRequest(RequestBody):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"inputs": "I loved this film."},
                {"inputs": ["great acting", "a dull, overlong mess"], "top_k": 1},
                {"inputs": [["A man is playing a guitar.", "Someone makes music."]], "truncate": True},
            ]
        },
    )

    inputs: (
        Text | Annotated[list[Text], Field(min_length=1)] | Annotated[list[TextPair], Field(min_length=1)]
    ) = Field(description="One text, a list of texts, or a list of [text_a, text_b] pairs.")
    top_k: PositiveCount | None = Field(None, description="Labels per input, best first; null = all labels.")
    truncate: StrictBool = Field(
        True,
        description="Cut inputs longer than the model's max_length (the response lists them); "
        "false = what `long_text` says.",
    )
    long_text: LongText = Field(
        LongText.ERROR,
        description="With truncate=false, an input longer than the model: error (413) or windows "
        "(single texts: read in overlapping windows that batch like any sequence, their logits "
        "pooled as the model's window_pooling says, mean or max per label; a text pair is never "
        "windowed: one over the model is refused, 413).",
    )


class NerRequest(RequestBody):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"inputs": "Angela Merkel met Emmanuel Macron in Paris to talk about Airbus."},
                {"inputs": ["Tim Cook visited Berlin.", "No entities here."], "aggregation": "first"},
                {"inputs": "Ada Lovelace was born in London.", "aggregation": "none"},
                {"inputs": "Tim Cook visited Berlin. Then he flew to Rome.", "segmentation": "sentences"},
            ]
        },
    )

    inputs: Text | Annotated[list[Text], Field(min_length=1)] = Field(
        description="One text or a list of texts. Texts longer than the model's max_length are "
        "read in overlapping windows; entity offsets always refer to the text as sent."
    )
    aggregation: AggregationStrategy = Field(
        AggregationStrategy.SIMPLE,
        description="How token predictions become entities, with the semantics of the transformers "
        "token-classification pipeline: none (one entry per token), simple, first, average, max "
        "(the last three never split a word).",
    )
    ignore_labels: list[str] = Field(
        default_factory=lambda: list(DEFAULT_IGNORE_LABELS),
        description="Entity types (or, with aggregation none, tags) left out of the results.",
    )
    segmentation: Segmentation | None = Field(
        None,
        description="none: each text is read whole (in overlapping windows when long); lines / "
        "sentences: each line / sentence is its own sequence, as sentence-level taggers were "
        "trained. Default: the model's setting (model.yaml `segmentation`).",
    )


class EmbedRequest(RequestBody):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"inputs": "A man is playing a guitar."},
                {"inputs": ["first text", "second text"], "dimensions": 128},
            ]
        },
    )

    inputs: Text | Annotated[list[Text], Field(min_length=1)] = Field(
        description="One text or a list of texts."
    )
    normalize: StrictBool | None = Field(
        None, description="L2-normalize each vector. Default: the model's setting (model.yaml)."
    )
    dimensions: PositiveCount | None = Field(
        None,
        description="Keep the first this many dimensions (Matryoshka models), normalized after the cut.",
    )
    truncate: StrictBool = Field(
        True,
        description="Cut inputs longer than the model's max_length (the response lists them); "
        "false = answer 413 instead.",
    )


class RerankRequest(RequestBody):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "query": "What is the capital of France?",
                    "texts": ["Paris is the capital of France.", "Berlin is in Germany."],
                    "return_text": True,
                }
            ]
        },
    )

    query: Text
    texts: Annotated[list[Text], Field(min_length=1)] = Field(description="The documents to rank.")
    top_n: PositiveCount | None = Field(None, description="Keep the best this many; null = all.")
    raw_scores: StrictBool = Field(
        False, description="Cross-encoders: the raw logit instead of its sigmoid (no effect on cosine)."
    )
    return_text: StrictBool = Field(False, description="Echo each document's text in its result.")
    truncate: StrictBool = Field(
        True, description="Cut (query, text) inputs longer than the model's max_length."
    )


class TokenizeRequest(RequestBody):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"inputs": "Tokenize me, please."}]},
    )

    inputs: Text | Annotated[list[Text], Field(min_length=1)] = Field(
        description="One text or a list of texts."
    )
    add_special_tokens: StrictBool = Field(
        True, description="Include [CLS]/[SEP]-style tokens, as the model reads."
    )
    truncate: StrictBool = Field(
        False, description="Cut at the model's max_length, as the inference routes do."
    )


# --- response bodies ---------------------------------------------------------------------------
# NOTE: each body has one definition, a TypedDict: the routes (and `Entity.as_dict` for entities)
# build exactly these types, so mypy checks every key and value type of every body, and FastAPI
# generates the OpenAPI schemas from the same classes (`response_model=`). A TypedDict is a plain
# dict at run time: bodies are still serialised straight to bytes, with no validation per request.
# Docstrings become schema descriptions, so only a class whose schema has one carries one.
# NotRequired marks what the schema leaves optional; the builders still always send those keys.


@with_config(
    ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "ner",
                    "results": [
                        [
                            {
                                "entity_group": "PER",
                                "score": 0.99,
                                "start": 0,
                                "end": 13,
                                "text": "Angela Merkel",
                            },
                            {"entity_group": "LOC", "score": 0.98, "start": 37, "end": 42, "text": "Paris"},
                        ]
                    ],
                }
            ]
        }
    )
)
class NerResponse(TypedDict):
    model: str
    results: Annotated[list[list[EntityOut]], Field(description="One list per input, in text order.")]


class LabelScoreOut(TypedDict):
    label: str
    score: float
    above_threshold: NotRequired[
        Annotated[bool, Field(description="With thresholds in model.yaml: whether this label is decided.")]
    ]


@with_config(
    ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "sst2",
                    "results": [
                        [{"label": "positive", "score": 0.998}, {"label": "negative", "score": 0.002}]
                    ],
                    "truncated": [],
                    "windowed": [],
                }
            ]
        }
    )
)
class ClassifyResponse(TypedDict):
    model: str
    results: Annotated[
        list[list[LabelScoreOut]], Field(description="One list per input, highest score first.")
    ]
    truncated: NotRequired[
        Annotated[list[int], Field(description="Indices of inputs that were cut to the model's max_length.")]
    ]
    windowed: NotRequired[
        Annotated[
            list[int],
            Field(description="Indices of inputs read in overlapping windows (long_text: windows)."),
        ]
    ]


class UsageOut(TypedDict):
    tokens: Annotated[int, Field(description="Tokens the model read, special tokens included.")]


@with_config(
    ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "embed",
                    "dimensions": 4,
                    "embeddings": [[0.12, -0.5, 0.33, 0.79]],
                    "usage": {"tokens": 9},
                    "truncated": [],
                }
            ]
        }
    )
)
class EmbedResponse(TypedDict):
    model: str
    dimensions: int
    embeddings: Annotated[list[list[float]], Field(description="One vector per input, in input order.")]
    usage: UsageOut
    truncated: NotRequired[
        Annotated[list[int], Field(description="Indices of inputs that were cut to the model's max_length.")]
    ]


class RankedOut(TypedDict):
    index: Annotated[int, Field(description="Position of the document in the request's texts.")]
    score: float
    text: NotRequired[str]


@with_config(
    ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "embed",
                    "results": [
                        {"index": 0, "score": 0.82, "text": "Paris is the capital of France."},
                        {"index": 1, "score": 0.11, "text": "Berlin is in Germany."},
                    ],
                    "truncated": [],
                }
            ]
        }
    )
)
class RerankResponse(TypedDict):
    model: str
    results: Annotated[list[RankedOut], Field(description="Documents, most relevant first.")]
    truncated: NotRequired[
        Annotated[list[int], Field(description="Indices of texts whose input was cut to max_length.")]
    ]


class TokenOut(TypedDict):
    id: int
    text: str
    special: bool
    start: Annotated[int, Field(description="First character in the input (0 for special tokens).")]
    end: Annotated[int, Field(description="Character after the last (0 for special tokens).")]


class TokenizedOut(TypedDict):
    tokens: list[TokenOut]
    count: int
    truncated: bool


class TokenizeResponse(TypedDict):
    model: str
    results: Annotated[list[TokenizedOut], Field(description="One entry per input, in input order.")]


class EmbeddingOut(TypedDict):
    """Feature extraction: how the graph pools and the vector's width."""

    pooling: str
    normalize: bool
    dimensions: int


class BatchingOut(TypedDict):
    max_batch_size: int
    max_batch_tokens: int
    max_queue_delay_ms: float
    max_queue_size: int


class GateOut(TypedDict):
    """The export gate's figures of the served low-precision artifact (model.yaml)."""

    passed: bool
    agreement: Annotated[float, Field(description="Share of decisions agreeing with PyTorch.")]
    min_agreement: float
    metric: Annotated[str | None, Field(description="Eval-file metric (accuracy, entity_f1), if scored.")]
    drop_points: Annotated[float | None, Field(description="PyTorch minus the artifact, in points.")]
    max_drop_points: float | None
    speedup: Annotated[float | None, Field(description="Times faster than fp32 at export.")]
    needs: Annotated[list[str], Field(description="CPU features it needs (vnni, bf16).")]
    variant: str | None


class LimitsOut(TypedDict):
    """What one request may ask of this model; above any of them the answer is 413."""

    max_inputs: Annotated[int, Field(description="Inputs (texts or pairs) per request.")]
    max_input_chars: Annotated[int, Field(description="Characters per input.")]
    max_request_sequences: Annotated[
        int, Field(description="Sequences (texts, sentences, windows of long texts) one request may become.")
    ]
    max_request_tokens: Annotated[
        int, Field(description="Tokens one request may run, window overlaps included.")
    ]


@with_config(
    ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "sst2",
                    "version": 1,
                    "versions": [1],
                    "task": "text-classification",
                    "problem_type": "single_label_classification",
                    "labels": ["negative", "positive"],
                    "backend": "onnxruntime-cpu",
                    "precision": "int8",
                    "precision_reason": "int8: VNNI present (avx512_vnni), gate passed -0.23 pt accuracy, "
                    "99.5% agreement, 2.31x fp32 at export",
                    "gate": {
                        "passed": True,
                        "agreement": 0.995,
                        "min_agreement": 0.99,
                        "metric": "accuracy",
                        "drop_points": 0.23,
                        "max_drop_points": 0.5,
                        "speedup": 2.31,
                        "needs": ["vnni"],
                        "variant": "ort-dynamic u8s8 per-channel",
                    },
                    "max_length": 128,
                    "batching": {
                        "max_batch_size": 32,
                        "max_batch_tokens": 8192,
                        "max_queue_delay_ms": 2.0,
                        "max_queue_size": 1024,
                    },
                    "limits": {
                        "max_inputs": 32,
                        "max_input_chars": 100000,
                        "max_request_sequences": 1024,
                        "max_request_tokens": 65536,
                    },
                    "ready": True,
                }
            ]
        }
    )
)
class ModelInfo(TypedDict):
    name: str
    version: Annotated[int, Field(description="The version this describes (the default one unless asked).")]
    versions: Annotated[list[int], Field(description="Every served version (model.yaml's version_policy).")]
    task: str
    problem_type: str | None
    labels: list[str]
    tag_scheme: NotRequired[
        Annotated[str | None, Field(description="Token classification: IOB1, IOB2, BIOES or NONE.")]
    ]
    segmentation: NotRequired[
        Annotated[
            str | None,
            Field(
                description="Token classification: how a text is read by default (none, lines, sentences)."
            ),
        ]
    ]
    thresholds: NotRequired[
        Annotated[
            dict[str, float] | None,
            Field(description="Decision thresholds by label (model.yaml): answers mark above_threshold."),
        ]
    ]
    embedding: NotRequired[Annotated[EmbeddingOut | None, Field(description="Feature extraction only.")]]
    backend: str
    precision: str
    precision_reason: NotRequired[
        Annotated[
            str | None,
            Field(description="Why this precision: `--precision auto`'s verdict for this CPU, or requested."),
        ]
    ]
    gate: NotRequired[
        Annotated[GateOut | None, Field(description="The export gate's figures of the served artifact.")]
    ]
    max_length: int
    batching: BatchingOut
    limits: LimitsOut
    ready: bool
    reload_error: NotRequired[
        Annotated[
            str | None,
            Field(
                description="Why the last reload of this model failed (the served version stays); "
                "null after one succeeds."
            ),
        ]
    ]


class ReloadedModel(TypedDict):
    name: str
    result: Annotated[str, Field(description="loaded, unchanged or failed")]
    version: Annotated[int, Field(description="The version serving after the reload.")]
    error: NotRequired[str]


class ReloadResponse(TypedDict):
    models: list[ReloadedModel]


class ModelList(TypedDict):
    models: list[ModelInfo]


class HealthOut(TypedDict):
    status: Annotated[str, Field(description="ok, or not_ready with reasons.")]
    reasons: NotRequired[list[str]]


class ErrorBody(TypedDict):
    type: Annotated[
        str, Field(description="Stable error kind, e.g. queue_full, model_not_found, invalid_input.")
    ]
    message: str
    request_id: NotRequired[
        Annotated[str, Field(description="The request's id, as in the X-Request-Id header and the logs.")]
    ]


@with_config(
    ConfigDict(
        json_schema_extra={
            "examples": [{"error": {"type": "queue_full", "message": "queue full; retry later"}}]
        }
    )
)
class ErrorEnvelope(TypedDict):
    error: ErrorBody


def error_envelope(error_type: str, message: str) -> ErrorEnvelope:
    """The body of every non-2xx answer, `{"error": {"type": ..., "message": ..., "request_id": ...}}`
    (the id of the request being answered, when there is one)."""
    request_id = REQUEST_ID.get()
    if request_id is None:
        return {"error": {"type": error_type, "message": message}}
    return {"error": {"type": error_type, "message": message, "request_id": request_id}}


class TeiError(TypedDict):
    """The error body of the TEI-compatible routes, as TEI answers."""

    error: str
    error_type: Annotated[str, Field(description="Validation, Overloaded, Unhealthy, Backend, ...")]


class OpenAiErrorBody(TypedDict):
    message: str
    type: Annotated[str, Field(description="invalid_request_error, rate_limit_error, server_error, ...")]
    param: str | None
    code: Annotated[str | None, Field(description="bertserve's stable error type.")]


class OpenAiError(TypedDict):
    """The error body of the OpenAI-compatible route, as OpenAI answers."""

    error: OpenAiErrorBody


class V2Error(TypedDict):
    """The error body of the Open Inference Protocol (v2) routes, as that protocol defines it."""

    error: str
