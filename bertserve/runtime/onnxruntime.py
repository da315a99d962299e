"""ONNX Runtime backend: CPU, CUDA or TensorRT execution provider.

Provider options and artifact choice are pure functions so their logic is tested on machines
without a GPU; only `OnnxRuntimeBackend` touches a real session.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bertserve.modelrepo import Precision
from bertserve.runtime.base import BackendKind, Feeds, GraphBackend, Logits
from bertserve.runtime.errors import BackendUnavailableError

log = logging.getLogger(__name__)

PROVIDER_OF: Mapping[BackendKind, str] = {
    BackendKind.ORT_CPU: "CPUExecutionProvider",
    BackendKind.ORT_CUDA: "CUDAExecutionProvider",
    BackendKind.TENSORRT: "TensorrtExecutionProvider",
}

_NUMPY_OF_ONNX = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


@dataclass(frozen=True, slots=True)
class ShapeProfile:
    """The range of input shapes TensorRT builds one engine for (batch x tokens)."""

    max_batch: int
    opt_length: int
    max_length: int

    @classmethod
    def for_batching(cls, max_batch_size: int, max_batch_tokens: int, max_length: int) -> ShapeProfile:
        # The optimum is the shape a full batch has when it is cut by the token budget.
        opt = max(1, min(max_length, max_batch_tokens // max_batch_size))
        return cls(max_batch=max_batch_size, opt_length=opt, max_length=max_length)

    def shapes(self, input_names: tuple[str, ...], batch: int, length: int) -> str:
        return ",".join(f"{name}:{batch}x{length}" for name in input_names)


@dataclass(frozen=True, slots=True)
class EngineKey:
    """What a TensorRT engine is built from: one artifact (`Artifact.digest`) of one model version.

    NOTE: ONNX Runtime names cached engines by a hash of the graph's structure and file name, not
    of its weights: a retrained model with the same architecture (version 2 of the same model.onnx)
    would silently run version 1's engine. Engines are therefore cached in a folder keyed by the
    artifact's sha256, besides the model, the version and the fp16 flag."""

    model: str
    version: int
    artifact_sha256: str


@dataclass(frozen=True, slots=True)
class GpuOptions:
    device_id: int = 0
    tensorrt_fp16: bool = True
    tensorrt_cache_dir: Path = Path(".cache/tensorrt")  # the root; see tensorrt_cache_dirs
    engine: EngineKey | None = None


def tensorrt_cache_dirs(gpu: GpuOptions) -> tuple[Path, Path]:
    """(engine folder, timing-cache folder) for `gpu.engine`: other bytes, another engine folder.

    `<root>/<model>/v<version>-<artifact sha256>-<fp16|fp32>/` holds the engines; the timing cache
    (kernel timings per layer configuration, which do not depend on the weights) stays in
    `<root>/<model>/`, shared by the model's versions so that a new version builds faster."""
    if gpu.engine is None:
        raise ValueError("the TensorRT engine cache needs an EngineKey (model, version, artifact sha256)")
    key = gpu.engine
    precision = "fp16" if gpu.tensorrt_fp16 else "fp32"
    model_dir = gpu.tensorrt_cache_dir / key.model
    return model_dir / f"v{key.version}-{key.artifact_sha256}-{precision}", model_dir


def cuda_provider_options(gpu: GpuOptions) -> dict[str, str]:
    return {
        "device_id": str(gpu.device_id),
        # Grow the arena by what is asked, not by powers of two: varying batch shapes would
        # otherwise fragment and inflate GPU memory over a long run.
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
    }


def tensorrt_provider_options(
    gpu: GpuOptions, input_names: tuple[str, ...], profile: ShapeProfile
) -> dict[str, str]:
    engines, timing = tensorrt_cache_dirs(gpu)
    return {
        "device_id": str(gpu.device_id),
        "trt_fp16_enable": "True" if gpu.tensorrt_fp16 else "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(engines),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(timing),
        # One explicit profile covering every shape the batcher can produce: no engine rebuild
        # when a new batch shape shows up at runtime.
        "trt_profile_min_shapes": profile.shapes(input_names, 1, 1),
        "trt_profile_opt_shapes": profile.shapes(input_names, profile.max_batch, profile.opt_length),
        "trt_profile_max_shapes": profile.shapes(input_names, profile.max_batch, profile.max_length),
    }


def provider_chain(
    kind: BackendKind, gpu: GpuOptions, input_names: tuple[str, ...], profile: ShapeProfile
) -> list[tuple[str, dict[str, str]]]:
    """Providers in priority order; ORT places nodes the first one cannot run on the next."""
    cpu: tuple[str, dict[str, str]] = ("CPUExecutionProvider", {})
    if kind == BackendKind.TENSORRT:
        return [
            ("TensorrtExecutionProvider", tensorrt_provider_options(gpu, input_names, profile)),
            ("CUDAExecutionProvider", cuda_provider_options(gpu)),
            cpu,
        ]
    if kind == BackendKind.ORT_CUDA:
        return [("CUDAExecutionProvider", cuda_provider_options(gpu)), cpu]
    if kind == BackendKind.ORT_CPU:
        return [cpu]
    raise ValueError(f"{kind} is not an ONNX Runtime backend")


def session_options(intra_op_threads: int, inter_op_threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # warnings about unused initializers etc. are noise in production
    return opts


class OnnxRuntimeBackend(GraphBackend):
    def __init__(
        self,
        path: Path,
        kind: BackendKind,
        precision: Precision,
        providers: list[tuple[str, dict[str, str]]],
        options: ort.SessionOptions,
        output_name: str,
    ) -> None:
        if kind == BackendKind.TENSORRT:
            Path(providers[0][1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        self._session = ort.InferenceSession(
            str(path),
            sess_options=options,
            providers=[name for name, _ in providers],
            provider_options=[opts for _, opts in providers],
        )
        wanted = PROVIDER_OF[kind]
        active = self._session.get_providers()
        # NOTE: ORT falls back to CPU when a GPU provider fails to initialise; that must not pass
        # silently for a backend that was chosen because it is fast.
        if wanted not in active:
            raise BackendUnavailableError(
                f"{kind}: onnxruntime could not initialise {wanted} (active providers: {active}); "
                "check the CUDA/TensorRT libraries or choose another --backend"
            )
        super().__init__(kind, precision, tuple(i.name for i in self._session.get_inputs()))
        self._dtypes = {i.name: _NUMPY_OF_ONNX.get(i.type, np.int64) for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        self._output = output_name if output_name in outputs else outputs[0]

    def infer(self, feeds: Feeds) -> Logits:
        # astype(copy=False) is free when the graph takes int64, as optimum exports do.
        inputs = {name: feeds[name].astype(self._dtypes[name], copy=False) for name in self._inputs}
        (logits,) = self._session.run([self._output], inputs)
        return np.asarray(logits, dtype=np.float32)

    def close(self) -> None:
        # Sessions free their memory when collected; dropping the reference is the API.
        del self._session
