"""Choose the operating point on validation data, so the test set is not used to tune it.

Candidate thresholds are the distinct validation probabilities; a sample is positive iff `prob >= threshold`.
"""

import numpy as np

from pneumonia_cam.evaluation.metrics import as_binary_arrays, roc_points
from pneumonia_cam.models.decision import DEFAULT_THRESHOLD

METHODS = ("fixed", "youden", "sensitivity")
FIXED_THRESHOLD = DEFAULT_THRESHOLD


def operating_points(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) with sensitivity and specificity at each; needs both classes."""
    y, p = as_binary_arrays(y_true, prob)
    thresholds, tps, fps = roc_points(y, p)
    n_pos, n_neg = tps[-1], fps[-1]
    if n_pos == 0 or n_neg == 0:
        raise ValueError("choosing a threshold needs both classes in the validation labels")
    return thresholds, tps / n_pos, 1.0 - fps / n_neg


def youden_threshold(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Cut point maximising sensitivity + specificity - 1; ties go to the highest threshold (fewer alarms)."""
    thresholds, sensitivity, specificity = operating_points(y_true, prob)
    return float(thresholds[np.argmax(sensitivity + specificity)])  # argmax keeps the first, i.e. highest


def sensitivity_threshold(y_true: np.ndarray, prob: np.ndarray, target: float) -> float:
    """Largest cut point whose sensitivity reaches `target`, which maximises specificity under that floor."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target}")
    thresholds, sensitivity, _ = operating_points(y_true, prob)
    # Sensitivity never falls as the threshold descends, and the lowest threshold reaches 1.
    return float(thresholds[np.argmax(sensitivity >= target)])


def choose_threshold(
    y_true: np.ndarray, prob: np.ndarray, method: str, target_sensitivity: float | None = None
) -> float:
    """Operating point by `method`: "fixed" (0.5), "youden" or "sensitivity" (needs target_sensitivity)."""
    if method == "fixed":
        return FIXED_THRESHOLD
    if method == "youden":
        return youden_threshold(y_true, prob)
    if method == "sensitivity":
        if target_sensitivity is None:
            raise ValueError('method "sensitivity" needs target_sensitivity')
        return sensitivity_threshold(y_true, prob, target_sensitivity)
    raise ValueError(f"unknown threshold method {method!r}; expected one of {METHODS}")
