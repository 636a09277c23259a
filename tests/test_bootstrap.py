"""Bootstrap CIs and paired diffs (coverage, shrinkage, determinism, clustering) and their report tables."""

import time

import numpy as np
import pytest

from pneumonia_cam.evaluation.bootstrap import bootstrap_ci, paired_bootstrap_diff, resample_indices
from pneumonia_cam.evaluation.metrics import METRIC_KEYS, RATE_KEYS
from pneumonia_cam.evaluation.report import (
    aggregate_runs,
    format_comparison_table,
    format_metrics_table,
    format_runs_table,
)


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and informative but noisy probabilities from one fixed distribution."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    prob = 1.0 / (1.0 + np.exp(-(2.0 * y - 1.0 + rng.normal(0.0, 1.2, n))))
    return y, prob


def test_ci_contains_point_estimate() -> None:
    """Every rate's percentile interval brackets its point value, with all resamples valid."""
    y, prob = synthetic(300, 0)
    result = bootstrap_ci(y, prob, 0.5, n_resamples=500)
    assert tuple(result) == METRIC_KEYS
    for key in RATE_KEYS:
        ci = result[key]
        assert ci["low"] <= ci["value"] <= ci["high"], key
        assert ci["low"] < ci["high"], key
        assert ci["n_valid"] == 500, key


def test_ci_shrinks_with_more_samples() -> None:
    """Twenty times the data gives a clearly narrower interval (expect ~sqrt(20) = 4.5 times; assert > 2)."""
    small = bootstrap_ci(*synthetic(100, 1), n_resamples=300)
    large = bootstrap_ci(*synthetic(2000, 2), n_resamples=300)
    for key in ("accuracy", "auroc", "sensitivity", "brier"):
        width_small = small[key]["high"] - small[key]["low"]
        width_large = large[key]["high"] - large[key]["low"]
        assert width_large < width_small / 2, key


def test_deterministic_for_seed() -> None:
    """Same seed, same intervals; another seed, other intervals."""
    y, prob = synthetic(200, 3)
    first = bootstrap_ci(y, prob, n_resamples=200, seed=7)
    assert bootstrap_ci(y, prob, n_resamples=200, seed=7) == first
    assert bootstrap_ci(y, prob, n_resamples=200, seed=8)["auroc"] != first["auroc"]


def test_undefined_resamples_are_dropped_and_counted() -> None:
    """With one positive, resamples that miss it leave AUROC undefined; those are excluded, not zeroed."""
    y = np.array([1] + [0] * 9)
    prob = np.linspace(0.9, 0.0, 10)
    result = bootstrap_ci(y, prob, n_resamples=400)
    # P(resample misses the positive) = 0.9 ** 10 ~ 0.35.
    assert 200 < result["auroc"]["n_valid"] < 330
    assert result["auroc"]["low"] == result["auroc"]["high"] == 1.0
    assert result["accuracy"]["n_valid"] == 400


def test_group_resample_takes_whole_groups() -> None:
    """Each cluster resample is a union of whole groups, as many groups as there are (with repetition)."""
    groups = np.repeat(np.arange(6), [1, 2, 3, 4, 5, 6])
    for idx in resample_indices(groups.size, groups, 50, np.random.default_rng(0)):
        drawn, counts = np.unique(groups[idx], return_counts=True)
        sizes = np.bincount(groups)
        assert np.all(counts % sizes[drawn] == 0)
        assert (counts // sizes[drawn]).sum() == 6
        assert np.unique(idx[groups[idx] == drawn[0]]).size == sizes[drawn[0]]


def test_group_ci_wider_for_clustered_data() -> None:
    """When a patient's images share label and score, the patient is the unit: group CIs are much wider."""
    rng = np.random.default_rng(4)
    n_patients, per_patient = 40, 10
    patient_y = rng.integers(0, 2, n_patients)
    patient_prob = np.clip(0.5 + 0.3 * (2 * patient_y - 1) + rng.normal(0, 0.25, n_patients), 0, 1)
    y, prob = np.repeat(patient_y, per_patient), np.repeat(patient_prob, per_patient)
    groups = np.repeat(np.arange(n_patients), per_patient)
    iid = bootstrap_ci(y, prob, n_resamples=300)
    clustered = bootstrap_ci(y, prob, groups=groups, n_resamples=300)
    for key in ("accuracy", "auroc"):
        iid_width = iid[key]["high"] - iid[key]["low"]
        clustered_width = clustered[key]["high"] - clustered[key]["low"]
        assert clustered_width > 2 * iid_width, key


def test_paired_diff_of_model_with_itself_is_zero() -> None:
    """Comparing a model with itself gives diff 0, CI [0, 0] and p = 1 for every metric."""
    y, prob = synthetic(150, 5)
    result = paired_bootstrap_diff(y, prob, prob, 0.5, 0.5, n_resamples=200)
    assert tuple(result) == RATE_KEYS
    for key, d in result.items():
        assert (d["diff"], d["low"], d["high"], d["p_value"]) == (0.0, 0.0, 0.0, 1.0), key


def test_paired_diff_detects_a_better_model() -> None:
    """A much better model has a positive AUROC diff whose CI excludes 0 and a small p-value."""
    y, good = synthetic(400, 6)
    noisy = np.random.default_rng(7).random(400)
    result = paired_bootstrap_diff(y, good, noisy, 0.5, 0.5, n_resamples=500)
    auroc = result["auroc"]
    assert auroc["diff"] == pytest.approx(auroc["value_a"] - auroc["value_b"])
    assert 0 < auroc["low"] < auroc["diff"] < auroc["high"]
    assert auroc["p_value"] < 0.01
    reversed_result = paired_bootstrap_diff(y, noisy, good, 0.5, 0.5, n_resamples=500)
    assert reversed_result["auroc"]["diff"] == pytest.approx(-auroc["diff"])
    assert reversed_result["auroc"]["p_value"] == auroc["p_value"]


def test_bootstrap_is_fast() -> None:
    """1000 resamples of a 624-image test set stay interactive (budget: 5 s on 2 cores)."""
    y, prob = synthetic(624, 8)
    start = time.perf_counter()
    bootstrap_ci(y, prob, n_resamples=1000)
    assert time.perf_counter() - start < 5.0


def test_report_tables_render_bootstrap_output() -> None:
    """The Markdown tables carry the numbers of bootstrap_ci, paired_bootstrap_diff and the tests."""
    y, prob = synthetic(120, 9)
    ci = bootstrap_ci(y, prob, n_resamples=100)
    table = format_metrics_table(ci).splitlines()
    assert table[0] == "| metric | value | 95% CI |"
    assert len(table) == 2 + len(METRIC_KEYS)
    auroc = ci["auroc"]
    assert f"| auroc | {auroc['value']:.3f} | [{auroc['low']:.3f}, {auroc['high']:.3f}] |" in table
    assert "| n | 120 |  |" in table

    diff = paired_bootstrap_diff(y, prob, prob**2, 0.5, 0.25, n_resamples=100)
    mcnemar = {"b": 7, "c": 2, "p_value": 0.18}
    delong = {"auc_a": 0.9, "auc_b": 0.8, "z": 2.5, "p_value": 0.0004}
    comparison = format_comparison_table(diff, mcnemar, delong, names=("resnet", "vit"))
    assert "| metric | resnet | vit | resnet - vit | 95% CI | bootstrap p |" in comparison
    assert "resnet right / vit wrong: 7" in comparison
    assert "| DeLong (AUROC) | AUROC 0.900 vs 0.800, z = 2.50 | <0.001 |" in comparison


def test_fold_aggregation() -> None:
    """Mean and sample std per metric, NaN folds left out of the count."""
    folds = [{"auroc": 0.8, "f1": 0.5}, {"auroc": 0.9, "f1": float("nan")}, {"auroc": 1.0, "f1": 0.7}]
    table = aggregate_runs(folds)
    assert table.loc["auroc", "mean"] == pytest.approx(0.9)
    assert table.loc["auroc", "std"] == pytest.approx(0.1)
    assert table.loc["f1", "mean"] == pytest.approx(0.6)
    assert table.loc["f1", "n"] == 2
    assert (table.loc["auroc", "min"], table.loc["auroc", "max"]) == (0.8, 1.0)
    text = format_runs_table(table)
    assert "| auroc | 0.900 ± 0.100 | 0.800 to 1.000 | 3 |" in text
    assert "| f1 | 0.600 ± 0.141 | 0.500 to 0.700 | 2 |" in text
