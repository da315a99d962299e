"""How the runtime opens a model: every knob a backend reads, in one frozen value.

The serving layer builds it from its `Settings` (`Settings.runtime_options`); export, evaluation
and benchmarks build one directly, so that they open an artifact exactly as the service does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bertserve.modelrepo import BatchingConfig, Precision
from bertserve.runtime.base import BackendKind

OpenVinoHint = Literal["LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"]


def default_tensorrt_cache_dir() -> Path:
    return Path.home() / ".cache" / "bertserve" / "tensorrt"


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    backend: BackendKind = BackendKind.AUTO
    precision: Precision | None = None  # None: the model's default_precision
    intra_op_threads: int = 1  # threads one inference of this model may use
    inter_op_threads: int = 1
    openvino_hint: OpenVinoHint = "LATENCY"
    openvino_streams: int | None = None  # None: what the hint chooses
    tensorrt_fp16: bool = True
    tensorrt_cache_dir: Path = field(default_factory=default_tensorrt_cache_dir)
    cuda_device_id: int = 0
    # The batcher's overrides of the model's batching block: they decide the largest batch the
    # backend will see (the memory reserved at load, TensorRT's shape profile).
    max_batch_size: int | None = None
    max_batch_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.intra_op_threads < 1 or self.inter_op_threads < 1:
            raise ValueError("a backend needs at least one thread")

    def batching_for(self, model_default: BatchingConfig) -> BatchingConfig:
        """The model's batching block with the batch-shape overrides applied."""
        return model_default.with_overrides(
            max_batch_size=self.max_batch_size, max_batch_tokens=self.max_batch_tokens
        )
