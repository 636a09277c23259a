"""Pre-processing families: the input scaling each kind of pretrained weights was trained with.

Features of pretrained weights are only meaningful on inputs scaled as in their training: ImageNet models take
RGB with ImageNet mean / std, TorchXRayVision models one channel in [-1024, 1024], a quantized TFLite model
the affine scaling of its uint8 input tensor. Every value is expressed as Albumentations' Normalize ((x - mean
* max) / (std * max)) after grey is replicated to `channels`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import albumentations as A
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_PIXEL = 255.0


@dataclass(frozen=True)
class InputSpec:
    """Channels, normalisation and native resolution of a network's input (one pre-processing family)."""

    family: str
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    max_pixel_value: float = MAX_PIXEL
    native_size: int = 224  # the resolution the weights were trained at

    def as_dict(self) -> dict:
        """Plain values for configs and checkpoints (lists, not tuples)."""
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()
        }


IMAGENET = InputSpec("imagenet", 3, IMAGENET_MEAN, IMAGENET_STD)
# torchxrayvision.utils.normalize: (2 * x / 255 - 1) * 1024 on one channel, i.e. mean 0.5, std 1 / 2048
XRV = InputSpec("xrv", 1, (0.5,), (1.0 / 2048.0,))
FAMILIES = {spec.family: spec for spec in (IMAGENET, XRV)}


def quantized_input(scale: float, zero_point: int, native_size: int) -> InputSpec:
    """A uint8-input TFLite model's own scaling, (x - zero_point) * scale, as a Normalize on RGB."""
    if scale <= 0:
        raise ValueError(f"a quantized input needs a positive scale, got {scale}")
    mean = zero_point / MAX_PIXEL
    std = 1.0 / (scale * MAX_PIXEL)
    return InputSpec("tflite", 3, (mean,) * 3, (std,) * 3, MAX_PIXEL, native_size)


def transform_input(transform: A.Compose) -> tuple[int, np.ndarray, np.ndarray, float]:
    """(channels, mean, std, max_pixel_value) that an eval transform's ToRGB and Normalize produce."""
    channels, mean, std, max_value = 1, np.zeros(1), np.ones(1), 1.0
    for step in transform.transforms:
        if isinstance(step, A.ToRGB):
            channels = int(step.num_output_channels)
        elif isinstance(step, A.Normalize):
            mean, std = np.ravel(step.mean), np.ravel(step.std)
            max_value = float(step.max_pixel_value)
    return channels, mean, std, max_value


def check_transform(transform: A.Compose, spec: InputSpec, source: str) -> None:
    """Refuse an eval transform whose channels or scaling differ from what the weights were trained on."""
    channels, mean, std, max_value = transform_input(transform)
    found_shift, found_scale = (
        np.broadcast_to(mean * max_value, channels),
        np.broadcast_to(std * max_value, channels),
    )
    want_shift = np.broadcast_to(np.asarray(spec.mean) * spec.max_pixel_value, spec.channels)
    want_scale = np.broadcast_to(np.asarray(spec.std) * spec.max_pixel_value, spec.channels)
    if (
        channels != spec.channels
        or not np.allclose(found_shift, want_shift, rtol=1e-6)
        or not np.allclose(found_scale, want_scale, rtol=1e-6)
    ):
        raise ValueError(
            f"model.weights={source} needs the {spec.family!r} input ({spec.channels} channels, mean "
            f"{list(spec.mean)}, std {list(spec.std)} of {spec.max_pixel_value:g}), but data.transforms give "
            f"{channels} channels, mean {mean.tolist()}, std {std.tolist()} of {max_value:g}: leave "
            "data.transforms.postprocess to ${weights_input:...} (configs/data/transforms/xray.yaml)"
        )
