"""Binary classification metrics in plain numpy, so bootstrap loops avoid sklearn's validation overhead.

Inputs are `y_true` (0/1, 1 = positive, i.e. pneumonia), `prob` = P(positive) and a `threshold`; a sample is
predicted positive iff `prob >= threshold`.

Conventions for undefined values (all return NaN, never a silent 0):

- sensitivity: NaN without positives; specificity: NaN without negatives.
- precision: NaN when nothing is predicted positive (TP + FP = 0).
- f1: 2TP / (2TP + FP + FN), which equals the harmonic mean of precision and recall whenever both exist and
  is 0 (not NaN) when positives exist but none is found; NaN only when 2TP + FP + FN = 0, i.e. no positive
  in the truth nor in the predictions.
- mcc: NaN when any margin of the confusion matrix is empty (sklearn returns 0 there instead).
- cohen_kappa: NaN when chance agreement is 1 (truth and predictions all in one and the same class).
- auroc, auprc: NaN unless both classes are present (auprc needs positives; without negatives it is 1 and
  uninformative, so it is NaN as well to keep AUROC and AUPRC defined on the same samples).
- ece: expected calibration error of P(positive) with `n_bins` equal-width bins on [0, 1]; bin b holds the
  probabilities in [b/n_bins, (b+1)/n_bins), the last bin also holds 1.0; ECE = sum_b |mean(prob_b) -
  mean(y_b)| * n_b / N over the non-empty bins. NaN only for an empty input, like every rate.
"""

import numpy as np

from pneumonia_cam.models.decision import DEFAULT_THRESHOLD, is_positive

ECE_BINS = 15
RATE_KEYS = (
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "auroc",
    "auprc",
    "cohen_kappa",
    "mcc",
    "brier",
    "ece",
)
COUNT_KEYS = ("n", "n_positive", "n_negative")
METRIC_KEYS = RATE_KEYS + COUNT_KEYS


def as_binary_arrays(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate once at the boundary so the metric helpers can trust their inputs."""
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} samples but prob has {p.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1")
    return y, p


def ratio(numerator: float, denominator: float) -> float:
    """Divide, giving NaN instead of a warning or a fake 0 when the denominator is 0."""
    return float(numerator / denominator) if denominator else float("nan")


def confusion_counts(y_true: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, int]:
    """TP, FP, TN, FN of 0/1 predictions, the basis of every threshold metric."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(pred).astype(bool)
    tp = int(np.count_nonzero(y & p))
    fp = int(np.count_nonzero(~y & p))
    fn = int(np.count_nonzero(y & ~p))
    return tp, fp, y.size - tp - fp - fn, fn


def roc_points(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) with the TP and FP counts of `prob >= threshold` at each."""
    order = np.argsort(-prob, kind="stable")
    sorted_prob = prob[order]
    last_of_run = np.flatnonzero(np.diff(sorted_prob) != 0)
    ends = np.append(last_of_run, sorted_prob.size - 1)
    tps = np.cumsum(y_true[order])[ends]
    fps = ends + 1 - tps
    return sorted_prob[ends], tps, fps


def auroc(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids, so ties count one half); NaN without both classes."""
    _, tps, fps = roc_points(y_true, prob)
    n_pos, n_neg = tps[-1], fps[-1]
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    tpr = np.concatenate(([0.0], tps / n_pos))
    fpr = np.concatenate(([0.0], fps / n_neg))
    return float(np.trapezoid(tpr, fpr))


def average_precision(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Step-wise area under the precision-recall curve, sum_k (R_k - R_{k-1}) P_k, as sklearn defines it."""
    _, tps, fps = roc_points(y_true, prob)
    n_pos, n_neg = tps[-1], fps[-1]
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    precision = tps / (tps + fps)
    recall_steps = np.diff(np.concatenate(([0], tps))) / n_pos
    return float(np.sum(recall_steps * precision))


def calibration_bins(
    y_true: np.ndarray, prob: np.ndarray, n_bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: count, summed probability, summed outcome; shared by ECE and reliability plots."""
    index = np.clip((prob * n_bins).astype(np.int64), 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    prob_sums = np.bincount(index, weights=prob, minlength=n_bins)
    outcome_sums = np.bincount(index, weights=y_true, minlength=n_bins)
    return counts, prob_sums, outcome_sums


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Count-weighted mean gap between confidence and frequency: sum_b |sum(prob_b) - sum(y_b)| / N."""
    if y_true.size == 0:
        return float("nan")
    _, prob_sums, outcome_sums = calibration_bins(y_true, prob, n_bins)
    return float(np.abs(prob_sums - outcome_sums).sum() / y_true.size)


def cohen_kappa(tp: int, fp: int, tn: int, fn: int) -> float:
    """Agreement beyond chance between truth and prediction; NaN when chance agreement is total."""
    n = tp + fp + tn + fn
    observed = ratio(tp + tn, n)
    chance = ratio((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp), n * n)
    return ratio(observed - chance, 1.0 - chance)


def matthews_corrcoef(tp: int, fp: int, tn: int, fn: int) -> float:
    """Correlation of truth and prediction; NaN when a confusion-matrix margin is empty."""
    margins = float(tp + fp) * float(tp + fn) * float(tn + fp) * float(tn + fn)
    return ratio(float(tp) * tn - float(fp) * fn, np.sqrt(margins))


def threshold_metrics(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    """The metrics that depend only on the confusion matrix at the operating point."""
    return {
        "accuracy": ratio(tp + tn, tp + fp + tn + fn),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "precision": ratio(tp, tp + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "cohen_kappa": cohen_kappa(tp, fp, tn, fn),
        "mcc": matthews_corrcoef(tp, fp, tn, fn),
    }


def point_metrics(
    y_true: np.ndarray, prob: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, float]:
    """All metrics of one model at one operating point, keyed by METRIC_KEYS (conventions: see module)."""
    y, p = as_binary_arrays(y_true, prob)
    tp, fp, tn, fn = confusion_counts(y, is_positive(p, threshold))
    values = threshold_metrics(tp, fp, tn, fn)
    values["auroc"] = auroc(y, p) if y.size else float("nan")
    values["auprc"] = average_precision(y, p) if y.size else float("nan")
    values["brier"] = float(np.mean((p - y) ** 2)) if y.size else float("nan")
    values["ece"] = expected_calibration_error(y, p)
    n_positive = int(y.sum())
    values.update(n=int(y.size), n_positive=n_positive, n_negative=int(y.size) - n_positive)
    return {key: values[key] for key in METRIC_KEYS}
