"""Fitting per-label thresholds: the F1-maximising cut, ties towards 0.5, bounds."""

from __future__ import annotations

import numpy as np
import pytest

from bertserve.evaluation.thresholds import HIGHEST, LOWEST, fit_label, fit_thresholds


def test_the_cut_that_maximises_f1_is_chosen() -> None:
    # positives score 0.30..0.45, negatives 0.05..0.20: at 0.5 nothing is found (F1 0)
    scores = np.array([0.30, 0.35, 0.45, 0.05, 0.10, 0.20])
    truth = np.array([True, True, True, False, False, False])
    fitted = fit_label("x", scores, truth)
    assert fitted.f1_at_default == 0.0 and fitted.f1 == 1.0
    assert 0.20 < fitted.threshold <= 0.30 and fitted.positives == 3


def test_a_tie_keeps_the_cut_nearest_the_default() -> None:
    scores = np.array([0.9, 0.8, 0.1, 0.2])
    truth = np.array([True, True, False, False])
    fitted = fit_label("x", scores, truth)  # every cut in (0.2, 0.8) is perfect: 0.5 is among them
    assert fitted.threshold == 0.5 and fitted.f1 == 1.0


def test_thresholds_stay_inside_the_band() -> None:
    scores = np.array([0.001, 0.0005, 0.0001])
    fitted = fit_label("x", scores, np.array([True, True, False]))
    assert LOWEST <= fitted.threshold <= HIGHEST


def test_fit_thresholds_per_label_and_only_those_asked() -> None:
    labels = ["a", "b"]
    probs = np.array([[0.4, 0.9], [0.3, 0.1], [0.1, 0.8]])
    gold = [{"a", "b"}, {"a"}, {"b"}]
    both = fit_thresholds(labels, probs, gold)
    assert [f.label for f in both] == ["a", "b"] and all(f.f1 == 1.0 for f in both)
    assert [f.label for f in fit_thresholds(labels, probs, gold, ["b"])] == ["b"]
    with pytest.raises(ValueError, match="3 examples x 2 labels"):
        fit_thresholds(labels, probs[:, :1], gold)
