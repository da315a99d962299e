"""Per-label decision thresholds fitted on labelled examples: for each label, the probability cut
that maximises that label's F1 (the export's `--fit-thresholds`, written to model.yaml).

Candidates are the midpoints between consecutive distinct scores (every cut that changes a
decision), plus the default 0.5; ties go to the cut nearest 0.5, so a threshold moves only when
it gains F1 on the examples.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

DEFAULT = 0.5
# a fitted threshold stays inside this band: a cut at 0.0001 would decide on noise
LOWEST, HIGHEST = 0.01, 0.99


@dataclass(frozen=True)
class FittedThreshold:
    label: str
    threshold: float
    f1: float  # on the examples, at the fitted threshold
    f1_at_default: float  # at 0.5
    positives: int  # examples whose gold has the label


def _f1(truth: npt.NDArray[np.bool_], decided: npt.NDArray[np.bool_]) -> float:
    tp = int((truth & decided).sum())
    denominator = int(truth.sum()) + int(decided.sum())
    return 2 * tp / denominator if denominator else 0.0


def fit_label(label: str, scores: npt.NDArray[np.float64], truth: npt.NDArray[np.bool_]) -> FittedThreshold:
    """The cut of one label's probabilities that maximises its F1 (`decided = score >= cut`)."""
    distinct = np.unique(scores)
    candidates = np.concatenate([(distinct[:-1] + distinct[1:]) / 2, [DEFAULT]])
    candidates = np.clip(candidates, LOWEST, HIGHEST)
    best, best_f1 = DEFAULT, _f1(truth, scores >= DEFAULT)
    for cut in candidates:
        f1 = _f1(truth, scores >= cut)
        if f1 > best_f1 + 1e-12 or (abs(f1 - best_f1) <= 1e-12 and abs(cut - DEFAULT) < abs(best - DEFAULT)):
            best, best_f1 = float(cut), f1
    return FittedThreshold(label, round(best, 6), best_f1, _f1(truth, scores >= DEFAULT), int(truth.sum()))


def fit_thresholds(
    labels: Sequence[str],
    probabilities: npt.NDArray[np.float64],
    gold: Sequence[Collection[str]],
    fitted_labels: Sequence[str] | None = None,
) -> list[FittedThreshold]:
    """`probabilities[i, j]`: example i's score for `labels[j]`; `gold[i]`: its true labels.
    Fits `fitted_labels` (default every label)."""
    if probabilities.shape != (len(gold), len(labels)):
        raise ValueError(
            f"probabilities {probabilities.shape} for {len(gold)} examples x {len(labels)} labels"
        )
    out = []
    for label in fitted_labels or labels:
        j = list(labels).index(label)
        truth = np.array([label in g for g in gold], dtype=bool)
        out.append(fit_label(label, probabilities[:, j].astype(np.float64), truth))
    return out
