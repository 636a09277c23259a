"""Every evaluation figure is written as a real PNG of plausible size."""

import struct
from pathlib import Path

import numpy as np
import pytest

from pneumonia_cam.evaluation.plots import (
    plot_confusion_matrix,
    plot_precision_recall,
    plot_reliability,
    plot_roc,
    plot_training_curves,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# A CSVLogger file: train and val rows are logged separately, so each row fills only some columns.
SPARSE_METRICS_CSV = """\
epoch,step,train/loss,train/auroc,val/loss,val/auroc,lr-Adam
,0,,,,,0.001
0,9,,,0.62,0.71,
0,9,0.69,0.60,,,
,10,,,,,0.001
1,19,,,0.51,0.80,
1,19,0.55,0.74,,,
2,29,,,0.47,0.83,
2,29,0.43,0.85,,,
"""


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_plausible_png(path: Path, expected: Path) -> None:
    """The writer returned the requested path and it holds a non-trivial image."""
    assert path == expected
    assert path.stat().st_size > 5_000
    width, height = png_size(path)
    assert 200 <= width <= 3000 and 200 <= height <= 3000


@pytest.fixture(scope="module")
def scores() -> tuple[np.ndarray, np.ndarray]:
    """Labels and informative probabilities."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    return y, np.clip(0.35 * y + 0.65 * rng.random(200), 0, 1)


def test_confusion_matrix(tmp_path: Path, scores: tuple[np.ndarray, np.ndarray]) -> None:
    """Two panels side by side: wider than tall."""
    y, prob = scores
    path = plot_confusion_matrix(y, (prob >= 0.5).astype(int), ["normal", "pneumonia"], tmp_path / "cm.png")
    assert_plausible_png(path, tmp_path / "cm.png")
    width, height = png_size(path)
    assert width > 1.5 * height


def test_roc(tmp_path: Path, scores: tuple[np.ndarray, np.ndarray]) -> None:
    """ROC curve into a nested, not yet existing folder."""
    y, prob = scores
    assert_plausible_png(plot_roc(y, prob, 0.5, tmp_path / "a" / "roc.png"), tmp_path / "a" / "roc.png")


def test_precision_recall(tmp_path: Path, scores: tuple[np.ndarray, np.ndarray]) -> None:
    """PR curve with the operating point."""
    y, prob = scores
    assert_plausible_png(plot_precision_recall(y, prob, 0.4, tmp_path / "pr.png"), tmp_path / "pr.png")


def test_reliability(tmp_path: Path, scores: tuple[np.ndarray, np.ndarray]) -> None:
    """Reliability diagram, empty bins included."""
    y, prob = scores
    path = plot_reliability(y, prob, tmp_path / "rel.png", n_bins=15)
    assert_plausible_png(path, tmp_path / "rel.png")


@pytest.mark.parametrize(("monitor", "panels"), [("val/auroc", 2), ("val/loss", 1), ("val/f1", 1)])
def test_training_curves_from_sparse_csv(tmp_path: Path, monitor: str, panels: int) -> None:
    """Loss panel always; a second panel only for a logged monitored metric other than the loss."""
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(SPARSE_METRICS_CSV)
    path = plot_training_curves(csv_path, monitor, tmp_path / "curves.png")
    assert_plausible_png(path, tmp_path / "curves.png")
    width, height = png_size(path)
    assert (width > 1.5 * height) == (panels == 2)
