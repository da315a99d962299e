"""Property-based fuzzing of the HTTP contract from the service's own OpenAPI schema (schemathesis).

A real `bertserve serve` on loopback (fake backend, every task) gets schema-valid (positive) and
schema-violating (negative) requests for every operation. Each response must be free of server
errors and conform to the schema: documented status code, content type and body (the error
envelope included), and invalid input must be refused. The budget is fixed in examples, not time,
so CI runs the same amount of fuzzing on any machine (about 20 s on two cores).

That run caps characters per input so that it stays fast, and generated values stay small anyway,
so it cannot find what only size provokes. The hostile-size cases at the end go to a second service
with the default limits: inputs at the maximum count and length, texts that segment into tens of
thousands of sentences, lines or tokens, bodies at the byte limit, deeply nested or key-flooded JSON.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from bertserve.modelrepo import Segmentation, Task
from bertserve.service.settings import Settings
from tests.helpers.fake_repo import DEFAULT_SPECS, FakeModelSpec, write_fake_repo
from tests.helpers.service_process import ServiceProcess, start_service

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION_AND_MODE = 250
MIN_REQUESTS = 1000
# Served models per task: most generated cases name a real model so that bodies reach the
# pipelines; the generated (mostly unknown) names keep exercising the 404 path.
MODELS = {"classify": ("cls", "multi", "distil"), "ner": ("ner",), "infer": ("cls", "multi", "ner")}
# Schema-valid requests may still be refused for reasons a static schema cannot carry: deployment
# limits (413: inputs, characters, tokens), a model of the other task (400), a full queue (429),
# repository control on a deployment without an API key (403).
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {"expected-statuses": ["2xx", "400", "403", "404", "413", "429"]}
        }
    }
)
TIMEOUT_HEADER = "X-Request-Timeout-Ms"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    repo = write_fake_repo(tmp_path_factory.mktemp("fuzz-repo"))
    with start_service(repo, fake_delay_ms=0.0, env={"BERTSERVE_MAX_INPUT_CHARS": "2000"}) as svc:
        svc.wait_ready()
        yield svc
        assert svc.stop() == 0


def fuzz(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    session: requests.Session,
    statuses: Counter[int],
) -> None:
    """Run the generated cases of one operation in one mode; checks raise on the first failure."""
    models = MODELS.get(operation.path.rsplit("/", 1)[-1], ())

    @settings(
        max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests on every run: a failure reproduces
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), pick=st.integers(0, 9))
    def run(case: schemathesis.Case, pick: int) -> None:
        if models and pick > 0 and "model" in (case.path_parameters or {}):
            case.path_parameters = {**case.path_parameters, "model": models[pick % len(models)]}
        headers = case.headers or {}
        if _is_number(headers.get(TIMEOUT_HEADER)):
            # A deadline the client chose may expire (504, tested elsewhere); here a valid one
            # must not, so that any 5xx is a real server error.
            headers[TIMEOUT_HEADER] = str(max(float(headers[TIMEOUT_HEADER]), 5000.0))
        response = case.call_and_validate(session=session)
        statuses[response.status_code] += 1

    try:
        run()
    except Unsatisfiable:
        # An operation without parameters or body (GET /health/live) has no invalid form.
        if mode != GenerationMode.NEGATIVE:
            raise


def test_fuzzed_requests_never_cause_server_errors(service: ServiceProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{service.base}/openapi.json", config=CONFIG)
    statuses: Counter[int] = Counter()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz(result.ok(), mode, session, statuses)
    total = sum(statuses.values())
    print(f"schemathesis: {total} requests, statuses {dict(sorted(statuses.items()))}")  # pytest -s
    assert total >= MIN_REQUESTS, dict(statuses)
    assert not any(status >= 500 for status in statuses), dict(statuses)
    assert statuses[200] > 100 and statuses[422] > 100  # both the happy path and refusals were fuzzed
    # The service is still healthy after the whole run.
    assert requests.get(f"{service.base}/health/ready", timeout=5).status_code == 200


def _is_number(value: object) -> bool:
    try:
        return isinstance(value, str) and float(value) > 0
    except ValueError:
        return False


def test_schema_is_served_and_documents_the_error_envelope(service: ServiceProcess) -> None:
    spec = requests.get(f"{service.base}/openapi.json", timeout=5).json()
    classify = spec["paths"]["/v1/models/{model}/classify"]["post"]
    for status in ("401", "404", "413", "422", "429", "503", "504"):
        ref = classify["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorEnvelope"), status
    header = [p for p in classify["parameters"] if p["in"] == "header"]
    assert [p["name"] for p in header] == ["X-Request-Timeout-Ms"]


# --- hostile sizes ---------------------------------------------------------------------------

LIMITS = {
    name: Settings.model_fields[name].default for name in ("max_inputs", "max_input_chars", "max_body_bytes")
}
MAX_INPUTS, MAX_CHARS, MAX_BODY = LIMITS["max_inputs"], LIMITS["max_input_chars"], LIMITS["max_body_bytes"]
ANSWER_WITHIN_S = 5.0  # on the fake backend every answer, refusals included, is far quicker
NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
HOSTILE_SPECS = (
    *DEFAULT_SPECS,
    FakeModelSpec(
        "ner-sentences",
        task=Task.TOKEN_CLASSIFICATION,
        labels=NER_LABELS,
        segmentation=Segmentation.SENTENCES,
    ),
)
WORDS = "the movie was great and john smith lives in new york , "


def words(chars: int) -> str:
    return (WORDS * (chars // len(WORDS) + 1))[:chars]


def body(**fields: object) -> bytes:
    return json.dumps(fields, ensure_ascii=False).encode()


# name -> (path, a function building the body, the status the documented limits call for, if one)
HOSTILE: dict[str, tuple[str, Callable[[], bytes], int | None]] = {
    "classify: max inputs of max characters, at the body limit": (
        "cls/classify",
        lambda: body(inputs=[words(min(MAX_CHARS, MAX_BODY // MAX_INPUTS - 64))] * MAX_INPUTS),
        None,
    ),
    "classify: one input over the count limit": (
        "cls/classify",
        lambda: body(inputs=["a"] * (MAX_INPUTS + 1)),
        413,
    ),
    "classify: 400 000 one-character inputs": ("multi/classify", lambda: body(inputs=["a"] * 400_000), 413),
    "classify: one character over the character limit": (
        "cls/classify",
        lambda: body(inputs="a" * (MAX_CHARS + 1)),
        413,
    ),
    "classify: max characters, truncate false": (
        "cls/classify",
        lambda: body(inputs=words(MAX_CHARS), truncate=False),
        413,
    ),
    "classify: max characters of whitespace": (
        "cls/classify",
        lambda: body(inputs=" \n\t" * (MAX_CHARS // 3)),
        None,
    ),
    "classify: one word of max characters": ("cls/classify", lambda: body(inputs="a" * MAX_CHARS), None),
    "ner: max characters of words, windowed": ("ner/ner", lambda: body(inputs=words(MAX_CHARS)), None),
    "ner: max characters, one entry per token": (
        "ner/ner",
        lambda: body(inputs="a " * (MAX_CHARS // 2), aggregation="none", ignore_labels=[]),
        None,
    ),
    "ner: 'a! ' * 33333 on a sentence model": (
        "ner-sentences/ner",
        lambda: body(inputs="a! " * 33_333),
        None,
    ),
    "ner: 'a! ' * 33333, segmentation sentences per request": (
        "ner/ner",
        lambda: body(inputs="a! " * 33_333, segmentation="sentences", aggregation="none"),
        None,
    ),
    "ner: 50 000 lines": (
        "ner/ner",
        lambda: body(inputs="a\n" * (MAX_CHARS // 2), segmentation="lines"),
        None,
    ),
    "ner: max inputs of sentences, at the body limit": (
        "ner-sentences/ner",
        lambda: body(inputs=["a! " * ((MAX_BODY // MAX_INPUTS - 64) // 3)] * MAX_INPUTS),
        None,
    ),
    "ner: max characters of ZWJ emoji": (
        "ner/ner",
        lambda: body(inputs=("\U0001f469\u200d\U0001f467 " * MAX_CHARS)[:MAX_CHARS]),
        None,
    ),
    "ner: one letter and max characters of combining marks": (
        "ner-sentences/ner",
        lambda: body(inputs="e" + "\u0301" * (MAX_CHARS - 1)),
        None,
    ),
    "body: one byte over the body limit": ("cls/classify", lambda: body(inputs="a" * MAX_BODY), 413),
    "body: JSON nested 100 000 deep": (
        "cls/classify",
        lambda: b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        422,
    ),
    "body: 150 000 unknown keys, near the body limit": (
        "ner/ner",
        lambda: ("{" + ", ".join(f'"k{i}": 0' for i in range(150_000)) + ', "inputs": "x"}').encode(),
        422,
    ),
    "body: a 100 000-digit number": (
        "cls/classify",
        lambda: b'{"inputs": "x", "top_k": ' + b"9" * 100_000 + b"}",
        422,
    ),
}


@pytest.fixture(scope="module")
def hostile_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """Every limit at its default: what a deployment that changed nothing exposes."""
    repo = write_fake_repo(tmp_path_factory.mktemp("hostile-repo"), HOSTILE_SPECS)
    with start_service(repo, fake_delay_ms=0.0) as svc:
        svc.wait_ready()
        yield svc
        assert svc.stop() == 0


def assert_hostile_answer(response: requests.Response, elapsed_s: float, expected: int | None) -> None:
    """2xx, or a 4xx in the error envelope; never a 5xx; within a bound; the documented status
    where the limits name one. Requests go one at a time to an otherwise idle service, so "queue
    full" (429) can only mean that this request alone is more work than the service admits: that is
    413, which a retry cannot change."""
    status = response.status_code
    assert status < 500, response.text[:300]
    assert elapsed_s < ANSWER_WITHIN_S, (status, f"{elapsed_s:.1f} s")
    if expected is not None:
        assert status == expected, response.text[:300]
    if status >= 300:
        assert 400 <= status < 500 and status != 429, response.text[:300]
        assert response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert set(error) == {"type", "message", "request_id"} and error["type"] and error["message"]
        assert error["request_id"] == response.headers["x-request-id"]


def send_hostile(base: str, path: str, data: bytes, expected: int | None) -> None:
    """One hostile request, checked, then a normal one to the same model, which must succeed."""
    assert len(data) <= MAX_BODY or expected == 413  # the case tests what it says
    url = f"{base}/v1/models/{path}"
    with requests.Session() as session:
        start = time.monotonic()
        try:
            response = session.post(
                url, data=data, headers={"content-type": "application/json"}, timeout=3 * ANSWER_WITHIN_S
            )
        except requests.Timeout:
            pytest.fail(f"no answer within {3 * ANSWER_WITHIN_S:.0f} s")
        assert_hostile_answer(response, time.monotonic() - start, expected)
        # ... and the service keeps serving: a normal request to the same model succeeds at once
        normal = session.post(url, json={"inputs": "the movie was great"}, timeout=ANSWER_WITHIN_S)
        assert normal.status_code == 200, normal.text


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_sizes_are_answered_quickly_and_without_server_errors(
    hostile_service: ServiceProcess, case: str
) -> None:
    path, build, expected = HOSTILE[case]
    send_hostile(hostile_service.base, path, build(), expected)


HOSTILE_PAIRS: dict[str, Callable[[], bytes]] = {
    "max pairs, both sides long, at the body limit": lambda: body(
        inputs=[[words(MAX_BODY // MAX_INPUTS // 2 - 64)] * 2] * MAX_INPUTS
    ),
    "one pair of max characters": lambda: body(inputs=[[words(MAX_CHARS // 2), words(MAX_CHARS // 2)]]),
}


@pytest.mark.parametrize("case", list(HOSTILE_PAIRS))
def test_hostile_pairs_are_answered_quickly_and_without_server_errors(tmp_path: Path, case: str) -> None:
    """Long pairs get a service each: a tokenizer still busy with one would slow every later case.
    Leaving the block kills the process, so work still running for the request is not waited for."""
    with start_service(write_fake_repo(tmp_path / "repo"), fake_delay_ms=0.0) as svc:
        svc.wait_ready()
        send_hostile(svc.base, "distil/classify", HOSTILE_PAIRS[case](), None)


def test_a_chunked_body_over_the_limit_is_refused(hostile_service: ServiceProcess) -> None:
    """No Content-Length to refuse up front: the limit is counted while the body streams in."""
    chunk = b" " * 65_536

    def stream() -> Iterator[bytes]:
        yield b'{"inputs": "x"'
        for _ in range(MAX_BODY // len(chunk) + 2):
            yield chunk
        yield b"}"

    start = time.monotonic()
    response = requests.post(
        f"{hostile_service.base}/v1/models/cls/classify",
        data=stream(),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert_hostile_answer(response, time.monotonic() - start, 413)
    assert requests.get(f"{hostile_service.base}/health/ready", timeout=5).status_code == 200
