"""DICOM radiographs as a viewer displays them: modality LUT, then VOI, then polarity, scaled to 0..1.

One reader for training, eval, predict and the server. `DicomPolicy(voi="window")`, the default, applies
through `pydicom.pixels` the Modality LUT (Modality LUT Sequence, or Rescale Slope/Intercept), then the VOI
(VOI LUT Sequence, or Window Center/Width with VOILUTFunction LINEAR, LINEAR_EXACT or SIGMOID; `window`
picks one when there are several), scales by that VOI's output range, and inverts MONOCHROME1 (or
PresentationLUTShape INVERSE) last, so a window given in stored values is applied before the polarity flip.
A file without any VOI is scaled by its modality output range. `voi="linear"` keeps the earlier mapping:
the stored bit range (after rescale) linearly to 0..1, then MONOCHROME1 inverted.
Multi-frame files give their first frame and colour files their luminance (documented; the server refuses
both); files without pixel data (SR, presentation states) and transfer syntaxes without an installed
decoder get errors that say so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from pneumonia_cam.data.errors import ImageReadError

if TYPE_CHECKING:
    from pydicom import Dataset

VOI_MODES = ("window", "linear")

# packages with MIT/BSD-compatible licences that decode each compressed transfer syntax (pylibjpeg-libjpeg,
# GPLv3, is never suggested); RLE needs none: pydicom decodes it itself
DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "pillow or python-gdcm",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "python-gdcm",  # JPEG extended (12-bit)
    "1.2.840.10008.1.2.4.57": "python-gdcm",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "python-gdcm",  # JPEG lossless, first-order prediction
    "1.2.840.10008.1.2.4.80": "pyjpegls or python-gdcm",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls or python-gdcm",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg, pillow or python-gdcm",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg, pillow or python-gdcm",  # JPEG 2000
}


@dataclass(frozen=True)
class DicomPolicy:
    """How stored DICOM values become grey levels (the `dicom:` block of a data config)."""

    voi: str = (
        "window"  # window: modality LUT -> VOI -> polarity; linear: the stored bit range, then polarity
    )
    window: int = 0  # which VOI LUT / Window Center-Width pair when a file has several
    prefer_lut: bool = True  # a VOI LUT Sequence wins over Window Center/Width when a file has both

    def __post_init__(self) -> None:
        if self.voi not in VOI_MODES:
            raise ValueError(f"dicom.voi must be one of {list(VOI_MODES)}, got {self.voi!r}")
        if self.window < 0:
            raise ValueError(f"dicom.window must be >= 0, got {self.window}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> DicomPolicy:
        """The policy of a data config's `dicom:` block (absent in older checkpoints: the default)."""
        return cls(**dict(config or {}))


DEFAULT_POLICY = DicomPolicy()


def read_dicom(
    file: str | os.PathLike | BinaryIO, path: str | os.PathLike, policy: DicomPolicy = DEFAULT_POLICY
) -> np.ndarray:
    """HxW float64 in 0..1 (or HxWx3 for colour); `file` is a path or file-like, `path` names it in errors."""
    import pydicom  # deferred: only DICOM users pay for the import
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(file)
    except (InvalidDicomError, OSError, ValueError, EOFError) as error:
        raise ImageReadError(
            path, f"is not a readable DICOM file ({type(error).__name__}: {error})"
        ) from error
    pixels = _pixels(dataset, path)
    samples = int(dataset.get("SamplesPerPixel", 1))
    if pixels.ndim == (3 if samples > 1 else 2) + 1:
        pixels = pixels[0]  # multi-frame: the first frame is the radiograph
    if samples > 1:
        return pixels
    if policy.voi == "linear":
        low, high = stored_range(dataset)
        scaled = _rescale(pixels, dataset, path, low, high)
    else:
        scaled = _display_values(pixels, dataset, path, policy)
    if _inverted(dataset):
        scaled = 1.0 - scaled
    return scaled


def _pixels(dataset: Dataset, path: str | os.PathLike) -> np.ndarray:
    """Decode the pixel data through pydicom.pixels, naming what is missing when it cannot."""
    if "PixelData" not in dataset:
        kind = getattr(dataset.get("SOPClassUID"), "name", None) or str(dataset.get("Modality", "unknown"))
        raise ImageReadError(path, f"has no pixel data ({kind}): not an image")
    syntax = getattr(dataset, "file_meta", {}).get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed and not has_decoder(syntax):
        packages = DECODER_PACKAGES.get(str(syntax), "a pydicom pixel-data plugin")
        raise ImageReadError(
            path,
            f"uses transfer syntax {syntax.name} ({syntax}), which no installed package decodes: "
            f"install {packages}",
        )
    try:
        return np.asarray(dataset.pixel_array)
    except (RuntimeError, ValueError, NotImplementedError, AttributeError, KeyError) as error:
        raise ImageReadError(path, f"cannot be decoded ({type(error).__name__}: {error})") from error


def has_decoder(syntax: Any) -> bool:
    """Whether pydicom has a working decoder plugin for a compressed transfer syntax."""
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(syntax).is_available)
    except NotImplementedError:
        return False


def _display_values(pixels: np.ndarray, dataset: Dataset, path: str | os.PathLike, policy: DicomPolicy):
    """Modality LUT, then the chosen VOI, scaled by that VOI's output range to 0..1."""
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

    values = apply_modality_lut(pixels, dataset).astype(np.float64)
    has_lut = _has_voi_lut(dataset)
    has_window = dataset.get("WindowCenter") is not None and dataset.get("WindowWidth") is not None
    if has_lut and (policy.prefer_lut or not has_window):
        _check_index(len(dataset.VOILUTSequence), policy.window, "VOI LUT Sequence items", path)
        bits = int(dataset.VOILUTSequence[policy.window].LUTDescriptor[2])
        return apply_voi(values, dataset, policy.window).astype(np.float64) / (2.0**bits - 1)
    if has_window:
        centers = dataset["WindowCenter"]
        _check_index(centers.VM, policy.window, "Window Center/Width pairs", path)
        if float(_nth(dataset["WindowWidth"], policy.window)) <= 0:
            raise ImageReadError(path, "has a Window Width <= 0")
        low, high = _windowing_range(dataset)
        windowed = apply_windowing(values.copy(), dataset, policy.window)
        return np.clip((windowed - low) / (high - low), 0.0, 1.0)
    low, high = _modality_range(dataset)
    return _scale(values, path, low, high)


def _has_voi_lut(dataset: Dataset) -> bool:
    """A VOI LUT Sequence whose first item has a descriptor and data (what pydicom accepts)."""
    sequence = dataset.get("VOILUTSequence")
    return bool(sequence) and all(sequence[0].get(key) is not None for key in ("LUTDescriptor", "LUTData"))


def _nth(element: Any, index: int) -> Any:
    """Value `index` of a possibly multi-valued element."""
    return element.value[index] if element.VM > 1 else element.value


def _check_index(count: int, index: int, what: str, path: str | os.PathLike) -> None:
    if index >= count:
        raise ImageReadError(path, f"has {count} {what}; dicom.window={index} asks for one more than that")


def stored_range(dataset: Dataset) -> tuple[float, float]:
    """The representable stored-value range from BitsStored and PixelRepresentation (signed or unsigned)."""
    bits = int(dataset.get("BitsStored", 8))
    if int(dataset.get("PixelRepresentation", 0)) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _modality_range(dataset: Dataset) -> tuple[float, float]:
    """The range the Modality LUT maps the stored range to (a LUT's entry bits, or the rescaled range)."""
    if dataset.get("ModalityLUTSequence"):
        return 0.0, 2.0 ** int(dataset.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    low, high = stored_range(dataset)
    slope, intercept = _rescale_terms(dataset)
    return tuple(sorted((low * slope + intercept, high * slope + intercept)))


def _windowing_range(dataset: Dataset) -> tuple[float, float]:
    """The output range pydicom's apply_windowing maps to (its y_min, y_max)."""
    if dataset.get("ModalityLUTSequence"):
        return _modality_range(dataset)
    low, high = stored_range(dataset)
    if dataset.get("RescaleSlope") is not None and dataset.get("RescaleIntercept") is not None:
        slope, intercept = float(dataset.RescaleSlope), float(dataset.RescaleIntercept)
        return low * slope + intercept, high * slope + intercept
    return low, high


def _rescale_terms(dataset: Dataset) -> tuple[float, float]:
    return float(dataset.get("RescaleSlope", 1.0) or 1.0), float(dataset.get("RescaleIntercept", 0.0) or 0.0)


def _rescale(pixels: np.ndarray, dataset: Dataset, path: str | os.PathLike, low: float, high: float):
    """The linear policy: rescale slope/intercept, then the stored range (rescaled too) to 0..1."""
    slope, intercept = _rescale_terms(dataset)
    low, high = sorted((low * slope + intercept, high * slope + intercept))
    return _scale(pixels.astype(np.float64) * slope + intercept, path, low, high)


def _scale(values: np.ndarray, path: str | os.PathLike, low: float, high: float) -> np.ndarray:
    if values.min() < low or values.max() > high:
        raise ImageReadError(path, f"values outside the stored bit range [{low:g}, {high:g}]")
    return (values - low) / (high - low)


def _inverted(dataset: Dataset) -> bool:
    """MONOCHROME1 (high values are dark) or an INVERSE presentation LUT: flip after the VOI."""
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    return photometric == "MONOCHROME1" or str(dataset.get("PresentationLUTShape", "")).upper() == "INVERSE"


def header_fields(path: str | os.PathLike) -> dict[str, str]:
    """The only header values a record takes from a DICOM: PatientID (to group splits) and ViewPosition
    (PA/AP/LL, to filter on). Names, dates and other identifiers never leave the reader."""
    import pydicom

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID", "ViewPosition"])
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as error:
        reason = f"has no readable DICOM header ({type(error).__name__}: {error})"
        raise ImageReadError(path, reason) from error
    return {
        "patient_id": str(dataset.get("PatientID", "") or ""),
        "view": str(dataset.get("ViewPosition", "") or "").strip().upper(),
    }
