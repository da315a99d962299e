"""Backend choice, artifact choice and GPU provider options: pure logic, tested without a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bertserve.modelrepo import (
    Artifact,
    ArtifactFormat,
    BatchingConfig,
    ModelConfig,
    Precision,
    sha256_file,
)
from bertserve.runtime.base import BackendKind
from bertserve.runtime.errors import ArtifactError, BackendUnavailableError
from bertserve.runtime.onnxruntime import (
    EngineKey,
    GpuOptions,
    provider_chain,
    tensorrt_cache_dirs,
    tensorrt_provider_options,
)
from bertserve.runtime.selection import (
    BackendLoader,
    Environment,
    choose_artifact,
    choose_backend,
    peak_batch_shape,
    reserve_peak_memory,
    tensorrt_version_name,
    warm_profiles,
)
from bertserve.runtime.shapes import ShapePlan
from bertserve.service.settings import Settings
from tests.helpers.model_configs import artifact, classifier

CPU_ONLY = Environment(frozenset({"CPUExecutionProvider"}), cuda_devices=0, tensorrt_library=False)
GPU_ORT = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"})
GPU_FULL = Environment(GPU_ORT, cuda_devices=1, tensorrt_library=True, tensorrt_version="10.3.0")
GPU_NO_TRT_LIB = Environment(GPU_ORT, cuda_devices=1, tensorrt_library=False)


ALL_ARTIFACTS = [
    artifact(ArtifactFormat.ONNX, Precision.FP32, "model.onnx"),
    artifact(ArtifactFormat.ONNX_OPTIMIZED, Precision.FP32, "model.ort.onnx"),
    artifact(ArtifactFormat.ONNX, Precision.INT8, "model.int8.onnx"),
    artifact(ArtifactFormat.OPENVINO, Precision.FP32, "openvino/model.xml"),
    artifact(ArtifactFormat.OPENVINO, Precision.INT8, "openvino-int8/model.xml"),
]


ONNX_ONLY = classifier(ALL_ARTIFACTS[:3])
WITH_IR = classifier(ALL_ARTIFACTS)


@pytest.mark.parametrize(
    ("env", "config", "expected"),
    [
        (GPU_FULL, WITH_IR, BackendKind.TENSORRT),
        (GPU_NO_TRT_LIB, WITH_IR, BackendKind.ORT_CUDA),
        (CPU_ONLY, WITH_IR, BackendKind.OPENVINO_CPU),
        (CPU_ONLY, ONNX_ONLY, BackendKind.ORT_CPU),
    ],
)
def test_auto_takes_the_fastest_available(
    env: Environment, config: ModelConfig, expected: BackendKind
) -> None:
    choice = choose_backend(BackendKind.AUTO, env, config)
    assert choice.kind == expected
    assert choice.reason


def test_tensorrt_without_gpu_says_what_is_missing() -> None:
    with pytest.raises(BackendUnavailableError, match=r"tensorrt is unavailable: no NVIDIA GPU.*--backend"):
        choose_backend(BackendKind.TENSORRT, CPU_ONLY, WITH_IR)


def test_tensorrt_without_provider_or_library() -> None:
    no_provider = Environment(frozenset({"CPUExecutionProvider"}), cuda_devices=1, tensorrt_library=True)
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        choose_backend(BackendKind.TENSORRT, no_provider, WITH_IR)
    with pytest.raises(BackendUnavailableError, match="libnvinfer"):
        choose_backend(BackendKind.TENSORRT, GPU_NO_TRT_LIB, WITH_IR)


def test_an_unavailable_backend_points_at_the_ones_that_run_here() -> None:
    # the GPU machine of the check: CUDA works, libnvinfer is missing
    with pytest.raises(BackendUnavailableError) as trt:
        choose_backend(BackendKind.TENSORRT, GPU_NO_TRT_LIB, ONNX_ONLY)
    assert str(trt.value).endswith("use --backend auto, onnxruntime-cuda or onnxruntime-cpu")
    with pytest.raises(BackendUnavailableError) as cuda:
        choose_backend(BackendKind.ORT_CUDA, CPU_ONLY, WITH_IR)
    assert str(cuda.value).endswith("use --backend auto, onnxruntime-cpu or openvino-cpu")
    with pytest.raises(BackendUnavailableError) as ov:
        choose_backend(BackendKind.OPENVINO_CPU, CPU_ONLY, ONNX_ONLY)
    assert str(ov.value).endswith("use --backend auto or onnxruntime-cpu")


def test_cuda_without_gpu_and_openvino_without_ir() -> None:
    with pytest.raises(BackendUnavailableError, match="onnxruntime-cuda is unavailable"):
        choose_backend(BackendKind.ORT_CUDA, CPU_ONLY, WITH_IR)
    with pytest.raises(BackendUnavailableError, match=r"no OpenVINO IR.*--formats onnx,openvino"):
        choose_backend(BackendKind.OPENVINO_CPU, CPU_ONLY, ONNX_ONLY)
    assert choose_backend(BackendKind.ORT_CPU, CPU_ONLY, ONNX_ONLY).kind == BackendKind.ORT_CPU


def test_artifact_choice_per_backend_and_precision() -> None:
    def main(kind: BackendKind, precision: Precision | None, config: ModelConfig = WITH_IR) -> str:
        return choose_artifact(kind, config, precision).main_file

    assert main(BackendKind.ORT_CPU, None) == "model.ort.onnx"
    assert main(BackendKind.ORT_CPU, Precision.INT8) == "model.int8.onnx"
    assert main(BackendKind.ORT_CUDA, Precision.FP32) == "model.ort.onnx"
    assert main(BackendKind.TENSORRT, None) == "model.onnx"  # portable graph, never the fused one
    assert main(BackendKind.OPENVINO_CPU, None) == "openvino/model.xml"
    assert main(BackendKind.OPENVINO_CPU, Precision.INT8) == "openvino-int8/model.xml"
    assert main(BackendKind.ORT_CPU, None, classifier([ALL_ARTIFACTS[0]])) == "model.onnx"
    # The model's own int8 default falls back to fp32 where a backend cannot run int8 ...
    assert main(BackendKind.TENSORRT, None, classifier(ALL_ARTIFACTS, Precision.INT8)) == "model.onnx"
    assert main(BackendKind.ORT_CPU, None, classifier(ALL_ARTIFACTS, Precision.INT8)) == "model.int8.onnx"


def test_unrunnable_or_missing_precision_stops_startup() -> None:
    with pytest.raises(ArtifactError, match="cannot run int8"):
        choose_artifact(BackendKind.TENSORRT, WITH_IR, Precision.INT8)
    with pytest.raises(ArtifactError, match="no onnx/int8"):
        choose_artifact(BackendKind.ORT_CPU, classifier(ALL_ARTIFACTS[:2]), Precision.INT8)


def test_tensorrt_options_have_one_profile_per_length_bucket(tmp_path: Path) -> None:
    plan = ShapePlan.for_batching(max_batch_size=32, max_batch_tokens=4096, max_length=256)
    assert plan.describe() == "32x32,64x32,128x32,256x16"
    engine = EngineKey("m", 3, "ab" * 32)
    opts = tensorrt_provider_options(
        GpuOptions(1, True, tmp_path, engine, "10.3.0"), ("input_ids", "attention_mask"), plan
    )
    assert opts["device_id"] == "1"
    assert opts["trt_fp16_enable"] == "True"
    assert opts["trt_engine_cache_enable"] == "True"
    assert opts["trt_engine_cache_path"] == str(
        tmp_path / "m" / f"v3-{'ab' * 32}-fp16-p{plan.digest}-trt10.3.0"
    )
    assert opts["trt_timing_cache_path"] == str(tmp_path / "m" / "trt10.3.0")
    # each input once per profile, profile after profile: ORT reads a repeated name as the next one
    assert opts["trt_profile_min_shapes"] == (
        "input_ids:1x1,attention_mask:1x1,input_ids:1x33,attention_mask:1x33,"
        "input_ids:1x65,attention_mask:1x65,input_ids:1x129,attention_mask:1x129"
    )
    assert opts["trt_profile_opt_shapes"] == (
        "input_ids:32x32,attention_mask:32x32,input_ids:32x64,attention_mask:32x64,"
        "input_ids:32x128,attention_mask:32x128,input_ids:16x256,attention_mask:16x256"
    )
    assert opts["trt_profile_max_shapes"] == opts["trt_profile_opt_shapes"]
    fp32 = tensorrt_provider_options(GpuOptions(0, False, tmp_path, engine), ("input_ids",), plan)
    assert fp32["trt_fp16_enable"] == "False"
    assert "-fp32-" in fp32["trt_engine_cache_path"]
    assert fp32["trt_engine_cache_path"].endswith("-trtunknown")  # no version found: its own folder


def engine_dir(
    root: Path,
    model: str,
    version: int,
    artifact_: Artifact,
    fp16: bool = True,
    plan: ShapePlan = ShapePlan.for_batching(32, 8192, 128),
    trt: str = "10.3.0",
) -> Path:
    gpu = GpuOptions(0, fp16, root, EngineKey(model, version, artifact_.digest), trt)
    return tensorrt_cache_dirs(gpu, plan)[0]


def test_tensorrt_engine_cache_is_keyed_by_the_artifacts_bytes(tmp_path: Path) -> None:
    """ORT's own engine name ignores the weights: a retrained model.onnx with the same graph must
    still get a fresh engine, and the same bytes must find their cached one again."""
    v1 = Artifact(format=ArtifactFormat.ONNX, precision=Precision.FP32, files={"model.onnx": "a" * 64})
    retrained = Artifact(format=ArtifactFormat.ONNX, precision=Precision.FP32, files={"model.onnx": "b" * 64})
    same = Artifact(format=ArtifactFormat.ONNX, precision=Precision.FP32, files={"model.onnx": "a" * 64})
    assert v1.digest == "a" * 64  # one file: its own sha256, easy to compare with model.yaml
    assert engine_dir(tmp_path, "m", 1, v1) == engine_dir(tmp_path, "m", 1, same)
    assert engine_dir(tmp_path, "m", 1, v1) != engine_dir(tmp_path, "m", 1, retrained)
    assert engine_dir(tmp_path, "m", 1, v1) != engine_dir(tmp_path, "m", 2, v1)
    assert engine_dir(tmp_path, "m", 1, v1) != engine_dir(tmp_path, "other", 1, v1)
    assert engine_dir(tmp_path, "m", 1, v1) != engine_dir(tmp_path, "m", 1, v1, fp16=False)
    # other profiles (other batch limits) or another TensorRT: another engine
    other_plan = ShapePlan.for_batching(64, 8192, 128)
    assert engine_dir(tmp_path, "m", 1, v1) != engine_dir(tmp_path, "m", 1, v1, plan=other_plan)
    assert engine_dir(tmp_path, "m", 1, v1) != engine_dir(tmp_path, "m", 1, v1, trt="10.4.0")
    assert engine_dir(tmp_path, "m", 1, v1, plan=ShapePlan.for_batching(32, 8192, 128)) == engine_dir(
        tmp_path, "m", 1, v1
    )
    # weights kept in an external-data file: changing only that file changes the key
    ext = {"model.onnx": "a" * 64, "model.onnx_data": "c" * 64}
    ext_retrained = {"model.onnx": "a" * 64, "model.onnx_data": "d" * 64}
    with_data = Artifact(format=ArtifactFormat.ONNX, precision=Precision.FP32, files=ext)
    with_new_data = Artifact(format=ArtifactFormat.ONNX, precision=Precision.FP32, files=ext_retrained)
    assert engine_dir(tmp_path, "m", 1, with_data) != engine_dir(tmp_path, "m", 1, with_new_data)
    with pytest.raises(ValueError, match="EngineKey"):
        tensorrt_cache_dirs(GpuOptions(0, True, tmp_path), ShapePlan.for_batching(1, 1, 8))


def test_loader_keys_the_tensorrt_cache_by_the_chosen_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The production loader passes the model, version and chosen artifact's digest through."""
    import bertserve.runtime.onnxruntime as ort_backend

    seen: list[list[tuple[str, dict[str, str]]]] = []
    ran: list[tuple[int, ...]] = []
    io: list[object] = []

    class Recorder:
        input_names = ("input_ids",)

        def __init__(self, *args: object, io_device: str | None = None, device_id: int = 0) -> None:
            _path, _kind, _precision, providers, _options, _output = args
            seen.append(providers)  # type: ignore[arg-type]
            io.append((io_device, device_id))

        def infer(self, feeds: dict[str, np.ndarray]) -> None:
            ran.append(feeds["input_ids"].shape)

    vdir = tmp_path / "m" / "1"
    vdir.mkdir(parents=True)
    (vdir / "model.onnx").write_bytes(b"")  # never opened: the session class is replaced
    onnx = Artifact(
        format=ArtifactFormat.ONNX,
        precision=Precision.FP32,
        files={"model.onnx": sha256_file(vdir / "model.onnx")},
    )
    monkeypatch.setattr(ort_backend, "OnnxRuntimeBackend", Recorder)
    monkeypatch.setattr("bertserve.runtime.onnx_files.check_external_data", lambda *a: None)
    settings = Settings(backend=BackendKind.TENSORRT, tensorrt_cache_dir=tmp_path / "cache")
    BackendLoader(settings.runtime_options(), env_probe=lambda: GPU_FULL)(classifier([onnx]), vdir)
    trt_options = dict(seen[0])["TensorrtExecutionProvider"]
    plan = ShapePlan.for_batching(32, 8192, 128)  # the model's batching block, its max_length
    assert trt_options["trt_engine_cache_path"] == str(
        tmp_path / "cache" / "m" / f"v1-{onnx.digest}-fp16-p{plan.digest}-trt10.3.0"
    )
    assert trt_options["trt_profile_opt_shapes"] == plan.tensorrt_shapes(tuple(classifier([onnx]).inputs))[1]
    # every profile ran before the model is served, then the peak batch; through IOBinding on the GPU
    assert ran == [(32, 32), (32, 64), (32, 128), (32, 128)]
    assert io == [("cuda", 0)]


def test_provider_chains_fall_back_in_order(tmp_path: Path) -> None:
    plan = ShapePlan.for_batching(8, 1024, 128)
    gpu = GpuOptions(0, True, tmp_path, EngineKey("m", 1, "0" * 64))
    names = {
        kind: [p for p, _ in provider_chain(kind, gpu, ("input_ids",), plan)]
        for kind in (BackendKind.TENSORRT, BackendKind.ORT_CUDA, BackendKind.ORT_CPU)
    }
    assert names[BackendKind.TENSORRT] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert names[BackendKind.ORT_CUDA] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert names[BackendKind.ORT_CPU] == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="shape plan"):
        provider_chain(BackendKind.TENSORRT, gpu, ("input_ids",), None)


def test_openvino_bounds_its_per_shape_caches() -> None:
    """With the defaults (5000 executors, 1024 oneDNN primitives) RSS grew for every new batch
    shape for the whole of a soak; both caches are bounded (bertserve.runtime.openvino NOTE)."""
    from bertserve.runtime.openvino import PRIMITIVE_CACHE_CAPACITY, RUNTIME_CACHE_CAPACITY, compile_config

    config = compile_config("LATENCY", 2, None)
    assert config["CPU_RUNTIME_CACHE_CAPACITY"] == RUNTIME_CACHE_CAPACITY <= 500
    assert PRIMITIVE_CACHE_CAPACITY <= 256


@pytest.mark.parametrize(
    ("batch", "tokens", "max_length", "shape"),
    [
        (32, 8192, 128, (32, 128)),  # the batch size binds: 32 x 128 = 4,096 padded tokens
        (32, 8192, 512, (16, 512)),  # the token budget binds
        (8, 100, 512, (1, 100)),  # a budget below max_length: one sequence cut to the budget
    ],
)
def test_the_peak_batch_is_the_longest_the_limits_allow(
    batch: int, tokens: int, max_length: int, shape: tuple[int, int]
) -> None:
    limits = BatchingConfig(max_batch_size=batch, max_batch_tokens=tokens)
    assert peak_batch_shape(limits, max_length) == shape


def test_the_loader_runs_the_peak_batch_before_serving() -> None:
    ran: list[tuple[int, ...]] = []

    class Probe:
        input_names = ("input_ids", "attention_mask")

        def infer(self, feeds: dict[str, np.ndarray]) -> None:
            assert feeds["attention_mask"].all()
            ran.extend(f.shape for f in feeds.values())

    reserve_peak_memory(
        Probe(), classifier(ALL_ARTIFACTS), BatchingConfig(max_batch_size=4, max_batch_tokens=256)
    )  # type: ignore[arg-type]
    assert ran == [(2, 128), (2, 128)]


FP16_GRAPH = artifact(ArtifactFormat.ONNX_OPTIMIZED, Precision.FP16, "model.fp16.onnx")
WITH_FP16 = classifier([*ALL_ARTIFACTS, FP16_GRAPH])


def test_cuda_serves_the_fp16_graph_by_default_and_fp32_when_asked() -> None:
    def main(kind: BackendKind, precision: Precision | None, config: ModelConfig = WITH_FP16) -> str:
        return choose_artifact(kind, config, precision).main_file

    assert main(BackendKind.ORT_CUDA, None) == "model.fp16.onnx"
    assert main(BackendKind.ORT_CUDA, Precision.FP32) == "model.ort.onnx"  # --precision fp32
    assert main(BackendKind.ORT_CUDA, Precision.FP16) == "model.fp16.onnx"
    # a model whose default is int8 (a CPU choice) still gets the fp16 graph on CUDA
    assert main(BackendKind.ORT_CUDA, None, classifier([*ALL_ARTIFACTS, FP16_GRAPH], Precision.INT8)) == (
        "model.fp16.onnx"
    )
    # without the fp16 graph, CUDA keeps the fp32 one
    assert main(BackendKind.ORT_CUDA, None, WITH_IR) == "model.ort.onnx"
    # TensorRT parses the portable graph and lowers precision itself; CPUs never take the fp16 graph
    assert main(BackendKind.TENSORRT, None) == "model.onnx"
    assert main(BackendKind.ORT_CPU, None) == "model.ort.onnx"
    assert main(BackendKind.OPENVINO_CPU, None) == "openvino/model.xml"
    with pytest.raises(ArtifactError, match="no onnx-optimized/fp16"):
        choose_artifact(BackendKind.ORT_CUDA, WITH_IR, Precision.FP16)


def test_warm_up_runs_every_profile_at_its_tuned_shape() -> None:
    ran: list[dict[str, tuple[tuple[int, ...], int]]] = []

    class Probe:
        input_names = ("input_ids", "attention_mask", "token_type_ids")

        def infer(self, feeds: dict[str, np.ndarray]) -> None:
            ran.append({k: (v.shape, int(v.flat[0])) for k, v in feeds.items()})

    plan = ShapePlan.for_batching(64, 8192, 512)
    warm_profiles(Probe(), plan, pad_token_id=7)  # type: ignore[arg-type]
    assert [r["input_ids"][0] for r in ran] == [(64, 32), (64, 64), (64, 128), (32, 256), (16, 512)]
    assert all(r["input_ids"][1] == 7 and r["attention_mask"][1] == 1 for r in ran)
    assert all(r["token_type_ids"][1] == 0 for r in ran)


@pytest.mark.parametrize(
    ("encoded", "name"), [(100300, "10.3.0"), (101100, "10.11.0"), (8601, "8.6.1"), (8503, "8.5.3")]
)
def test_tensorrt_versions_are_read_from_the_library_encoding(encoded: int, name: str) -> None:
    assert tensorrt_version_name(encoded) == name


def test_cpu_backends_open_without_io_binding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bertserve.runtime.onnxruntime as ort_backend
    from bertserve.runtime.selection import open_file

    seen: list[str | None] = []

    class Recorder:
        def __init__(self, *args: object, io_device: str | None = None, device_id: int = 0) -> None:
            seen.append(io_device)

    monkeypatch.setattr(ort_backend, "OnnxRuntimeBackend", Recorder)
    options = Settings(backend=BackendKind.ORT_CPU).runtime_options()
    open_file(BackendKind.ORT_CPU, tmp_path / "model.onnx", Precision.FP32, "logits", options)
    cuda = Settings(backend=BackendKind.ORT_CUDA).runtime_options()
    open_file(BackendKind.ORT_CUDA, tmp_path / "model.onnx", Precision.FP16, "logits", cuda)
    assert seen == [None, "cuda"]
