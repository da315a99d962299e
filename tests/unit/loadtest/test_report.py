"""summary.json, report.md and the plots, written from synthetic measurements."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.report import (
    BackendPoint,
    BenchRun,
    InstancesPoint,
    LoadPoint,
    RawPoint,
    build_summary,
    render_markdown,
    write_results,
)
from loadtest.slo import RateProbe, SloSearch

REQUIRED = (
    "service_vs_raw",
    "service_vs_naive",
    "latency_overhead_ms",
    "real_token_ratio",
    "best_backend",
    "max_rate_at_slo",
    "server_cpu_vs_raw",
    "client_cpu_share",
    "service_vs_raw_8_inputs",
    "service_vs_raw_32_inputs",
    "raw_ceiling_sequences_per_s",
)


def point(clients: int, rps: float, p50: float = 10.0) -> LoadPoint:
    return LoadPoint(clients, rps, p50, p50 * 2, p50 * 3, int(rps * 10), 0, {200: int(rps * 10)}, 0.9)


def synthetic_run() -> BenchRun:
    return BenchRun(
        meta={"model": "m", "backend": "onnxruntime-cpu", "precision": "fp32", "cpus": 2, "timestamp": "t"},
        raw=[RawPoint(1, 100.0, 9.5, 1.0), RawPoint(8, 300.0, 26.0, 0.8)],
        raw_sorted=[RawPoint(1, 100.0, 9.5, 1.0, True, 19.0), RawPoint(32, 420.0, 70.0, 0.97, True, 4.7)],
        service=[point(1, 90.0, 10.5), point(64, 280.0, 200.0)],
        naive=[point(1, 40.0, 25.0), point(64, 45.0, 1400.0)],
        service_vs_raw_pairs=[0.95, 0.91, 0.99],
        latency_overhead_pairs=[0.8, 0.6, 3.0],
        service_vs_naive_pairs=[6.0, 6.4, 5.5],
        real_token_ratios=[0.9, 0.88, 0.91],
        server_cpu_vs_raw_pairs=[1.1, 1.3, 1.2],
        client_cpu_shares=[0.05, 0.06, 0.04],
        planned_vs_raw_pairs=[0.94, 0.95, 0.93],
        service_vs_planned_pairs=[0.99, 0.97, 1.02],
        server_loop_cpu_ms=[0.52, 0.5, 0.55],
        no_model=[
            LoadPoint(64, 3000.0, 20.0, 25.0, 30.0, 24000, 0, {200: 24000}, server_cpu_ms_per_request=0.31)
        ],
        multi_input_pairs={8: [0.93, 0.92, 0.94], 32: [0.97, 0.96, 0.99]},
        multi_input=[LoadPoint(8, 50.0, 150.0, 160.0, 170.0, 500, 0, {200: 500}, 0.95, inputs_per_request=8)],
        instances=[InstancesPoint(2, 1, [point(1, 70.0), point(64, 300.0)])],
        backends=[
            BackendPoint("ort fp32", "onnxruntime-cpu", "fp32", "onnx-optimized", point(64, 280.0), 300.0),
            BackendPoint("openvino int8", "openvino-cpu", "int8", "openvino", point(64, 410.0), 450.0),
        ],
        slo=SloSearch(
            100.0, 240.0, (RateProbe(200.0, 40.0, 200.0, 0), RateProbe(300.0, 900.0, 280.0, 0)), (True, False)
        ),
        locust_command="make loadtest RATE=240",
    )


def test_summary_has_the_headline_keys_as_medians_of_the_pairs() -> None:
    summary = build_summary(synthetic_run())
    assert set(REQUIRED) <= summary.keys()
    assert summary["service_vs_raw"] == 0.95
    assert summary["latency_overhead_ms"] == 0.8
    assert summary["server_cpu_vs_raw"] == 1.2
    assert summary["client_cpu_share"] == 0.05
    assert summary["service_vs_raw_8_inputs"] == 0.93
    assert summary["service_vs_raw_32_inputs"] == 0.97
    assert summary["raw_ceiling_sequences_per_s"] == 420.0  # the sorted rows' best, not arrival order
    assert summary["raw_arrival_order_best_sequences_per_s"] == 300.0
    assert summary["service_vs_naive"] == 6.0
    assert summary["planned_raw_vs_raw"] == 0.94
    assert summary["service_vs_planned_raw"] == 0.99
    assert summary["server_loop_cpu_ms_per_request"] == 0.52
    assert summary["no_model_server_cpu_ms_per_request"] == 0.31
    assert summary["real_token_ratio"] == 0.9
    assert summary["best_backend"] == "openvino int8"
    assert summary["max_rate_at_slo"] == 240.0
    goals = summary["goals"]
    assert isinstance(goals, dict)
    assert goals["service_vs_raw"]["met"] is True
    assert goals["latency_overhead_ms"]["met"] is True
    assert goals["server_cpu_vs_raw"]["met"] is False  # 1.2 > 1.15
    assert goals["service_vs_raw_32_inputs"]["met"] is True


def test_missing_phases_give_nulls_not_errors() -> None:
    run = BenchRun(meta={}, raw=[RawPoint(1, 100.0, 9.5, 1.0)], service=[point(1, 90.0)])
    summary = build_summary(run)
    for key in REQUIRED:
        assert summary[key] is None
    assert summary["planned_raw_vs_raw"] is None and summary["server_loop_cpu_ms_per_request"] is None
    assert summary["no_model_server_cpu_ms_per_request"] is None
    assert "Where the gap" not in render_markdown(run, summary)
    assert summary["goals"]["service_vs_naive"]["met"] is None  # type: ignore[index]


def test_write_results_produces_json_markdown_and_plots(tmp_path: Path) -> None:
    write_results(tmp_path, synthetic_run())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(REQUIRED) <= summary.keys()
    assert [p["passed"] for p in summary["slo_search"]] == [True, False]
    report = (tmp_path / "report.md").read_text()
    assert "| service_vs_raw | 0.95 | >= 0.85 | yes |" in report
    assert "## Where the gap to the ceiling is" in report
    assert "reaches 0.94 of the sorted ceiling" in report and "0.99 of that raw figure" in report
    assert "used 0.52 ms CPU per request" in report
    assert "0.31 ms server CPU per request" in report
    assert "| sorted | 32 | 420.0 |" in report and "| arrival | 8 | 300.0 |" in report
    assert "## 2 instance(s) x 1 thread(s) per model" in report
    assert "| 8 | 8 | 50.0 | 400.0 |" in report  # 8 clients x 8 inputs: req/s and sequences/s
    assert "openvino int8" in report and "make loadtest RATE=240" in report
    for name in ("throughput.png", "latency.png", "backends.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_layout_ceiling_is_the_fastest_raw_layout() -> None:
    """A layout of two single-thread sessions can outrun one two-thread session raw; the ceiling
    is then that layout's, and the best served layout is measured against it."""
    from loadtest.report import layout_ceiling

    layouts = [
        InstancesPoint(1, 2, [point(1, 120.0), point(64, 200.0)], 275.0),
        InstancesPoint(2, 1, [point(1, 90.0), point(64, 230.0)], 370.0),
    ]
    summary = layout_ceiling(layouts)
    assert summary["raw_best_layout"] == {"instances": 2, "threads": 1, "sequences_per_s": 370.0}
    assert summary["best_layout_service_vs_raw"] == round(230.0 / 370.0, 4)
    assert layout_ceiling([InstancesPoint(2, 1, [point(64, 300.0)])]) == {
        "raw_best_layout": None,
        "best_layout_service_vs_raw": None,
    }
    run = synthetic_run()
    assert build_summary(run)["raw_best_layout"] is None  # its instances phase has no raw figure
    assert "Raw backend in this layout" not in render_markdown(run, build_summary(run))
    run.instances[0] = InstancesPoint(2, 1, run.instances[0].service, 370.0)
    assert (
        "Raw backend in this layout (sorted batches, all sessions at once): 370.0 seq/s"
        in render_markdown(run, build_summary(run))
    )


def test_the_adaptive_layout_is_served_against_the_best_raw_layout() -> None:
    """The adaptive layout has no raw layout of its own: when it serves best, the best-layout
    ratio is its throughput over the fastest fixed raw layout, and the report names it."""
    from loadtest.report import layout_ceiling

    layouts = [
        InstancesPoint(1, 2, [point(1, 120.0), point(64, 200.0)], 275.0),
        InstancesPoint(2, 1, [point(1, 90.0), point(64, 230.0)], 370.0),
        InstancesPoint(2, 2, [point(1, 118.0), point(64, 260.0)], None, adaptive=True),
    ]
    summary = layout_ceiling(layouts)
    assert summary["raw_best_layout"] == {"instances": 2, "threads": 1, "sequences_per_s": 370.0}
    assert summary["best_layout_service_vs_raw"] == round(260.0 / 370.0, 4)
    assert layout_ceiling([layouts[2]])["raw_best_layout"] is None  # nothing raw to compare with
    run = synthetic_run()
    run.instances[:] = layouts
    text = render_markdown(run, build_summary(run))
    assert "## adaptive (1 x 2 alone, 2 x 1 under load) per model" in text
