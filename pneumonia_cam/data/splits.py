"""Patient-grouped, label-stratified, seeded splits, written as a CSV whose hash identifies the split."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pneumonia_cam.data.folds import assign_folds

SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = ("path", "label", "patient_id", "split", "status")
_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_"),  # person1234_bacteria_3149, person120_virus_226
    re.compile(r"^((?:NORMAL2-)?IM-\d+)(?:-\d+)+$"),  # IM-0115-0001, NORMAL2-IM-0427-0001, IM-0011-0001-0002
)


def patient_id_from_filename(name: str | os.PathLike) -> str:
    """Kermany file names carry the patient; anything else is treated as its own patient (the stem)."""
    stem = Path(name).stem
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


def assign_splits(
    df: pd.DataFrame, fractions: Sequence[float] = (0.85, 0.074, 0.074), seed: int = 42
) -> pd.DataFrame:
    """Split train/val/test by patient, per label stratum, so no patient leaks across splits."""
    _, val, test = _check_fractions(fractions)
    out = df.copy()
    out["split"] = _allocate(out, {"test": test, "val": val}, rest="train", seed=seed)
    return out


def carve_split(
    df: pd.DataFrame, fraction: float, seed: int, into: str, source: str = "train"
) -> pd.DataFrame:
    """Move a patient-grouped, stratified fraction of the `source` split into `into`; other rows stay put."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction to carve into {into!r} must be in [0, 1), got {fraction}")
    out = df.copy()
    pool = out["split"] == source
    out.loc[pool, "split"] = _allocate(out[pool], {into: fraction}, rest=source, seed=seed)
    return out


def carve_validation(df: pd.DataFrame, val_fraction: float, seed: int) -> pd.DataFrame:
    """Take a validation split out of a predefined train split, leaving test untouched."""
    return carve_split(df, val_fraction, seed, into="val")


def split_records(
    records: pd.DataFrame, fractions: Sequence[float], seed: int, fold: tuple[int, int] | None = None
) -> pd.DataFrame:
    """The split policy: the source's split when it has one (carving out a missing val/test by patient),
    else a seeded, stratified, patient-grouped one; with `fold` = (folds, k), cross-validation fold k."""
    train_f, val_f, test_f = fractions
    if fold is not None:
        return fold_split(records, fractions, seed, *fold)
    predefined = set(records["split"])
    if predefined == {""}:
        return assign_splits(records, (train_f, val_f, test_f), seed)
    if "" in predefined or "train" not in predefined:
        raise ValueError(
            f"a predefined split must label every image and include 'train', got {sorted(predefined)}"
        )
    if "test" not in predefined:
        records = carve_split(records, test_f / (train_f + val_f + test_f), seed, into="test")
    if "val" not in predefined:
        records = carve_split(records, val_f / (train_f + val_f), seed, into="val")
    return records


def fold_split(
    records: pd.DataFrame, fractions: Sequence[float], seed: int, folds: int, fold: int
) -> pd.DataFrame:
    """Cross-validation: fold `fold` of the non-test images is the test split, val is carved by patient.

    A predefined test split (e.g. Kermany's test/) is left out entirely, so CV never touches it.
    """
    train_f, val_f, _ = fractions
    pool = records[records["split"] != "test"].copy()
    fold_ids = assign_folds(pool, folds, seed)
    pool["split"] = np.where(fold_ids == fold, "test", "train")
    return carve_split(pool, val_f / (train_f + val_f), seed, into="val")


def write_split_csv(df: pd.DataFrame, path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """Write the split in canonical form and return the file's sha256, so equal splits hash equal."""
    payload = split_csv_bytes(df, root)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(payload)
    return hashlib.sha256(payload).hexdigest()


def split_csv_bytes(df: pd.DataFrame, root: str | os.PathLike | None = None) -> bytes:
    """Canonical CSV bytes: fixed columns, rows by split then path, paths relative to root when inside it."""
    table = df.copy()
    if "status" not in table:
        table["status"] = "ok"
    if root is not None:
        table["path"] = [_relative_to(p, root) for p in table["path"]]
    table["label"] = table["label"].astype(int)
    rank = table["split"].map({name: i for i, name in enumerate(SPLITS)}).fillna(len(SPLITS))
    table = table.assign(_rank=rank).sort_values(["_rank", "path"], kind="stable")
    return table.loc[:, list(SPLIT_COLUMNS)].to_csv(index=False, lineterminator="\n").encode("utf-8")


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative fractions (train, val, test) summing to 1 within 0.01 (train takes the rest)."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 0.01:
        raise ValueError(
            f"fractions must be three non-negative numbers (train, val, test) summing to 1, got {values}"
        )
    train, val, test = values
    return train, val, test


def _allocate(df: pd.DataFrame, targets: Mapping[str, float], rest: str, seed: int) -> pd.Series:
    """Fill each target split in order with shuffled whole patients up to round(fraction * stratum size)."""
    rng = np.random.default_rng(seed)
    sizes = df.groupby("patient_id").size()
    strata = _patient_strata(df)
    assignment: dict[str, str] = {}
    for label in sorted(strata.unique()):
        patients = rng.permutation(np.sort(strata.index[strata == label].to_numpy()))
        n_images = int(sizes[patients].sum())
        position = 0
        for split, fraction in targets.items():
            goal, taken = round(fraction * n_images), 0
            while taken < goal and position < len(patients):
                assignment[patients[position]] = split
                taken += int(sizes[patients[position]])
                position += 1
        assignment.update(dict.fromkeys(patients[position:], rest))
    return df["patient_id"].map(assignment)


def _patient_strata(df: pd.DataFrame) -> pd.Series:
    """Each patient's majority label (ties -> lowest label), so a patient's images share one stratum."""
    counts = df.groupby(["patient_id", "label"]).size().rename("n").reset_index()
    counts = counts.sort_values(["patient_id", "n", "label"], ascending=[True, False, True])
    return counts.drop_duplicates("patient_id").set_index("patient_id")["label"]


def _relative_to(path: str, root: str | os.PathLike) -> str:
    """Path relative to root when inside it, so the CSV (and hash) do not depend on where data lives."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)
