"""Turn one image file or array into the model's input with the very eval transform training used."""

import os
from collections.abc import Callable
from dataclasses import dataclass

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from pneumonia_cam.data.dicom import DEFAULT_POLICY, DicomPolicy
from pneumonia_cam.data.image_io import decode_grayscale, read_grayscale
from pneumonia_cam.utils.run_config import load_run_config

ImageInput = str | os.PathLike | np.ndarray


@dataclass
class PreparedImage:
    """A model-ready tensor with the grey original it came from (overlays are drawn at that size).

    `original` is None for a tensor that arrived pre-processed: its own size stands in for the original's.
    """

    tensor: torch.Tensor
    original: np.ndarray | None

    @property
    def original_size(self) -> tuple[int, int]:
        """Height and width of the original image (the tensor's when the original is unknown)."""
        if self.original is None:
            return tuple(self.tensor.shape[-2:])
        return self.original.shape[0], self.original.shape[1]


class ImagePreprocessor:
    """Read (OpenCV/DICOM) and apply the data module's eval transform; one definition, shared everywhere."""

    def __init__(self, transform: Callable, dicom: DicomPolicy = DEFAULT_POLICY) -> None:
        self.transform = transform
        self.dicom = dicom

    @classmethod
    def from_data_config(cls, data_cfg: DictConfig) -> "ImagePreprocessor":
        """The eval transform and DICOM policy declared in a data config (e.g. the one in a checkpoint)."""
        return cls(
            hydra.utils.instantiate(data_cfg.transforms).eval, DicomPolicy.from_config(data_cfg.get("dicom"))
        )

    def read(self, path: str | os.PathLike) -> np.ndarray:
        """A file as HxW uint8, DICOM through the training run's policy."""
        return read_grayscale(path, self.dicom)

    def decode(self, data: bytes, source: str) -> np.ndarray:
        """Encoded bytes (an upload) as HxW uint8, with the same conversions as `read`."""
        return decode_grayscale(data, source, self.dicom)

    @classmethod
    def from_checkpoint(cls, ckpt_path: str | os.PathLike) -> "ImagePreprocessor":
        """The eval transform a checkpoint was trained with (read from its stored run config)."""
        return cls.from_data_config(load_run_config(ckpt_path).data)

    def prepare(self, image: ImageInput) -> PreparedImage:
        """Read a path (or take an HxW uint8 array) and transform it, keeping the original."""
        original = image if isinstance(image, np.ndarray) else self.read(image)
        if original.ndim != 2 or original.dtype != np.uint8:
            raise ValueError(
                f"Expected an HxW uint8 grey image, got shape {original.shape} and {original.dtype}"
            )
        return PreparedImage(self.transform(image=original)["image"], original)

    def process(self, image: ImageInput) -> torch.Tensor:
        """The model input (C x H x W float tensor) for one image."""
        return self.prepare(image).tensor
