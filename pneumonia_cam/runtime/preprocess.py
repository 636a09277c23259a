"""The eval preprocessing as a plain list of steps that OpenCV/numpy replay without Albumentations (which
imports torch): what an exported model carries. Export refuses any step this cannot replay exactly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

Step = dict[str, Any]


def replay(steps: Sequence[Step]) -> Callable[[np.ndarray], np.ndarray]:
    """HxW uint8 grey -> H x W x C float32, as the exported eval transform (without ToTensorV2)."""
    functions = [_STEPS[step["name"]](step) for step in steps]

    def run(image: np.ndarray) -> np.ndarray:
        for function in functions:
            image = function(image)
        return image

    return run


def _clahe(step: Step) -> Callable[[np.ndarray], np.ndarray]:
    clahe = cv2.createCLAHE(clipLimit=float(step["clip_limit"]), tileGridSize=tuple(step["tile_grid_size"]))
    return clahe.apply


def _resize(step: Step) -> Callable[[np.ndarray], np.ndarray]:
    size, interpolation = (int(step["width"]), int(step["height"])), int(step["interpolation"])
    return lambda image: cv2.resize(image, size, interpolation=interpolation)


def _to_rgb(step: Step) -> Callable[[np.ndarray], np.ndarray]:
    channels = int(step["num_output_channels"])
    return lambda image: np.ascontiguousarray(np.repeat(image[:, :, None], channels, axis=2))


def _normalize(step: Step) -> Callable[[np.ndarray], np.ndarray]:
    """(x - mean * max) / (std * max) in float32, in Albumentations' order of operations."""
    max_value = float(step["max_pixel_value"])
    mean = np.asarray(step["mean"], dtype=np.float32) * max_value
    denominator = np.reciprocal(np.asarray(step["std"], dtype=np.float32) * max_value)
    return lambda image: (image.astype(np.float32) - mean) * denominator


_STEPS: dict[str, Callable[[Step], Callable[[np.ndarray], np.ndarray]]] = {
    "CLAHE": _clahe,
    "Resize": _resize,
    "ToRGB": _to_rgb,
    "Normalize": _normalize,
}
STEP_NAMES = tuple(_STEPS)
