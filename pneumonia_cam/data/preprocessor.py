"""Turn one image file or array into the model's input with the very eval transform training used."""

import os
from collections.abc import Callable
from dataclasses import dataclass

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from pneumonia_cam.data.image_io import read_grayscale
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

    def __init__(
        self, transform: Callable, reader: Callable[[ImageInput], np.ndarray] = read_grayscale
    ) -> None:
        self.transform = transform
        self.reader = reader

    @classmethod
    def from_data_config(cls, data_cfg: DictConfig) -> "ImagePreprocessor":
        """Build the eval transform declared in a data config (e.g. the one stored in a checkpoint)."""
        return cls(hydra.utils.instantiate(data_cfg.transforms).eval)

    @classmethod
    def from_checkpoint(cls, ckpt_path: str | os.PathLike) -> "ImagePreprocessor":
        """The eval transform a checkpoint was trained with (read from its stored run config)."""
        return cls.from_data_config(load_run_config(ckpt_path).data)

    def prepare(self, image: ImageInput) -> PreparedImage:
        """Read a path (or take an HxW uint8 array) and transform it, keeping the original."""
        original = image if isinstance(image, np.ndarray) else self.reader(image)
        if original.ndim != 2 or original.dtype != np.uint8:
            raise ValueError(
                f"Expected an HxW uint8 grey image, got shape {original.shape} and {original.dtype}"
            )
        return PreparedImage(self.transform(image=original)["image"], original)

    def process(self, image: ImageInput) -> torch.Tensor:
        """The model input (C x H x W float tensor) for one image."""
        return self.prepare(image).tensor
