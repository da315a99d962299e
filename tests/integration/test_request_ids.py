"""Request ids and the access log: every answer carries an `X-Request-Id` (the client's, or a new
one), the error envelope and every log line about the request carry the same id, and with the
access log on each request is one line with its model, endpoint, sequences and tokens."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from bertserve.runtime.fake import FaultHooks
from bertserve.service.logs import ACCESS_LOGGER, JsonFormatter, RequestIdFilter
from bertserve.service.settings import Settings
from tests.helpers.asgi import AppStarter
from tests.helpers.fake_repo import FakeBackends, write_fake_repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_repo(tmp_path_factory.mktemp("request-id-repo"))


async def start(start_app: AppStarter, repo: Path, faults: FaultHooks | None = None, **overrides: Any) -> Any:
    settings = Settings(repo=repo, backend="fake", **overrides)  # type: ignore[arg-type]
    return (
        await start_app.start(settings, FakeBackends(faults or FaultHooks()), raise_app_exceptions=False)
    ).client


async def test_every_answer_carries_the_clients_id_or_a_new_one(start_app: AppStarter, repo: Path) -> None:
    client = await start(start_app, repo)
    mine = await client.post(
        "/v1/models/cls/classify", json={"inputs": "a"}, headers={"X-Request-Id": "abc-123"}
    )
    assert mine.status_code == 200 and mine.headers["x-request-id"] == "abc-123"
    fresh = [(await client.get("/health/live")).headers["x-request-id"] for _ in range(2)]
    assert fresh[0] != fresh[1] and all(len(x) == 32 for x in fresh)
    # not a plain token (spaces, over 128 characters): replaced, never echoed
    for bad in ("a b", "x" * 129, "<script>"):
        r = await client.post("/v1/models/cls/classify", json={"inputs": "a"}, headers={"X-Request-Id": bad})
        assert r.headers["x-request-id"] != bad and len(r.headers["x-request-id"]) == 32
    error = await client.post(
        "/v1/models/nope/classify", json={"inputs": "a"}, headers={"X-Request-Id": "e-1"}
    )
    assert error.status_code == 404 and error.json()["error"]["request_id"] == "e-1"
    invalid = await client.post(
        "/v1/models/cls/classify", json={"inputs": 3}, headers={"X-Request-Id": "e-2"}
    )
    assert invalid.status_code == 422 and invalid.json()["error"]["request_id"] == "e-2"
    tei = await client.post("/embed", json={"inputs": "a"}, headers={"X-Request-Id": "e-3"})
    assert tei.headers["x-request-id"] == "e-3"  # the TEI dialect keeps its body; the header is there


async def test_a_failed_batch_answers_with_the_id_in_header_and_body(
    start_app: AppStarter, repo: Path
) -> None:
    faults = FaultHooks()
    client = await start(start_app, repo, faults)
    faults.fail_always = True
    r = await client.post("/v1/models/cls/classify", json={"inputs": "a"}, headers={"X-Request-Id": "fail-7"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "fail-7"
    assert r.json()["error"] == {
        "type": "inference_error",
        "message": r.json()["error"]["message"],
        "request_id": "fail-7",
    }
    faults.fail_always = False


async def test_the_access_log_has_one_line_per_request_with_model_sequences_and_tokens(
    start_app: AppStarter, repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = await start(start_app, repo, access_log=True)
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        await client.post(
            "/v1/models/ner/ner",
            json={"inputs": ["Tim Cook visited Berlin.", "Paris."]},
            headers={"X-Request-Id": "acc-1"},
        )
        await client.post("/v1/models/cls/classify", json={"inputs": ["x"] * 33})  # 413: over max_inputs
        await client.get("/health/ready")
    lines = [rec for rec in caplog.records if rec.name == ACCESS_LOGGER]
    assert len(lines) == 3
    ner = lines[0].__dict__
    assert (ner["method"], ner["path"], ner["status"], ner["model"], ner["endpoint"]) == (
        "POST",
        "/v1/models/ner/ner",
        200,
        "ner",
        "ner",
    )
    assert ner["sequences"] == 2 and ner["tokens"] > 4 and ner["duration_ms"] >= 0
    assert "model=ner" in lines[0].getMessage() and "tokens=" in lines[0].getMessage()
    assert lines[1].__dict__["status"] == 413 and lines[2].__dict__["path"] == "/health/ready"
    assert "model" not in lines[2].__dict__
    assert getattr(lines[0], "request_id", None) == "acc-1"  # logged while the request was served
    record = json.loads(JsonFormatter().format(lines[0]))
    assert record["request_id"] == "acc-1"
    assert {"time", "level", "logger", "message", "status", "model", "sequences", "tokens"} <= set(record)


def test_json_lines_carry_the_request_id_and_the_exception() -> None:
    from bertserve.service.logs import REQUEST_ID

    token = REQUEST_ID.set("json-1")
    try:
        record = logging.LogRecord("bertserve.x", logging.ERROR, __file__, 1, "failed %s", ("batch",), None)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            import sys

            record.exc_info = sys.exc_info()
        RequestIdFilter().filter(record)
    finally:
        REQUEST_ID.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "failed batch" and line["level"] == "ERROR" and line["request_id"] == "json-1"
    assert "RuntimeError: boom" in line["exception"]
    outside = logging.LogRecord("bertserve.x", logging.INFO, __file__, 1, "idle", (), None)
    RequestIdFilter().filter(outside)
    assert json.loads(JsonFormatter().format(outside))["request_id"] is None
