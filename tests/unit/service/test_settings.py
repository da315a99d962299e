from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bertserve.modelrepo import BatchingConfig, Precision
from bertserve.service.settings import BackendKind, Settings


def test_defaults_are_safe() -> None:
    s = Settings()
    assert s.host == "127.0.0.1"
    assert s.backend == BackendKind.AUTO
    assert s.models is None and s.precision is None
    assert s.threads >= 1


def test_environment_is_read_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTSERVE_REPO", "/srv/models")
    monkeypatch.setenv("BERTSERVE_BACKEND", "openvino-cpu")
    monkeypatch.setenv("BERTSERVE_PORT", "9001")
    monkeypatch.setenv("BERTSERVE_MODELS", "sst2, ner ,")
    monkeypatch.setenv("BERTSERVE_MAX_QUEUE_DELAY_MS", "0.5")
    s = Settings()
    assert s.repo == Path("/srv/models")
    assert s.backend == BackendKind.OPENVINO_CPU
    assert s.port == 9001
    assert s.models == ["sst2", "ner"]
    assert s.max_queue_delay_ms == 0.5


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTSERVE_PORT", "9001")
    monkeypatch.setenv("BERTSERVE_BACKEND", "openvino-cpu")
    s = Settings(port=8080, backend="fake")  # type: ignore[arg-type]
    assert s.port == 8080
    assert s.backend == BackendKind.FAKE


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        Settings(backend="cuda")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="fp32 or int8"):
        Settings(precision=Precision.FP16)
    with pytest.raises(ValidationError):
        Settings(unknown_knob=1)  # type: ignore[call-arg]
    monkeypatch.setenv("BERTSERVE_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_padding_efficiency_defaults_per_backend() -> None:
    assert Settings().padding_efficiency_for("onnxruntime-cpu") == 0.85
    assert Settings().padding_efficiency_for("tensorrt") == 0.5
    assert Settings().padding_efficiency_for("fake") == 0.0
    assert Settings(min_padding_efficiency=0.3).padding_efficiency_for("onnxruntime-cpu") == 0.3


def test_batching_overrides_apply_over_model_defaults() -> None:
    model = BatchingConfig(max_batch_size=16, max_batch_tokens=4096, max_queue_delay_ms=2, max_queue_size=100)
    assert Settings().batching_for(model) == model
    merged = Settings(max_batch_size=64, max_queue_size=10).batching_for(model)
    assert (merged.max_batch_size, merged.max_batch_tokens, merged.max_queue_size) == (64, 4096, 10)


def test_runtime_options_carry_every_backend_setting(tmp_path: Path) -> None:
    s = Settings(
        backend=BackendKind.OPENVINO_CPU,
        precision=Precision.INT8,
        intra_op_threads=3,
        inter_op_threads=2,
        openvino_hint="THROUGHPUT",
        openvino_streams=2,
        tensorrt_fp16=False,
        tensorrt_cache_dir=tmp_path,
        cuda_device_id=1,
        max_batch_size=8,
        max_batch_tokens=512,
        max_queue_size=10,
    )
    o = s.runtime_options()
    assert (o.backend, o.precision, o.intra_op_threads, o.inter_op_threads) == (
        BackendKind.OPENVINO_CPU,
        Precision.INT8,
        3,
        2,
    )
    assert (o.openvino_hint, o.openvino_streams) == ("THROUGHPUT", 2)
    assert (o.tensorrt_fp16, o.tensorrt_cache_dir, o.cuda_device_id) == (False, tmp_path, 1)
    assert (o.max_batch_size, o.max_batch_tokens) == (8, 512)
    model = BatchingConfig()
    runtime, service = o.batching_for(model), s.batching_for(model)
    assert (runtime.max_batch_size, runtime.max_batch_tokens) == (
        service.max_batch_size,
        service.max_batch_tokens,
    )


def test_runtime_options_take_a_models_share_of_the_threads() -> None:
    assert Settings().runtime_options().intra_op_threads == Settings().threads
    assert Settings().runtime_options(intra_op_threads=2).intra_op_threads == 2


def test_compute_budget_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().max_concurrent_batches is None
    monkeypatch.setenv("BERTSERVE_MAX_CONCURRENT_BATCHES", "1")
    assert Settings().max_concurrent_batches == 1
    with pytest.raises(ValidationError):
        Settings(max_concurrent_batches=0)


def test_backend_kind_is_the_runtimes() -> None:
    from bertserve.runtime.base import BackendKind as RuntimeKind

    assert BackendKind is RuntimeKind
