"""Read any supported X-ray file as one HxW uint8 channel, so every source feeds the same pipeline."""

from __future__ import annotations

import io
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from pneumonia_cam.data.dicom import DEFAULT_POLICY, DicomPolicy, read_dicom
from pneumonia_cam.data.errors import ImageReadError, UnsupportedFormatError

__all__ = ["DicomPolicy", "ImageReadError", "UnsupportedFormatError", "decode_grayscale", "read_grayscale"]

DICOM_SUFFIXES = (".dcm", ".dicom")
_CHANNEL_CONVERSIONS = {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
DICOM_PREAMBLE = 128  # 'DICM' follows the 128-byte preamble of a DICOM Part 10 file
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic) carry the image size
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# markers without a length field: TEM, RSTn, SOI, EOI
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xDA)}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # IHDR colour type -> samples per pixel (3: palette)


@dataclass(frozen=True)
class ImageHeader:
    """What the header of an encoded image says, read before any pixel is decoded (size limits, reports)."""

    format: str  # png | jpeg | dicom
    width: int
    height: int
    photometric_interpretation: str | None = None
    transfer_syntax: str | None = None  # DICOM transfer syntax UID
    transfer_syntax_name: str | None = None
    samples_per_pixel: int = 1
    bits: int = 8  # bits per sample as stored (PNG bit depth, JPEG precision, DICOM BitsStored)
    has_pixel_data: bool = True
    frames: int = 1

    @property
    def pixels(self) -> int:
        """Pixel count of all frames: what a decode would allocate per sample."""
        return self.width * self.height * self.frames

    def as_dict(self) -> dict:
        """JSON-ready fields."""
        return asdict(self)


def sniff_format(data: bytes) -> str | None:
    """png | jpeg | dicom from the magic bytes (never the name or content type), else None."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if data[DICOM_PREAMBLE : DICOM_PREAMBLE + 4] == b"DICM":
        return "dicom"
    return None


def read_header(data: bytes, source: str = "upload") -> ImageHeader:
    """Format and size from the header only, so oversized images are refused before any allocation."""
    kind = _require_format(data, source)
    header = {"png": _png_header, "jpeg": _jpeg_header, "dicom": _dicom_header}[kind](data, source)
    if header.width <= 0 or header.height <= 0:
        raise ImageReadError(source, f"header gives an empty size {header.width}x{header.height}")
    return header


def _require_format(data: bytes, source: str) -> str:
    """The sniffed format; empty or unrecognised bytes are refused with the reason."""
    if not data:
        raise ImageReadError(source, "is empty (0 bytes)")
    kind = sniff_format(data)
    if kind is None:
        raise UnsupportedFormatError(source, "is not a PNG, JPEG or DICOM file (by its magic bytes)")
    return kind


def _png_header(data: bytes, source: str) -> ImageHeader:
    """Width and height from the IHDR chunk, which the PNG standard puts first."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageReadError(source, "truncated PNG: no IHDR chunk")
    width, height = struct.unpack(">II", data[16:24])
    channels = _PNG_CHANNELS.get(data[25], 1) if len(data) > 25 else 1
    return ImageHeader("png", width, height, samples_per_pixel=channels, bits=data[24])


def _jpeg_header(data: bytes, source: str) -> ImageHeader:
    """Width and height from the first start-of-frame segment, skipping the segments before it."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ImageReadError(source, f"corrupt JPEG: no marker at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if marker in _JPEG_SOF:
            if position + 10 > len(data):
                break
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return ImageHeader(
                "jpeg", width, height, samples_per_pixel=data[position + 9], bits=data[position + 4]
            )
        if marker == 0xDA:  # start of scan before any frame header
            break
        position += 2 + length
    raise ImageReadError(source, "truncated or corrupt JPEG: no frame header")


def _dicom_header(data: bytes, source: str) -> ImageHeader:
    """Size, photometric interpretation and transfer syntax; large values (pixels) are left unread."""
    import pydicom  # deferred: only DICOM users pay for the import
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), defer_size="1 KB")
        syntax = dataset.file_meta.get("TransferSyntaxUID")
        rows, columns = dataset.get("Rows"), dataset.get("Columns")
        header = ImageHeader(
            "dicom",
            width=int(columns or 0),
            height=int(rows or 0),
            photometric_interpretation=str(dataset.get("PhotometricInterpretation", "")) or None,
            transfer_syntax=str(syntax) if syntax else None,
            transfer_syntax_name=syntax.name if syntax else None,
            samples_per_pixel=int(dataset.get("SamplesPerPixel", 1) or 1),
            bits=int(dataset.get("BitsStored", 8) or 8),
            has_pixel_data="PixelData" in dataset,
            frames=int(dataset.get("NumberOfFrames", 1) or 1),
        )
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError, struct.error) as error:
        raise ImageReadError(source, f"unreadable DICOM header ({type(error).__name__})") from error
    if not header.has_pixel_data:
        raise ImageReadError(source, "DICOM without PixelData (not an image)")
    if rows is None or columns is None:
        raise ImageReadError(source, "DICOM without Rows/Columns")
    return header


def decode_grayscale(data: bytes, source: str = "upload", dicom: DicomPolicy = DEFAULT_POLICY) -> np.ndarray:
    """Decode PNG, JPEG or DICOM bytes into HxW uint8 with the conversions `read_grayscale` applies."""
    if _require_format(data, source) == "dicom":
        return _read_dicom(io.BytesIO(data), source, dicom)
    return _decode_raster(np.frombuffer(data, dtype=np.uint8), source)


def read_grayscale(path: str | os.PathLike, dicom: DicomPolicy = DEFAULT_POLICY) -> np.ndarray:
    """Decode an image or DICOM file into HxW uint8; raise ImageReadError with the reason otherwise."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "does not exist")
    if not path.is_file():
        raise ImageReadError(path, "is not a file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "is empty (0 bytes)")
    if path.suffix.lower() in DICOM_SUFFIXES:
        return _read_dicom(path, path, dicom)
    return _decode_raster(np.fromfile(path, dtype=np.uint8), path)


def _decode_raster(buffer: np.ndarray, source: str | os.PathLike) -> np.ndarray:
    """PNG/JPEG/... bytes to HxW uint8; imdecode behaves like cv2.imread(IMREAD_UNCHANGED) on any path."""
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(source, "cannot be decoded")
    return to_gray_uint8(image, source)


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


def _read_dicom(
    file: str | os.PathLike | BinaryIO, path: str | os.PathLike, policy: DicomPolicy
) -> np.ndarray:
    """The DICOM reader's 0..1 grey (or colour) image as HxW uint8; see dicom.py for the display pipeline."""
    image = read_dicom(file, path, policy)
    return to_gray_uint8(image, path, rgb=True) if image.ndim == 3 else _to_uint8(image, path)
