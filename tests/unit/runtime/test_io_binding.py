"""The IOBinding path the CUDA and TensorRT backends run, exercised on ONNX Runtime's CPU provider
(the binding API is the same; only the device the output stays on differs)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bertserve.modelrepo import Precision
from bertserve.runtime.base import BackendKind
from bertserve.runtime.onnxruntime import HostBuffers, OnnxRuntimeBackend, PinnedAllocator, session_options

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def graph(path: Path) -> None:
    """logits = 2 x float(input_ids) + float(attention_mask); `other` = -logits. The mask is int32
    in the graph, so the backend must cast the service's int64 feeds."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT32, ["batch", "tokens"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "tokens"])
    other = helper.make_tensor_value_info("other", TensorProto.FLOAT, ["batch", "tokens"])
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "two"], ["f2"]),
        helper.make_node("Add", ["f2", "m"], ["logits"]),
        helper.make_node("Neg", ["logits"], ["other"]),
    ]
    init = [numpy_helper.from_array(np.array([2.0], np.float32), "two")]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [ids, mask], [logits, other], init),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.save_model(model, str(path))


def backend(path: Path, io_device: str | None) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(
        path,
        BackendKind.ORT_CPU,
        Precision.FP32,
        [("CPUExecutionProvider", {})],
        session_options(1, 1),
        "logits",
        io_device=io_device,
    )


def feeds(batch: int, tokens: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(0, 1000, (batch, tokens), dtype=np.int64),
        "attention_mask": rng.integers(0, 2, (batch, tokens), dtype=np.int64),
    }


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    graph(path)
    return path


def test_the_bound_path_answers_what_session_run_answers(model_file: Path) -> None:
    plain, bound = backend(model_file, None), backend(model_file, "cpu")
    assert plain.io is None and bound.io is not None
    # shapes that grow, shrink and change width, as the batcher's batches do
    for i, (batch, tokens) in enumerate([(4, 16), (1, 3), (8, 64), (2, 64), (8, 5)]):
        f = feeds(batch, tokens, i)
        expected = 2.0 * f["input_ids"] + f["attention_mask"]
        got = bound.infer(f)
        assert got.dtype == np.float32 and got.shape == (batch, tokens)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(got, plain.infer(f))
    plain.close()
    bound.close()


def test_host_buffers_are_reused_between_batches(model_file: Path) -> None:
    bound = backend(model_file, "cpu")
    assert bound.io is not None
    host = bound.io.host
    bound.infer(feeds(8, 64, 0))  # the largest batch first, as the loader runs it
    sized = host.capacity
    assert sized == {"input_ids": 8 * 64 * 8, "attention_mask": 8 * 64 * 4}  # int32 in the graph
    first = bound.infer(feeds(2, 10, 1))
    assert host.capacity == sized  # smaller batches: the same buffers
    second = bound.infer(feeds(2, 10, 2))
    # an answer handed out is not overwritten by the next batch (Backend contract)
    np.testing.assert_array_equal(
        first, 2.0 * feeds(2, 10, 1)["input_ids"] + feeds(2, 10, 1)["attention_mask"]
    )
    assert not np.array_equal(first, second)
    bound.infer(feeds(16, 64, 3))
    assert host.capacity["input_ids"] == 16 * 64 * 8  # grown once for a larger batch
    bound.close()


def test_staging_casts_into_a_contiguous_view() -> None:
    allocated: list[int] = []

    def allocate(nbytes: int) -> np.ndarray:
        allocated.append(nbytes)
        return np.zeros(nbytes, dtype=np.uint8)

    host = HostBuffers(allocate)
    values = np.arange(12, dtype=np.int64).reshape(3, 4)[:, :3]  # a non-contiguous slice
    staged = host.stage("input_ids", values, np.int32)
    assert staged.dtype == np.int32 and staged.flags.c_contiguous
    np.testing.assert_array_equal(staged, values)
    again = host.stage("input_ids", values[:2], np.int32)
    assert again.ctypes.data == staged.ctypes.data  # the same memory, re-used
    assert allocated == [36]


def test_pinned_blocks_come_from_the_cuda_runtime_and_are_freed() -> None:
    """The allocator's calls, against a stand-in for libcudart."""

    class FakeCudart:
        def __init__(self) -> None:
            self.blocks: dict[int, ctypes.Array[ctypes.c_uint8]] = {}
            self.freed: list[int] = []

        def cudaHostAlloc(self, ptr: object, size: ctypes.c_size_t, flags: ctypes.c_uint) -> int:
            block = (ctypes.c_uint8 * size.value)()
            address = ctypes.addressof(block)
            self.blocks[address] = block
            ptr._obj.value = address  # type: ignore[attr-defined]  # byref(c_void_p)
            return 0

        def cudaFreeHost(self, ptr: ctypes.c_void_p) -> int:
            assert ptr.value is not None
            self.freed.append(ptr.value)
            return 0

    cudart = FakeCudart()
    pinned = PinnedAllocator(cudart)  # type: ignore[arg-type]
    host = HostBuffers(pinned)
    staged = host.stage("input_ids", np.arange(6, dtype=np.int64).reshape(2, 3), np.int64)
    np.testing.assert_array_equal(staged, [[0, 1, 2], [3, 4, 5]])
    (address,) = cudart.blocks
    assert staged.ctypes.data == address  # the view lies in the page-locked block
    pinned.close()
    assert cudart.freed == [address]


def test_a_failed_pinned_allocation_says_so() -> None:
    class Refusing:
        def cudaHostAlloc(self, ptr: object, size: object, flags: object) -> int:
            return 2  # cudaErrorMemoryAllocation

    with pytest.raises(MemoryError, match="cudaHostAlloc of 64 bytes failed"):
        PinnedAllocator(Refusing())(64)  # type: ignore[arg-type]


# --- CUDA libraries from pip's nvidia-* packages ------------------------------------------------


def cuda_backend(path: Path) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(
        path,
        BackendKind.ORT_CUDA,
        Precision.FP16,
        [("CUDAExecutionProvider", {}), ("CPUExecutionProvider", {})],
        session_options(1, 1),
        "logits",
    )


def test_gpu_backends_preload_the_cuda_libraries_first_and_cpu_ones_do_not(
    model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bertserve.runtime.onnxruntime as ort_backend

    class Preloaded(Exception):
        pass

    calls: list[str] = []

    def preload() -> None:
        calls.append("preload")
        raise Preloaded  # stops the constructor here

    def no_session(*args: object, **kwargs: object) -> None:
        raise AssertionError("a session was created before the CUDA libraries were loaded")

    monkeypatch.setattr(ort_backend, "preload_cuda_libraries", preload)
    monkeypatch.setattr(ort_backend.ort, "InferenceSession", no_session)
    with pytest.raises(Preloaded):
        cuda_backend(model_file)
    assert calls == ["preload"]
    monkeypatch.undo()
    calls.clear()
    monkeypatch.setattr(ort_backend, "preload_cuda_libraries", lambda: calls.append("preload"))
    backend(model_file, None).close()
    assert calls == []


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="this onnxruntime has CUDA: the provider starts instead of being refused",
)
def test_cuda_asked_of_a_cpu_only_onnxruntime_is_refused_not_run_on_cpu(
    model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bertserve.runtime.onnxruntime as ort_backend
    from bertserve.runtime.errors import BackendUnavailableError

    monkeypatch.setattr(ort_backend, "preload_cuda_libraries", lambda: None)
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        cuda_backend(model_file)


def test_preload_asks_onnxruntime_once_and_logs_what_it_printed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import bertserve.runtime.onnxruntime as ort_backend

    calls: list[dict[str, object]] = []

    def preload_dlls(**kwargs: object) -> None:
        calls.append(kwargs)
        print("Failed to load libcudnn.so.9: not found")

    monkeypatch.setattr(ort_backend.ort, "preload_dlls", preload_dlls, raising=False)
    ort_backend.preload_cuda_libraries.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="bertserve.runtime.onnxruntime"):
            ort_backend.preload_cuda_libraries()
            ort_backend.preload_cuda_libraries()
    finally:
        ort_backend.preload_cuda_libraries.cache_clear()
    # nvidia site packages first, then the default paths (directory=""); never the Windows runtime
    assert calls == [{"cuda": True, "cudnn": True, "msvc": False, "directory": ""}]
    assert "Failed to load libcudnn.so.9" in caplog.text


def test_preload_is_a_no_op_where_onnxruntime_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    import bertserve.runtime.onnxruntime as ort_backend

    monkeypatch.delattr(ort_backend.ort, "preload_dlls", raising=False)
    ort_backend.preload_cuda_libraries.cache_clear()
    try:
        ort_backend.preload_cuda_libraries()  # nothing to call: returns without an error
    finally:
        ort_backend.preload_cuda_libraries.cache_clear()
