"""Portable ONNX -> OpenVINO IR (an .xml graph and its .bin weights)."""

from __future__ import annotations

from pathlib import Path

import openvino as ov

from bertserve.export.errors import ExportError


def convert_to_openvino(onnx_path: Path) -> ov.Model:
    """Read the portable graph (standard ops) with OpenVINO's ONNX frontend; shapes stay dynamic."""
    try:
        return ov.convert_model(str(onnx_path))
    except Exception as exc:  # frontend errors come as several OpenVINO exception types
        raise ExportError(f"OpenVINO conversion failed: {type(exc).__name__}: {exc}") from exc


def save_ir(model: ov.Model, xml: Path, *, compress_to_fp16: bool) -> None:
    """Write `xml` and the weights beside it (same name, .bin). NOTE: openvino.save_model
    compresses to fp16 unless told otherwise, so fp32 IR must pass compress_to_fp16=False."""
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
