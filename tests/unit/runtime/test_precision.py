"""`--precision auto`: CPU feature detection and the precision choice, over simulated CPUs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bertserve.modelrepo import (
    Artifact,
    ArtifactFormat,
    ArtifactGate,
    ModelConfig,
    Precision,
)
from bertserve.runtime.base import BackendKind
from bertserve.runtime.cpu import CpuFeature, CpuFeatures, parse_cpuinfo_flags
from bertserve.runtime.errors import ArtifactError
from bertserve.runtime.options import RuntimeOptions
from bertserve.runtime.selection import BackendLoader, Environment, choose_artifact, choose_precision
from tests.helpers.model_configs import artifact, classifier

EPYC_FLAGS = "fpu vme sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16 avx512vl"
CPUINFO = (
    "processor\t: 0\nvendor_id\t: AuthenticAMD\n"
    f"flags\t\t: {EPYC_FLAGS}\nbogomips\t: 4800\n\nprocessor\t: 1\nflags\t\t: {EPYC_FLAGS}\n"
)
EPYC = CpuFeatures.from_flags(parse_cpuinfo_flags(CPUINFO))
AVX2_ONLY = CpuFeatures.from_flags({"sse2", "avx2", "fma"})
SAPPHIRE_RAPIDS = CpuFeatures.from_flags({"avx512f", "amx_int8", "amx_bf16", "amx_tile"})
ICELAKE = CpuFeatures.from_flags({"avx512f", "avx512_vnni"})


def gate(passed: bool = True, needs: tuple[str, ...] = ("vnni",), drop: float = 0.3) -> ArtifactGate:
    return ArtifactGate(
        passed=passed,
        agreement=0.995 if passed else 0.94,
        min_agreement=0.99,
        metric="accuracy",
        drop_points=drop,
        max_drop_points=0.5,
        speedup=2.3,
        needs=list(needs),
        reasons=[] if passed else ["onnx/int8 agreement 94.00% < 99.00%"],
    )


def model(*artifacts: Artifact, default: Precision = Precision.FP32) -> ModelConfig:
    return classifier(artifacts, default)


FP32 = [
    artifact(ArtifactFormat.ONNX_OPTIMIZED, Precision.FP32, "model.ort.onnx"),
    artifact(ArtifactFormat.OPENVINO, Precision.FP32, "openvino/model.xml"),
]
GATED = model(
    *FP32,
    artifact(ArtifactFormat.ONNX, Precision.INT8, "model.int8.onnx", gate()),
    artifact(ArtifactFormat.OPENVINO, Precision.INT8, "openvino-int8/model.xml", gate(passed=False)),
    artifact(ArtifactFormat.OPENVINO, Precision.BF16, "openvino/model.xml", gate(needs=("bf16",), drop=0.0)),
    default=Precision.INT8,
)


def test_cpuinfo_flags_give_the_features() -> None:
    assert EPYC.features == {CpuFeature.VNNI, CpuFeature.BF16}
    assert EPYC.flags == {"avx512_vnni", "avx512_bf16"}
    assert SAPPHIRE_RAPIDS.features == {CpuFeature.VNNI, CpuFeature.BF16}
    assert ICELAKE.features == {CpuFeature.VNNI}
    assert AVX2_ONLY.features == frozenset()
    assert AVX2_ONLY.describe(CpuFeature.VNNI) == "no VNNI"
    assert EPYC.describe(CpuFeature.VNNI) == "VNNI present (avx512_vnni)"
    assert parse_cpuinfo_flags("processor : 0\n") == frozenset()
    assert CpuFeatures.from_flags(parse_cpuinfo_flags("Features\t: fp asimd bf16\n")).features == frozenset()


def test_probe_reads_this_machine() -> None:
    cpu = CpuFeatures.probe()
    assert cpu.features <= set(CpuFeature)
    if Path("/proc/cpuinfo").is_file():
        assert cpu.known


def test_auto_takes_gated_int8_on_a_vnni_cpu_and_says_why() -> None:
    served = choose_precision(BackendKind.ORT_CPU, GATED, None, EPYC)
    assert served is not None and served.precision == Precision.INT8
    assert served.reason.startswith("int8: VNNI present (avx512_vnni), gate passed -0.30 pt accuracy")
    assert "2.30x fp32" in served.reason and served.gate is not None and served.warning is None


def test_auto_without_vnni_picks_fp32_and_says_why() -> None:
    """The acceptance case: a CPU without VNNI (simulated by its flags)."""
    served = choose_precision(BackendKind.ORT_CPU, GATED, None, AVX2_ONLY)
    assert served is not None and served.precision == Precision.FP32
    assert served.reason == "fp32: no VNNI, int8 would be slower"
    assert choose_artifact(BackendKind.ORT_CPU, GATED, served.precision).main_file == "model.ort.onnx"


def test_auto_on_openvino_skips_failed_int8_for_bf16_only_with_bf16() -> None:
    served = choose_precision(BackendKind.OPENVINO_CPU, GATED, None, EPYC)
    assert served is not None and served.precision == Precision.BF16
    assert "BF16 present (avx512_bf16)" in served.reason
    artifact = choose_artifact(BackendKind.OPENVINO_CPU, GATED, Precision.BF16)
    assert artifact.precision == Precision.BF16 and artifact.main_file == "openvino/model.xml"
    icelake = choose_precision(BackendKind.OPENVINO_CPU, GATED, None, ICELAKE)
    assert icelake is not None and icelake.precision == Precision.FP32
    assert "int8 failed the export gate (onnx/int8 agreement 94.00% < 99.00%)" in icelake.reason
    assert "no BF16, bf16 would be slower" in icelake.reason


def test_int8_gated_with_parts_in_bf16_needs_both_features() -> None:
    """An int8 IR whose unquantized layers were gated running in bf16 (export/quantize.py) is
    served only where the CPU has VNNI and BF16; elsewhere `auto` says why and moves on."""
    needs_both = gate(needs=("vnni", "bf16"))
    int8 = artifact(ArtifactFormat.OPENVINO, Precision.INT8, "openvino-int8/model.xml", needs_both)
    both = model(*FP32, int8, default=Precision.INT8)
    served = choose_precision(BackendKind.OPENVINO_CPU, both, None, EPYC)
    assert served is not None and served.precision == Precision.INT8
    assert served.reason.startswith("int8: VNNI present (avx512_vnni)")
    icelake = choose_precision(BackendKind.OPENVINO_CPU, both, None, ICELAKE)
    assert icelake is not None and icelake.precision == Precision.FP32
    assert "no BF16, int8 was gated with parts running in bf16" in icelake.reason
    assert choose_precision(BackendKind.OPENVINO_CPU, both, None, SAPPHIRE_RAPIDS).precision == Precision.INT8


def test_auto_without_gates_falls_back_to_the_old_default_precision() -> None:
    legacy = model(
        *FP32, artifact(ArtifactFormat.ONNX, Precision.INT8, "model.int8.onnx"), default=Precision.INT8
    )
    served = choose_precision(BackendKind.ORT_CPU, legacy, None, AVX2_ONLY)
    assert served is not None and served.precision == Precision.INT8
    plain = model(*FP32, artifact(ArtifactFormat.ONNX, Precision.INT8, "model.int8.onnx"))
    served = choose_precision(BackendKind.ORT_CPU, plain, None, EPYC)
    assert served is not None and served.precision == Precision.FP32
    assert "not the model's default precision" in served.reason


def test_seven_bit_int8_needs_no_vnni() -> None:
    anywhere = model(*FP32, artifact(ArtifactFormat.ONNX, Precision.INT8, "model.int8.onnx", gate(needs=())))
    served = choose_precision(BackendKind.ORT_CPU, anywhere, None, AVX2_ONLY)
    assert served is not None and served.precision == Precision.INT8


def test_forced_precision_the_cpu_lacks_is_a_warning_not_an_error() -> None:
    served = choose_precision(BackendKind.ORT_CPU, GATED, Precision.INT8, AVX2_ONLY)
    assert served is not None and served.precision == Precision.INT8 and served.reason == "requested"
    assert served.warning == "int8 forced on a CPU with no VNNI: it may run slower than fp32"
    failed = choose_precision(BackendKind.OPENVINO_CPU, GATED, Precision.INT8, EPYC)
    assert failed is not None and failed.warning is not None and "failed the export gate" in failed.warning
    assert choose_precision(BackendKind.ORT_CPU, GATED, Precision.FP32, AVX2_ONLY) == choose_precision(
        BackendKind.ORT_CPU, GATED, Precision.FP32, EPYC
    )


def test_gpu_backends_keep_the_model_default() -> None:
    assert choose_precision(BackendKind.ORT_CUDA, GATED, None, EPYC) is None


def test_loader_logs_the_reason(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """The loader asks the CPU probe once and logs auto's verdict (it fails later, on the files)."""
    cpu_only = Environment(frozenset({"CPUExecutionProvider"}), cuda_devices=0, tensorrt_library=False)
    probes: list[int] = []

    def probe() -> CpuFeatures:
        probes.append(1)
        return AVX2_ONLY

    loader = BackendLoader(
        RuntimeOptions(backend=BackendKind.ORT_CPU), env_probe=lambda: cpu_only, cpu_probe=probe
    )
    with caplog.at_level(logging.INFO, logger="bertserve.runtime.selection"), pytest.raises(ArtifactError):
        loader(GATED, tmp_path)
    assert "fp32: no VNNI, int8 would be slower" in caplog.text
    assert loader.cpu() is AVX2_ONLY and len(probes) == 1
