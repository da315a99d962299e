"""ONNX Runtime backend: CPU, CUDA or TensorRT execution provider.

Provider options and artifact choice are pure functions so their logic is tested on machines
without a GPU; only `OnnxRuntimeBackend` touches a real session.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from bertserve.modelrepo import Precision
from bertserve.runtime.base import BackendKind, Feeds, GraphBackend, Logits
from bertserve.runtime.errors import BackendUnavailableError
from bertserve.runtime.shapes import ShapePlan

log = logging.getLogger(__name__)

PROVIDER_OF: Mapping[BackendKind, str] = {
    BackendKind.ORT_CPU: "CPUExecutionProvider",
    BackendKind.ORT_CUDA: "CUDAExecutionProvider",
    BackendKind.TENSORRT: "TensorrtExecutionProvider",
}

_NUMPY_OF_ONNX: dict[str, type[np.generic]] = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


@dataclass(frozen=True, slots=True)
class EngineKey:
    """What a TensorRT engine is built from: one artifact (`Artifact.digest`) of one model version.

    NOTE: ONNX Runtime names cached engines by a hash of the graph's structure and file name, not
    of its weights: a retrained model with the same architecture (version 2 of the same model.onnx)
    would silently run version 1's engine. Engines are therefore cached in a folder keyed by the
    artifact's sha256, besides the model, the version, the fp16 flag, the profile set (other
    batch limits: other profiles) and the TensorRT version (an engine is only valid for the
    TensorRT that built it)."""

    model: str
    version: int
    artifact_sha256: str


@dataclass(frozen=True, slots=True)
class GpuOptions:
    device_id: int = 0
    tensorrt_fp16: bool = True
    tensorrt_cache_dir: Path = Path(".cache/tensorrt")  # the root; see tensorrt_cache_dirs
    engine: EngineKey | None = None
    tensorrt_version: str | None = None  # of the libnvinfer found (Environment.tensorrt_version)


def tensorrt_cache_dirs(gpu: GpuOptions, plan: ShapePlan) -> tuple[Path, Path]:
    """(engine folder, timing-cache folder) for `gpu.engine` built with `plan`'s profiles: other
    bytes, other profiles or another TensorRT, another engine folder.

    `<root>/<model>/v<version>-<artifact sha256>-<fp16|fp32>-p<profiles>-trt<version>/` holds the
    engines; the timing cache (kernel timings per layer configuration, which do not depend on the
    weights) stays in `<root>/<model>/trt<version>/`, shared by the model's versions so that a new
    version builds faster."""
    if gpu.engine is None:
        raise ValueError("the TensorRT engine cache needs an EngineKey (model, version, artifact sha256)")
    key = gpu.engine
    precision = "fp16" if gpu.tensorrt_fp16 else "fp32"
    trt = f"trt{gpu.tensorrt_version or 'unknown'}"
    model_dir = gpu.tensorrt_cache_dir / key.model
    engines = model_dir / f"v{key.version}-{key.artifact_sha256}-{precision}-p{plan.digest}-{trt}"
    return engines, model_dir / trt


def cuda_provider_options(gpu: GpuOptions) -> dict[str, str]:
    return {
        "device_id": str(gpu.device_id),
        # Grow the arena by what is asked, not by powers of two: varying batch shapes would
        # otherwise fragment and inflate GPU memory over a long run.
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
    }


def tensorrt_provider_options(
    gpu: GpuOptions, input_names: tuple[str, ...], plan: ShapePlan
) -> dict[str, str]:
    engines, timing = tensorrt_cache_dirs(gpu, plan)
    min_shapes, opt_shapes, max_shapes = plan.tensorrt_shapes(input_names)
    return {
        "device_id": str(gpu.device_id),
        "trt_fp16_enable": "True" if gpu.tensorrt_fp16 else "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(engines),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(timing),
        # One profile per length bucket (bertserve.runtime.shapes): every shape the batcher can
        # produce is covered (no engine rebuild at runtime), and each padded batch runs at the
        # shape its profile was tuned for.
        "trt_profile_min_shapes": min_shapes,
        "trt_profile_opt_shapes": opt_shapes,
        "trt_profile_max_shapes": max_shapes,
    }


def provider_chain(
    kind: BackendKind, gpu: GpuOptions, input_names: tuple[str, ...], plan: ShapePlan | None
) -> list[tuple[str, dict[str, str]]]:
    """Providers in priority order; ORT places nodes the first one cannot run on the next."""
    cpu: tuple[str, dict[str, str]] = ("CPUExecutionProvider", {})
    if kind == BackendKind.TENSORRT:
        if plan is None:
            raise ValueError("TensorRT needs the shape plan its profiles are built from")
        return [
            ("TensorrtExecutionProvider", tensorrt_provider_options(gpu, input_names, plan)),
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


_CUDA_RUNTIMES = ("libcudart.so.12", "libcudart.so.13", "libcudart.so.11.0", "libcudart.so")


@functools.cache
def preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from pip's nvidia-* packages (what `onnxruntime-gpu[cuda,cudnn]`
    installs) before the first GPU session, so that a plain pip install runs without
    LD_LIBRARY_PATH. onnxruntime's own `preload_dlls` does it (1.21 and later; absent before, a
    no-op then): those packages first, then the default library paths, which is where a CUDA base
    image puts them. What it prints about a library it could not load goes to the log; whether
    the provider then starts is checked where the session is created."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            preload(cuda=True, cudnn=True, msvc=False, directory="")
    except Exception as exc:  # a missing library must surface as the provider's own error
        log.warning("onnxruntime.preload_dlls failed: %s", exc)
    if text := said.getvalue().strip():
        log.warning("onnxruntime.preload_dlls: %s", " ".join(text.split()))


class PinnedAllocator:
    """Page-locked host memory from the CUDA runtime (`cudaHostAlloc`): the device copies it by
    DMA, without the staging copy that pageable memory costs. Blocks live until `close`."""

    def __init__(self, cudart: ctypes.CDLL) -> None:
        self._cudart = cudart
        self._blocks: list[int] = []

    @classmethod
    def load(cls) -> PinnedAllocator | None:
        """The allocator of the CUDA runtime already loaded by the provider; None without one."""
        for name in _CUDA_RUNTIMES:
            try:
                return cls(ctypes.CDLL(name))
            except OSError:
                continue
        return None

    def __call__(self, nbytes: int) -> NDArray[np.uint8]:
        ptr = ctypes.c_void_p()
        status = self._cudart.cudaHostAlloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes), ctypes.c_uint(0))
        if status != 0 or not ptr.value:
            raise MemoryError(f"cudaHostAlloc of {nbytes} bytes failed (CUDA error {status})")
        self._blocks.append(ptr.value)
        block = (ctypes.c_uint8 * nbytes).from_address(ptr.value)
        return np.ctypeslib.as_array(block)

    def close(self) -> None:
        for block in self._blocks:
            self._cudart.cudaFreeHost(ctypes.c_void_p(block))
        self._blocks.clear()


def _pageable(nbytes: int) -> NDArray[np.uint8]:
    return np.empty(nbytes, dtype=np.uint8)


class HostBuffers:
    """One host buffer per graph input, re-used by every batch: a batch's feeds are copied into
    contiguous views of them and bound from there. A buffer grows (never shrinks) to the largest
    batch seen; the loader runs the largest batch before serving, so it is sized once.

    NOTE: a view is overwritten by the next batch; that is safe because a bound run is
    synchronous (`run_with_iobinding` returns once the device has consumed its inputs)."""

    def __init__(self, allocate: Callable[[int], NDArray[np.uint8]] = _pageable) -> None:
        self._allocate = allocate
        self._buffers: dict[str, NDArray[np.uint8]] = {}

    def stage(self, name: str, values: NDArray[Any], dtype: type[np.generic]) -> NDArray[Any]:
        """`values` cast to `dtype`, in `name`'s buffer (same shape, C-contiguous)."""
        itemsize = np.dtype(dtype).itemsize
        nbytes = int(values.size) * itemsize
        buffer = self._buffers.get(name)
        if buffer is None or buffer.nbytes < nbytes:
            buffer = self._buffers[name] = self._allocate(max(nbytes, itemsize))
        view = buffer[:nbytes].view(dtype).reshape(values.shape)
        np.copyto(view, values, casting="unsafe")
        return view

    @property
    def capacity(self) -> dict[str, int]:
        """Bytes held per input (for tests and logs)."""
        return {name: int(b.nbytes) for name, b in self._buffers.items()}


class DeviceIo:
    """Runs a session through one re-used IOBinding: each input is bound once per batch (from
    `HostBuffers`, page-locked where the CUDA runtime allows), the output is allocated on the
    device (`device`: "cuda"; "cpu" runs the same path on the CPU provider, which the unit tests
    use) and copied to the host once, after the run; no per-run numpy round trips of
    intermediate values. Only the served output is bound, so others are never copied back."""

    def __init__(
        self,
        session: ort.InferenceSession,
        output: str,
        dtypes: Mapping[str, type[np.generic]],
        device: str,
        device_id: int,
        host: HostBuffers,
    ) -> None:
        self._session = session
        self._binding = session.io_binding()
        self._output = output
        self._dtypes = dtypes
        self._device = device
        self._device_id = device_id
        self.host = host

    def run(self, feeds: Feeds) -> Logits:
        binding = self._binding
        try:
            for name, dtype in self._dtypes.items():
                staged = self.host.stage(name, feeds[name], dtype)
                binding.bind_input(name, "cpu", 0, staged.dtype, list(staged.shape), staged.ctypes.data)
            binding.bind_output(self._output, self._device, self._device_id)
            self._session.run_with_iobinding(binding)
            (logits,) = binding.copy_outputs_to_cpu()
        finally:
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()
        return np.asarray(logits, dtype=np.float32)


class OnnxRuntimeBackend(GraphBackend):
    def __init__(
        self,
        path: Path,
        kind: BackendKind,
        precision: Precision,
        providers: list[tuple[str, dict[str, str]]],
        options: ort.SessionOptions,
        output_name: str,
        *,
        io_device: str | None = None,
        device_id: int = 0,
    ) -> None:
        """`io_device`: run through `DeviceIo`, keeping outputs on that device ("cuda") until they
        are copied once; None runs `session.run` on numpy feeds (the CPU path)."""
        if kind == BackendKind.TENSORRT:
            Path(providers[0][1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        if kind != BackendKind.ORT_CPU:
            preload_cuda_libraries()
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
        self._pinned: PinnedAllocator | None = None
        self._io: DeviceIo | None = None
        if io_device is not None:
            # After the session: the provider has loaded the CUDA runtime the allocator calls.
            self._pinned = PinnedAllocator.load() if io_device == "cuda" else None
            if io_device == "cuda" and self._pinned is None:
                log.warning("%s: no CUDA runtime library found; host buffers are pageable", kind)
            host = HostBuffers(self._pinned or _pageable)
            self._io = DeviceIo(self._session, self._output, self._dtypes, io_device, device_id, host)

    @property
    def io(self) -> DeviceIo | None:
        """The IOBinding path, when this backend runs through one."""
        return self._io

    def infer(self, feeds: Feeds) -> Logits:
        if self._io is not None:
            return self._io.run(feeds)
        # astype(copy=False) is free when the graph takes int64, as optimum exports do.
        inputs = {name: feeds[name].astype(self._dtypes[name], copy=False) for name in self._inputs}
        (logits,) = self._session.run([self._output], inputs)
        return np.asarray(logits, dtype=np.float32)

    def close(self) -> None:
        # Sessions free their memory when collected; dropping the reference is the API.
        self._io = None
        del self._session
        if self._pinned is not None:
            self._pinned.close()
