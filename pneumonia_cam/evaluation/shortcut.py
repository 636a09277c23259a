"""Where a CAM's mass lies: the image border (markers, text, collimation edges) vs the centre (the lungs).

A model that learnt the hospital rather than the disease tends to weigh what differs between sources, and
that sits at the border of a radiograph. The share of the map's mass in the outer band is compared with what
a uniform map would put there (the band's share of the area), so 1.0 means "no preference".
"""

from collections.abc import Sequence

import numpy as np

from pneumonia_cam.evaluation.localisation import mean_with_ci


def border_mask(shape: tuple[int, int], border: float) -> np.ndarray:
    """True in the outer band: `border` of the height at top and bottom, of the width left and right."""
    if not 0 < border < 0.5:
        raise ValueError(f"border={border}: the band is a fraction of each side in (0, 0.5)")
    height, width = shape
    rows, cols = round(height * border), round(width * border)
    mask = np.ones(shape, dtype=bool)
    mask[rows : height - rows, cols : width - cols] = False
    return mask


def border_share(heatmap: np.ndarray, border: float) -> tuple[float, float]:
    """(share of the map's mass in the band, the band's share of the area); a zero map counts as uniform."""
    mask = border_mask(heatmap.shape, border)
    area = float(mask.mean())
    total = float(heatmap.sum())
    return (float(heatmap[mask].sum()) / total if total > 0 else area), area


def border_summary(
    shares: Sequence[float],
    areas: Sequence[float],
    labels: Sequence[int],
    class_names: Sequence[str],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Mean border share with CI, its ratio to a uniform map's, overall and per true class."""
    shares, areas, labels = (np.asarray(v, dtype=np.float64) for v in (shares, areas, labels))

    def part(selected: np.ndarray) -> dict:
        share = mean_with_ci(shares[selected], n_resamples, confidence, seed)
        uniform = float(areas[selected].mean())
        return {
            "images": int(selected.sum()),
            "border_share": share,
            "uniform_share": uniform,
            "ratio_to_uniform": share["value"] / uniform,
        }

    everything = np.ones(shares.size, dtype=bool)
    return {
        **part(everything),
        "per_class": {name: part(labels == i) for i, name in enumerate(class_names) if (labels == i).any()},
    }
