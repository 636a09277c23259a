"""Draw CAM heat maps over grey radiographs, caption them, and tile them into a grid."""

from collections.abc import Sequence

import cv2
import numpy as np

COLORMAPS = {"jet": cv2.COLORMAP_JET, "inferno": cv2.COLORMAP_INFERNO, "turbo": cv2.COLORMAP_TURBO}


def heatmap(cam: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A [0, 1] map in colour (BGR uint8), what overlays blend and what a viewer stacks over the image."""
    if colormap not in COLORMAPS:
        raise ValueError(f"Unknown colormap {colormap!r}; choose one of {sorted(COLORMAPS)}")
    return cv2.applyColorMap(np.rint(np.clip(cam, 0, 1) * 255).astype(np.uint8), COLORMAPS[colormap])


def overlay_cam(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.4, colormap: str = "jet") -> np.ndarray:
    """Blend a [0, 1] map (same H x W as the image) in colour over the grey image; returns BGR uint8."""
    if gray.shape != cam.shape:
        raise ValueError(f"CAM shape {cam.shape} differs from the image's {gray.shape}")
    heat = heatmap(cam, colormap)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(heat, alpha, base, 1.0 - alpha, 0.0)


def caption(image: np.ndarray, text: str) -> np.ndarray:
    """Write a label on a dark band at the top, scaled to the image width so it stays legible."""
    out = image.copy()
    scale = max(0.3, image.shape[1] / 640)
    thickness = max(1, round(scale * 1.5))
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    band = height + baseline + 2 * thickness + 4
    region = out[:band, : width + 8]
    region[:] = (region * 0.3).astype(np.uint8)
    cv2.putText(
        out, text, (4, height + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA
    )
    return out


def grid(images: Sequence[np.ndarray], tile: int = 256, columns: int = 4) -> np.ndarray:
    """Tile BGR images as square thumbnails (aspect kept, letter-boxed) into one image."""
    if not images:
        raise ValueError("grid() needs at least one image")
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    canvas = np.zeros((rows * tile, columns * tile, 3), dtype=np.uint8)
    for index, image in enumerate(images):
        scale = tile / max(image.shape[:2])
        thumb = cv2.resize(
            image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        )
        top = (index // columns) * tile + (tile - thumb.shape[0]) // 2
        left = (index % columns) * tile + (tile - thumb.shape[1]) // 2
        canvas[top : top + thumb.shape[0], left : left + thumb.shape[1]] = thumb
    return canvas
