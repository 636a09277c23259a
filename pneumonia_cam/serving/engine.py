"""What the server does to one image, LitServe-style: decode (bytes -> prepared image), predict (batched,
on the worker thread, through InferenceModel only), encode (PNGs and JSON-ready fields)."""

import base64
import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from omegaconf import DictConfig

from pneumonia_cam.data.image_io import (
    ImageHeader,
    ImageReadError,
    UnsupportedFormatError,
    read_header,
)
from pneumonia_cam.data.preprocessor import PreparedImage
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.utils.overlay import COLORMAPS, heatmap, overlay_cam

SOURCE = "upload"  # how an upload is named in errors and logs: never its file name


class InputError(Exception):
    """An input the server refuses, with the HTTP status and a detail that says why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class CamKey:
    """CAM settings of a request: requests are batched only with others that share them."""

    method: str
    target_class: int | None


@dataclass
class Decoded:
    """An upload ready for the model, with its header facts and the time decoding took."""

    prepared: PreparedImage
    header: ImageHeader
    nbytes: int
    decode_ms: float


@dataclass
class Inferred:
    """The model's answer for one image: probabilities, the decided class, and the CAM when asked."""

    probs: np.ndarray
    label: int
    cam_map: np.ndarray | None = None
    grid: np.ndarray | None = None
    cam_target: int | None = None


@dataclass(frozen=True)
class Limits:
    """What the server accepts, checked from the header before any pixel is decoded."""

    max_body_bytes: int
    max_pixels: int
    max_side: int
    max_files: int

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "Limits":
        """The `limits` config node."""
        return cls(int(cfg.max_body_bytes), int(cfg.max_pixels), int(cfg.max_side), int(cfg.max_files))


def check_header(header: ImageHeader, limits: Limits) -> None:
    """Refuse (422) what this server does not decode: oversized, colour or multi-frame images."""
    if max(header.width, header.height) > limits.max_side:
        raise InputError(
            422, f"image is {header.width}x{header.height}; sides above {limits.max_side} px are refused"
        )
    if header.pixels > limits.max_pixels:
        raise InputError(422, f"image has {header.pixels} pixels; more than {limits.max_pixels} are refused")
    if header.format == "dicom" and header.samples_per_pixel != 1:
        raise InputError(
            422, f"colour DICOM (SamplesPerPixel {header.samples_per_pixel}): only grey radiographs are read"
        )
    if header.frames > 1:
        raise InputError(422, f"multi-frame DICOM ({header.frames} frames): send one frame per file")


class InferenceEngine:
    """The model plus the serving options (CAM layer, overlay look, limits) it is called with."""

    def __init__(self, model: InferenceModel, cam_cfg: DictConfig, limits: Limits) -> None:
        self.model = model
        self.cam_options = {"target_layer": cam_cfg.target_layer, "upsample_mode": cam_cfg.upsample_mode}
        self.alpha = float(cam_cfg.alpha)
        self.colormap = str(cam_cfg.colormap)
        if self.colormap not in COLORMAPS:
            raise ValueError(f"Unknown colormap {self.colormap!r}; choose one of {sorted(COLORMAPS)}")
        self.limits = limits

    def decode(self, data: bytes) -> Decoded:
        """Header checks first (no allocation for refused images), then decode and pre-process."""
        start = time.perf_counter()
        try:
            header = read_header(data, SOURCE)
            check_header(header, self.limits)
            prepared = self.model.prepare(self.model.preprocessor.decode(data, SOURCE))
        except UnsupportedFormatError as error:
            raise InputError(415, error.reason) from error
        except ImageReadError as error:
            raise InputError(422, error.reason) from error
        return Decoded(prepared, header, len(data), (time.perf_counter() - start) * 1000.0)

    def predict(self, key: CamKey | None, images: list[PreparedImage]) -> list[Inferred]:
        """One model call for a group of images with the same CAM settings (the batcher's worker runs it)."""
        if key is None:
            probs = self.model.predict_proba(torch.stack([image.tensor for image in images]))
            labels = self.model.decide(probs)
            return [Inferred(p.numpy(), int(label)) for p, label in zip(probs, labels, strict=True)]
        explanation = self.model.explain_batch(images, key.target_class, key.method, **self.cam_options)
        labels = self.model.decide(explanation.probs)
        rows = zip(
            explanation.probs, labels, explanation.maps, explanation.grids, explanation.targets, strict=True
        )
        return [
            Inferred(p.numpy(), int(label), cam_map, grid.numpy(), int(target))
            for p, label, cam_map, grid, target in rows
        ]

    def encode_cam(self, original: np.ndarray, cam_map: np.ndarray) -> tuple[str, str]:
        """Base64 PNGs at the original size: the overlay, and the colour-mapped CAM as RGBA to stack over it.

        The heat map's alpha channel is the configured overlay opacity everywhere, so drawing it over the grey
        original gives the overlay; a page can vary the opacity on top of that.
        """
        overlay = overlay_cam(original, cam_map, self.alpha, self.colormap)
        heat = heatmap(cam_map, self.colormap)
        opacity = np.full(heat.shape[:2], round(self.alpha * 255), dtype=np.uint8)
        return png_base64(overlay), png_base64(np.dstack([heat, opacity]))


def png_base64(image: np.ndarray) -> str:
    """An OpenCV (grey, BGR or BGRA) image as a base64 PNG."""
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"PNG encoding failed for an array of shape {image.shape}")
    return base64.b64encode(encoded.tobytes()).decode("ascii")
