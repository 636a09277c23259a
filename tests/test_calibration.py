"""Temperature scaling and reliability bins."""

import numpy as np
import pytest
from scipy import special

from pneumonia_cam.evaluation.calibration import apply_temperature, fit_temperature, nll, reliability_bins
from pneumonia_cam.evaluation.metrics import point_metrics


def calibrated_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-class logits whose softmax is the true label distribution the labels are drawn from."""
    rng = np.random.default_rng(seed)
    margin = rng.normal(0.0, 1.5, n)
    logits = np.stack((np.zeros(n), margin), axis=1)
    y = (rng.random(n) < special.expit(margin)).astype(int)
    return logits, y


def test_recovers_overconfidence_factor() -> None:
    """Logits scaled by 5 are fixed by T ~ 5, and the NLL drops."""
    logits, y = calibrated_logits(20000, 0)
    overconfident = 5.0 * logits
    temperature = fit_temperature(overconfident, y)
    assert temperature == pytest.approx(5.0, rel=0.1)
    assert nll(overconfident, y, temperature) < nll(overconfident, y)


def test_perfectly_separated_validation_keeps_t_one(caplog) -> None:
    """Every true class on top: the NLL has no minimum above T = 0, so T stays 1 (and says why)."""
    logits = np.array([[2.0, -1.0], [0.1, 0.3], [-3.0, 4.0], [1.0, 0.5]])
    y = np.array([0, 1, 1, 0])
    assert nll(logits, y, 0.01) < nll(logits, y, 0.1) < nll(logits, y)  # by hand: falls towards T -> 0
    with caplog.at_level("WARNING"):
        assert fit_temperature(logits, y) == 1.0
    assert "perfectly separated" in caplog.text
    one_wrong = np.array([[2.0, -1.0], [0.1, 0.3], [-3.0, 4.0], [0.5, 1.0]])
    assert fit_temperature(one_wrong, y) > 1.0  # one confident mistake: soften


def test_calibrated_logits_keep_t_near_one() -> None:
    """Already calibrated logits need no rescaling."""
    logits, y = calibrated_logits(20000, 1)
    assert fit_temperature(logits, y) == pytest.approx(1.0, rel=0.1)


def test_fit_is_deterministic_and_optimal() -> None:
    """Same data, same T; and nearby temperatures do not have a lower NLL."""
    logits, y = calibrated_logits(2000, 2)
    temperature = fit_temperature(3.0 * logits, y)
    assert fit_temperature(3.0 * logits, y) == temperature
    best = nll(3.0 * logits, y, temperature)
    assert best <= nll(3.0 * logits, y, temperature * 1.05)
    assert best <= nll(3.0 * logits, y, temperature / 1.05)


def test_apply_temperature_softens_but_keeps_argmax() -> None:
    """Rows sum to 1, confidence moves toward uniform for T > 1, and predictions do not change."""
    logits = np.array([[2.0, -1.0], [0.0, 3.0], [1.0, 1.5]])
    probs = apply_temperature(logits, 2.0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(probs, special.softmax(logits / 2.0, axis=1))
    assert (probs.argmax(axis=1) == logits.argmax(axis=1)).all()
    assert (probs.max(axis=1) < special.softmax(logits, axis=1).max(axis=1)).all()


def test_nll_by_hand() -> None:
    """NLL of two samples at T = 1: -(log 0.5 + log sigmoid(2)) / 2."""
    logits = np.array([[0.0, 0.0], [0.0, 2.0]])
    expected = -(np.log(0.5) + np.log(special.expit(2.0))) / 2
    assert nll(logits, np.array([0, 1])) == pytest.approx(expected)


def test_reliability_bins_are_consistent_with_ece() -> None:
    """Bin means and counts by hand, and the count-weighted gap equals the metric's ECE."""
    y = np.array([0, 1, 1, 0, 1])
    prob = np.array([0.05, 0.06, 0.9, 1.0, 0.5])
    bins = reliability_bins(y, prob, n_bins=15)
    assert list(bins.columns) == ["bin_lower", "bin_upper", "confidence", "frequency", "count"]
    assert len(bins) == 15 and bins["count"].sum() == 5
    assert bins.loc[0, "confidence"] == pytest.approx(0.055)
    assert bins.loc[0, "frequency"] == 0.5
    assert bins.loc[7, "count"] == 1  # 0.5 lies in [7/15, 8/15)
    assert bins.loc[14, "frequency"] == 0.0
    assert np.isnan(bins.loc[3, "confidence"])  # empty bin
    filled = bins[bins["count"] > 0]
    ece = (np.abs(filled["confidence"] - filled["frequency"]) * filled["count"]).sum() / 5
    assert ece == pytest.approx(point_metrics(y, prob)["ece"])
