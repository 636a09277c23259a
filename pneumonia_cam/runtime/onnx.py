"""An exported ONNX model with the Python API's surface (predict, predict_proba, generate_cam), no torch.

The preprocessing is replayed from the file's metadata (the eval transform's steps in OpenCV, since
Albumentations imports torch; the same reader with the same DICOM policy), the decision is the project's
one rule (models/decision.py imports no torch), and the CAM is finished as the Python API does (bilinear
upsampling with half-pixel centres, ReLU, min-max). ONNX Runtime shares the process with whatever else
runs, so its threads are pinned and spinning is off.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from pneumonia_cam.data.dicom import DicomPolicy
from pneumonia_cam.data.image_io import read_grayscale
from pneumonia_cam.models.decision import decide
from pneumonia_cam.runtime.preprocess import replay

METADATA_KEY = "pneumonia_cam"
FORMAT_VERSION = 2  # of the metadata; 2 added the full operating point and the CAM layer
ImageLike = str | os.PathLike | np.ndarray


def session_options(threads: int) -> ort.SessionOptions:
    """`threads` intra-op threads, one inter-op thread, no spinning: predictable beside other work."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def finish_cam(
    raw: np.ndarray, size: tuple[int, int], relu: bool = True, normalize: bool = True
) -> np.ndarray:
    """An h x w grid at `size` (H, W) in [0, 1]: what models/cam.py's postprocess does, in OpenCV."""
    resized = cv2.resize(raw.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    if relu:
        resized = np.maximum(resized, 0.0)
    if normalize:
        low, high = float(resized.min()), float(resized.max())
        resized = (resized - low) / max(high - low, 1e-12)
    return resized


class OnnxModel:
    """An exported model: read, preprocess, run, decide, explain."""

    def __init__(
        self, path: str | os.PathLike, threads: int = 2, providers: Sequence[str] | None = None
    ) -> None:
        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(self.path), session_options(threads), providers=list(providers or ["CPUExecutionProvider"])
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ValueError(f"{self.path} has no '{METADATA_KEY}' metadata: export it with src/export.py")
        self.metadata: dict[str, Any] = json.loads(meta[METADATA_KEY])
        self.class_names = tuple(self.metadata["class_names"])
        self.threshold = float(self.metadata["threshold"])
        self.temperature = float(self.metadata["temperature"])
        self.positive_class = int(self.metadata["positive_class"])
        self.transform = replay(self.metadata["preprocess"])
        self.dicom = DicomPolicy(**self.metadata["dicom"])

    def prepare(self, image: ImageLike) -> tuple[np.ndarray, tuple[int, int]]:
        """(C x H x W float32 model input, original (height, width)) of a path or an HxW uint8 array."""
        original = image if isinstance(image, np.ndarray) else read_grayscale(image, self.dicom)
        if original.ndim != 2 or original.dtype != np.uint8:
            raise ValueError(
                f"Expected an HxW uint8 grey image, got shape {original.shape} and {original.dtype}"
            )
        out = self.transform(original)
        out = out[:, :, None] if out.ndim == 2 else out
        return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32), original.shape[:2]

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits B x K, raw CAM grids B x K x h x w) of a model-ready B x C x H x W batch."""
        logits, cam = self.session.run(["logits", "cam"], {"image": np.ascontiguousarray(batch, np.float32)})
        return logits, cam

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Temperature-scaled softmax (float64)."""
        scaled = logits.astype(np.float64) / self.temperature
        scaled -= scaled.max(axis=1, keepdims=True)
        exp = np.exp(scaled)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Temperature-scaled class probabilities (B x K) of model-ready inputs, as the Python API's."""
        return self.probabilities(self.forward(batch)[0])

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Predicted class per row by the file's threshold: the project's one decision rule."""
        return decide(probs, self.threshold, self.positive_class)

    def predict(self, image: ImageLike) -> tuple[str, float]:
        """(label, its probability) of one image."""
        probs = self.predict_proba(self.prepare(image)[0][None])
        label = int(self.decide(probs)[0])
        return self.class_names[label], float(probs[0, label])

    def generate_cam(self, image: ImageLike, target_class: int | None = None) -> np.ndarray:
        """The [0, 1] CAM at the image's original size, for `target_class` (default: the decision)."""
        tensor, size = self.prepare(image)
        logits, cam = self.forward(tensor[None])
        if target_class is None:
            target_class = int(self.decide(self.probabilities(logits))[0])
        return finish_cam(cam[0, target_class], size)
