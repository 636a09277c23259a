"""Records, split policy and balancing as plain functions, checked by hand without a data module."""

import numpy as np
import pandas as pd
import pytest
import torch

from pneumonia_cam.data.balance import class_counts, loss_weights, sampling_weights, undersample
from pneumonia_cam.data.sources import FolderSource, validate_records
from pneumonia_cam.data.splits import split_records

TRAIN = pd.DataFrame({"path": [f"{i}.png" for i in range(7)], "label": [0, 1, 1, 0, 1, 1, 1]})


def test_counts_weights_and_undersampling_by_hand():
    counts = class_counts(TRAIN["label"], 2, "undersample")
    np.testing.assert_array_equal(counts, [2, 5])
    # inverse counts 1/2, 1/5, normalised to mean 1: (0.5, 0.2) / 0.35
    torch.testing.assert_close(loss_weights(counts), torch.tensor([0.5 / 0.35, 0.2 / 0.35]))
    assert sampling_weights(TRAIN["label"], counts) == [0.5, 0.2, 0.2, 0.5, 0.2, 0.2, 0.2]
    kept = undersample(TRAIN, counts, seed=0)
    assert kept["label"].value_counts().to_dict() == {0: 2, 1: 2}
    assert kept.index.is_monotonic_increasing and set(kept.index[kept["label"] == 0]) == {0, 3}
    assert kept.equals(undersample(TRAIN, counts, seed=0))  # seeded
    with pytest.raises(ValueError, match=r"needs every class in train, got counts \[0, 7\]"):
        class_counts(TRAIN["label"].replace(0, 1), 2, "sampler")
    np.testing.assert_array_equal(class_counts(TRAIN["label"].replace(0, 1), 2, "none"), [0, 7])


def test_split_policy_keeps_a_predefined_split_and_carves_what_is_missing():
    records = pd.DataFrame(
        {
            "path": [f"{i}.png" for i in range(40)],
            "label": [i % 2 for i in range(40)],
            "patient_id": [f"p{i // 2}" for i in range(40)],
            "split": ["test"] * 8 + ["train"] * 32,
        }
    )
    split = split_records(records, (0.8, 0.1, 0.1), seed=1)
    assert (split.loc[:7, "split"] == "test").all()  # kept
    assert set(split["split"]) == {"train", "val", "test"}
    assert (split.groupby("patient_id")["split"].nunique() == 1).all()
    folds = split_records(records, (0.8, 0.1, 0.1), seed=1, fold=(4, 0))
    assert len(folds) == 32 and not folds["path"].isin(records["path"][:8]).any()  # CV never sees test
    with pytest.raises(ValueError, match="a predefined split must label every image"):
        split_records(records.assign(split=["val"] * 40), (0.8, 0.1, 0.1), seed=1)


def test_validate_records_names_the_broken_contract(tmp_path):
    source = FolderSource(tmp_path)
    good = pd.DataFrame({"path": ["a", "b"], "label": [0, 1], "patient_id": ["1", "2"], "split": ["", ""]})
    extra = good.assign(view=["PA", "AP"], other=[1, 2])
    assert list(validate_records(extra, ("N", "P"), source).columns) == [
        "path",
        "label",
        "patient_id",
        "split",
        "view",
    ]
    with pytest.raises(ValueError, match=r"labels \[2\] are outside 0..1"):
        validate_records(good.assign(label=[0, 2]), ("N", "P"), source)
    with pytest.raises(ValueError, match="listed twice"):
        validate_records(good.assign(path=["a", "a"]), ("N", "P"), source)
    with pytest.raises(ValueError, match=f"FolderSource found no images in {tmp_path}"):
        validate_records(good.iloc[0:0], ("N", "P"), source)
