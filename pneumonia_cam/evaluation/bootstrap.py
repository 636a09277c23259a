"""Percentile bootstrap CIs for every metric, per sample or per patient (cluster bootstrap), and paired diffs.

Resamples where a metric is undefined (NaN, e.g. AUROC of a resample with one class) are dropped for that
metric only; `n_valid` reports how many resamples the interval rests on.
"""

from collections.abc import Iterator

import numpy as np

from pneumonia_cam.evaluation.metrics import METRIC_KEYS, RATE_KEYS, as_binary_arrays, point_metrics
from pneumonia_cam.models.decision import DEFAULT_THRESHOLD


def resample_indices(
    n: int, groups: np.ndarray | None, n_resamples: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Yield bootstrap index sets: samples drawn with replacement, or whole groups when groups are given."""
    if groups is None:
        for _ in range(n_resamples):
            yield rng.integers(0, n, size=n)
        return
    codes = np.unique(np.asarray(groups).ravel(), return_inverse=True)[1]
    if codes.size != n:
        raise ValueError(f"groups has {codes.size} entries for {n} samples")
    members = np.argsort(codes, kind="stable")  # indices of group 0, then group 1, ...
    sizes = np.bincount(codes)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    for _ in range(n_resamples):
        drawn = rng.integers(0, sizes.size, size=sizes.size)
        drawn_sizes = sizes[drawn]
        offsets = np.arange(drawn_sizes.sum()) - np.repeat(np.cumsum(drawn_sizes) - drawn_sizes, drawn_sizes)
        yield members[np.repeat(starts[drawn], drawn_sizes) + offsets]


def metric_matrix(y: np.ndarray, prob: np.ndarray, threshold: float, indices: list[np.ndarray]) -> np.ndarray:
    """Metrics of every resample as rows (columns in METRIC_KEYS order)."""
    rows = [point_metrics(y[idx], prob[idx], threshold) for idx in indices]
    return np.array([[row[key] for key in METRIC_KEYS] for row in rows], dtype=np.float64)


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float, int]:
    """Percentile interval of the finite samples, with how many there were."""
    valid = samples[np.isfinite(samples)]
    if valid.size == 0:
        return float("nan"), float("nan"), 0
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(valid, [tail, 1.0 - tail])
    return float(low), float(high), int(valid.size)


def bootstrap_p_value(observed: float, samples: np.ndarray) -> float:
    """Two-sided p: twice the share of finite resampled diffs at or beyond 0 opposite the observed diff."""
    valid = samples[np.isfinite(samples)]
    if valid.size == 0 or not np.isfinite(observed):
        return float("nan")
    if observed == 0:
        return 1.0
    other_side = valid <= 0 if observed > 0 else valid >= 0
    return float(min(1.0, 2.0 * other_side.mean()))


def draw_indices(n: int, groups: np.ndarray | None, n_resamples: int, seed: int) -> list[np.ndarray]:
    """All resamples for one call, from a fresh seeded generator so results are reproducible."""
    return list(resample_indices(n, groups, n_resamples, np.random.default_rng(seed)))


def bootstrap_ci(
    y_true: np.ndarray,
    prob: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    groups: np.ndarray | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Point value and percentile CI of every metric: {metric: {value, low, high, n_valid}}."""
    y, p = as_binary_arrays(y_true, prob)
    point = point_metrics(y, p, threshold)
    samples = metric_matrix(y, p, threshold, draw_indices(y.size, groups, n_resamples, seed))
    result = {}
    for column, key in enumerate(METRIC_KEYS):
        low, high, n_valid = percentile_interval(samples[:, column], confidence)
        result[key] = {"value": point[key], "low": low, "high": high, "n_valid": n_valid}
    return result


def paired_bootstrap_diff(
    y_true: np.ndarray,
    prob_a: np.ndarray,
    prob_b: np.ndarray,
    threshold_a: float = DEFAULT_THRESHOLD,
    threshold_b: float = DEFAULT_THRESHOLD,
    groups: np.ndarray | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Difference A - B of every rate metric on the same resamples: {metric: {value_a, value_b, diff, low,
    high, p_value, n_valid}}."""
    y, p_a = as_binary_arrays(y_true, prob_a)
    p_b = as_binary_arrays(y, prob_b)[1]
    point_a, point_b = point_metrics(y, p_a, threshold_a), point_metrics(y, p_b, threshold_b)
    indices = draw_indices(y.size, groups, n_resamples, seed)
    diffs = metric_matrix(y, p_a, threshold_a, indices) - metric_matrix(y, p_b, threshold_b, indices)
    result = {}
    for key in RATE_KEYS:
        observed = point_a[key] - point_b[key]
        samples = diffs[:, METRIC_KEYS.index(key)]
        low, high, n_valid = percentile_interval(samples, confidence)
        result[key] = {
            "value_a": point_a[key],
            "value_b": point_b[key],
            "diff": observed,
            "low": low,
            "high": high,
            "p_value": bootstrap_p_value(observed, samples),
            "n_valid": n_valid,
        }
    return result
