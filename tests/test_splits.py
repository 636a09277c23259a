"""Splits are patient-grouped, stratified, sized as asked, and reproducible down to the CSV bytes."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumonia_cam.data.splits import (
    assign_splits,
    carve_validation,
    patient_id_from_filename,
    write_split_csv,
)

FRACTIONS = (0.7, 0.15, 0.15)


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("person1234_bacteria_3149.jpeg", "person1234"),
        ("person120_virus_226.jpeg", "person120"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-0427-0001.jpeg", "NORMAL2-IM-0427"),
        ("IM-0011-0001-0002.jpeg", "IM-0011"),
        ("/data/train/NORMAL/IM-0115-0001.jpeg", "IM-0115"),
        ("scan_42.png", "scan_42"),  # unknown scheme: each image is its own patient
    ],
)
def test_patient_id_from_filename(name: str, patient: str) -> None:
    assert patient_id_from_filename(name) == patient


def _records(seed: int = 0, n_patients: int = 300) -> pd.DataFrame:
    """Patients with 1-4 images each, ~30% NORMAL, like an imbalanced X-ray set."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = int(rng.random() > 0.3)
        rows += [(f"img/p{p}_{i}.png", label, f"p{p}", "") for i in range(rng.integers(1, 5))]
    return pd.DataFrame(rows, columns=["path", "label", "patient_id", "split"])


def test_split_sizes_are_within_one_patient_of_target_per_class() -> None:
    df = assign_splits(_records(), FRACTIONS, seed=1)
    for _, stratum in df.groupby("label"):
        for split, fraction in zip(("val", "test"), FRACTIONS[1:], strict=True):
            target = round(fraction * len(stratum))
            assert target <= (stratum["split"] == split).sum() < target + 4  # a patient has at most 4 images
    assert set(df["split"]) == {"train", "val", "test"}


def test_no_patient_on_two_sides() -> None:
    df = assign_splits(_records(), FRACTIONS, seed=1)
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()


def test_patient_with_both_labels_stays_together() -> None:
    df = _records()
    patient = df["patient_id"].value_counts().index[0]  # one with several images
    mine = df["patient_id"] == patient
    df.loc[mine, "label"] = np.arange(mine.sum()) % 2
    for seed in range(20):
        out = assign_splits(df, FRACTIONS, seed=seed)
        assert out.loc[mine, "split"].nunique() == 1


def test_stratified_label_ratio() -> None:
    df = assign_splits(_records(n_patients=600), FRACTIONS, seed=2)
    overall = df["label"].mean()
    for split in ("train", "val", "test"):
        assert abs(df.loc[df["split"] == split, "label"].mean() - overall) < 0.03


def test_split_csv_is_reproducible(tmp_path: Path) -> None:
    df = _records()
    hashes = [
        write_split_csv(assign_splits(df, FRACTIONS, seed=s), tmp_path / f"{i}.csv")
        for i, s in enumerate([5, 5, 6])
    ]
    assert hashes[0] == hashes[1] != hashes[2]
    assert (tmp_path / "0.csv").read_bytes() == (tmp_path / "1.csv").read_bytes()
    assert (tmp_path / "0.csv").read_bytes() != (tmp_path / "2.csv").read_bytes()
    shuffled = assign_splits(df.sample(frac=1, random_state=0), FRACTIONS, seed=5)
    assert (
        write_split_csv(shuffled, tmp_path / "s.csv") == hashes[0]
    )  # row order of the input does not matter
    header = (tmp_path / "0.csv").read_text().splitlines()[0]
    assert header == "path,label,patient_id,split,status"


def test_split_csv_paths_relative_to_root(tmp_path: Path) -> None:
    df = pd.DataFrame({"path": ["/data/x/a.png"], "label": [1], "patient_id": ["a"], "split": ["train"]})
    write_split_csv(df, tmp_path / "s.csv", root="/data")
    assert (tmp_path / "s.csv").read_text().splitlines()[1] == "x/a.png,1,a,train,ok"


def test_carve_validation_keeps_test_untouched() -> None:
    df = _records()
    df["split"] = np.where(df["patient_id"].str[1:].astype(int) % 5 == 0, "test", "train")
    out = carve_validation(df, 0.2, seed=0)
    pd.testing.assert_frame_equal(out[df["split"] == "test"], df[df["split"] == "test"])
    train_pool = out[df["split"] == "train"]
    assert set(train_pool["split"]) == {"train", "val"}
    assert (out.groupby("patient_id")["split"].nunique() == 1).all()
    for _, stratum in train_pool.groupby("label"):
        target = round(0.2 * len(stratum))
        assert target <= (stratum["split"] == "val").sum() < target + 4


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.9, 0.2, 0.1), (1.2, -0.1, -0.1)])
def test_bad_fractions_raise(fractions: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(_records(), fractions)
