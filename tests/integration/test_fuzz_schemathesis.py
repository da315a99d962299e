"""Property-based fuzzing of the HTTP contract from the service's own OpenAPI schema (schemathesis).

A real `bertserve serve` on loopback (fake backend, every task) gets schema-valid (positive) and
schema-violating (negative) requests for every operation. Each response must be free of server
errors and conform to the schema: documented status code, content type and body (the error
envelope included), and invalid input must be refused. The budget is fixed in examples, not time,
so CI runs the same amount of fuzzing on any machine (about 20 s on two cores).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.helpers.fake_repo import write_fake_repo
from tests.helpers.service_process import ServiceProcess, start_service

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION_AND_MODE = 250
MIN_REQUESTS = 1000
# Served models per task: most generated cases name a real model so that bodies reach the
# pipelines; the generated (mostly unknown) names keep exercising the 404 path.
MODELS = {"classify": ("cls", "multi", "distil"), "ner": ("ner",)}
# Schema-valid requests may still be refused for reasons a static schema cannot carry: deployment
# limits (413: inputs, characters, tokens), a model of the other task (400), a full queue (429).
CONFIG = schemathesis.Config.from_dict(
    {"checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "404", "413", "429"]}}}
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
            case.path_parameters = {"model": models[pick % len(models)]}
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
