"""cross_validate.py and compare.py, run as a user would."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import assert_ok, run_entry_point
from omegaconf import OmegaConf

from pneumonia_cam.evaluation.bootstrap import paired_bootstrap_diff
from pneumonia_cam.evaluation.comparison import compare, pair
from pneumonia_cam.evaluation.significance import delong_test, mcnemar_exact

QUIET = ["extras.print_config=false", "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_cross_validation_folds_partition_the_pool(tmp_path, data_dir):
    """3 folds: each fold's test split is disjoint from the others and together they cover every image."""
    result = run_entry_point(
        "cross_validate.py",
        [
            "experiment=smoke",
            "folds=3",
            "trainer.max_epochs=1",
            "callbacks.cam_panel=null",
            f"paths.data_dir={data_dir}",
            f"hydra.run.dir={tmp_path}",
            *QUIET,
        ],
    )
    assert_ok(result)
    tests, pools = [], []
    for fold in range(3):
        split = pd.read_csv(tmp_path / f"fold_{fold}" / "split.csv")
        tests.append(set(split.loc[split["split"] == "test", "path"]))
        pools.append(set(split["path"]))
        patients = split.groupby("patient_id")["split"].nunique()
        assert (patients == 1).all(), "a patient is on two sides of a fold"
    assert pools[0] == pools[1] == pools[2]
    assert set.union(*tests) == pools[0]
    assert sum(len(t) for t in tests) == len(pools[0])
    summary = pd.read_csv(tmp_path / "cv_results.csv", index_col="metric")
    per_fold = pd.read_csv(tmp_path / "cv_folds.csv", index_col="fold")
    assert len(per_fold) == 3
    assert summary.loc["acc", "mean"] == pytest.approx(per_fold["acc"].mean())
    assert summary.loc["acc", "std"] == pytest.approx(per_fold["acc"].std(ddof=1))
    assert "± " in (tmp_path / "cv_results.md").read_text()


def predictions(rng: np.random.Generator, labels: np.ndarray, noise: float) -> pd.DataFrame:
    """A predictions.csv-like table for a model of the given noise level."""
    prob = np.clip(labels * 0.6 + 0.2 + rng.normal(0, noise, labels.size), 0, 1)
    return pd.DataFrame(
        {
            "path": [f"img{i}.png" for i in range(labels.size)],
            "patient_id": [f"p{i // 2}" for i in range(labels.size)],
            "label": labels,
            "probability": prob,
            "prediction": (prob >= 0.5).astype(int),
            "threshold": 0.5,
        }
    )


def test_compare_pairs_and_tests(tmp_path):
    """compare() pairs by path (order-free) and reports exactly what the statistics library computes."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    a, b = predictions(rng, labels, 0.1), predictions(rng, labels, 0.35)
    cfg = OmegaConf.create({"n_resamples": 200, "confidence": 0.95, "seed": 0, "by_patient": True})
    result = compare(a, b.sample(frac=1, random_state=1), ("A", "B"), cfg)
    assert result["mcnemar"] == mcnemar_exact(labels, a["prediction"].to_numpy(), b["prediction"].to_numpy())
    expected = delong_test(labels, a["probability"].to_numpy(), b["probability"].to_numpy())
    assert result["delong"]["p_value"] == pytest.approx(expected["p_value"])
    assert result["delong"]["p_value"] < 0.01
    groups = a["patient_id"].to_numpy()
    diff = paired_bootstrap_diff(labels, a["probability"], b["probability"], 0.5, 0.5, groups, 200, 0.95, 0)
    assert result["bootstrap"]["accuracy"]["diff"] == pytest.approx(diff["accuracy"]["diff"])
    assert result["resampled_by"] == "patient"

    with pytest.raises(ValueError, match="same images"):
        pair(a, b.iloc[:-1], ("A", "B"))
    flipped = b.assign(label=1 - b["label"])
    with pytest.raises(ValueError, match="Labels differ"):
        pair(a, flipped, ("A", "B"))


@pytest.mark.slow
def test_compare_cli_writes_markdown_and_json(tmp_path):
    """The command writes the Performance Comparison page and its numbers."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 120)
    predictions(rng, labels, 0.1).to_csv(tmp_path / "a.csv", index=False)
    predictions(rng, labels, 0.3).to_csv(tmp_path / "b.csv", index=False)
    result = run_entry_point(
        "compare.py",
        [
            f"a={tmp_path / 'a.csv'}",
            f"b={tmp_path / 'b.csv'}",
            "names=[resnet152,densenet121]",
            "bootstrap.n_resamples=100",
            f"hydra.run.dir={tmp_path / 'run'}",
            "extras.print_config=false",
        ],
    )
    assert_ok(result)
    markdown = (tmp_path / "run" / "comparison.md").read_text()
    assert "resnet152" in markdown and "McNemar" in markdown and "DeLong" in markdown
    saved = json.loads((tmp_path / "run" / "comparison.json").read_text())
    assert saved["n"] == 120
    assert 0 <= saved["mcnemar"]["p_value"] <= 1
