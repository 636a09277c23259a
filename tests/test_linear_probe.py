"""benchmarks/linear_probe.py end to end on a few real images, on the path without pretrained files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import KERMANY, ROOT


@pytest.mark.slow
@pytest.mark.real_data
def test_linear_probe_runs_on_random_weights_and_says_so(tmp_path: Path) -> None:
    if not KERMANY.is_dir():
        pytest.skip(f"real data not found at {KERMANY}")
    out = tmp_path / "probe.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "linear_probe.py"),
        "--weights-dir", str(tmp_path / "no-weights-here"),
        "--image-size", "64",
        "--n-train", "40", "--n-val", "20", "--n-test", "20",
        "--bootstrap", "20",
        "--workdir", str(tmp_path / "work"),
        "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["random_weights_only"] is True
    (row,) = report["rows"]
    assert row["weights"] == "tv-resnet18-imagenet1k-v1" and row["pretrained"] is False
    assert "random weights" in row["note"] and "resnet18-f37072fd.pth" in row["note"]
    assert (row["n_train"], row["n_val"], row["kermany_test"]["n"], row["features"]) == (40, 20, 20, 512)
    test = row["kermany_test"]
    assert 0.0 <= test["auroc_ci95"][0] <= test["auroc"] <= test["auroc_ci95"][1] <= 1.0
    # accuracy is the class-weighted mean of sensitivity and specificity (10 images per class)
    assert test["accuracy"] == pytest.approx((test["sensitivity"] + test["specificity"]) / 2, abs=1e-4)
    # the features went through the feature cache: one memory-mapped file per split and backbone
    assert len(list((tmp_path / "work" / "features").glob("*.npy"))) >= 3
