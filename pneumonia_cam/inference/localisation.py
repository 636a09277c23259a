"""CAM localisation of a trained model on the positive test images that have boxes (RSNA), vs a box prior."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from pneumonia_cam.evaluation.localisation import (
    baseline_heatmap,
    boxes_mask,
    image_scores,
    localisation_scores,
    parse_boxes,
    resize_heatmap,
)
from pneumonia_cam.evaluation.plots import localisation_figure
from pneumonia_cam.inference.model import InferenceModel

FIGURE = "localisation.png"


def boxed(records: pd.DataFrame, positive: int) -> pd.DataFrame:
    """Positive records that carry at least one box."""
    if "boxes" not in records:
        return records.iloc[0:0]
    has_boxes = records["boxes"].map(lambda boxes: len(parse_boxes(boxes)) > 0)
    return records[(records["label"] == positive) & has_boxes]


def cam_localisation(
    model: InferenceModel,
    test: pd.DataFrame,
    train: pd.DataFrame,
    sizes: Mapping[str, tuple[int, int]],
    cfg: Mapping[str, Any],
    out_dir: Path,
) -> dict[str, Any] | None:
    """Pointing game and IoU of the CAM and of the mean-training-box prior, with CIs; None without boxes.

    `test` and `train` use the model's class order; `sizes` gives each train image's (height, width), which
    normalises its boxes for the prior. Writes `localisation.png` (boxes over the CAM) into out_dir.
    """
    positive = list(model.class_names).index(model.positive_name)
    test, train = boxed(test, positive), boxed(train, positive)
    if test.empty or train.empty:
        return None
    prior = baseline_heatmap([parse_boxes(b) for b in train["boxes"]], [sizes[p] for p in train["path"]])
    scores: dict[str, tuple[list, list]] = {"cam": ([], []), "baseline": ([], [])}
    shown = []
    paths, boxes = test["path"].tolist(), [parse_boxes(b) for b in test["boxes"]]
    for start in range(0, len(paths), int(cfg["batch_size"])):
        chunk = paths[start : start + int(cfg["batch_size"])]
        prepared = [model.prepare(path) for path in chunk]  # decoded once: for the CAM and the figure
        explanation = model.explain_batch(prepared, target_class=positive, method=cfg["method"])
        for offset, heat in enumerate(explanation.maps):
            mask = boxes_mask(boxes[start + offset], heat.shape)
            for name, heatmap in (("cam", heat), ("baseline", resize_heatmap(prior, heat.shape))):
                hit, iou = image_scores(heatmap, mask, float(cfg["cam_threshold"]))
                scores[name][0].append(hit)
                scores[name][1].append(iou)
            if len(shown) < int(cfg["figure_images"]):
                original = prepared[offset].original
                shown.append((original, heat, boxes[start + offset], Path(chunk[offset]).stem))
    bootstrap = {key: cfg[key] for key in ("n_resamples", "confidence", "seed")}
    summary = {
        "images": len(paths),
        "method": cfg["method"],
        "cam_threshold": float(cfg["cam_threshold"]),
        **{name: localisation_scores(hits, ious, **bootstrap) for name, (hits, ious) in scores.items()},
    }
    summary["figure"] = str(localisation_figure(shown, out_dir / FIGURE))
    return summary
