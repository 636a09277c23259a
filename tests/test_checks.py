"""Data checks: hashes by hand, the cached scan, cross-split near-duplicates, the report and its CLI."""

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from data_helpers import folder_datamodule, make_class_folders, make_dicom
from helpers import assert_ok, run_entry_point

from pneumonia_cam.data.checks import (
    HASH_SIDE,
    cross_split_duplicates,
    data_report,
    difference_hash,
    scan_images,
)
from pneumonia_cam.data.image_io import read_grayscale, read_header


def test_difference_hash_by_hand():
    """Brighter to the right everywhere: all 256 bits set; a flat image: none; a mirror: the complement."""
    ramp = np.tile(np.arange(0, 255, 5, dtype=np.uint8), (40, 1))  # 51 columns, rising
    assert difference_hash(ramp) == "ff" * (HASH_SIDE * HASH_SIDE // 8)
    assert difference_hash(np.full((40, 51), 7, np.uint8)) == "00" * 32
    assert difference_hash(ramp[:, ::-1]) == "00" * 32


def test_header_bits(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4), np.uint16))
    cv2.imwrite(str(tmp_path / "b.jpg"), np.zeros((8, 8), np.uint8))
    make_dicom(tmp_path / "c.dcm", np.zeros((4, 4)), bits=12)
    assert [read_header((tmp_path / n).read_bytes()).bits for n in ("a.png", "b.jpg", "c.dcm")] == [16, 8, 12]


def test_scan_is_cached_by_size_and_mtime(tmp_path):
    paths = [str(p) for p in make_class_folders(tmp_path / "x", counts=(2, 2))]
    (tmp_path / "x" / "NORMAL" / "broken.png").write_bytes(b"not a png")
    paths.append(str(tmp_path / "x" / "NORMAL" / "broken.png"))
    cache = tmp_path / "scan.json"
    first = scan_images(paths, read_grayscale, cache)
    assert first["problem"].notna().tolist() == [False] * 4 + [True]
    assert (first.loc[:3, ["height", "width", "bits"]] == [24, 24, 8]).all().all()

    def refuse(path: str) -> np.ndarray:
        raise AssertionError(f"decoded {path} again")

    pd.testing.assert_frame_equal(scan_images(paths, refuse, cache), first)  # nothing decoded
    changed = Path(paths[0])
    cv2.imwrite(str(changed), np.zeros((30, 20), np.uint8))  # new size and mtime: scanned again
    calls = []
    again = scan_images(paths, lambda p: calls.append(p) or read_grayscale(p), cache)
    assert calls == [paths[0]] and (again.loc[0, ["height", "width"]] == [30, 20]).all()


def test_cross_split_near_duplicates(tmp_path):
    """A train image re-encoded smaller in test is found; other images are not."""
    rng = np.random.default_rng(0)
    smooth = [cv2.GaussianBlur(rng.random((96, 96)), (0, 0), 6) for _ in range(3)]
    images = [cv2.normalize(s, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8) for s in smooth]
    for i, image in enumerate(images):
        cv2.imwrite(str(tmp_path / f"train{i}.png"), image)
    cv2.imwrite(str(tmp_path / "copy.jpg"), cv2.resize(images[1], (64, 64)), [cv2.IMWRITE_JPEG_QUALITY, 80])
    cv2.imwrite(str(tmp_path / "other.png"), 255 - images[2])
    records = pd.DataFrame(
        {
            "path": [
                str(tmp_path / n) for n in ("train0.png", "train1.png", "train2.png", "copy.jpg", "other.png")
            ],
            "split": ["train", "train", "train", "test", "test"],
            "patient_id": ["a", "b", "c", "d", "e"],
            "label": [0, 1, 0, 1, 0],
        }
    )
    facts = scan_images(records["path"].tolist(), read_grayscale)
    pairs = cross_split_duplicates(records, facts, max_distance=10)
    assert pairs[["path_a", "path_b"]].values.tolist() == [
        [str(tmp_path / "copy.jpg"), str(tmp_path / "train1.png")]
    ]
    assert pairs["distance"].iloc[0] <= 10

    report = data_report(records, facts, pairs, ["NORMAL", "PNEUMONIA"])
    assert report["splits"]["train"] == {"images": 3, "patients": 3, "classes": {"NORMAL": 2, "PNEUMONIA": 1}}
    assert report["longest_side"]["0-255"] == 5 and report["bits_stored"] == {"8": 5}
    assert len(report["cross_split_duplicates"]) == 1


def test_datamodule_warns_or_refuses_leaked_duplicates(tmp_path, caplog):
    make_class_folders(tmp_path / "x", counts=(6, 6))
    folder = tmp_path / "x"
    # every NORMAL image is the same picture: with 6 patients over 3 splits, copies cross splits
    with pytest.raises(ValueError, match=r"near-duplicate image pair\(s\) across splits"):
        folder_datamodule(folder, fractions=(0.5, 0.25, 0.25), duplicates="error").setup("fit")
    with caplog.at_level("WARNING"):
        folder_datamodule(folder, fractions=(0.5, 0.25, 0.25)).setup("fit")
    assert "near-duplicate" in caplog.text
    folder_datamodule(folder, fractions=(0.5, 0.25, 0.25), duplicates="off").setup("fit")


@pytest.mark.slow
def test_inspect_data_cli_writes_the_report(tmp_path):
    make_class_folders(tmp_path / "x", counts=(4, 6))
    (tmp_path / "x" / "PNEUMONIA" / "person99_bacteria_1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = run_entry_point(
        "inspect_data.py",
        [
            f"data.data_dir={tmp_path / 'x'}",
            "data.on_bad_image=skip",
            "data.duplicates=off",
            f"paths.data_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'run'}",
            "extras.print_config=false",
        ],
        timeout=300,
    )
    assert_ok(result)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["images"] == 11 and sum(row["images"] for row in report["splits"].values()) == 10
    assert [Path(row["path"]).name for row in report["unreadable"]] == ["person99_bacteria_1.png"]
    assert "## Unreadable files (1)" in (tmp_path / "run" / "data_report.md").read_text()
    assert list((tmp_path / "cache" / "cache" / "scan").glob("scan-*.json"))  # the scan is cached
