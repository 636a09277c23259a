"""Each source turns its storage layout into the same records table, and rejects bad input by name."""

import pickle
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from data_helpers import make_class_folders, write_image

from pneumonia_cam.data.sources import FolderSource, ManifestSource, MedMNISTSource, SyntheticSource


def test_folder_source_class_folders(tmp_path: Path) -> None:
    make_class_folders(tmp_path, counts=(4, 6))
    (tmp_path / "NORMAL" / "notes.txt").write_text("ignored")
    records = FolderSource(tmp_path).records()
    assert list(records.columns) == ["path", "label", "patient_id", "split"]
    assert records["label"].tolist() == [0] * 4 + [1] * 6
    assert (records["split"] == "").all()
    assert records["path"].is_monotonic_increasing  # deterministic order
    assert records["patient_id"].tolist()[:2] == ["IM-0001", "IM-0001"]
    assert records["patient_id"].tolist()[4] == "person1"


def test_folder_source_train_test_layout(tmp_path: Path) -> None:
    make_class_folders(tmp_path, counts=(4, 6), split="train")
    make_class_folders(tmp_path, counts=(2, 2), split="test")
    records = FolderSource(tmp_path).records()
    assert records["split"].value_counts().to_dict() == {"train": 10, "test": 4}
    assert all(f"/{split}/" in path for path, split in zip(records["path"], records["split"], strict=True))


def test_folder_source_empty_class_names_class_and_folder(tmp_path: Path) -> None:
    make_class_folders(tmp_path, counts=(3, 3))
    for path in (tmp_path / "PNEUMONIA").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match="PNEUMONIA") as error:
        FolderSource(tmp_path).records()
    assert str(tmp_path / "PNEUMONIA") in str(error.value)


def _manifest(tmp_path: Path, rows: list[str], header: str = "path,label") -> Path:
    csv = tmp_path / "lists" / "manifest.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    csv.write_text("\n".join([header, *rows]) + "\n")
    return csv


def test_manifest_relative_paths_string_and_int_labels(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "person7_virus_1.png")
    absolute = write_image(tmp_path / "elsewhere" / "IM-0003-0001.png")
    csv = _manifest(tmp_path, ["../images/person7_virus_1.png,PNEUMONIA", f"{absolute},0"])
    records = ManifestSource(tmp_path, csv="lists/manifest.csv").records()
    assert records["label"].tolist() == [1, 0]
    assert Path(records["path"][0]).resolve() == (tmp_path / "images" / "person7_virus_1.png").resolve()
    assert records["path"][1] == str(absolute)
    assert records["patient_id"].tolist() == ["person7", "IM-0003"]
    assert ManifestSource("/unrelated", csv=csv).records().equals(records)  # absolute csv ignores data_dir


def test_manifest_optional_columns(tmp_path: Path) -> None:
    csv = _manifest(tmp_path, ["a.png,1,patA,TRAIN", "b.png,0,,test"], header="path,label,patient_id,split")
    records = ManifestSource(tmp_path, csv=csv).records()
    assert records["patient_id"].tolist() == ["patA", "b"]
    assert records["split"].tolist() == ["train", "test"]


def test_manifest_unknown_label_names_row(tmp_path: Path) -> None:
    csv = _manifest(tmp_path, ["a.png,NORMAL", "b.png,COVID"])
    with pytest.raises(ValueError, match=r"row 2 \(line 3\): unknown label 'COVID'"):
        ManifestSource(tmp_path, csv=csv).records()
    with pytest.raises(ValueError, match="unknown label '2'"):
        ManifestSource(tmp_path, csv=_manifest(tmp_path, ["a.png,2"])).records()


def test_manifest_missing_column(tmp_path: Path) -> None:
    csv = _manifest(tmp_path, ["a.png,1"], header="file,label")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['path'\]"):
        ManifestSource(tmp_path, csv=csv).records()


def _tiny_npz(path: Path, rgb: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (8, 8, 3) if rgb else (8, 8)
    arrays = {}
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1)
    np.savez_compressed(path, **arrays)
    return arrays


def test_medmnist_npz_round_trip(tmp_path: Path) -> None:
    arrays = _tiny_npz(tmp_path / "pm.npz")
    source = MedMNISTSource(tmp_path, size=28, npz="pm.npz")
    source.prepare()  # file present: nothing to download
    records = source.records()
    assert records["split"].value_counts().to_dict() == {"train": 5, "test": 3, "val": 2}
    assert records["path"][1] == f"{tmp_path / 'pm.npz'}#train/00001"
    assert records["label"].tolist()[:5] == [0, 1, 0, 1, 0]
    assert (records["patient_id"] == records["path"]).all()
    np.testing.assert_array_equal(source.read(records["path"][7]), arrays["test_images"][0])
    clone = pickle.loads(pickle.dumps(source))  # what a spawned DataLoader worker receives
    assert clone._images == {} and source._images  # arrays stay behind; the clone loads its own lazily
    np.testing.assert_array_equal(clone.read(records["path"][7]), arrays["test_images"][0])


def test_medmnist_rgb_becomes_gray(tmp_path: Path) -> None:
    arrays = _tiny_npz(tmp_path / "rgb.npz", rgb=True)
    out = MedMNISTSource(tmp_path, npz=tmp_path / "rgb.npz").read("x#val/00001")
    expected = arrays["val_images"][1].astype(float) @ [0.299, 0.587, 0.114]
    assert out.shape == (8, 8) and np.abs(out - expected).max() <= 1


def test_medmnist_offline_download_fails_fast_with_alternatives(tmp_path: Path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise socket.gaierror("no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    source = MedMNISTSource(tmp_path / "medmnist", size=28)
    start = time.monotonic()
    with pytest.raises(RuntimeError) as error:
        source.prepare()
    assert time.monotonic() - start < 20
    message = str(error.value)
    for hint in (
        "data=chest_xray data.data_dir=",
        "data.source.csv=",
        "data.source.npz=",
        "experiment=smoke",
    ):
        assert hint in message
    assert not source.npz.exists()
    assert source.npz.name == "pneumoniamnist.npz"
    assert MedMNISTSource(tmp_path, size=224).npz.name == "pneumoniamnist_224.npz"


def test_synthetic_source_is_deterministic_and_balanced(tmp_path: Path) -> None:
    first = SyntheticSource(tmp_path / "a", num_images=20, image_size=32, seed=3)
    second = SyntheticSource(tmp_path / "b", num_images=20, image_size=32, seed=3)
    first.prepare()
    second.prepare()
    records = first.records()
    assert records["label"].value_counts().to_dict() == {0: 10, 1: 10}
    assert records["patient_id"].nunique() == 20
    files = sorted(p.relative_to(first.data_dir) for p in first.data_dir.rglob("*") if p.is_file())
    assert len(files) == 21  # 20 PNGs and blobs.csv
    assert files == sorted(p.relative_to(second.data_dir) for p in second.data_dir.rglob("*") if p.is_file())
    for relative in files:
        assert (first.data_dir / relative).read_bytes() == (second.data_dir / relative).read_bytes()
    other = SyntheticSource(tmp_path / "c", num_images=20, image_size=32, seed=4)
    assert other.records().shape == records.shape
    assert (other.data_dir / files[0]).read_bytes() != (first.data_dir / files[0]).read_bytes()


def test_synthetic_blob_is_where_blobs_csv_says(tmp_path: Path) -> None:
    source = SyntheticSource(tmp_path, num_images=10, image_size=48, seed=0)
    blobs = source.blobs()
    assert len(blobs) == 5
    for row in blobs.itertuples():
        image = source.read(row.path).astype(float)
        cx, cy = round(row.cx), round(row.cy)
        assert image[cy, cx] > np.median(image) + 40
    normal = source.records().query("label == 0")["path"]
    assert not set(normal) & set(blobs["path"])
