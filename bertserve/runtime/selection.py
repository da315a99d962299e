"""Which backend a deployment runs, which artifact it opens, and loading it.

The decisions are pure functions of an `Environment` (what this machine offers) and the model's
`VersionConfig` (what the export wrote), so they are unit-tested without GPUs or model files.
`BackendLoader` opens a model with explicit `RuntimeOptions`; the service builds them from its
settings, offline callers directly.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bertserve.modelrepo import (
    Artifact,
    ArtifactFormat,
    BatchingConfig,
    ModelConfig,
    Precision,
    RepositoryError,
    Task,
    VersionConfig,
    verify_files,
)
from bertserve.runtime.base import Backend, BackendKind
from bertserve.runtime.errors import ArtifactError, BackendUnavailableError
from bertserve.runtime.options import RuntimeOptions
from bertserve.runtime.shapes import ShapePlan, padding_plan

if TYPE_CHECKING:
    from bertserve.runtime.onnxruntime import GpuOptions

log = logging.getLogger(__name__)

_TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so")
_GPU_KINDS = (BackendKind.TENSORRT, BackendKind.ORT_CUDA)


@dataclass(frozen=True, slots=True)
class Environment:
    """What this machine offers to run models on."""

    ort_providers: frozenset[str]
    cuda_devices: int
    tensorrt_library: bool
    tensorrt_version: str | None = None  # "10.3.0": part of the engine cache key

    @classmethod
    def probe(cls) -> Environment:
        import onnxruntime as ort

        version = tensorrt_library_version()
        return cls(
            ort_providers=frozenset(ort.get_available_providers()),
            cuda_devices=count_cuda_devices(),
            tensorrt_library=version is not None or _loadable(_TENSORRT_LIBRARIES),
            tensorrt_version=version,
        )

    def tensorrt_problem(self) -> str | None:
        if self.cuda_devices == 0:
            return "no NVIDIA GPU is visible (no CUDA driver or no device)"
        if "TensorrtExecutionProvider" not in self.ort_providers:
            return (
                "this onnxruntime build has no TensorrtExecutionProvider "
                "(install onnxruntime-gpu: `pip uninstall onnxruntime && pip install 'bertserve[gpu]'`)"
            )
        if not self.tensorrt_library:
            return "the TensorRT runtime (libnvinfer) is not installed or not on the library path"
        return None

    def cuda_problem(self) -> str | None:
        if self.cuda_devices == 0:
            return "no NVIDIA GPU is visible (no CUDA driver or no device)"
        if "CUDAExecutionProvider" not in self.ort_providers:
            return (
                "this onnxruntime build has no CUDAExecutionProvider "
                "(install onnxruntime-gpu: `pip uninstall onnxruntime && pip install 'bertserve[gpu]'`)"
            )
        return None


def count_cuda_devices() -> int:
    """GPUs the CUDA driver reports, without importing torch (0 when there is no driver)."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


def tensorrt_version_name(encoded: int) -> str:
    """libnvinfer's `getInferLibVersion()` as `major.minor.patch` (TensorRT 10 encodes
    major*10000 + minor*100 + patch, TensorRT 8 major*1000 + minor*100 + patch)."""
    if encoded >= 10000:
        return f"{encoded // 10000}.{encoded // 100 % 100}.{encoded % 100}"
    return f"{encoded // 1000}.{encoded // 100 % 10}.{encoded % 100}"


def tensorrt_library_version() -> str | None:
    """The version of the TensorRT runtime the provider would load, asked of the library itself
    (no `tensorrt` Python package needed); None without one."""
    for name in _TENSORRT_LIBRARIES:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            encoded = int(lib.getInferLibVersion())
        except (AttributeError, OSError):
            return "unknown"
        return tensorrt_version_name(encoded)
    return None


def _loadable(names: tuple[str, ...]) -> bool:
    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def has_openvino_ir(version: VersionConfig) -> bool:
    return any(a.format == ArtifactFormat.OPENVINO for a in version.artifacts)


@dataclass(frozen=True, slots=True)
class BackendChoice:
    kind: BackendKind
    reason: str


def choose_backend(requested: BackendKind, env: Environment, model: ModelConfig) -> BackendChoice:
    """Resolve `auto`, or check that an explicitly requested backend can run here."""
    if requested == BackendKind.AUTO:
        trt, cuda = env.tensorrt_problem(), env.cuda_problem()
        if trt is None:
            return BackendChoice(BackendKind.TENSORRT, "TensorRT provider and GPU available")
        if cuda is None:
            return BackendChoice(BackendKind.ORT_CUDA, f"CUDA available; not TensorRT: {trt}")
        if has_openvino_ir(model.version):
            return BackendChoice(BackendKind.OPENVINO_CPU, f"no GPU backend ({cuda}); OpenVINO IR present")
        return BackendChoice(BackendKind.ORT_CPU, f"no GPU backend ({cuda}); no OpenVINO IR exported")
    problem: str | None = None
    if requested == BackendKind.TENSORRT:
        problem = env.tensorrt_problem()
    elif requested == BackendKind.ORT_CUDA:
        problem = env.cuda_problem()
    elif requested == BackendKind.OPENVINO_CPU and not has_openvino_ir(model.version):
        problem = (
            f"model {model.name!r} v{model.default_version} has no OpenVINO IR; "
            "re-export it with `--formats onnx,openvino`"
        )
    if problem is not None:
        hint = "use --backend auto, onnxruntime-cpu or openvino-cpu"
        if requested == BackendKind.OPENVINO_CPU:
            hint = "use --backend auto or onnxruntime-cpu"
        raise BackendUnavailableError(f"backend {requested} is unavailable: {problem}; {hint}")
    return BackendChoice(requested, "requested")


# Precisions each backend can execute; artifact preference within a precision, best first.
_ARTIFACTS: dict[BackendKind, dict[Precision, tuple[tuple[ArtifactFormat, Precision], ...]]] = {
    BackendKind.ORT_CPU: {
        Precision.FP32: (
            (ArtifactFormat.ONNX_OPTIMIZED, Precision.FP32),
            (ArtifactFormat.ONNX, Precision.FP32),
        ),
        Precision.INT8: (
            (ArtifactFormat.ONNX, Precision.INT8),
            (ArtifactFormat.ONNX_OPTIMIZED, Precision.INT8),
        ),
    },
    BackendKind.ORT_CUDA: {
        Precision.FP32: (
            (ArtifactFormat.ONNX_OPTIMIZED, Precision.FP32),
            (ArtifactFormat.ONNX, Precision.FP32),
        ),
        Precision.FP16: ((ArtifactFormat.ONNX_OPTIMIZED, Precision.FP16),),
    },
    # TensorRT parses the portable graph (ORT's fused com.microsoft ops are foreign to it) and
    # lowers precision itself (tensorrt_fp16).
    BackendKind.TENSORRT: {Precision.FP32: ((ArtifactFormat.ONNX, Precision.FP32),)},
    BackendKind.OPENVINO_CPU: {
        Precision.FP32: (
            (ArtifactFormat.OPENVINO, Precision.FP32),
            (ArtifactFormat.OPENVINO, Precision.FP16),
        ),
        Precision.INT8: ((ArtifactFormat.OPENVINO, Precision.INT8),),
    },
}


# What a backend serves when no precision is requested and the export wrote it: the fp16 graph on
# CUDA (tensor cores run it about twice as fast; `--precision fp32` keeps the fp32 graph). TensorRT
# lowers the portable fp32 graph itself (tensorrt_fp16), so it has no entry.
_PREFERRED: dict[BackendKind, tuple[ArtifactFormat, Precision]] = {
    BackendKind.ORT_CUDA: (ArtifactFormat.ONNX_OPTIMIZED, Precision.FP16),
}


def choose_artifact(kind: BackendKind, model: ModelConfig, requested: Precision | None) -> Artifact:
    """The artifact `kind` opens. An explicitly requested precision must be honoured; without one,
    the backend's preferred artifact when the export wrote it (`_PREFERRED`), else the model's
    default precision, which falls back to fp32 where the backend cannot run it (e.g. int8 on
    TensorRT)."""
    table = _ARTIFACTS[kind]
    preferred = _PREFERRED.get(kind)
    if requested is None and preferred is not None:
        found = model.version.find(*preferred)
        if found is not None:
            return found
    precision = requested or model.version.default_precision
    if precision == Precision.FP16 and precision not in table:
        precision = Precision.FP32  # fp16 IR is an fp32 *choice* on OpenVINO; TensorRT casts itself
    if precision not in table:
        if requested is not None:
            raise ArtifactError(
                f"backend {kind} cannot run {requested} models; use --precision fp32"
                + (" (TensorRT builds fp16 kernels itself)" if kind == BackendKind.TENSORRT else "")
            )
        log.warning(
            "model %s: default precision %s is not runnable on %s; using fp32", model.name, precision, kind
        )
        precision = Precision.FP32
    for fmt, prec in table[precision]:
        artifact = model.version.find(fmt, prec)
        if artifact is not None:
            return artifact
    wanted = " or ".join(f"{fmt}/{prec}" for fmt, prec in table[precision])
    raise ArtifactError(
        f"model {model.name!r} v{model.default_version} has no {wanted} artifact for backend {kind}; "
        "re-export it (`bertserve export ... --int8` writes the int8 artifacts)"
    )


class BackendFactory(Protocol):
    def __call__(self, model: ModelConfig, version_dir: Path) -> Backend: ...


@dataclass
class BackendLoader:
    """The production `BackendFactory`: choose, verify the files' sha256, open."""

    options: RuntimeOptions
    env_probe: Callable[[], Environment] = Environment.probe
    _env: Environment | None = None

    def environment(self) -> Environment:
        if self._env is None:
            self._env = self.env_probe()
        return self._env

    def with_options(self, options: RuntimeOptions) -> BackendLoader:
        """The same loader (and the same probed environment) with other options, e.g. another
        model's share of the threads."""
        return replace(self, options=options)

    def __call__(self, model: ModelConfig, version_dir: Path) -> Backend:
        o = self.options
        if o.backend == BackendKind.FAKE:
            from bertserve.runtime.fake import FakeBackend

            return FakeBackend(
                num_labels=model.output_width,
                token_level=model.task == Task.TOKEN_CLASSIFICATION,
                input_names=tuple(model.inputs),
            )
        choice = choose_backend(o.backend, self.environment(), model)
        artifact = choose_artifact(choice.kind, model, o.precision)
        log.info(
            "model %s: backend %s (%s), artifact %s/%s, %d thread(s)",
            model.name,
            choice.kind,
            choice.reason,
            artifact.format,
            artifact.precision,
            o.intra_op_threads,
        )
        try:
            verify_files(version_dir, artifact.files)
            if artifact.format != ArtifactFormat.OPENVINO:
                from bertserve.runtime.onnx_files import check_external_data

                check_external_data(version_dir, artifact.main_file, artifact.files)
        except RepositoryError as exc:
            raise ArtifactError(f"model {model.name!r}: {exc}") from exc
        batching = o.batching_for(model.batching)
        gpu = None
        plan = padding_plan(choice.kind, batching, model.max_length)
        if choice.kind in _GPU_KINDS:
            from bertserve.runtime.onnxruntime import EngineKey, GpuOptions

            engine = EngineKey(model.name, model.default_version, artifact.digest)
            version = self.environment().tensorrt_version
            gpu = GpuOptions(o.cuda_device_id, o.tensorrt_fp16, o.tensorrt_cache_dir, engine, version)
        backend = open_file(
            choice.kind,
            version_dir / artifact.main_file,
            artifact.precision,
            model.outputs[0],
            o,
            # The IR's weights by their listed (and just verified) path, not found beside the .xml.
            weights=version_dir / artifact.ir_weights if artifact.format == ArtifactFormat.OPENVINO else None,
            input_names=tuple(model.inputs),
            gpu=gpu,
            plan=plan,
        )
        if plan is not None:
            log.info("model %s: TensorRT profiles (length x batch) %s", model.name, plan.describe())
            warm_profiles(backend, plan, model.pad_token_id)
        reserve_peak_memory(backend, model, batching)
        return backend


def open_file(
    kind: BackendKind,
    path: Path,
    precision: Precision,
    output: str,
    options: RuntimeOptions,
    *,
    weights: Path | None = None,
    input_names: tuple[str, ...] = (),
    gpu: GpuOptions | None = None,
    plan: ShapePlan | None = None,
) -> Backend:
    """One graph file opened by `kind`'s backend class with `options` (threads, OpenVINO hint and
    streams) — the one construction the service (through `BackendLoader`) and the export's
    validation share. `weights`: an IR's .bin (default beside the .xml); `gpu`: the CUDA/TensorRT
    provider options (default: device 0, nothing cached); `plan`: TensorRT's profiles (required
    there)."""
    if kind == BackendKind.OPENVINO_CPU:
        from bertserve.runtime.openvino import OpenVinoBackend, compile_config

        config = compile_config(options.openvino_hint, options.intra_op_threads, options.openvino_streams)
        return OpenVinoBackend(path, weights or path.with_suffix(".bin"), precision, config, output)
    from bertserve.runtime.onnxruntime import GpuOptions, OnnxRuntimeBackend, provider_chain, session_options

    gpu = gpu or GpuOptions()
    providers = provider_chain(kind, gpu, input_names, plan)
    session = session_options(options.intra_op_threads, options.inter_op_threads)
    # GPU providers run through IOBinding (inputs bound once, outputs copied back once); the CPU
    # keeps `session.run` on numpy arrays, which costs it nothing extra.
    io_device = "cuda" if kind in _GPU_KINDS else None
    return OnnxRuntimeBackend(
        path, kind, precision, providers, session, output, io_device=io_device, device_id=gpu.device_id
    )


def peak_batch_shape(batching: BatchingConfig, max_length: int) -> tuple[int, int]:
    """The (sequences, tokens) batch that needs the most memory among those the batcher can cut:
    the longest sequences, as many as the padded-token budget and the batch size allow. Both the
    attention scores (batch x length^2) and the other activations (batch x length) peak there."""
    length = min(max_length, batching.max_batch_tokens)
    return min(batching.max_batch_size, max(1, batching.max_batch_tokens // length)), length


def warm_profiles(backend: Backend, plan: ShapePlan, pad_token_id: int) -> None:
    """Run every profile's tuned shape once before the model is served: TensorRT builds (or loads
    from its cache) the engine for each profile on its first batch, which takes seconds to
    minutes; done here, readiness waits for it and no request does."""
    import numpy as np

    fill = {"input_ids": pad_token_id, "attention_mask": 1}
    names = backend.input_names
    for shape in plan.warmup_shapes():
        backend.infer({name: np.full(shape, fill.get(name, 0), dtype=np.int64) for name in names})


def reserve_peak_memory(backend: Backend, model: ModelConfig, batching: BatchingConfig) -> None:
    """Run the largest batch once, before the model is served.

    NOTE: runtimes keep the buffers of the largest batch they have run (ONNX Runtime's arena,
    OpenVINO's intermediate memory) for reuse. Left to traffic, that high-water mark rises in
    steps whenever a burst first packs a larger batch, hours into a run, and looks like a leak
    (`make soak`); reached here, the process holds at startup what its worst batch needs, and a
    machine without that much memory fails at startup rather than under load."""
    import numpy as np

    shape = peak_batch_shape(batching, model.max_length)
    fill = {"input_ids": model.pad_token_id, "attention_mask": 1}
    backend.infer({name: np.full(shape, fill.get(name, 0), dtype=np.int64) for name in backend.input_names})
