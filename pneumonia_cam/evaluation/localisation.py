"""Where the model looked vs where radiologists drew: the pointing game and IoU of a heat map against boxes.

Boxes are [x, y, width, height] in the image's own pixels (RSNA's convention). Each score gets a bootstrap CI
and sits beside the same score of a baseline heat map that knows only where boxes usually are (the mean of
the training boxes): a CAM is worth reading only where it beats that prior.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import cv2
import numpy as np

from pneumonia_cam.evaluation.bootstrap import draw_indices, percentile_interval

BASELINE_SIDE = 256  # the baseline heat map's grid, in normalised image coordinates


def parse_boxes(boxes: str | Sequence[Sequence[float]]) -> list[list[float]]:
    """A record's boxes from its JSON column (or already a list)."""
    return json.loads(boxes) if isinstance(boxes, str) else [list(map(float, box)) for box in boxes]


def boxes_mask(boxes: Sequence[Sequence[float]], shape: tuple[int, int]) -> np.ndarray:
    """The union of the boxes as a boolean H x W mask (pixel (r, c) is inside when x <= c < x + w)."""
    mask = np.zeros(shape, dtype=bool)
    height, width = shape
    for x, y, w, h in boxes:
        left, top = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
        right, bottom = min(width, int(np.ceil(x + w))), min(height, int(np.ceil(y + h)))
        mask[top:bottom, left:right] = True
    return mask


def pointing_hit(heatmap: np.ndarray, mask: np.ndarray) -> bool:
    """The pointing game: is the heat map's maximum (the first, in row-major order, on ties) inside a box."""
    return bool(mask.flat[int(np.argmax(heatmap))])


def heatmap_iou(heatmap: np.ndarray, mask: np.ndarray, threshold: float) -> float:
    """IoU of {heat >= threshold x max} with the boxes' union."""
    peak = float(heatmap.max())
    region = heatmap >= threshold * peak if peak > 0 else np.zeros_like(mask)
    union = np.logical_or(region, mask).sum()
    return float(np.logical_and(region, mask).sum() / union) if union else 0.0


def baseline_heatmap(
    boxes_per_image: Sequence[Sequence[Sequence[float]]],
    sizes: Sequence[tuple[int, int]],
    side: int = BASELINE_SIDE,
) -> np.ndarray:
    """Mean of the training images' box masks on a side x side grid of normalised coordinates."""
    total = np.zeros((side, side), dtype=np.float64)
    for boxes, (height, width) in zip(boxes_per_image, sizes, strict=True):
        scaled = [
            [x * side / width, y * side / height, w * side / width, h * side / height] for x, y, w, h in boxes
        ]
        total += boxes_mask(scaled, (side, side))
    return total / max(1, len(boxes_per_image))


def resize_heatmap(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A heat map at another image's size (bilinear)."""
    return cv2.resize(heatmap.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def mean_with_ci(values: np.ndarray, n_resamples: int, confidence: float, seed: int) -> dict[str, float]:
    """Mean and percentile bootstrap CI over images."""
    values = np.asarray(values, dtype=np.float64)
    samples = np.array([values[index].mean() for index in draw_indices(values.size, None, n_resamples, seed)])
    low, high, _ = percentile_interval(samples, confidence)
    return {"value": float(values.mean()), "low": low, "high": high}


def image_scores(heatmap: np.ndarray, mask: np.ndarray, threshold: float) -> tuple[bool, float]:
    """(pointing-game hit, IoU) of one heat map against one image's boxes."""
    return pointing_hit(heatmap, mask), heatmap_iou(heatmap, mask, threshold)


def localisation_scores(
    hits: Sequence[bool],
    ious: Sequence[float],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Pointing-game hit rate and mean IoU over images, each with its bootstrap CI."""
    return {
        "pointing_game": mean_with_ci(np.array(hits, dtype=float), n_resamples, confidence, seed),
        "iou": mean_with_ci(np.array(ious, dtype=float), n_resamples, confidence, seed),
    }
