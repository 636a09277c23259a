"""The CAM border check of eval.py: each test image's CAM (of its decided class), mass in the border band."""

from collections.abc import Mapping
from typing import Any

import pandas as pd

from pneumonia_cam.evaluation.shortcut import border_share, border_summary
from pneumonia_cam.inference.model import InferenceModel


def cam_border_mass(model: InferenceModel, test: pd.DataFrame, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Border share of every test image's CAM at its original size, summarised with CIs.

    `test` has the model's class order in `label`; `cfg` holds border, method, batch_size and the bootstrap
    settings (n_resamples, confidence, seed).
    """
    paths, step = test["path"].tolist(), int(cfg["batch_size"])
    shares, areas = [], []
    for start in range(0, len(paths), step):
        for heat in model.explain(paths[start : start + step], method=cfg["method"]):
            share, area = border_share(heat, float(cfg["border"]))
            shares.append(share)
            areas.append(area)
    bootstrap = {key: cfg[key] for key in ("n_resamples", "confidence", "seed")}
    summary = border_summary(shares, areas, test["label"].tolist(), model.class_names, **bootstrap)
    return {"border": float(cfg["border"]), "method": cfg["method"], **summary}
