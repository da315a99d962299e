"""model.yaml values for tests of artifact and precision choice: artifacts with placeholder
digests (nothing on disk) in a one-version classifier."""

from __future__ import annotations

from collections.abc import Sequence

from bertserve.modelrepo import (
    Artifact,
    ArtifactFormat,
    ArtifactGate,
    ModelConfig,
    Precision,
    Task,
    VersionConfig,
)


def artifact(
    fmt: ArtifactFormat, precision: Precision, main: str, gate: ArtifactGate | None = None
) -> Artifact:
    files = {main: "0" * 64}
    if fmt == ArtifactFormat.OPENVINO:
        files[main.replace(".xml", ".bin")] = "1" * 64
    return Artifact(format=fmt, precision=precision, files=files, gate=gate)


def classifier(artifacts: Sequence[Artifact], default: Precision = Precision.FP32) -> ModelConfig:
    return ModelConfig(
        name="m",
        task=Task.TEXT_CLASSIFICATION,
        architecture="bert",
        labels=["a", "b"],
        max_length=128,
        inputs=["input_ids", "attention_mask", "token_type_ids"],
        versions={
            1: VersionConfig(
                artifacts=list(artifacts),
                default_precision=default,
                tokenizer_files={"tokenizer.json": "2" * 64},
            )
        },
    )
