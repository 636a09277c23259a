"""Shared by predict.py and visualize.py: CAM options from config, captioned overlays on disk."""

from pathlib import Path

import cv2
from omegaconf import DictConfig

from pneumonia_cam.inference.batch import Prediction
from pneumonia_cam.utils.overlay import caption, overlay_cam


def cam_arguments(cam_cfg: DictConfig, enabled: bool = True) -> dict:
    """predict_paths' CAM keyword arguments from the `cam` config group (none when CAMs are off)."""
    if not enabled:
        return {}
    options = {"target_layer": cam_cfg.target_layer, "upsample_mode": cam_cfg.upsample_mode}
    return {"cam_method": cam_cfg.method, "cam_options": options, "cam_target": cam_cfg.target_class}


def write_overlay(
    prediction: Prediction, index: int, out_dir: Path, cam_cfg: DictConfig, positive_class: str
) -> Path:
    """Save the CAM over the original grey image at its own resolution, captioned with label and P."""
    image = overlay_cam(prediction.original, prediction.cam, cam_cfg.alpha, cam_cfg.colormap)
    text = f"{prediction.label}  P({positive_class})={prediction.probability:.2f}  [{cam_cfg.method}]"
    path = out_dir / f"{index:04d}_{Path(prediction.path).stem}.png"
    if not cv2.imwrite(str(path), caption(image, text)):
        raise OSError(f"Could not write overlay {path}")
    return path
