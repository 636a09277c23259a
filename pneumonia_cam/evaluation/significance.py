"""Paired significance tests for two models on the same test set: McNemar (errors) and DeLong (AUROC)."""

import numpy as np
from scipy import stats

from pneumonia_cam.evaluation.metrics import as_binary_arrays


def mcnemar_exact(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> dict[str, float]:
    """Exact McNemar test: only discordant pairs carry information, so test b vs c with Binomial(b + c, 1/2).

    b counts samples A gets right and B wrong, c the reverse; p = min(1, 2 * P(X <= min(b, c))).
    """
    y = np.asarray(y_true).ravel()
    correct_a = np.asarray(pred_a).ravel() == y
    correct_b = np.asarray(pred_b).ravel() == y
    b = int(np.count_nonzero(correct_a & ~correct_b))
    c = int(np.count_nonzero(~correct_a & correct_b))
    p_value = min(1.0, 2.0 * float(stats.binom.cdf(min(b, c), b + c, 0.5))) if b + c else 1.0
    return {"b": b, "c": c, "p_value": p_value}


def structural_components(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and DeLong placement values V10 (per positive), V01 (per negative) via midranks (Sun & Xu 2014).

    `probs` is (k models, N); returns auc (k,), v10 (k, m positives), v01 (k, n negatives).
    """
    positive = y_true == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m == 0 or n == 0:
        raise ValueError("DeLong needs both classes in y_true")
    pos_scores, neg_scores = probs[:, positive], probs[:, ~positive]
    rank_all = stats.rankdata(np.concatenate((pos_scores, neg_scores), axis=1), axis=1)
    rank_pos = stats.rankdata(pos_scores, axis=1)
    rank_neg = stats.rankdata(neg_scores, axis=1)
    v10 = (rank_all[:, :m] - rank_pos) / n  # share of negatives each positive outranks (ties count 1/2)
    v01 = 1.0 - (rank_all[:, m:] - rank_neg) / m  # share of positives ranked above each negative
    return v10.mean(axis=1), v10, v01


def delong_covariance(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of k models and their (k, k) DeLong covariance S10 / m + S01 / n."""
    auc, v10, v01 = structural_components(y_true, probs)
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return auc, s10 / v10.shape[1] + s01 / v01.shape[1]


def delong_variance(y_true: np.ndarray, prob: np.ndarray) -> tuple[float, float]:
    """AUROC of one model and its DeLong variance, for a CI without resampling."""
    y, p = as_binary_arrays(y_true, prob)
    auc, cov = delong_covariance(y, p[np.newaxis])
    return float(auc[0]), float(cov[0, 0])


def delong_test(y_true: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray) -> dict[str, float]:
    """Two-sided DeLong test of AUROC A = AUROC B on paired scores (DeLong, DeLong & Clarke-Pearson 1988)."""
    y, p_a = as_binary_arrays(y_true, prob_a)
    p_b = as_binary_arrays(y, prob_b)[1]
    auc, cov = delong_covariance(y, np.stack((p_a, p_b)))
    diff = float(auc[0] - auc[1])
    var_diff = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if var_diff <= 0:
        z = 0.0 if diff == 0 else float(np.copysign(np.inf, diff))
    else:
        z = diff / np.sqrt(var_diff)
    return {
        "auc_a": float(auc[0]),
        "auc_b": float(auc[1]),
        "diff": diff,
        "var_a": float(cov[0, 0]),
        "var_b": float(cov[1, 1]),
        "covariance": float(cov[0, 1]),
        "z": float(z),
        "p_value": float(2.0 * stats.norm.sf(abs(z))),
    }
