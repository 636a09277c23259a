"""Operating-point selection on validation data."""

import numpy as np
import pytest

from pneumonia_cam.evaluation.metrics import point_metrics
from pneumonia_cam.evaluation.thresholds import choose_threshold


def test_fixed_is_half() -> None:
    """The fixed method ignores the data."""
    assert choose_threshold(np.array([0, 1]), np.array([0.9, 0.1]), "fixed") == 0.5


def test_youden_on_separable_data() -> None:
    """Perfectly separable scores: the chosen cut gives sensitivity = specificity = 1."""
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    prob = np.array([0.05, 0.2, 0.31, 0.3, 0.62, 0.7, 0.9])
    threshold = choose_threshold(y, prob, "youden")
    assert threshold == 0.62
    result = point_metrics(y, prob, threshold)
    assert (result["sensitivity"], result["specificity"]) == (1.0, 1.0)


def test_youden_maximises_j_over_all_cut_points() -> None:
    """No distinct cut point has a larger sensitivity + specificity than the chosen one."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    prob = np.round(np.clip(0.3 * y + rng.random(300) * 0.7, 0, 1), 2)
    threshold = choose_threshold(y, prob, "youden")

    def youden(t: float) -> float:
        metrics = point_metrics(y, prob, t)
        return metrics["sensitivity"] + metrics["specificity"] - 1

    best = youden(threshold)
    assert threshold in prob
    assert all(youden(t) <= best + 1e-12 for t in np.unique(prob))


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_sensitivity_target_is_met_by_largest_threshold(target: float) -> None:
    """Sensitivity reaches the target, and the next larger candidate would miss it."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    prob = np.round(np.clip(0.25 * y + rng.random(200) * 0.75, 0, 1), 2)
    threshold = choose_threshold(y, prob, "sensitivity", target_sensitivity=target)
    assert point_metrics(y, prob, threshold)["sensitivity"] >= target
    larger = np.unique(prob)[np.unique(prob) > threshold]
    if larger.size:
        assert point_metrics(y, prob, larger[0])["sensitivity"] < target


def test_sensitivity_with_ties_at_the_cut() -> None:
    """Tied scores move together: 3 of 4 positives need the tie at 0.4 included, so 0.4 is chosen."""
    y = np.array([1, 1, 1, 1, 0, 0, 0])
    prob = np.array([0.9, 0.4, 0.4, 0.1, 0.4, 0.2, 0.05])
    assert choose_threshold(y, prob, "sensitivity", target_sensitivity=0.75) == 0.4
    assert choose_threshold(y, prob, "sensitivity", target_sensitivity=0.76) == 0.1


def test_bad_arguments_raise() -> None:
    """Unknown methods, missing targets and one-class validation data are errors."""
    y, prob = np.array([0, 1]), np.array([0.2, 0.8])
    with pytest.raises(ValueError, match="unknown"):
        choose_threshold(y, prob, "f1")
    with pytest.raises(ValueError, match="target_sensitivity"):
        choose_threshold(y, prob, "sensitivity")
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.array([1, 1]), prob, "youden")
