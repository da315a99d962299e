"""The one interface every inference backend implements, and the kinds of backend there are."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

import numpy as np
from numpy.typing import NDArray

from bertserve.modelrepo import ArtifactGate, Precision

Feeds = Mapping[str, NDArray[np.int64]]
Logits = NDArray[np.float32]


class BackendKind(StrEnum):
    AUTO = "auto"
    ORT_CPU = "onnxruntime-cpu"
    ORT_CUDA = "onnxruntime-cuda"
    TENSORRT = "tensorrt"
    OPENVINO_CPU = "openvino-cpu"
    FAKE = "fake"  # deterministic logits without a model file: tests and load-test dry runs

    @property
    def min_padding_efficiency(self) -> float:
        """Real / padded tokens below which a batch is better split in two on this kind.

        A CPU computes every padded token, so packing beats batch size there; a GPU runs padding
        nearly for free, up to a point; the fake backend does no work at all."""
        return _MIN_PADDING_EFFICIENCY.get(self, CPU_MIN_PADDING_EFFICIENCY)


# NOTE: 0.95, not 0.85: side by side on 2 cores (SST-2 sentences, 64 and 16 closed-loop clients,
# docs/benchmarks.md) smaller, tighter batches served 5-10 % more and cost less CPU per request;
# the per-batch cost of a CPU session is a few tokens' worth of work.
CPU_MIN_PADDING_EFFICIENCY: Final = 0.95
_MIN_PADDING_EFFICIENCY: Final[Mapping[BackendKind, float]] = {
    BackendKind.TENSORRT: 0.5,
    BackendKind.ORT_CUDA: 0.5,
    BackendKind.FAKE: 0.0,
}


def min_padding_efficiency(backend_name: str) -> float:
    """`BackendKind.min_padding_efficiency` for a backend's `name`; a name that is no kind (a
    test's own backend) pays for padding like a CPU."""
    try:
        return BackendKind(backend_name).min_padding_efficiency
    except ValueError:
        return CPU_MIN_PADDING_EFFICIENCY


@dataclass(frozen=True, slots=True)
class ServedPrecision:
    """Why a backend runs the precision it runs (`--precision auto`'s verdict, or "requested"),
    and the export gate's figures of the artifact it opened."""

    precision: Precision
    reason: str
    gate: ArtifactGate | None = None
    warning: str | None = None  # a forced precision the CPU cannot run well, a failed warm-up check


class GraphBackend:
    """What a backend over one exported graph reports (the `Backend` properties): its kind (the
    `backend` metric label), the graph's real input names and the artifact's precision."""

    def __init__(self, kind: BackendKind, precision: Precision, input_names: tuple[str, ...]) -> None:
        self._kind = kind
        self._precision = precision
        self._inputs = input_names
        self.served: ServedPrecision | None = None  # set by the loader that chose it

    @property
    def name(self) -> str:
        return str(self._kind)

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._inputs

    @property
    def precision(self) -> Precision:
        return self._precision


class Backend(Protocol):
    """Runs one padded batch. Called from a single dedicated thread per model, one batch at a time.

    `infer` gets int64 arrays keyed by the graph's real input names (DistilBERT has no
    `token_type_ids`) and returns logits `[batch, labels]` or `[batch, tokens, labels]`.
    The returned array must not be reused by the backend afterwards.
    """

    @property
    def name(self) -> str: ...  # a BackendKind value; the `backend` metric label

    @property
    def input_names(self) -> tuple[str, ...]: ...

    @property
    def precision(self) -> Precision: ...

    def infer(self, feeds: Feeds) -> Logits: ...

    def close(self) -> None: ...
