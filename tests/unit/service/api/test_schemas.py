"""The response bodies' TypedDicts: the error envelope builder, and the definitions shared with the heads."""

from __future__ import annotations

from pydantic import TypeAdapter

from bertserve.service.api import schemas
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
