"""Augment and normalise whole uint8 batches in torch, on the batch's device (the Kornia / DALI pattern).

Per-image albumentations steps cost about as much as the decode they follow; on a batch of pre-processed
uint8 images the same random affine and brightness/contrast run as a few tensor ops (and free on a GPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2


class BatchAugment:
    """Per-image random affine (rotate, scale, translate) and brightness/contrast of an N x C x H x W batch.

    The parameters mean what albumentations' Affine and RandomBrightnessContrast mean (degrees, zoom factor,
    fraction of the image size; brightness shifts by a fraction of 255, contrast scales by 1 +- limit), with
    zero fill outside the image and bilinear resampling; each step hits an image with its own probability.
    """

    def __init__(
        self,
        rotate: Sequence[float] = (-10.0, 10.0),
        scale: Sequence[float] = (0.9, 1.1),
        translate: Sequence[float] = (-0.05, 0.05),
        affine_p: float = 0.5,
        brightness: float = 0.1,
        contrast: float = 0.1,
        intensity_p: float = 0.5,
    ) -> None:
        self.rotate = _range("rotate", rotate)
        self.scale = _range("scale", scale)
        self.translate = _range("translate", translate)
        if self.scale[0] <= 0:
            raise ValueError(f"scale must be positive, got {list(scale)}")
        for name, p in (("affine_p", affine_p), ("intensity_p", intensity_p)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        self.affine_p, self.intensity_p = float(affine_p), float(intensity_p)
        self.brightness, self.contrast = float(brightness), float(contrast)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Float images in 0..255 (any N x C x H x W) -> augmented float images, clipped to 0..255."""
        picked = _uniform(images.shape[0], 0.0, 1.0, images, generator) < self.affine_p
        out = images.clone()
        if picked.any():
            out[picked] = self.warp(images[picked], self.affine_matrices(images[picked], generator))
        picked = _uniform(images.shape[0], 0.0, 1.0, images, generator) < self.intensity_p
        if picked.any():
            n = int(picked.sum())
            alpha = 1.0 + _uniform(n, -self.contrast, self.contrast, images, generator)
            beta = 255.0 * _uniform(n, -self.brightness, self.brightness, images, generator)
            out[picked] = out[picked] * alpha.view(-1, 1, 1, 1) + beta.view(-1, 1, 1, 1)
        return out.clamp_(0.0, 255.0)

    def affine_matrices(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """N x 2 x 3 output->input maps in grid_sample's normalised coordinates, built in pixel units.

        Forward: p_out = s R(-angle) p_in + t (pixels about the centre, y down, so a positive angle turns the
        image counter-clockwise as OpenCV does); grid_sample wants the inverse, and its normalised coordinates
        scale x and y by W/2 and H/2, which a rotation does not commute with.
        """
        n, _, height, width = images.shape
        angle = torch.deg2rad(_uniform(n, *self.rotate, images, generator))
        zoom = _uniform(n, *self.scale, images, generator)
        shift_x = _uniform(n, *self.translate, images, generator) * width
        shift_y = _uniform(n, *self.translate, images, generator) * height
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        inverse = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # R(a)/s
        half = images.new_tensor([width / 2.0, height / 2.0])
        linear = inverse * half.view(1, 1, 2) / half.view(1, 2, 1)  # D^-1 M D, D = diag(W/2, H/2)
        shift = torch.stack([shift_x, shift_y], -1) / half
        offset = -(linear @ shift.unsqueeze(-1))
        return torch.cat([linear, offset], -1)

    @staticmethod
    def warp(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
        """Resample each image through its own matrix (bilinear, zeros outside)."""
        grid = F.affine_grid(matrices, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class BatchNormalize:
    """The albumentations postprocess (ToRGB, Normalize, ToTensorV2) as one fused op on a float batch."""

    def __init__(self, postprocess: Sequence[A.BasicTransform]) -> None:
        self.to_rgb, scale, shift = 1, torch.ones(1), torch.zeros(1)
        for step in postprocess:
            if isinstance(step, A.ToRGB):
                self.to_rgb = step.num_output_channels
            elif isinstance(step, A.Normalize) and step.normalization == "standard":
                mean = torch.as_tensor(step.mean, dtype=torch.float64).flatten()
                std = torch.as_tensor(step.std, dtype=torch.float64).flatten()
                scale = 1.0 / (std * step.max_pixel_value)  # (x / max - mean) / std = x * scale + shift
                shift = -mean / std
            elif not isinstance(step, ToTensorV2):
                raise ValueError(
                    f"data.batch_augment can only finish batches with ToRGB, Normalize(normalization="
                    f"'standard') and ToTensorV2, but data.transforms.postprocess has {step!r}"
                )
        self.scale, self.shift = scale.float(), shift.float()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Float N x C x H x W in 0..255 -> the model's input (C grows to ToRGB's channels)."""
        if images.shape[1] == 1 and self.to_rgb > 1:
            images = images.expand(-1, self.to_rgb, -1, -1)
        channels = images.shape[1]
        scale = self.scale.to(images.device).expand(channels).view(1, -1, 1, 1)
        shift = self.shift.to(images.device).expand(channels).view(1, -1, 1, 1)
        return torch.addcmul(shift, images, scale)


class BatchStage:
    """What a train batch of uint8 images needs after transfer: augment, then the fused postprocess."""

    def __init__(self, augment: BatchAugment, postprocess: Sequence[A.BasicTransform], seed: int) -> None:
        self.augment, self.normalize, self.seed = augment, BatchNormalize(postprocess), seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x C x H x W on any device -> augmented, normalised float32 batch on that device."""
        if images.dtype != torch.uint8:
            raise TypeError(f"the batch stage expects uint8 images, got {images.dtype}")
        return self.normalize(self.augment(images.float(), self._generator(images.device)))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Each device's stream position, so a run resumed from a checkpoint continues the same draws."""
        return {str(device): generator.get_state() for device, generator in self._generators.items()}

    def load_state_dict(self, states: dict[str, torch.Tensor]) -> None:
        """Continue the streams `state_dict` captured (devices are matched by name, e.g. 'cpu', 'cuda:0')."""
        for device, state in states.items():
            self._generator(torch.device(device)).set_state(state)

    def _generator(self, device: torch.device) -> torch.Generator:
        """One seeded random stream per device, so runs repeat and DDP ranks (seed + rank) differ."""
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]


def _range(name: str, value: Sequence[float]) -> tuple[float, float]:
    """A (low, high) pair from YAML, checked."""
    low, high = (float(v) for v in value)
    if low > high:
        raise ValueError(f"{name} must be [low, high] with low <= high, got {list(value)}")
    return low, high


def _uniform(
    n: int, low: float, high: float, like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """n draws from U(low, high) on `like`'s device."""
    draws = torch.rand(n, generator=generator, device=like.device, dtype=torch.float32)
    return low + (high - low) * draws
