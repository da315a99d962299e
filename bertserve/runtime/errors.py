"""What can go wrong running an artifact: pure exceptions, no HTTP and no serving concepts.

The serving layer decides what each means to its callers (a startup failure with exit code 2,
a 500 for the requests of a failed batch); export and evaluation let them propagate.
"""

from __future__ import annotations


class BackendError(Exception):
    """Base of the runtime's errors."""


class ArtifactError(BackendError):
    """The artifact a backend would open is missing, unsafe (a file that is not the one listed
    with its sha256, external data outside the version folder) or not runnable by the backend."""


class BackendUnavailableError(BackendError):
    """A backend was asked for explicitly but this machine cannot run it."""


class InferenceFailure(BackendError):
    """A backend ran a batch but its output cannot be used."""


class OutputShapeError(InferenceFailure):
    """The backend returned another number of rows than the batch has sequences."""


class NonFiniteOutputError(InferenceFailure):
    """The backend produced NaN or Inf."""
