"""The response bodies' TypedDicts: the error envelope builder, and the definitions shared with the heads."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from bertserve.service.api import compat, schemas
from bertserve.service.heads import token_classification


def test_error_envelope_is_an_error_envelope() -> None:
    body = schemas.error_envelope("queue_full", "queue full; retry later")
    assert TypeAdapter(schemas.ErrorEnvelope).validate_python(body, strict=True) == body
    assert body == {"error": {"type": "queue_full", "message": "queue full; retry later"}}


def test_entity_body_is_defined_once_beside_the_head_that_builds_it() -> None:
    assert schemas.EntityOut is token_classification.EntityOut


def test_documented_examples_are_valid_bodies() -> None:
    for body_cls in (schemas.NerResponse, schemas.ClassifyResponse, schemas.ModelInfo, schemas.ErrorEnvelope):
        (example,) = TypeAdapter(body_cls).json_schema()["examples"]
        assert TypeAdapter(body_cls).validate_python(example, strict=True) == example, body_cls.__name__


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [
        (schemas.ClassifyRequest, {"inputs": "x"}, "top_k"),
        (schemas.EmbedRequest, {"inputs": "x"}, "dimensions"),
        (schemas.RerankRequest, {"query": "q", "texts": ["t"]}, "top_n"),
        (compat.TeiEmbedRequest, {"inputs": "x"}, "dimensions"),
        (compat.PredictParameters, {}, "top_k"),
        (compat.HfParameters, {}, "top_k"),
        (compat.HfParameters, {}, "stride"),
    ],
)
def test_counts_are_integers_never_booleans_or_strings(
    model: type[BaseModel], body: dict[str, object], field: str
) -> None:
    assert getattr(model.model_validate({**body, field: 2}), field) == 2
    assert getattr(model.model_validate({**body, field: 2.0}), field) == 2  # a JSON Schema integer
    bounded = field != "stride"  # the other counts are at least 1
    for wrong in (True, "2", 2.5, *((0,) if bounded else ())):
        with pytest.raises(ValidationError):
            model.model_validate({**body, field: wrong})
