"""The one interface every inference backend implements."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from bertserve.modelrepo import Precision

Feeds = Mapping[str, NDArray[np.int64]]
Logits = NDArray[np.float32]


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
