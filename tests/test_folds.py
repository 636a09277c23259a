"""Patient-grouped, label-stratified folds."""

import numpy as np
import pandas as pd
import pytest

from pneumonia_cam.data.folds import assign_folds


@pytest.fixture
def images() -> pd.DataFrame:
    """300 patients with 1-4 images each; about 70% pneumonia patients, like the chest X-ray data."""
    rng = np.random.default_rng(0)
    n_patients = 300
    per_patient = rng.integers(1, 5, n_patients)
    patient_label = (rng.random(n_patients) < 0.7).astype(int)
    return pd.DataFrame(
        {
            "patient_id": np.repeat([f"p{i:03d}" for i in range(n_patients)], per_patient),
            "label": np.repeat(patient_label, per_patient),
        },
        index=pd.RangeIndex(1000, 1000 + per_patient.sum()),
    )


def test_every_sample_in_exactly_one_fold(images: pd.DataFrame) -> None:
    """One fold id per row, aligned with the frame's index, all folds used."""
    folds = assign_folds(images, n_folds=5, seed=42)
    assert folds.index.equals(images.index)
    assert set(folds.unique()) == set(range(5))


def test_no_patient_in_two_folds(images: pd.DataFrame) -> None:
    """Grouping keeps each patient's images in one fold."""
    folds = assign_folds(images, n_folds=5, seed=42)
    assert (folds.groupby(images["patient_id"]).nunique() == 1).all()


def test_class_ratio_per_fold_close_to_overall(images: pd.DataFrame) -> None:
    """Stratification keeps each fold's positive rate within 5 points of the overall rate."""
    folds = assign_folds(images, n_folds=5, seed=42)
    per_fold = images["label"].groupby(folds).mean()
    assert (per_fold - images["label"].mean()).abs().max() < 0.05


def test_seed_controls_assignment(images: pd.DataFrame) -> None:
    """Same seed, same folds; another seed, another split."""
    first = assign_folds(images, seed=1)
    assert first.equals(assign_folds(images, seed=1))
    assert not first.equals(assign_folds(images, seed=2))
