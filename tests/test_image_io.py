"""Every supported file becomes one HxW uint8 channel with the right range, or fails naming the file."""

import pickle
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pneumonia_cam.data.image_io import ImageReadError, read_grayscale


def _write(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image)
    return path


def test_8bit_gray_is_unchanged(tmp_path: Path) -> None:
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = read_grayscale(_write(tmp_path / "g.png", image))
    assert out.dtype == np.uint8 and out.shape == (16, 16)
    np.testing.assert_array_equal(out, image)


def test_16bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    image = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    out = read_grayscale(_write(tmp_path / "g16.png", image))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1, 128, 255]])


def test_colour_becomes_one_luminance_channel(tmp_path: Path) -> None:
    bgr = np.zeros((4, 4, 3), dtype=np.uint8)
    bgr[..., 2] = 255  # pure red in OpenCV's BGR order
    out = read_grayscale(_write(tmp_path / "red.png", bgr))
    assert out.shape == (4, 4)
    np.testing.assert_array_equal(out, round(0.299 * 255))


def test_alpha_is_dropped(tmp_path: Path) -> None:
    bgra = np.full((4, 4, 4), 200, dtype=np.uint8)
    bgra[..., 3] = 0  # fully transparent must not darken or change the gray value
    out = read_grayscale(_write(tmp_path / "a.png", bgra))
    assert out.shape == (4, 4)
    np.testing.assert_array_equal(out, 200)


def test_16bit_colour_is_scaled_then_gray(tmp_path: Path) -> None:
    out = read_grayscale(_write(tmp_path / "c16.png", np.full((3, 3, 3), 65535, dtype=np.uint16)))
    np.testing.assert_array_equal(out, 255)


def test_float_in_unit_range_is_scaled(tmp_path: Path) -> None:
    out = read_grayscale(_write(tmp_path / "f.tiff", np.array([[0.0, 0.5, 1.0]], dtype=np.float32)))
    np.testing.assert_array_equal(out, [[0, 128, 255]])


def test_float_out_of_range_raises(tmp_path: Path) -> None:
    path = _write(tmp_path / "f.tiff", np.array([[0.0, 2.0]], dtype=np.float32))
    with pytest.raises(ImageReadError, match=r"values outside \[0, 1\] for float image") as error:
        read_grayscale(path)
    assert str(path) in str(error.value)


def test_unsupported_dtype_raises(tmp_path: Path) -> None:
    path = _write(tmp_path / "i.tiff", np.array([[1, 2]], dtype=np.int32))
    with pytest.raises(ImageReadError, match="unsupported dtype int32"):
        read_grayscale(path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "is empty (0 bytes)"), (b"this is not an image", "cannot be decoded"), (None, "does not exist")],
)
def test_unreadable_files_name_file_and_reason(tmp_path: Path, content: bytes | None, reason: str) -> None:
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        read_grayscale(path)
    assert isinstance(error.value, ImageReadError)
    assert str(path) in str(error.value) and reason in str(error.value)
    assert error.value.reason == reason


def _write_dicom(path: Path, pixels: np.ndarray, photometric: str, bits: int, slope: float = 1.0) -> Path:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_maps_stored_bit_range_and_inverts_monochrome1(tmp_path: Path) -> None:
    pixels = np.array([[0, 2048, 4095]])
    mono2 = read_grayscale(_write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2", bits=12))
    mono1 = read_grayscale(_write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1", bits=12))
    np.testing.assert_array_equal(mono2, [[0, 128, 255]])
    np.testing.assert_array_equal(mono1, [[255, 127, 0]])


def test_dicom_rescale_slope_keeps_full_range(tmp_path: Path) -> None:
    out = read_grayscale(
        _write_dicom(tmp_path / "s.dcm", np.array([[0, 255]]), "MONOCHROME2", bits=8, slope=2.0)
    )
    np.testing.assert_array_equal(out, [[0, 255]])


def test_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(ImageReadError("/x/y.png", "cannot be decoded")))
    assert (error.path, error.reason) == ("/x/y.png", "cannot be decoded")
