"""The data layer on real Kermany images (read in place via a manifest); skipped when data is absent."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from data_helpers import small_transforms

from pneumonia_cam.data.datamodule import ChestXrayDataModule
from pneumonia_cam.data.image_io import read_grayscale
from pneumonia_cam.data.sources import FolderSource, ManifestSource

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KERMANY = SHARED / "chest_xray_kermany224"

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.skipif(not KERMANY.is_dir(), reason=f"real data not found at {KERMANY}"),
]


def _subset(split: str, per_class: int) -> list[tuple[str, str, str]]:
    """The first `per_class` files of each class by name, which include multi-image patients."""
    rows = []
    for label in ("NORMAL", "PNEUMONIA"):
        files = sorted((KERMANY / split / label).glob("*.jpeg"))[:per_class]
        rows += [(str(path), label, split) for path in files]
    return rows


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    rows = _subset("train", 24) + _subset("test", 8)
    csv = tmp_path / "manifest.csv"
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(csv, index=False)
    return csv


def test_real_manifest_groups_patients_and_batches(manifest: Path, tmp_path: Path) -> None:
    source = lambda data_dir: ManifestSource(data_dir, csv=manifest)  # noqa: E731
    dm = ChestXrayDataModule(
        str(tmp_path),
        source,
        small_transforms(size=64),
        batch_size=16,
        num_workers=0,
        output_dir=str(tmp_path),
    )
    dm.prepare_data()
    dm.setup("fit")
    records = dm.records
    assert len(records) == 64 and (records["status"] == "ok").all()
    assert records["patient_id"].nunique() < len(records)  # real names share patients
    # Kermany numbers patients per folder (test/person1 is not train/person1): check grouping within train.
    trainval = records[records["split"] != "test"]
    assert (trainval.groupby("patient_id")["split"].nunique() == 1).all()
    assert (trainval["patient_id"] == "person1000").sum() == 2  # person1000_bacteria_2931 and _virus_1681
    assert set(dm.data_test.records["path"]) == {p for p, _, s in _subset("test", 8) if s == "test"}
    assert len(dm.data_val) > 0
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 64, 64) and images.dtype == torch.float32
    assert set(labels.tolist()) <= {0, 1} and images.std() > 0.1


def test_real_folder_layout_has_predefined_split() -> None:
    records = FolderSource(KERMANY).records()
    assert records["split"].value_counts().to_dict() == {"train": 5216, "test": 624}
    assert records.groupby("split")["label"].sum().to_dict() == {"test": 390, "train": 3875}


@pytest.mark.skipif(not (SHARED / "dicom_samples").is_dir(), reason="no DICOM samples")
def test_real_dicom_and_full_resolution_png() -> None:
    for path in sorted((SHARED / "dicom_samples").glob("*.dcm")):
        image = read_grayscale(path)
        assert image.dtype == np.uint8 and image.ndim == 2 and image.std() > 10
    png = sorted((SHARED / "full_resolution_unlabelled").glob("*.png"))[0]
    assert read_grayscale(png).shape == (1024, 1024)
