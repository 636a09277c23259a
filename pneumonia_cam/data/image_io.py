"""Read any supported X-ray file as one HxW uint8 channel, so every source feeds the same pipeline."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from pydicom import Dataset

DICOM_SUFFIXES = (".dcm", ".dicom")
_CHANNEL_CONVERSIONS = {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}


class ImageReadError(ValueError):
    """An image that cannot become a grayscale uint8 array; names the file so bad data is easy to find."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"Cannot read image {self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Keep the two-argument constructor picklable, so errors survive DataLoader worker processes."""
        return type(self), (self.path, self.reason)


def read_grayscale(path: str | os.PathLike) -> np.ndarray:
    """Decode an image or DICOM file into HxW uint8; raise ImageReadError with the reason otherwise."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "does not exist")
    if not path.is_file():
        raise ImageReadError(path, "is not a file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "is empty (0 bytes)")
    if path.suffix.lower() in DICOM_SUFFIXES:
        return _read_dicom(path)
    # imdecode of the raw bytes behaves like cv2.imread(IMREAD_UNCHANGED) but also handles non-ASCII paths.
    image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(path, "cannot be decoded")
    return to_gray_uint8(image, path)


def to_gray_uint8(image: np.ndarray, path: str | os.PathLike, rgb: bool = False) -> np.ndarray:
    """Bring a decoded array of any supported dtype and channel layout to HxW uint8 (BGR order unless rgb)."""
    return _to_single_channel(_to_uint8(image, path), path, rgb)


def _to_uint8(image: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Scale the full range of the dtype to 0..255 (uint16 is rescaled, never clipped)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return np.rint(image.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)) or image.min() < 0.0 or image.max() > 1.0:
            raise ImageReadError(path, "values outside [0, 1] for float image")
        return np.rint(image.astype(np.float64) * 255.0).astype(np.uint8)
    raise ImageReadError(path, f"unsupported dtype {image.dtype}")


def _to_single_channel(image: np.ndarray, path: str | os.PathLike, rgb: bool) -> np.ndarray:
    """Collapse gray, colour and colour+alpha layouts to one luminance channel (alpha is dropped)."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[2] not in _CHANNEL_CONVERSIONS:
        raise ImageReadError(path, f"unsupported image shape {image.shape}")
    if rgb:
        image = image[:, :, [2, 1, 0, *range(3, image.shape[2])]]
    return cv2.cvtColor(np.ascontiguousarray(image), _CHANNEL_CONVERSIONS[image.shape[2]])


def _read_dicom(path: Path) -> np.ndarray:
    """Apply rescale slope/intercept, map the stored bit range to 0..1 and invert MONOCHROME1."""
    import pydicom  # deferred: only DICOM users pay for the import

    try:
        dataset = pydicom.dcmread(path)
        pixels = np.asarray(dataset.pixel_array)
    except Exception as error:
        raise ImageReadError(path, f"cannot be decoded ({type(error).__name__}: {error})") from error
    samples = int(dataset.get("SamplesPerPixel", 1))
    if pixels.ndim == (3 if samples > 1 else 2) + 1:
        pixels = pixels[0]  # multi-frame: the first frame is the radiograph
    if samples > 1:
        return to_gray_uint8(pixels, path, rgb=True)
    slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
    low, high = _stored_range(dataset)
    low, high = sorted((low * slope + intercept, high * slope + intercept))
    values = pixels.astype(np.float64) * slope + intercept
    if values.min() < low or values.max() > high:
        raise ImageReadError(path, f"values outside the stored bit range [{low:g}, {high:g}]")
    scaled = (values - low) / (high - low)
    if str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        scaled = 1.0 - scaled
    return _to_uint8(scaled, path)


def _stored_range(dataset: Dataset) -> tuple[float, float]:
    """The representable pixel range from BitsStored and PixelRepresentation (signed or unsigned)."""
    bits = int(dataset.get("BitsStored", 8))
    if int(dataset.get("PixelRepresentation", 0)) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1
