"""Property-based fuzzing of the Open Inference Protocol's gRPC ModelInfer, as the REST contract is
fuzzed from its OpenAPI schema (test_fuzz_schemathesis.py): a real `bertserve serve` on loopback
(fake backend, every task) gets generated messages — input names, datatypes, shapes (negative
ones too), raw bytes or typed contents, request parameters, models and versions — and must answer
each with OK or a client error, never INTERNAL or UNKNOWN, and stay ready. Derandomized, with a
fixed budget of examples, like the REST fuzzing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertserve.modelrepo import EmbeddingConfig, Pooling, Task
from bertserve.service.api import oip
from bertserve.service.api.grpc_server import SERVICE, M
from tests.helpers.fake_repo import DEFAULT_SPECS, FakeModelSpec, write_fake_repo
from tests.helpers.service_process import ServiceProcess, free_port, start_service

pytestmark = pytest.mark.slow

EXAMPLES = 600
EMBED = FakeModelSpec(
    "emb",
    task=Task.FEATURE_EXTRACTION,
    labels=(),
    embedding=EmbeddingConfig(pooling=Pooling.MEAN, dimensions=6),
)
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE,  # a full queue
    grpc.StatusCode.DEADLINE_EXCEEDED,  # a `timeout` parameter of a few microseconds
}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, int]]:
    repo = write_fake_repo(tmp_path_factory.mktemp("grpc-fuzz-repo"), (*DEFAULT_SPECS, EMBED))
    port = free_port()
    env = {"BERTSERVE_GRPC_PORT": str(port), "BERTSERVE_MAX_INPUT_CHARS": "2000"}
    with start_service(repo, fake_delay_ms=0.0, env=env) as svc:
        svc.wait_ready()
        yield svc, port
        assert svc.stop() == 0


NAMES = st.sampled_from(["text", "text_pair", "input_ids", "attention_mask", "label", ""])
DATATYPES = st.sampled_from([*sorted(oip.DATATYPES), "STRING", "", "fp32"])
PARAMETERS = st.dictionaries(
    st.sampled_from(["timeout", "normalize", "dimensions", "aggregation", "sequence_id", "priority", "x"]),
    st.one_of(st.booleans(), st.integers(-5, 10**7), st.sampled_from(["simple", "none", "max", "", "é"])),
    max_size=3,
)


@st.composite
def infer_messages(draw: st.DrawFn) -> Any:
    message = M["ModelInferRequest"](
        model_name=draw(st.sampled_from(["cls", "multi", "ner", "emb", "nope", ""])),
        model_version=draw(st.sampled_from(["", "", "1", "2", "x"])),
    )
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        datatype = draw(DATATYPES)
        shape = draw(st.lists(st.integers(-2, 5), max_size=3))
        tensor = message.inputs.add(name=draw(NAMES), datatype=datatype, shape=shape)
        texts = draw(st.lists(st.binary(max_size=16) | st.text(max_size=16).map(str.encode), max_size=5))
        if raw:
            blob = draw(st.one_of(st.just(oip.serialize_bytes(texts)), st.binary(max_size=48)))
            message.raw_input_contents.append(blob)
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(texts)
        elif datatype in ("INT64", "INT32"):
            ids = draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8))
            getattr(tensor.contents, "int64_contents" if datatype == "INT64" else "int_contents").extend(ids)
        elif datatype == "FP32":
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=4)))
    for key, value in draw(PARAMETERS).items():
        parameter = message.parameters[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        else:
            parameter.string_param = value
    for name in draw(
        st.lists(st.sampled_from(["label", "scores", "entities", "embedding", "x"]), max_size=2)
    ):
        message.outputs.add(name=name)
    return message


@st.composite
def valid_messages(draw: st.DrawFn) -> Any:
    """Well-formed calls with generated text (so the fuzzing reaches the pipelines too)."""
    texts = draw(
        st.lists(st.text(st.characters(blacklist_characters="\x00"), max_size=40), min_size=1, max_size=5)
    )
    message = M["ModelInferRequest"](model_name=draw(st.sampled_from(["cls", "multi", "ner", "emb"])))
    message.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
    message.raw_input_contents.append(oip.serialize_bytes([t.encode() for t in texts]))
    return message


def test_fuzzed_model_infer_never_fails_on_the_server(service: tuple[ServiceProcess, int]) -> None:
    svc, port = service
    codes: Counter[grpc.StatusCode] = Counter()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            f"/{SERVICE}/ModelInfer",
            request_serializer=M["ModelInferRequest"].SerializeToString,
            response_deserializer=M["ModelInferResponse"].FromString,
        )

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(message=st.one_of(valid_messages(), infer_messages()))
        def run(message: Any) -> None:
            try:
                call(message, timeout=10)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
            codes[code] += 1
            assert code == grpc.StatusCode.OK or code in CLIENT_ERRORS, (code, message)

        run()
    print(f"gRPC fuzz: {sum(codes.values())} calls, {dict(codes)}")  # pytest -s
    assert codes[grpc.StatusCode.OK] > 10 and codes[grpc.StatusCode.INVALID_ARGUMENT] > 100, dict(codes)
    assert requests.get(f"{svc.base}/health/ready", timeout=5).status_code == 200
