"""Point metrics of pneumonia_cam.evaluation.metrics against scikit-learn as the oracle."""

import numpy as np
import pytest
from sklearn import metrics as skm

from pneumonia_cam.evaluation.metrics import METRIC_KEYS, point_metrics

CASES = {
    "balanced": (
        np.array([0, 0, 0, 0, 1, 1, 1, 1]),
        np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.6, 0.3, 0.55]),
        0.5,
    ),
    "imbalanced_with_ties": (
        np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1]),
        np.array([0.05, 0.2, 0.2, 0.3, 0.3, 0.45, 0.6, 0.7, 0.3, 0.9]),
        0.5,
    ),
    "mostly_positive_low_threshold": (
        np.array([1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1]),
        np.array([0.9, 0.8, 0.25, 0.2, 0.7, 0.95, 0.1, 0.3, 0.22, 0.5, 0.5, 0.6]),
        0.22,
    ),
    "random_threshold_0.7": (
        np.random.default_rng(3).integers(0, 2, 200),
        np.random.default_rng(4).random(200),
        0.7,
    ),
}


def sklearn_metrics(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, float]:
    """The same metrics computed by scikit-learn, the oracle."""
    pred = (prob >= threshold).astype(int)
    tn, fp, _, _ = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "sensitivity": skm.recall_score(y, pred),
        "specificity": tn / (tn + fp),
        "precision": skm.precision_score(y, pred),
        "f1": skm.f1_score(y, pred),
        "auroc": skm.roc_auc_score(y, prob),
        "auprc": skm.average_precision_score(y, prob),
        "cohen_kappa": skm.cohen_kappa_score(y, pred),
        "mcc": skm.matthews_corrcoef(y, pred),
        "brier": skm.brier_score_loss(y, prob),
    }


@pytest.mark.parametrize("case", CASES)
def test_point_metrics_match_sklearn(case: str) -> None:
    """Every metric sklearn also computes agrees to floating-point precision."""
    y, prob, threshold = CASES[case]
    ours = point_metrics(y, prob, threshold)
    expected = sklearn_metrics(y, prob, threshold)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key


def test_keys_and_counts() -> None:
    """The result has exactly the documented keys, with integer counts."""
    y, prob, threshold = CASES["imbalanced_with_ties"]
    result = point_metrics(y, prob, threshold)
    assert tuple(result) == METRIC_KEYS
    assert (result["n"], result["n_positive"], result["n_negative"]) == (10, 2, 8)
    assert all(isinstance(result[key], int) for key in ("n", "n_positive", "n_negative"))


def test_threshold_is_inclusive() -> None:
    """prob == threshold counts as a positive prediction."""
    result = point_metrics(np.array([1, 0]), np.array([0.5, 0.49]), 0.5)
    assert result["sensitivity"] == 1.0
    assert result["specificity"] == 1.0


def test_ece_by_hand() -> None:
    """ECE with 15 bins on four samples, computed by hand.

    Bins are [b/15, (b+1)/15): 0.05 and 0.06 share bin 0 (mean prob 0.055, mean y 0.5, gap 0.445),
    0.9 is alone in bin 13 (gap |0.9 - 1| = 0.1), 1.0 goes to the last bin 14 (gap |1 - 0| = 1).
    ECE = (2 * 0.445 + 0.1 + 1) / 4 = 0.4975.
    """
    result = point_metrics(np.array([0, 1, 1, 0]), np.array([0.05, 0.06, 0.9, 1.0]))
    assert result["ece"] == pytest.approx(0.4975, abs=1e-12)


def test_ece_zero_when_calibrated_per_bin() -> None:
    """A bin whose mean probability equals its positive rate contributes nothing."""
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    prob = np.array([0.25] * 4 + [0.75] * 4)
    assert point_metrics(y, prob)["ece"] == pytest.approx(0.0, abs=1e-12)


def test_one_class_gives_nan_not_crash() -> None:
    """Rank metrics and rates that need the missing class are NaN; the rest stay defined."""
    result = point_metrics(np.zeros(5, dtype=int), np.array([0.1, 0.2, 0.6, 0.3, 0.4]))
    for key in ("auroc", "auprc", "sensitivity", "mcc"):
        assert np.isnan(result[key]), key
    assert result["specificity"] == pytest.approx(0.8)
    assert result["accuracy"] == pytest.approx(0.8)
    assert result["precision"] == 0.0
    assert result["f1"] == 0.0


def test_no_predicted_positive_gives_nan_precision() -> None:
    """Precision without predicted positives is NaN while F1 is 0, as the docstring promises."""
    result = point_metrics(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4]))
    assert np.isnan(result["precision"])
    assert result["f1"] == 0.0
    assert result["sensitivity"] == 0.0
    assert np.isnan(result["mcc"])
    assert result["auroc"] == 0.0


def test_kappa_nan_when_everything_is_one_class() -> None:
    """Chance agreement of 1 leaves kappa undefined."""
    result = point_metrics(np.ones(4, dtype=int), np.full(4, 0.9))
    assert np.isnan(result["cohen_kappa"])
    assert result["accuracy"] == 1.0


def test_rejects_bad_labels() -> None:
    """Labels other than 0/1 are an error, not a silent miscount."""
    with pytest.raises(ValueError, match="0 and 1"):
        point_metrics(np.array([0, 2]), np.array([0.1, 0.9]))
