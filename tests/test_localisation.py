"""CAM localisation scores by hand, and eval.py's localisation of the smoke model against its blob boxes."""

import json
from pathlib import Path

import numpy as np
import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from pneumonia_cam.evaluation.localisation import (
    baseline_heatmap,
    boxes_mask,
    heatmap_iou,
    mean_with_ci,
    pointing_hit,
)
from pneumonia_cam.inference.model import InferenceModel
from src.eval import evaluate


def test_boxes_mask_pointing_and_iou_by_hand():
    mask = boxes_mask([[1, 1, 2, 2], [4, 0, 1, 1]], (5, 6))
    expected = np.zeros((5, 6), bool)
    expected[1:3, 1:3] = True
    expected[0, 4] = True
    np.testing.assert_array_equal(mask, expected)

    heat = np.zeros((5, 6))
    heat[2, 2] = 1.0  # inside the first box
    assert pointing_hit(heat, mask)
    heat[4, 5] = 2.0  # the maximum moves outside
    assert not pointing_hit(heat, mask)

    # region = heat >= 0.5 x max: 4 pixels, 2 of them inside 5 box pixels -> IoU 2 / (4 + 5 - 2)
    heat = np.zeros((5, 6))
    heat[1, 1:3] = 1.0
    heat[3, 0:2] = 0.6
    assert heatmap_iou(heat, mask, 0.5) == pytest.approx(2 / 7)
    assert heatmap_iou(np.zeros((5, 6)), mask, 0.5) == 0.0


def test_baseline_is_the_mean_of_normalised_boxes():
    """Two images of different sizes, each with a box over its left half: the prior is 1 on the left half."""
    prior = baseline_heatmap([[[0, 0, 50, 100]], [[0, 0, 100, 40]]], [(100, 100), (40, 200)], side=8)
    np.testing.assert_array_equal(prior[:, :4], 1.0)
    np.testing.assert_array_equal(prior[:, 4:], 0.0)
    half = baseline_heatmap([[[0, 0, 50, 100]], []], [(100, 100), (10, 10)], side=8)
    np.testing.assert_array_equal(half[:, :4], 0.5)


def test_mean_with_ci():
    values = np.array([1.0, 0.0, 1.0, 1.0])
    score = mean_with_ci(values, 500, 0.95, 0)
    assert score["value"] == 0.75 and 0.0 <= score["low"] <= 0.75 <= score["high"] <= 1.0
    assert mean_with_ci(np.ones(5), 100, 0.95, 0) == {"value": 1.0, "low": 1.0, "high": 1.0}


def test_eval_scores_the_cam_against_the_blob_boxes(smoke_checkpoint, cfg_eval, tmp_path):
    """The synthetic set's boxes are its blobs' squares: eval's pointing game equals a recount by hand."""
    with open_dict(cfg_eval):
        cfg_eval.ckpt_path = str(smoke_checkpoint)
        cfg_eval.bootstrap.n_resamples = 100
    HydraConfig().set_config(cfg_eval)
    summary, objects = evaluate(cfg_eval)
    result = summary["localisation"]
    test = objects["datamodule"].data_test.records
    positives = test[test["label"] == 1]
    assert result["images"] == len(positives) > 0

    model = InferenceModel.from_checkpoint(smoke_checkpoint)
    hits = []
    for path, boxes in zip(positives["path"], positives["boxes"], strict=True):
        heat = model.explain_batch([path], target_class=1).maps[0]
        ((x, y, w, h),) = json.loads(boxes)
        row, column = np.unravel_index(np.argmax(heat), heat.shape)
        hits.append(np.floor(x) <= column < np.ceil(x + w) and np.floor(y) <= row < np.ceil(y + h))
    assert result["cam"]["pointing_game"]["value"] == pytest.approx(np.mean(hits))
    metrics = json.loads((Path(cfg_eval.paths.output_dir) / cfg_eval.metrics_file).read_text())
    assert metrics["localisation"]["baseline"]["iou"]["value"] == pytest.approx(
        result["baseline"]["iou"]["value"]
    )
    report = (Path(cfg_eval.paths.output_dir) / "report.md").read_text()
    assert "## CAM localisation" in report and "prior (mean training box)" in report
    assert Path(result["figure"]).stat().st_size > 5000
