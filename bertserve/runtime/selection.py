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
from bertserve.runtime.base import Backend, BackendKind, GraphBackend, ServedPrecision
from bertserve.runtime.cpu import CpuFeature, CpuFeatures
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
        # only the backends that can run this model here (a TensorRT request on a machine with CUDA
        # but no libnvinfer is pointed at onnxruntime-cuda, a model without IR not at OpenVINO)
        here = [BackendKind.ORT_CUDA] if env.cuda_problem() is None else []
        here.append(BackendKind.ORT_CPU)
        if has_openvino_ir(model.version):
            here.append(BackendKind.OPENVINO_CPU)
        options = ["auto", *(str(k) for k in here if k != requested)]
        hint = f"use --backend {', '.join(options[:-1])} or {options[-1]}"
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
        # the fp32 IR compiled with bf16 inference precision (same files, its own gate)
        Precision.BF16: ((ArtifactFormat.OPENVINO, Precision.BF16),),
    },
}

# What `--precision auto` tries on each CPU backend, fastest first (measured on AVX-512 VNNI/BF16:
# int8 > bf16 > fp32; README "Precision"); GPU backends serve the model's default as before.
_AUTO_ORDER: dict[BackendKind, tuple[Precision, ...]] = {
    BackendKind.ORT_CPU: (Precision.INT8, Precision.FP32),
    BackendKind.OPENVINO_CPU: (Precision.INT8, Precision.BF16, Precision.FP32),
}
# The CPU feature without which a precision is slower than fp32 (or, for 8-bit int8 weights, may
# saturate where the gate measured none).
_NEEDS: dict[Precision, CpuFeature] = {Precision.INT8: CpuFeature.VNNI, Precision.BF16: CpuFeature.BF16}


def _find(kind: BackendKind, model: ModelConfig, precision: Precision) -> Artifact | None:
    for fmt, prec in _ARTIFACTS[kind].get(precision, ()):
        artifact = model.version.find(fmt, prec)
        if artifact is not None:
            return artifact
    return None


def _why_not(
    precision: Precision, artifact: Artifact | None, model: ModelConfig, cpu: CpuFeatures
) -> str | None:
    """Why `auto` must not serve `artifact` at `precision` on this CPU (None: it may)."""
    if artifact is None:
        return f"no {precision} artifact"
    gate = artifact.gate
    if gate is None:  # a model.yaml from before per-artifact gates: its default passed the old gate
        if model.version.default_precision == precision:
            return None
        return f"{precision} is not the model's default precision (exported without gate figures)"
    if not gate.passed:
        return f"{precision} failed the export gate ({'; '.join(gate.reasons) or gate.summary()})"
    need = _NEEDS[precision]
    if need.value in gate.needs and not cpu.has(need):
        return f"{cpu.describe(need)}, {precision} would be slower"
    # e.g. an int8 IR whose unquantized layers were gated running in bf16 (needs vnni and bf16)
    for other in (CpuFeature(n) for n in gate.needs if n in set(CpuFeature) and n != need.value):
        if not cpu.has(other):
            return f"{cpu.describe(other)}, {precision} was gated with parts running in {other}"
    return None


def choose_precision(
    kind: BackendKind, model: ModelConfig, requested: Precision | None, cpu: CpuFeatures
) -> ServedPrecision | None:
    """`--precision auto` (requested None): the fastest precision of `kind` whose artifact passed
    the export gate and whose CPU feature this CPU has, with the reason; a requested precision is
    honoured, with a warning when the CPU lacks its feature or its gate failed. None: `kind` is a
    GPU backend, which serves the model's default precision (choose_artifact)."""
    if requested is not None:
        warnings = []
        need = _NEEDS.get(requested)
        if need is not None and kind in _AUTO_ORDER and not cpu.has(need):
            warnings.append(
                f"{requested} forced on a CPU with {cpu.describe(need)}: it may run slower than fp32"
            )
        found = _find(kind, model, requested) if requested in _ARTIFACTS[kind] else None
        if found is not None and found.gate is not None and not found.gate.passed:
            warnings.append(f"{requested} forced although it failed the export gate ({found.gate.summary()})")
        gate = found.gate if found is not None else None
        return ServedPrecision(requested, "requested", gate, "; ".join(warnings) or None)
    order = _AUTO_ORDER.get(kind)
    if order is None:
        return None
    skipped: list[str] = []
    for precision in order:
        if precision == Precision.FP32:
            break
        artifact = _find(kind, model, precision)
        problem = _why_not(precision, artifact, model, cpu)
        if problem is None and artifact is not None:
            present = cpu.describe(_NEEDS[precision])
            gate = artifact.gate
            figures = gate.summary() if gate is not None else "the model's default precision"
            speed = f", {gate.speedup:.2f}x fp32 at export" if gate is not None and gate.speedup else ""
            return ServedPrecision(precision, f"{precision}: {present}, {figures}{speed}", gate)
        skipped.append(problem or f"no {precision} artifact")
    return ServedPrecision(Precision.FP32, "fp32: " + "; ".join(skipped or ["no low-precision artifact"]))


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
    cpu_probe: Callable[[], CpuFeatures] = CpuFeatures.probe
    _env: Environment | None = None
    _cpu: CpuFeatures | None = None

    def environment(self) -> Environment:
        if self._env is None:
            self._env = self.env_probe()
        return self._env

    def cpu(self) -> CpuFeatures:
        if self._cpu is None:
            self._cpu = self.cpu_probe()
        return self._cpu

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
        served = choose_precision(choice.kind, model, o.precision, self.cpu())
        artifact = choose_artifact(choice.kind, model, o.precision if served is None else served.precision)
        log.info(
            "model %s: backend %s (%s), artifact %s/%s (%s), %d thread(s)",
            model.name,
            choice.kind,
            choice.reason,
            artifact.format,
            artifact.precision,
            served.reason if served is not None else "the model's default precision",
            o.intra_op_threads,
        )
        if served is not None and served.warning:
            log.warning("model %s: %s", model.name, served.warning)
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
        if artifact.precision == Precision.BF16 and served is not None:
            backend, served = self._check_bf16(backend, served, model, version_dir, o)
        if isinstance(backend, GraphBackend):
            backend.served = served
        reserve_peak_memory(backend, model, batching)
        return backend

    def _check_bf16(
        self,
        backend: Backend,
        served: ServedPrecision,
        model: ModelConfig,
        version_dir: Path,
        o: RuntimeOptions,
    ) -> tuple[Backend, ServedPrecision]:
        """The export gated bf16 on its CPU; check it again on this one (bf16 kernels differ
        between AVX-512-BF16 and AMX): decisions on probe sentences against the same IR in fp32.
        Under `auto` a failure falls back to fp32, logged; a forced bf16 only warns."""
        from bertserve.runtime.probe import agreement_with_fp32

        fp32 = open_file(
            BackendKind.OPENVINO_CPU,
            version_dir / choose_artifact(BackendKind.OPENVINO_CPU, model, Precision.FP32).main_file,
            Precision.FP32,
            model.outputs[0],
            o,
            input_names=tuple(model.inputs),
        )
        try:
            agreement = agreement_with_fp32(backend, fp32, model, version_dir)
        finally:
            fp32.close()
        bound = served.gate.min_agreement if served.gate is not None else 0.99
        if agreement >= bound:
            log.info(
                "model %s: bf16 warm-up check passed (%.1f%% agreement with fp32)",
                model.name,
                100 * agreement,
            )
            return backend, served
        why = f"bf16 agrees with fp32 on {agreement:.1%} of probe decisions on this CPU (< {bound:.0%})"
        if served.reason == "requested":
            log.warning("model %s: %s; serving bf16 as requested", model.name, why)
            return backend, ServedPrecision(served.precision, served.reason, served.gate, why)
        log.warning("model %s: %s; falling back to fp32", model.name, why)
        backend.close()
        artifact = choose_artifact(BackendKind.OPENVINO_CPU, model, Precision.FP32)
        fallback = open_file(
            BackendKind.OPENVINO_CPU,
            version_dir / artifact.main_file,
            artifact.precision,
            model.outputs[0],
            o,
            weights=version_dir / artifact.ir_weights,
            input_names=tuple(model.inputs),
        )
        return fallback, ServedPrecision(Precision.FP32, f"fp32: {why}", artifact.gate, why)


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

        config = compile_config(
            options.openvino_hint,
            options.intra_op_threads,
            options.openvino_streams,
            bf16=precision == Precision.BF16,
        )
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
