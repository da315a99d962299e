"""RuntimeOptions and the backend kinds' padding cost: what the runtime reads, without Settings."""

from __future__ import annotations

import pytest

from bertserve.modelrepo import BatchingConfig
from bertserve.runtime.base import CPU_MIN_PADDING_EFFICIENCY, BackendKind, min_padding_efficiency
from bertserve.runtime.options import RuntimeOptions


def test_padding_costs_compute_on_cpus_and_little_on_gpus() -> None:
    assert BackendKind.ORT_CPU.min_padding_efficiency == CPU_MIN_PADDING_EFFICIENCY == 0.95
    assert BackendKind.OPENVINO_CPU.min_padding_efficiency == 0.95
    assert BackendKind.ORT_CUDA.min_padding_efficiency == 0.5
    assert BackendKind.TENSORRT.min_padding_efficiency == 0.5
    assert BackendKind.FAKE.min_padding_efficiency == 0.0
    assert min_padding_efficiency("tensorrt") == 0.5
    assert min_padding_efficiency("a-test-backend") == 0.95  # not a kind: pays like a CPU


def test_batching_for_applies_only_the_batch_shape_overrides() -> None:
    model = BatchingConfig(max_batch_size=32, max_batch_tokens=8192, max_queue_size=100)
    assert RuntimeOptions().batching_for(model) == model
    merged = RuntimeOptions(max_batch_size=4).batching_for(model)
    assert (merged.max_batch_size, merged.max_batch_tokens, merged.max_queue_size) == (4, 8192, 100)


def test_options_need_a_thread() -> None:
    with pytest.raises(ValueError):
        RuntimeOptions(intra_op_threads=0)
