"""The CAM border check: band masks and shares by hand, and eval.py's report of it on the smoke model."""

import json
from pathlib import Path

import numpy as np
import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from pneumonia_cam.evaluation.shortcut import border_mask, border_share, border_summary
from pneumonia_cam.inference.model import InferenceModel
from src.eval import evaluate


def test_border_mask_and_shares_by_hand():
    mask = border_mask((10, 20), 0.1)  # 1 row top and bottom, 2 columns left and right
    assert mask.sum() == 10 * 20 - 8 * 16 and not mask[1:9, 2:18].any() and mask[0].all() and mask[:, 1].all()
    uniform = np.ones((10, 20))
    assert border_share(uniform, 0.1) == pytest.approx((72 / 200, 72 / 200))
    centre = np.zeros((10, 20))
    centre[4:6, 8:12] = 1.0
    assert border_share(centre, 0.1)[0] == 0.0
    edge = np.zeros((10, 20))
    edge[0, :] = 0.5
    edge[5, 10] = 0.5  # 10 of 10.5 units of mass in the band
    assert border_share(edge, 0.1)[0] == pytest.approx(10 / 10.5)
    assert border_share(np.zeros((10, 20)), 0.1)[0] == pytest.approx(72 / 200)  # no mass: no preference
    with pytest.raises(ValueError, match=r"border=0\.5"):
        border_mask((10, 10), 0.5)


def test_border_summary_per_class():
    summary = border_summary([0.72, 0.36, 0.0, 0.36], [0.36] * 4, [1, 1, 0, 0], ["NORMAL", "PNEUMONIA"], 200)
    assert summary["images"] == 4 and summary["border_share"]["value"] == pytest.approx(0.36)
    assert summary["ratio_to_uniform"] == pytest.approx(1.0)
    assert summary["per_class"]["PNEUMONIA"]["ratio_to_uniform"] == pytest.approx(1.5)
    assert summary["per_class"]["NORMAL"]["border_share"]["value"] == pytest.approx(0.18)


def test_eval_reports_the_border_share(smoke_checkpoint, cfg_eval):
    """eval.py's figure equals a recount over the test images' CAMs by hand, in metrics and the report."""
    with open_dict(cfg_eval):
        cfg_eval.ckpt_path = str(smoke_checkpoint)
        cfg_eval.bootstrap.n_resamples = 100
        cfg_eval.localisation.enabled = False
        cfg_eval.shortcut.enabled = True
    HydraConfig().set_config(cfg_eval)
    summary, objects = evaluate(cfg_eval)
    result = summary["shortcut"]
    test = objects["datamodule"].data_test.records
    model = InferenceModel.from_checkpoint(smoke_checkpoint)
    shares = [border_share(model.generate_cam(path), 0.1)[0] for path in test["path"]]
    assert result["images"] == len(test) > 0
    assert result["border_share"]["value"] == pytest.approx(np.mean(shares), abs=1e-6)
    assert sum(part["images"] for part in result["per_class"].values()) == len(test)
    metrics = json.loads((Path(cfg_eval.paths.output_dir) / cfg_eval.metrics_file).read_text())
    assert metrics["shortcut"]["ratio_to_uniform"] == pytest.approx(result["ratio_to_uniform"])
    report = (Path(cfg_eval.paths.output_dir) / "report.md").read_text()
    assert "## Shortcut check: CAM mass in the image border" in report
