"""Augment and normalise whole uint8 batches in torch, on the batch's device (the Kornia / DALI pattern).

Per-image albumentations steps cost about as much as the decode they follow; on a batch of pre-processed
uint8 images the same random affine and brightness/contrast run as a few tensor ops (and free on a GPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
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
        gamma: Sequence[float] = (1.0, 1.0),
        gamma_p: float = 0.0,
        blur_sigma: Sequence[float] = (0.0, 0.0),
        blur_p: float = 0.0,
        noise_std: float = 0.0,
        noise_p: float = 0.0,
    ) -> None:
        self.rotate = _range("rotate", rotate)
        self.scale = _range("scale", scale)
        self.translate = _range("translate", translate)
        if self.scale[0] <= 0:
            raise ValueError(f"scale must be positive, got {list(scale)}")
        self.gamma, self.blur_sigma = _range("gamma", gamma), _range("blur_sigma", blur_sigma)
        if self.gamma[0] <= 0 or self.blur_sigma[0] < 0 or noise_std < 0:
            raise ValueError(
                f"gamma must be positive, blur_sigma and noise_std >= 0: {gamma}, {blur_sigma}, {noise_std}"
            )
        self.noise_std = float(noise_std)
        self.gamma_p, self.blur_p, self.noise_p = float(gamma_p), float(blur_p), float(noise_p)
        probabilities = {"affine_p": affine_p, "intensity_p": intensity_p, "gamma_p": gamma_p}
        for name, p in {**probabilities, "blur_p": blur_p, "noise_p": noise_p}.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        self.affine_p, self.intensity_p = float(affine_p), float(intensity_p)
        self.brightness, self.contrast = float(brightness), float(contrast)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Float images in 0..255 (any N x C x H x W) -> augmented float images, clipped to 0..255."""
        picked = _uniform(images.shape[0], 0.0, 1.0, images, generator) < self.affine_p
        out = images.clone()
        if picked.any():
            out[picked] = warp(images[picked], self.affine_matrices(images[picked], generator))
        picked = _uniform(images.shape[0], 0.0, 1.0, images, generator) < self.intensity_p
        if picked.any():
            n = int(picked.sum())
            alpha = 1.0 + _uniform(n, -self.contrast, self.contrast, images, generator)
            beta = 255.0 * _uniform(n, -self.brightness, self.brightness, images, generator)
            out[picked] = out[picked] * alpha.view(-1, 1, 1, 1) + beta.view(-1, 1, 1, 1)
        out.clamp_(0.0, 255.0)
        return self.exposure(out, generator) if self.gamma_p or self.blur_p or self.noise_p else out

    def exposure(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Gamma (255 (x / 255) ** g), Gaussian blur and Gaussian noise, each drawn only when its p is set.

        Drawing nothing for a disabled step keeps the random stream of configs without them unchanged.
        """
        n = images.shape[0]
        if self.gamma_p:
            picked = _uniform(n, 0.0, 1.0, images, generator) < self.gamma_p
            g = _uniform(int(picked.sum()), *self.gamma, images, generator).view(-1, 1, 1, 1)
            images[picked] = 255.0 * (images[picked] / 255.0) ** g
        if self.blur_p:
            picked = _uniform(n, 0.0, 1.0, images, generator) < self.blur_p
            sigmas = _uniform(int(picked.sum()), *self.blur_sigma, images, generator)
            for index, sigma in zip(picked.nonzero().flatten().tolist(), sigmas.tolist(), strict=True):
                if sigma > 0:
                    images[index] = gaussian_blur(images[index], sigma)
        if self.noise_p:
            picked = _uniform(n, 0.0, 1.0, images, generator) < self.noise_p
            std = 255.0 * _uniform(int(picked.sum()), 0.0, self.noise_std, images, generator).view(
                -1, 1, 1, 1
            )
            noise = torch.randn(images[picked].shape, generator=generator, device=images.device)
            images[picked] = images[picked] + std * noise
        return images.clamp_(0.0, 255.0)

    def affine_matrices(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """N x 2 x 3 output->input maps of random affines (see `affine_theta`)."""
        n, _, height, width = images.shape
        angle = _uniform(n, *self.rotate, images, generator)
        zoom = _uniform(n, *self.scale, images, generator)
        shift_x = _uniform(n, *self.translate, images, generator)
        shift_y = _uniform(n, *self.translate, images, generator)
        return affine_theta(angle, zoom, shift_x, shift_y, height, width)


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


def black_level(transform: A.Compose) -> list[float]:
    """The model input of a black pixel: the batch stage's zero fill after ToRGB and Normalize."""
    tail = [step for step in transform.transforms if isinstance(step, (A.ToRGB, A.Normalize, ToTensorV2))]
    return BatchNormalize(tail)(torch.zeros(1, 1, 1, 1)).flatten().tolist()


class MixBatch:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a batch with its reverse, as in timm's Mixup.

    With probability `p` a batch is mixed: by CutMix with probability `switch_prob` when both are enabled,
    else by the enabled one; lambda ~ Beta(alpha, alpha) (CutMix: corrected to the pasted box's area). Targets
    become lambda x one-hot + (1 - lambda) x the reversed batch's one-hot.
    """

    def __init__(
        self, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, p: float = 1.0, switch_prob: float = 0.5
    ) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0 or (mixup_alpha == 0 and cutmix_alpha == 0):
            raise ValueError(f"mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}: enable one (> 0)")
        for name, value in (("p", p), ("switch_prob", switch_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.p, self.switch_prob = float(p), float(switch_prob)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, N x K soft targets) of float images and integer labels."""
        targets = F.one_hot(labels.long(), num_classes).float()
        draws = _uniform(2, 0.0, 1.0, images, generator).tolist()
        if draws[0] >= self.p:
            return images, targets
        cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or draws[1] < self.switch_prob)
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=images.device))
        rng = np.random.default_rng(seed)
        lam = float(rng.beta(alpha, alpha))
        other = images.flip(0)
        if cutmix:
            height, width = images.shape[-2:]
            (top, bottom), (left, right) = cut_box(height, width, lam, rng)
            images = images.clone()
            images[..., top:bottom, left:right] = other[..., top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (height * width)
        else:
            images = lam * images + (1.0 - lam) * other
        return images, lam * targets + (1.0 - lam) * targets.flip(0)


def cut_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[tuple[int, int], ...]:
    """((top, bottom), (left, right)) of a box of about (1 - lam) of the image, centred anywhere, clipped."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    rows = (int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height)))
    cols = (int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width)))
    return rows, cols


class BatchStage:
    """What a train batch of uint8 images needs after transfer: augment, mix (optional), fused postprocess."""

    def __init__(
        self,
        augment: BatchAugment,
        postprocess: Sequence[A.BasicTransform],
        seed: int,
        mix: MixBatch | None = None,
        num_classes: int = 2,
    ) -> None:
        self.augment, self.normalize, self.seed = augment, BatchNormalize(postprocess), seed
        self.mix, self.num_classes = mix, num_classes
        self._generators: dict[torch.device, torch.Generator] = {}

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 N x C x H x W -> (augmented, normalised float32 batch, labels or soft targets)."""
        if images.dtype != torch.uint8:
            raise TypeError(f"the batch stage expects uint8 images, got {images.dtype}")
        generator = self._generator(images.device)
        out = self.augment(images.float(), generator)
        if self.mix is not None:
            out, labels = self.mix(out, labels, self.num_classes, generator)
        return self.normalize(out), labels

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


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """C x H x W blurred by a separable Gaussian of `sigma` px (kernel radius 3 sigma), edges replicated."""
    radius = max(1, int(3.0 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-(x**2) / (2.0 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = image.shape[0]
    padded = F.pad(image[None], (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)[0]


def affine_theta(
    degrees: torch.Tensor,
    zoom: torch.Tensor,
    shift_x: torch.Tensor,
    shift_y: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """N x 2 x 3 output->input maps in grid_sample's normalised coordinates, built in pixel units.

    Forward: p_out = s R(-angle) p_in + t (pixels about the centre, y down, so a positive angle turns the
    image counter-clockwise as OpenCV does; shifts are fractions of the width and height); grid_sample wants
    the inverse, and its normalised coordinates scale x and y by W/2 and H/2, which a rotation does not
    commute with.
    """
    angle = torch.deg2rad(degrees)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    inverse = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # R(a)/s
    half = degrees.new_tensor([width / 2.0, height / 2.0])
    linear = inverse * half.view(1, 1, 2) / half.view(1, 2, 1)  # D^-1 M D, D = diag(W/2, H/2)
    shift = torch.stack([shift_x * width, shift_y * height], -1) / half
    offset = -(linear @ shift.unsqueeze(-1))
    return torch.cat([linear, offset], -1)


def warp(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Resample each image through its own output->input matrix (bilinear, zeros outside).

    The grid is affine_grid's (align_corners=False) written out, so that ONNX opset 17 can export it.
    """
    height, width = images.shape[-2:]
    xs = (torch.arange(width, device=images.device, dtype=matrices.dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, device=images.device, dtype=matrices.dtype) * 2 + 1) / height - 1
    m = matrices.view(-1, 2, 3, 1, 1)
    grid = m[:, :, 0] * xs.view(1, 1, 1, -1) + m[:, :, 1] * ys.view(1, 1, -1, 1) + m[:, :, 2]
    return F.grid_sample(
        images, grid.permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros", align_corners=False
    )


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
