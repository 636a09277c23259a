"""PNG figures for evaluation reports; each writer takes the data and a path and returns the path written."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pneumonia_cam.evaluation.calibration import reliability_bins
from pneumonia_cam.evaluation.metrics import (
    as_binary_arrays,
    auroc,
    average_precision,
    confusion_counts,
    expected_calibration_error,
    ratio,
    roc_points,
)
from pneumonia_cam.models.decision import is_positive

DPI = 120
STAGES = ("train", "val")


def save(fig: Figure, path: str | Path) -> Path:
    """Write and close the figure, so long evaluation runs do not accumulate open figures."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def operating_point(y: np.ndarray, prob: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """Sensitivity, 1 - specificity and precision at the threshold, to mark it on the curves."""
    tp, fp, tn, fn = confusion_counts(y, is_positive(prob, threshold))
    return ratio(tp, tp + fn), ratio(fp, fp + tn), ratio(tp, tp + fp)


def curve_rates(y: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rate, true-positive rate and precision per distinct threshold, from the (0, 0) start."""
    _, tps, fps = roc_points(y, prob)
    fpr = np.concatenate(([0.0], fps / max(fps[-1], 1)))
    tpr = np.concatenate(([0.0], tps / max(tps[-1], 1)))
    precision = np.concatenate(([1.0], tps / (tps + fps)))
    return fpr, tpr, precision


def draw_matrix(ax: Axes, matrix: np.ndarray, class_names: Sequence[str], title: str, fmt: str) -> None:
    """One annotated confusion-matrix panel (rows: truth, columns: prediction)."""
    ax.imshow(matrix, cmap="Blues", vmin=0)
    ticks = np.arange(len(class_names))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=class_names, yticklabels=class_names)
    ax.set(xlabel="Predicted", ylabel="True", title=title)
    threshold = np.nanmax(matrix) / 2 if np.isfinite(matrix).any() else 0
    for (row, col), value in np.ndenumerate(matrix):
        color = "white" if value > threshold else "black"
        ax.text(col, row, format(value, fmt), ha="center", va="center", color=color)


def plot_confusion_matrix(
    y_true: np.ndarray, pred: np.ndarray, class_names: Sequence[str], path: str | Path
) -> Path:
    """Counts and row-normalised rates side by side: sizes and per-class error rates at a glance."""
    n_classes = len(class_names)
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(y_true, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    row_totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = counts / row_totals
    fig, (ax_counts, ax_rates) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    draw_matrix(ax_counts, counts, class_names, "Counts", "d")
    draw_matrix(ax_rates, rates, class_names, "Row-normalised", ".2f")
    return save(fig, path)


def plot_roc(y_true: np.ndarray, prob: np.ndarray, threshold: float, path: str | Path) -> Path:
    """ROC curve with its AUROC and the chosen operating point."""
    y, p = as_binary_arrays(y_true, prob)
    fpr, tpr, _ = curve_rates(y, p)
    sensitivity, false_positive_rate, _ = operating_point(y, p, threshold)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"ROC (AUROC = {auroc(y, p):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.plot(false_positive_rate, sensitivity, "o", color="red", label=f"threshold = {threshold:.3f}")
    ax.set(xlabel="1 - specificity", ylabel="Sensitivity", xlim=(0, 1), ylim=(0, 1.01), title="ROC curve")
    ax.legend(loc="lower right")
    return save(fig, path)


def plot_precision_recall(y_true: np.ndarray, prob: np.ndarray, threshold: float, path: str | Path) -> Path:
    """Step-wise precision-recall curve with AUPRC, prevalence baseline and the chosen operating point."""
    y, p = as_binary_arrays(y_true, prob)
    _, curve_recall, curve_precision = curve_rates(y, p)
    recall, _, precision = operating_point(y, p, threshold)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.step(curve_recall, curve_precision, where="pre", label=f"PR (AUPRC = {average_precision(y, p):.3f})")
    ax.axhline(y.mean(), linestyle="--", color="grey", label="prevalence")
    ax.plot(recall, precision, "o", color="red", label=f"threshold = {threshold:.3f}")
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.01), title="Precision-recall curve")
    ax.legend(loc="lower left")
    return save(fig, path)


def plot_reliability(y_true: np.ndarray, prob: np.ndarray, path: str | Path, n_bins: int = 15) -> Path:
    """Observed frequency against mean confidence per bin; the gap to the diagonal is the miscalibration."""
    y, p = as_binary_arrays(y_true, prob)
    bins = reliability_bins(y, p, n_bins)
    fig, ax = plt.subplots(figsize=(5, 5))
    width = bins["bin_upper"] - bins["bin_lower"]
    ax.bar(
        bins["bin_lower"],
        bins["frequency"].fillna(0),
        width=width,
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="observed frequency",
    )
    ax.plot(bins["confidence"], bins["frequency"], "o", color="darkblue", label="bin mean confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ece = expected_calibration_error(y, p, n_bins)
    ax.set(
        xlabel="Predicted P(positive)",
        ylabel="Observed frequency",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"Reliability (ECE = {ece:.3f}, {n_bins} bins)",
    )
    ax.legend(loc="upper left")
    return save(fig, path)


def epoch_series(metrics: pd.DataFrame, column: str) -> pd.Series:
    """Per-epoch mean of one logged column, skipping the sparse rows where Lightning left it empty."""
    return metrics.dropna(subset=[column]).groupby("epoch")[column].mean()


def draw_stage_curves(ax: Axes, metrics: pd.DataFrame, name: str) -> None:
    """Train and val curves of one metric name, whichever of the two were logged."""
    for stage in STAGES:
        column = f"{stage}/{name}"
        if column in metrics:
            series = epoch_series(metrics, column)
            ax.plot(series.index, series.to_numpy(), marker="o", label=column)
    ax.set(xlabel="Epoch", ylabel=name, title=name)
    ax.legend()


def plot_training_curves(metrics_csv_path: str | Path, monitor: str, path: str | Path) -> Path:
    """Loss per epoch, plus the monitored metric when it is logged and not the loss, from CSVLogger output."""
    metrics = pd.read_csv(metrics_csv_path)
    name = monitor.split("/", 1)[-1]
    logged = any(f"{stage}/{name}" in metrics for stage in STAGES)
    names = ["loss", name] if name != "loss" and logged else ["loss"]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, metric_name in zip(axes[0], names, strict=True):
        draw_stage_curves(ax, metrics, metric_name)
    return save(fig, path)


def localisation_figure(
    images: Sequence[tuple[np.ndarray, np.ndarray, Sequence[Sequence[float]], str]], path: Path
) -> Path:
    """Each (grey original, [0, 1] CAM at its size, boxes [x, y, w, h], title): CAM over the image, boxes in
    green, so where the model looked and where radiologists drew are seen together."""
    figure, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 3.4), squeeze=False)
    for axis, (original, heat, boxes, title) in zip(axes[0], images, strict=True):
        axis.imshow(original, cmap="gray")
        axis.imshow(heat, cmap="jet", alpha=0.35, vmin=0.0, vmax=1.0)
        for x, y, w, h in boxes:
            axis.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="lime", linewidth=1.5))
        axis.set_title(title[:18], fontsize=8)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
