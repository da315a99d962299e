"""Every export option is defined once: the `bertserve export` flags are made from the
ExportOptions fields, with the same names, help and defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from bertserve.cli import app
from bertserve.export.options import KNOWN_FORMATS, ExportOptions, cli_flags, described, options_from_cli

# The command line as it was before the options were defined once: flag -> default (None: required).
EXPECTED_FLAGS = {
    "--model": None,
    "--task": None,
    "--name": None,
    "--repo": Path("models"),
    "--formats": "onnx,openvino",
    "--int8": False,
    "--bf16": False,  # OpenVINO bf16, gated like int8 (#15)
    "--fp16-ir": False,
    "--fp16": False,  # the fp16 ONNX graph for GPUs (#20)
    "--max-length": None,
    "--calibration": None,
    "--eval-file": None,
    "--version": None,
    "--allow-pickle": False,
    "--force": False,
    "--segmentation": None,
    "--pooling": None,  # feature extraction (#17)
    "--fit-thresholds": False,  # per-label thresholds on --eval-file (#19)
    # the low-precision gate's bounds (#15): 0.5 points, as the README's measurements justify
    "--min-int8-agreement": 0.99,
    "--max-int8-drop-points": 0.5,
}
# the gate bounds are flags: the gate is explicit
API_ONLY = {"fp32_atol", "fp16_atol", "measure_speed", "quiet"}


def _options() -> dict[str, Any]:
    """The export command's options as the command-line library holds them (typer's click)."""
    command = typer.main.get_command(app).commands["export"]  # type: ignore[attr-defined]
    return {p.name: p for p in command.params if p.param_type_name == "option" and p.name != "help"}


def test_every_field_is_described() -> None:
    for f in dataclasses.fields(ExportOptions):
        assert described(f.name).help.strip(), f.name


def test_cli_flags_are_the_export_options_fields() -> None:
    fields = [f.name for f in dataclasses.fields(ExportOptions)]
    flagged = [f for f in fields if described(f).flag]
    assert [flag.name for flag in cli_flags()] == flagged
    assert set(fields) - set(flagged) == API_ONLY
    params = _options()
    assert list(params) == flagged
    for flag in cli_flags():
        param = params[flag.name]
        assert param.opts == [flag.flag] and not param.secondary_opts  # bools: no --no- form
        assert param.help == described(flag.name).help
        assert param.required == flag.required


def test_flag_names_and_defaults_are_unchanged() -> None:
    params = _options()
    assert {p.opts[0]: (None if p.required else p.default) for p in params.values()} == EXPECTED_FLAGS
    defaults = {f.name: f.default for f in dataclasses.fields(ExportOptions)}
    assert defaults["formats"] == KNOWN_FORMATS and defaults["repo"] == Path("models")


def test_help_lists_every_flag() -> None:
    result = CliRunner().invoke(app, ["export", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for flag in EXPECTED_FLAGS:
        assert flag in result.output


def test_options_from_the_shell() -> None:
    values = {flag.name: flag.default for flag in cli_flags() if not flag.required}
    options = options_from_cli({**values, "model": "ckpt", "task": "text-classification", "name": "m"})
    assert options == ExportOptions(model="ckpt", task="text-classification", name="m")
    parsed = options_from_cli({"model": "c", "task": "t", "name": "n", "formats": " openvino, ,onnx "})
    assert parsed.formats == ("openvino", "onnx")
