"""`make gpu-check`'s pure parts (FLOP maths, peaks, the table) and its refusal without a GPU."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bertserve.runtime.selection import Environment
from loadtest import gpu_check
from loadtest.gpu_check import (
    BERT_BASE,
    PHASES,
    Row,
    bert_flops_per_sequence,
    gpu_problem,
    long_texts,
    peak_tflops,
    render_table,
    with_service_ratios,
)


def test_bert_base_at_128_tokens_is_about_22_gflop_a_sequence() -> None:
    flops = bert_flops_per_sequence(tokens=128, **BERT_BASE)
    assert flops == pytest.approx(22.35e9, rel=1e-3)
    # the attention term grows with the square of the length, the rest linearly
    assert bert_flops_per_sequence(tokens=256, **BERT_BASE) > 2 * flops
    # MiniLM-L6-H384 (intermediate 1536): half the layers at a quarter of the matmul work each
    minilm = bert_flops_per_sequence(layers=6, hidden=384, intermediate=1536, tokens=128)
    assert 7 < flops / minilm < 8.5


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H200, 143771 MiB, 570.86", 989.0),
        ("NVIDIA H100 80GB HBM3, 81559 MiB", 989.0),
        ("NVIDIA H100 PCIe, 81559 MiB", 756.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.0),  # not L4's
        ("Some Future GPU", None),
    ],
)
def test_peaks_are_looked_up_by_the_reported_name(name: str, peak: float | None) -> None:
    assert peak_tflops(name) == peak


def test_the_table_shows_throughput_flops_share_of_peak_and_service_over_raw() -> None:
    flops = bert_flops_per_sequence(tokens=128, **BERT_BASE)
    rows = [
        Row("bert-base", "raw tensorrt fp16", "64x128", 10_000.0, 6.4, None, flops),
        Row("bert-base", "service tensorrt fp16", "64x128", 7_500.0, None, None, flops),
        Row("minilm", "raw tensorrt fp16", "sst2", 90_000.0, 0.7),
        Row("any", "service fake (host ceiling)", "sst2", 12_000.0),
    ]
    table = render_table(with_service_ratios(rows), peak=989.0)
    lines = table.splitlines()
    assert lines[0].split() == [
        "model",
        "path",
        "shape",
        "seq/s",
        "ms/batch",
        "TFLOP/s",
        "of",
        "peak",
        "vs",
        "raw",
    ]
    raw, service, minilm, fake = lines[2:]
    assert "10,000" in raw and "223.5" in raw and "22.6%" in raw  # 10k x 22.35 GFLOP = 223.5 TFLOP/s
    assert service.rstrip().endswith("0.75")  # service / raw at the same backend and shape
    assert "167.6" in service
    assert minilm.split()[-3:] == ["-", "-", "-"]
    assert fake.split()[-3:] == ["-", "-", "-"]  # no raw row to compare with


def test_phase_timeouts_fit_in_eight_minutes() -> None:
    assert sum(t for _, t in PHASES) < 8 * 60 - 20  # room for the detection and the report


def test_no_gpu_and_no_provider_are_said_plainly() -> None:
    cpu = frozenset({"CPUExecutionProvider"})
    assert "no NVIDIA GPU" in (gpu_problem(0, cpu) or "")
    assert "onnxruntime-gpu" in (gpu_problem(1, cpu) or "")
    assert gpu_problem(1, cpu | {"CUDAExecutionProvider"}) is None


def test_long_texts_are_longer_than_the_checks_max_length() -> None:
    texts = long_texts(3)
    assert len(set(texts)) == 3 and all(len(t.split()) > gpu_check.MAX_LENGTH for t in texts)


@pytest.mark.skipif(Environment.probe().cuda_devices > 0, reason="a GPU is present: the check would run")
def test_without_a_gpu_the_check_stops_at_once_with_what_is_missing() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.gpu_check"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 2
    assert "gpu-check: no NVIDIA GPU is visible" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_report_lists_parity_the_table_and_what_could_not_be_done() -> None:
    from dataclasses import asdict

    from loadtest.gpu_check import report

    flops = bert_flops_per_sequence(tokens=128, **BERT_BASE)
    results = {
        "build": {"built": [{"model": "bert-base"}], "failed": {"demo-ner": "ExportError: boom"}},
        "parity": {
            "parity": [
                {
                    "model": "bert-base",
                    "path": "cuda fp16",
                    "max_abs_diff": 0.01,
                    "agreement": 1.0,
                    "tolerance": 0.05,
                    "passed": True,
                },
                {
                    "model": "bert-base",
                    "path": "tensorrt fp16",
                    "max_abs_diff": 0.2,
                    "agreement": 0.9,
                    "tolerance": 0.05,
                    "passed": False,
                },
            ],
            "failed": {},
        },
        "raw": {
            "rows": [asdict(Row("bert-base", "raw tensorrt fp16", "64x128", 8000.0, 8.0, None, flops))],
            "failed": {},
        },
        "service": None,
    }
    text = report({"gpu": "NVIDIA H200, 143771 MiB"}, results, ["service: timed out after 90 s"])
    assert "max|diff| 1.00e-02 (tolerance 5e-02) argmax agreement 100.00%  ok" in text
    assert "tensorrt fp16  max|diff| 2.00e-01" in text and "FAILED" in text
    assert "178.8" in text and "18.1%" in text  # 8,000 x 22.35 GFLOP on a 989 TFLOP/s peak
    assert "- service: timed out after 90 s" in text
    assert "- build: demo-ner: ExportError: boom" in text
