"""Every `bertserve export` option, defined once.

`ExportOptions` is what `run_export` takes. Each field carries an `Option` in its metadata: the
help text and whether it is a command-line flag. The `bertserve export` command's parameters are
generated from those fields (`cli_flags`, used by bertserve/cli.py) and the demo recipe's export
settings are pydantic fields made from them (`recipe_fields`, used by models/demo/build.py), so a
new option is one field here.

NOTE: imported by the command line at start-up (`bertserve --help`): standard library only here;
pydantic is imported inside `recipe_fields`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KNOWN_FORMATS = ("onnx", "openvino")
# fp32 artifacts must match PyTorch's logits within this on real (non-padding) positions.
FP32_ATOL = 1e-4
# The fp16 graph (`--fp16`): float16 keeps ~3 significant digits, so logits of a few units move by
# ~1e-2 through 12 layers; 5e-2 leaves room for that and still catches a broken conversion.
FP16_ATOL = 5e-2


def _split_commas(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _join_commas(values: tuple[str, ...]) -> str:
    return ",".join(values)


@dataclass(frozen=True)
class ShellForm:
    """How the shell writes a value whose field type it cannot (a tuple as `a,b`)."""

    type: type
    parse: Callable[[Any], Any]
    render: Callable[[Any], Any]


COMMA_LIST = ShellForm(str, parse=_split_commas, render=_join_commas)


@dataclass(frozen=True)
class Option:
    help: str
    flag: bool = True  # False: a keyword of the Python API only (tests, the demo recipe)
    shell: ShellForm | None = None


_OPTION = "bertserve.option"


def option(help: str, *, flag: bool = True, shell: ShellForm | None = None) -> dict[str, Option]:
    """Field metadata: `field(default=..., metadata=option("why the knob exists"))`."""
    return {_OPTION: Option(help=help, flag=flag, shell=shell)}


@dataclass(frozen=True)
class ExportOptions:
    model: str = field(metadata=option("Checkpoint folder or Hugging Face hub id."))
    task: str = field(
        metadata=option("text-classification, token-classification, feature-extraction or rerank.")
    )
    name: str = field(metadata=option("Model name in the repository (URL path segment)."))
    repo: Path = field(default=Path("models"), metadata=option("Model repository folder."))
    formats: tuple[str, ...] = field(
        default=KNOWN_FORMATS, metadata=option("Comma-separated: onnx, openvino.", shell=COMMA_LIST)
    )
    int8: bool = field(default=False, metadata=option("Also write int8 ONNX and NNCF int8 IR."))
    bf16: bool = field(
        default=False,
        metadata=option(
            "Also gate bf16 for OpenVINO (the fp32 IR run in bf16 on CPUs with AVX-512-BF16/AMX)."
        ),
    )
    fp16_ir: bool = field(default=False, metadata=option("Compress OpenVINO IR weights to fp16."))
    fp16: bool = field(
        default=False,
        metadata=option(
            "Also write an fp16 ONNX graph (ORT's GPU fusions, then float16 with fp32 inputs and "
            "outputs) for GPU serving: onnxruntime-cuda serves it by default (--precision fp32 "
            "keeps the fp32 graph); tensor cores run it about twice as fast."
        ),
    )
    max_length: int | None = field(
        default=None, metadata=option("Longest sequence served (default: the model's, at most 512).")
    )
    calibration: Path | None = field(
        default=None, metadata=option("Text file (one sentence a line) for int8 calibration.")
    )
    eval_file: Path | None = field(
        default=None, metadata=option("Labeled TSV (text<TAB>label) or CoNLL file to gate int8 on.")
    )
    fit_thresholds: bool = field(
        default=False,
        metadata=option(
            "Fit per-label decision thresholds on --eval-file (max F1 per label) into model.yaml: "
            "multi-label, one-logit and two-label classifiers."
        ),
    )
    version: int | None = field(default=None, metadata=option("Version folder (default: next free)."))
    allow_pickle: bool = field(default=False, metadata=option("Accept pytorch_model.bin (pickle) weights."))
    force: bool = field(default=False, metadata=option("Make int8 the default even if it fails the gate."))
    min_int8_agreement: float = field(
        default=0.99,
        metadata=option(
            "Gate of int8 and bf16 artifacts: the share of decisions (class, tag per token) that must "
            "agree with PyTorch on the validation text (the eval file's sentences when given).",
        ),
    )
    max_int8_drop_points: float = field(
        default=0.5,
        metadata=option(
            "Gate of int8 and bf16 artifacts: the most the --eval-file score (accuracy or entity F1, "
            "percentage points) may fall below PyTorch's.",
        ),
    )
    fp32_atol: float = field(
        default=FP32_ATOL,
        metadata=option("fp32 artifacts must match PyTorch's logits within this.", flag=False),
    )
    fp16_atol: float = field(
        default=FP16_ATOL,
        metadata=option(
            "The fp16 ONNX graph must match PyTorch's logits within this (and agree on decisions).",
            flag=False,
        ),
    )
    # None keeps an earlier version's setting, else "none"
    segmentation: str | None = field(
        default=None,
        metadata=option(
            "Token classification: how the service reads a text by default: none (whole, "
            "windowed when long), lines, or sentences (for taggers trained on single sentences)."
        ),
    )
    pooling: str | None = field(
        default=None,
        metadata=option(
            "Feature extraction: mean, cls, lasttoken or max (default: the checkpoint's "
            "sentence-transformers 1_Pooling/config.json, else mean)."
        ),
    )
    measure_speed: bool = field(
        default=True,
        metadata=option("Time every artifact against PyTorch for the report.", flag=False),
    )
    quiet: bool = field(default=False, metadata=option("Print nothing while exporting.", flag=False))


def described(name: str) -> Option:
    """The `Option` of the ExportOptions field `name` (KeyError for an unknown one)."""
    fields = {f.name: f for f in dataclasses.fields(ExportOptions)}
    found: Option = fields[name].metadata[_OPTION]
    return found


@dataclass(frozen=True)
class CliFlag:
    """One `bertserve export` parameter, in terms any command-line library can take."""

    name: str  # the ExportOptions field
    flag: str  # "--max-length"
    type: Any  # what the shell value is parsed as
    default: Any  # dataclasses.MISSING: required
    help: str

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


def cli_flags() -> tuple[CliFlag, ...]:
    """Every field with `flag=True`, in field order. Flags are `--` plus the field name with dashes;
    a bool is a flag without a `--no-` form, off unless given."""
    types = typing.get_type_hints(ExportOptions)
    flags = []
    for f in dataclasses.fields(ExportOptions):
        opt = described(f.name)
        if not opt.flag:
            continue
        default = f.default
        if opt.shell is not None and default is not dataclasses.MISSING:
            default = opt.shell.render(default)
        flags.append(
            CliFlag(
                name=f.name,
                flag="--" + f.name.replace("_", "-"),
                type=opt.shell.type if opt.shell is not None else types[f.name],
                default=default,
                help=opt.help,
            )
        )
    return tuple(flags)


def options_from_cli(values: Mapping[str, Any]) -> ExportOptions:
    """ExportOptions from the command's parsed parameters (field name -> shell value)."""
    parsed = {}
    for name, value in values.items():
        shell = described(name).shell
        parsed[name] = shell.parse(value) if shell is not None and value is not None else value
    return ExportOptions(**parsed)


def recipe_fields(
    defaults: Mapping[str, Any], bounds: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """pydantic field definitions for the named options, for `pydantic.create_model(...,
    **recipe_fields(...))`: the option's type and help, the recipe's default, and optional
    `pydantic.Field` bounds (`{"max_length": {"ge": 8}}`)."""
    from pydantic import Field

    types = typing.get_type_hints(ExportOptions)
    return {
        name: (types[name], Field(default, description=described(name).help, **(bounds or {}).get(name, {})))
        for name, default in defaults.items()
    }
