"""The one decision rule: training metrics, evaluation and every inference path call it, never a copy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    pass

DEFAULT_THRESHOLD = 0.5
POSITIVE_CLASS = 1

# numpy or torch: this module imports no torch, so the torch-free ONNX runtime decides by the same rule
Probabilities = "np.ndarray | torch.Tensor"


def is_positive(prob: Probabilities, threshold: float = DEFAULT_THRESHOLD) -> Probabilities:
    """A sample is positive iff P(positive) >= threshold (a tie counts as positive)."""
    return prob >= threshold


def decide(
    probs: Probabilities, threshold: float = DEFAULT_THRESHOLD, positive_class: int = POSITIVE_CLASS
) -> Probabilities:
    """Class index per row of B x C probabilities: threshold P(positive) for 2 classes, else arg-max."""
    if probs.shape[1] != 2:
        return probs.argmax(1)
    positive = is_positive(probs[:, positive_class], threshold)
    negative = 1 - positive_class
    if isinstance(probs, np.ndarray):
        return np.where(positive, positive_class, negative).astype(np.int64)
    return positive.long() * positive_class + (~positive).long() * negative  # a torch tensor


def strict_threshold(threshold: float = DEFAULT_THRESHOLD) -> float:
    """The threshold for code that decides `prob > t` (torchmetrics) so that it decides `prob >= threshold`.

    For float64 probabilities `p > nextafter(t, -inf)` holds exactly when `p >= t`.
    """
    return float(np.nextafter(threshold, -np.inf))
