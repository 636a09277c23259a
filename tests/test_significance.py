"""McNemar's exact test and DeLong's AUROC test against hand computations, scipy and sklearn."""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from pneumonia_cam.evaluation.significance import delong_test, delong_variance, mcnemar_exact


def predictions_with_discordance(b: int, c: int, concordant: int = 20) -> tuple[np.ndarray, ...]:
    """Truth and two prediction vectors with b samples only A gets right and c only B gets right."""
    y = np.ones(b + c + concordant, dtype=int)
    pred_a = np.concatenate((np.ones(b), np.zeros(c), np.ones(concordant)))
    pred_b = np.concatenate((np.zeros(b), np.ones(c), np.ones(concordant)))
    return y, pred_a, pred_b


@pytest.mark.parametrize(("b", "c"), [(10, 2), (2, 10), (7, 7), (0, 5), (30, 12)])
def test_mcnemar_matches_scipy_binomtest(b: int, c: int) -> None:
    """The exact p equals scipy's two-sided binomial test on the discordant pairs."""
    result = mcnemar_exact(*predictions_with_discordance(b, c))
    assert (result["b"], result["c"]) == (b, c)
    assert result["p_value"] == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-12)


def test_mcnemar_by_hand() -> None:
    """b=10, c=2: p = 2 * P(X <= 2 | n=12) = 2 * (1 + 12 + 66) / 4096 = 158 / 4096 = 0.038574..."""
    assert mcnemar_exact(*predictions_with_discordance(10, 2))["p_value"] == pytest.approx(158 / 4096)


def test_mcnemar_without_discordance() -> None:
    """Identical error patterns (b = c = 0) give p = 1, and b = c gives p = 1."""
    assert mcnemar_exact(*predictions_with_discordance(0, 0))["p_value"] == 1.0
    assert mcnemar_exact(*predictions_with_discordance(4, 4))["p_value"] == 1.0


def test_mcnemar_counts_only_correctness() -> None:
    """Both models wrong in different ways is concordant (binary: both wrong means same prediction)."""
    y = np.array([0, 1, 1, 0, 1])
    result = mcnemar_exact(y, np.array([1, 1, 0, 0, 1]), np.array([1, 0, 1, 0, 1]))
    assert (result["b"], result["c"]) == (1, 1)


def placement_values(y: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's V10 and V01 straight from the definition psi(X, Y) = 1, 1/2, 0 (O(m n) oracle)."""
    pos, neg = prob[y == 1], prob[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)


def test_delong_variance_by_hand() -> None:
    """Two positives (0.8, 0.4), two negatives (0.6, 0.2).

    psi: (0.8 vs 0.6) = 1, (0.8 vs 0.2) = 1, (0.4 vs 0.6) = 0, (0.4 vs 0.2) = 1, so AUC = 3/4.
    V10 (per positive) = [1, 1/2]; V01 (per negative) = [1/2, 1].
    S10 = var([1, 0.5], ddof=1) = 0.125; S01 = 0.125; Var = S10 / 2 + S01 / 2 = 0.125.
    """
    auc, var = delong_variance(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.6, 0.2]))
    assert auc == pytest.approx(0.75)
    assert var == pytest.approx(0.125)


def test_delong_variance_matches_definition_with_ties() -> None:
    """The midrank algorithm equals the O(m n) definition, ties included."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    prob = np.round(rng.random(60) * 0.5 + 0.3 * y, 1)  # coarse rounding makes many ties
    v10, v01 = placement_values(y, prob)
    expected = np.var(v10, ddof=1) / v10.size + np.var(v01, ddof=1) / v01.size
    auc, var = delong_variance(y, prob)
    assert auc == pytest.approx(roc_auc_score(y, prob))
    assert var == pytest.approx(expected, rel=1e-10)


def test_delong_on_hanley_mcneil_ct_ratings() -> None:
    """Hanley & McNeil (1982) CT ratings: 58 normal (33, 6, 6, 11, 2) and 51 abnormal (3, 2, 2, 11, 33).

    The published AUC 0.893 must be reproduced. Their published SE 0.032 comes from their exponential
    approximation, not DeLong, so DeLong's nonparametric SE (0.0307, pinned here as a regression value)
    need only agree with it to about 0.002.
    """
    ratings = np.arange(1, 6)
    negatives = np.repeat(ratings, [33, 6, 6, 11, 2])
    positives = np.repeat(ratings, [3, 2, 2, 11, 33])
    y = np.concatenate((np.zeros(negatives.size, dtype=int), np.ones(positives.size, dtype=int)))
    auc, var = delong_variance(y, np.concatenate((negatives, positives)).astype(float))
    assert auc == pytest.approx(0.893, abs=5e-4)
    assert np.sqrt(var) == pytest.approx(0.0307, abs=1e-4)
    assert np.sqrt(var) == pytest.approx(0.032, abs=0.002)


def test_delong_test_components() -> None:
    """AUCs match sklearn, variances match delong_variance, covariance matches the definition."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    prob_a = rng.random(80) + 0.5 * y
    prob_b = prob_a + rng.normal(0, 0.4, 80)
    result = delong_test(y, prob_a, prob_b)
    assert result["auc_a"] == pytest.approx(roc_auc_score(y, prob_a))
    assert result["auc_b"] == pytest.approx(roc_auc_score(y, prob_b))
    assert result["var_a"] == pytest.approx(delong_variance(y, prob_a)[1])
    assert result["var_b"] == pytest.approx(delong_variance(y, prob_b)[1])
    (v10_a, v01_a), (v10_b, v01_b) = placement_values(y, prob_a), placement_values(y, prob_b)
    covariance = np.cov(v10_a, v10_b)[0, 1] / v10_a.size + np.cov(v01_a, v01_b)[0, 1] / v01_a.size
    assert result["covariance"] == pytest.approx(covariance, rel=1e-10)
    var_diff = result["var_a"] + result["var_b"] - 2 * result["covariance"]
    assert result["z"] == pytest.approx(result["diff"] / np.sqrt(var_diff))
    assert result["p_value"] == pytest.approx(2 * stats.norm.sf(abs(result["z"])))


def test_delong_model_against_itself() -> None:
    """Identical scores: no difference, z = 0, p = 1."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 50)
    prob = rng.random(50)
    result = delong_test(y, prob, prob)
    assert (result["diff"], result["z"], result["p_value"]) == (0.0, 0.0, 1.0)


def test_delong_detects_clearly_different_models() -> None:
    """A strong and a near-random model on 1000 samples differ with a tiny p-value."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 1000)
    strong = y + rng.normal(0, 0.6, 1000)
    weak = 0.1 * y + rng.normal(0, 1.0, 1000)
    result = delong_test(y, strong, weak)
    assert result["diff"] > 0.2
    assert result["p_value"] < 1e-6
