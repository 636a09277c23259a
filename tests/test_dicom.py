"""DICOM as viewers show it: modality LUT, VOI (window or LUT), then polarity, each checked by hand."""

from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from data_helpers import dicom_object, make_dicom
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from pneumonia_cam.data.dicom import DicomPolicy, read_dicom
from pneumonia_cam.data.image_io import ImageReadError, decode_grayscale, read_grayscale

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom_samples"
TWELVE_BIT = np.array([[0, 1000, 1048, 1500, 2000], [2047, 2500, 3000, 3047, 4095]])
# codecs need more than a few pixels: a 64 x 64 12-bit image (a smooth ramp plus noise)
RADIOGRAPH = np.add.outer(np.arange(64), np.arange(64)) * 30 + np.random.default_rng(1).integers(
    0, 200, (64, 64)
)


def as_uint8(values: np.ndarray) -> np.ndarray:
    """What the reader makes of 0..1 values."""
    return np.rint(np.asarray(values, dtype=np.float64) * 255.0).astype(np.uint8)


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1, LINEAR, to 0..1."""
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    inside = ((x - (center - 0.5)) / (width - 1) + 0.5).clip(0, 1)
    return np.where(x <= low, 0.0, np.where(x > high, 1.0, inside))


def test_twelve_bit_linear_window_by_hand(tmp_path):
    """WC 2048 / WW 2000: 1048 and below black, above 3047 white, (x - 2047.5) / 1999 + 0.5 between."""
    path = make_dicom(tmp_path / "w.dcm", TWELVE_BIT, WindowCenter=2048, WindowWidth=2000)
    got = read_grayscale(path)
    expected = linear_window(TWELVE_BIT.astype(float), 2048, 2000)
    assert expected[0, 3] == pytest.approx((1500 - 2047.5) / 1999 + 0.5)
    np.testing.assert_array_equal(got, as_uint8(expected))
    assert got[0, 2] == 0 and got[1, 3] == 255 and got[1, 4] == 255
    # the policy switch keeps the old reader: the 12-bit range, ignoring the window
    linear = read_grayscale(path, DicomPolicy(voi="linear"))
    np.testing.assert_array_equal(linear, as_uint8(TWELVE_BIT / 4095))


def test_linear_exact_and_sigmoid_by_hand(tmp_path):
    x = TWELVE_BIT.astype(float)
    exact = make_dicom(
        tmp_path / "e.dcm", TWELVE_BIT, WindowCenter=2000, WindowWidth=1000, VOILUTFunction="LINEAR_EXACT"
    )
    np.testing.assert_array_equal(read_grayscale(exact), as_uint8(((x - 2000) / 1000 + 0.5).clip(0, 1)))
    sigmoid = make_dicom(
        tmp_path / "s.dcm", TWELVE_BIT, WindowCenter=2000, WindowWidth=1000, VOILUTFunction="SIGMOID"
    )
    np.testing.assert_array_equal(read_grayscale(sigmoid), as_uint8(1 / (1 + np.exp(-4 * (x - 2000) / 1000))))


def test_voi_lut_sequence_by_hand(tmp_path):
    """4 entries from stored value 1000, 8-bit output: below the first entry -> entry 0, above -> the last."""
    item = pydicom.Dataset()
    item.add_new(0x00283002, "US", [4, 1000, 8])  # LUT Descriptor: entries, first stored value, bits
    item.add_new(0x00283006, "US", [0, 100, 200, 255])  # LUT Data
    pixels = np.array([[999, 1000, 1001, 1002, 1003, 1010]])
    path = make_dicom(
        tmp_path / "lut.dcm", pixels, VOILUTSequence=pydicom.Sequence([item]), WindowCenter=0, WindowWidth=2
    )
    np.testing.assert_array_equal(read_grayscale(path), [[0, 0, 100, 200, 255, 255]])
    # the LUT wins over the window unless the policy prefers the window (WC 0 / WW 2: all of these are white)
    assert (read_grayscale(path, DicomPolicy(prefer_lut=False)) == 255).all()


def test_monochrome1_is_inverted_after_the_window(tmp_path):
    """The window is in stored values; inverting first would window the wrong end of the range."""
    path = make_dicom(
        tmp_path / "m1.dcm",
        TWELVE_BIT,
        PhotometricInterpretation="MONOCHROME1",
        WindowCenter=1500,
        WindowWidth=1001,
    )
    expected = 1.0 - linear_window(TWELVE_BIT.astype(float), 1500, 1001)
    np.testing.assert_array_equal(read_grayscale(path), as_uint8(expected))
    assert read_grayscale(path)[0, 0] == 255  # stored 0 is white in MONOCHROME1
    inverse = make_dicom(tmp_path / "inv.dcm", TWELVE_BIT, PresentationLUTShape="INVERSE")
    np.testing.assert_array_equal(read_grayscale(inverse), as_uint8(1.0 - TWELVE_BIT / 4095))


def test_rescale_then_window_in_output_units(tmp_path):
    """Slope 2, intercept -1024 (HU-like): the window WC 0 / WW 2000 applies to 2x - 1024, LINEAR_EXACT."""
    stored = np.array([[0, 12, 512, 1012, 2000]])
    path = make_dicom(
        tmp_path / "r.dcm",
        stored,
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=0,
        WindowWidth=2000,
        VOILUTFunction="LINEAR_EXACT",
    )
    hu = stored * 2.0 - 1024
    np.testing.assert_array_equal(read_grayscale(path), as_uint8((hu / 2000 + 0.5).clip(0, 1)))


def test_signed_pixels_with_window(tmp_path):
    pixels = np.array([[-1000, -500, 0, 500, 1000]])
    path = make_dicom(
        tmp_path / "sg.dcm",
        pixels,
        bits=16,
        signed=True,
        WindowCenter=0,
        WindowWidth=2000,
        VOILUTFunction="LINEAR_EXACT",
    )
    np.testing.assert_array_equal(read_grayscale(path), [[0, 64, 128, 191, 255]])
    no_window = make_dicom(tmp_path / "sn.dcm", pixels, bits=16, signed=True)
    np.testing.assert_array_equal(read_grayscale(no_window), as_uint8((pixels + 32768) / 65535))


def test_which_window_is_a_policy_choice(tmp_path):
    path = make_dicom(tmp_path / "two.dcm", TWELVE_BIT, WindowCenter=[2048, 1000], WindowWidth=[2000, 500])
    x = TWELVE_BIT.astype(float)
    np.testing.assert_array_equal(read_grayscale(path), as_uint8(linear_window(x, 2048, 2000)))
    second = read_grayscale(path, DicomPolicy(window=1))
    np.testing.assert_array_equal(second, as_uint8(linear_window(x, 1000, 500)))
    with pytest.raises(ImageReadError, match=r"two.dcm.*has 2 Window Center/Width pairs; dicom.window=2"):
        read_grayscale(path, DicomPolicy(window=2))
    with pytest.raises(ValueError, match=r"dicom\.voi must be one of"):
        DicomPolicy(voi="auto")


def test_without_voi_the_modality_range_is_used(tmp_path):
    path = make_dicom(tmp_path / "plain.dcm", TWELVE_BIT)
    np.testing.assert_array_equal(read_grayscale(path), as_uint8(TWELVE_BIT / 4095))


def test_non_image_dicom_is_named(tmp_path):
    ds = dicom_object("1.2.840.10008.5.1.4.1.1.88.11", "SR")  # Basic Text SR
    ds.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    with pytest.raises(
        ImageReadError, match=r"sr.dcm: has no pixel data \(Basic Text SR Storage\): not an image"
    ):
        read_grayscale(tmp_path / "sr.dcm")


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda uid: uid.name)
def test_lossless_compressed_syntaxes_read_like_uncompressed(tmp_path, syntax):
    """Encoded here with pydicom's encoders (RLE: pydicom; JPEG-LS: pyjpegls; JPEG 2000: openjpeg)."""
    plain = make_dicom(tmp_path / "plain.dcm", RADIOGRAPH, WindowCenter=2048, WindowWidth=2000)
    ds = pydicom.dcmread(plain)
    ds.compress(syntax)
    ds.save_as(tmp_path / "c.dcm")
    assert pydicom.dcmread(tmp_path / "c.dcm").file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_grayscale(tmp_path / "c.dcm"), read_grayscale(plain))
    decoded = decode_grayscale((tmp_path / "c.dcm").read_bytes(), "upload.dcm")  # the server's path
    np.testing.assert_array_equal(decoded, read_grayscale(plain))


def test_jpeg_baseline_reads_like_its_jpeg(tmp_path):
    """8-bit JPEG baseline (lossy): the DICOM's pixels are what a JPEG decoder makes of the same stream."""
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (64, 48), dtype=np.uint8), (7, 7), 2)
    stream = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    path = make_dicom(tmp_path / "j.dcm", image, bits=8)
    ds = pydicom.dcmread(path)
    ds.BitsAllocated = 8
    ds.PixelData = encapsulate([stream])
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    reference = cv2.imdecode(np.frombuffer(stream, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert np.abs(read_grayscale(path).astype(int) - reference).max() <= 1


def test_missing_decoder_names_the_syntax_and_the_package(tmp_path, monkeypatch):
    plain = make_dicom(tmp_path / "plain.dcm", RADIOGRAPH)
    ds = pydicom.dcmread(plain)
    ds.compress(JPEGLSLossless)
    ds.save_as(tmp_path / "ls.dcm")

    class Unavailable:
        is_available = False

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(ImageReadError) as error:
        read_grayscale(tmp_path / "ls.dcm")
    assert str(error.value) == (
        f"Cannot read image {tmp_path / 'ls.dcm'}: uses transfer syntax JPEG-LS Lossless Image Compression "
        "(1.2.840.10008.1.2.4.80), which no installed package decodes: install pyjpegls or python-gdcm"
    )


def test_colour_and_multi_frame_follow_the_documented_policy(tmp_path):
    """Colour: luminance of RGB; multi-frame: the first frame."""
    frames = np.stack([TWELVE_BIT, 4095 - TWELVE_BIT])
    path = make_dicom(tmp_path / "mf.dcm", TWELVE_BIT, NumberOfFrames=2)
    ds = pydicom.dcmread(path)
    ds.PixelData = frames.astype(np.uint16).tobytes()
    ds.save_as(path)
    np.testing.assert_array_equal(read_grayscale(path), as_uint8(TWELVE_BIT / 4095))
    assert read_dicom(path, path).shape == TWELVE_BIT.shape


@pytest.mark.real_data
@pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/data/dicom_samples is absent")
def test_real_samples_monochrome1_variant_is_the_inverse():
    """The real RSNA file (8-bit JPEG baseline, no VOI) and its MONOCHROME1 variant: exact inverses."""
    original = read_grayscale(SAMPLES / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")
    inverted = read_grayscale(SAMPLES / "Fake_MONOHR1.dcm")
    assert original.shape == (1024, 1024)
    np.testing.assert_array_equal(inverted, 255 - original)
    # no VOI in these files: the window policy and the old linear mapping agree
    for path in SAMPLES.glob("*.dcm"):
        np.testing.assert_array_equal(read_grayscale(path), read_grayscale(path, DicomPolicy(voi="linear")))


def test_modality_lut_sequence_then_no_voi(tmp_path):
    """A Modality LUT Sequence maps stored 0..3 to 0, 1000, 2000, 65535 (16-bit entries): scaled by 65535."""
    item = pydicom.Dataset()
    item.add_new(0x00283002, "US", [4, 0, 16])  # LUT Descriptor: 4 entries from stored value 0, 16 bits
    item.add_new(0x00283006, "US", [0, 1000, 2000, 65535])  # LUT Data
    item.ModalityLUTType = "US"
    path = make_dicom(
        tmp_path / "mlut.dcm", np.array([[0, 1, 2, 3]]), ModalityLUTSequence=pydicom.Sequence([item])
    )
    np.testing.assert_array_equal(read_grayscale(path), as_uint8(np.array([[0, 1000, 2000, 65535]]) / 65535))
