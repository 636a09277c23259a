"""Tiny on-disk data sets and a small pipeline for the data-layer tests (no real data needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pydicom
from albumentations.pytorch import ToTensorV2
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pneumonia_cam.data.datamodule import ChestXrayDataModule
from pneumonia_cam.data.sources import FolderSource
from pneumonia_cam.data.transforms import XrayTransforms

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def write_image(path: Path, value: int = 128, size: int = 24) -> Path:
    """A small gray PNG/JPEG with a value gradient, so images are not all alike."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.clip(value + np.arange(size)[None, :] - size // 2, 0, 255).astype(np.uint8)
    assert cv2.imwrite(str(path), np.repeat(image, size, axis=0))
    return path


def kermany_names(label: int, count: int, images_per_patient: int = 2) -> list[str]:
    """Kermany-style names, several images per patient (person... for PNEUMONIA, IM-... for NORMAL)."""
    names = []
    for i in range(count):
        patient, visit = divmod(i, images_per_patient)
        if label:
            names.append(f"person{patient + 1}_bacteria_{i + 1}.png")
        else:
            names.append(f"IM-{patient + 1:04d}-{visit + 1:04d}.png")
    return names


def make_class_folders(root: Path, counts: Sequence[int] = (20, 30), split: str = "") -> list[Path]:
    """Write `counts[label]` Kermany-named images into root[/split]/{NORMAL,PNEUMONIA}/."""
    written = []
    for label, (name, count) in enumerate(zip(("NORMAL", "PNEUMONIA"), counts, strict=True)):
        folder = root / split / name if split else root / name
        written += [write_image(folder / file, 60 + 120 * label) for file in kermany_names(label, count)]
    return written


def small_transforms(size: int = 16) -> XrayTransforms:
    """The production pipeline's shape (gray -> 3 channels, ImageNet normalisation) at a tiny size."""
    return XrayTransforms(
        preprocess=[A.Resize(size, size)],
        augment=[A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(0.1, 0.1, p=0.5)],
        postprocess=[A.ToRGB(num_output_channels=3), A.Normalize(IMAGENET_MEAN, IMAGENET_STD), ToTensorV2()],
    )


def folder_datamodule(data_dir: Path, **options) -> ChestXrayDataModule:
    """A data module over class folders with small, fast settings; options override them."""
    settings = dict(
        source=FolderSource, transforms=small_transforms(), image_size=16, batch_size=8, num_workers=0, seed=7
    )
    return ChestXrayDataModule(str(data_dir), **{**settings, **options})


def dicom_object(sop_class: str, modality: str) -> pydicom.Dataset:
    """An uncompressed DICOM object of one SOP class, with no content yet."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    return ds


def make_dicom(path: Path, pixels: np.ndarray, bits: int = 12, signed: bool = False, **attributes) -> Path:
    """A one-frame CR image with `pixels` stored in 16 bits; `attributes` are set on the dataset."""
    ds = dicom_object("1.2.840.10008.5.1.4.1.1.1", "CR")  # CR image storage
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    for key, value in attributes.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
