"""Markdown tables of metrics, model comparisons and cross-validation folds, for reports and READMEs."""

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from pneumonia_cam.evaluation.metrics import COUNT_KEYS


def fmt(value: float, digits: int = 3) -> str:
    """A fixed number of decimals, and "n/a" for undefined values instead of "nan"."""
    return f"{value:.{digits}f}" if np.isfinite(value) else "n/a"


def fmt_p(p_value: float) -> str:
    """p-values to 3 decimals, floored at "<0.001" since smaller digits are noise for bootstrap and tests."""
    return "<0.001" if np.isfinite(p_value) and p_value < 0.001 else fmt(p_value)


def fmt_interval(low: float, high: float) -> str:
    """A CI as "[low, high]"."""
    return f"[{fmt(low)}, {fmt(high)}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """GitHub-flavoured Markdown table from already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def ci_label(confidence: float) -> str:
    """Column header of the interval, e.g. "95% CI"."""
    return f"{confidence:.0%} CI"


def format_metrics_table(ci_dict: Mapping[str, Mapping[str, float]], confidence: float = 0.95) -> str:
    """metric | value | CI from bootstrap_ci's output; counts are shown as integers without an interval."""
    rows = [
        [name, str(int(ci["value"])), ""]
        if name in COUNT_KEYS
        else [name, fmt(ci["value"]), fmt_interval(ci["low"], ci["high"])]
        for name, ci in ci_dict.items()
    ]
    return markdown_table(["metric", "value", ci_label(confidence)], rows)


def format_comparison_table(
    diff_dict: Mapping[str, Mapping[str, float]],
    mcnemar: Mapping[str, float],
    delong: Mapping[str, float],
    names: tuple[str, str] = ("A", "B"),
    confidence: float = 0.95,
) -> str:
    """Performance comparison: per-metric values, paired bootstrap diff with CI and p; McNemar and DeLong."""
    a, b = names
    metric_rows = [
        [
            metric,
            fmt(d["value_a"]),
            fmt(d["value_b"]),
            fmt(d["diff"]),
            fmt_interval(d["low"], d["high"]),
            fmt_p(d["p_value"]),
        ]
        for metric, d in diff_dict.items()
    ]
    metrics = markdown_table(["metric", a, b, f"{a} - {b}", ci_label(confidence), "bootstrap p"], metric_rows)
    test_rows = [
        [
            "McNemar exact (errors)",
            f"{a} right / {b} wrong: {mcnemar['b']}, {a} wrong / {b} right: {mcnemar['c']}",
            fmt_p(mcnemar["p_value"]),
        ],
        [
            "DeLong (AUROC)",
            f"AUROC {fmt(delong['auc_a'])} vs {fmt(delong['auc_b'])}, z = {fmt(delong['z'], 2)}",
            fmt_p(delong["p_value"]),
        ],
    ]
    tests = markdown_table(["test", "statistic", "p"], test_rows)
    return f"{metrics}\n\n{tests}"


def aggregate_runs(run_metrics: Sequence[Mapping[str, float]]) -> pd.DataFrame:
    """Mean, sample std, range and number of defined runs per metric, across folds or seeds."""
    table = pd.DataFrame(list(run_metrics), dtype=np.float64)
    return pd.DataFrame(
        {
            "mean": table.mean(),
            "std": table.std(ddof=1),
            "min": table.min(),
            "max": table.max(),
            "n": table.count(),
        }
    )


def format_runs_table(df: pd.DataFrame, unit: str = "folds") -> str:
    """metric | mean ± std | range | number of runs, from aggregate_runs."""
    rows = [
        [
            str(metric),
            f"{fmt(row['mean'])} ± {fmt(row['std'])}",
            f"{fmt(row['min'])} to {fmt(row['max'])}",
            str(int(row["n"])),
        ]
        for metric, row in df.iterrows()
    ]
    return markdown_table(["metric", "mean ± std", "range", unit], rows)
