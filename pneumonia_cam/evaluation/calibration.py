"""Temperature scaling (Guo et al. 2017) and reliability bins, to make predicted probabilities trustworthy."""

import logging

import numpy as np
import pandas as pd
from scipy import optimize, special

from pneumonia_cam.evaluation.metrics import ECE_BINS, as_binary_arrays, calibration_bins

log = logging.getLogger(__name__)

LOG_T_BOUNDS = (-5.0, 5.0)  # T in [0.0067, 148], far wider than any sane network needs


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / T): the loss temperature scaling minimises."""
    log_probs = special.log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-np.mean(log_probs[np.arange(log_probs.shape[0]), np.asarray(y, dtype=np.int64)]))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 minimising NLL on held-out logits (bounded search on log T, deterministic).

    When every held-out sample's true class has the strictly largest logit, the NLL falls all the way to
    T -> 0: no temperature is identifiable, and the search would return its bound (T ~ 0.007), turning the
    model maximally overconfident on new data. Then T stays 1, with a warning.
    """
    logits, y = np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if _perfectly_separated(logits, y):
        log.warning(
            "Temperature scaling: the validation predictions are perfectly separated, so no temperature is "
            "identifiable (NLL keeps falling as T -> 0); keeping T = 1"
        )
        return 1.0
    result = optimize.minimize_scalar(
        lambda log_t: nll(logits, y, float(np.exp(log_t))),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))


def _perfectly_separated(logits: np.ndarray, y: np.ndarray) -> bool:
    """Each row's true-class logit beats every other logit of that row."""
    true = logits[np.arange(len(y)), y]
    others = np.where(np.eye(logits.shape[1], dtype=bool)[y], -np.inf, logits).max(axis=1)
    return bool(len(y)) and bool(np.all(true > others))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated class probabilities softmax(logits / T); T rescales confidence without changing argmax."""
    return special.softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def reliability_bins(y_true: np.ndarray, prob: np.ndarray, n_bins: int = ECE_BINS) -> pd.DataFrame:
    """Per equal-width bin of P(positive): edges, mean confidence, observed frequency, count (ECE's bins)."""
    y, p = as_binary_arrays(y_true, prob)
    counts, prob_sums, outcome_sums = calibration_bins(y, p, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame(
            {
                "bin_lower": edges[:-1],
                "bin_upper": edges[1:],
                "confidence": prob_sums / counts,
                "frequency": outcome_sums / counts,
                "count": counts,
            }
        )
