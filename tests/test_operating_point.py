"""The one decision rule, and the operating-point sidecar tied to its checkpoint's bytes and split."""

import shutil

import numpy as np
import pytest
import torch

from pneumonia_cam.evaluation.metrics import point_metrics
from pneumonia_cam.evaluation.operating_point import (
    OperatingPoint,
    load_operating_point,
    save_operating_point,
    sidecar_path,
)
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.models.decision import decide, strict_threshold
from pneumonia_cam.models.metrics import build_metrics
from pneumonia_cam.utils.run_config import checkpoint_sha256, training_split_sha256

POINT = {"method": "youden", "threshold": 0.3125, "temperature": 1.5, "chosen_on": "validation split"}


def test_a_tie_is_positive_everywhere():
    """P == threshold is positive for numpy and torch inputs, in training metrics and in eval metrics."""
    probs = np.array([[0.5, 0.5], [0.75, 0.25], [0.25, 0.75]])
    np.testing.assert_array_equal(decide(probs), [1, 0, 1])
    assert torch.equal(decide(torch.tensor(probs)), torch.tensor([1, 0, 1]))
    np.testing.assert_array_equal(decide(probs, threshold=0.8), [0, 0, 0])
    np.testing.assert_array_equal(decide(probs, positive_class=0), [0, 0, 1])
    assert point_metrics(np.array([1]), np.array([0.5]))["sensitivity"] == 1.0
    metrics = build_metrics(2)
    metrics.update(torch.tensor([0.5, 0.25], dtype=torch.float64), torch.tensor([1, 0]))
    assert metrics.compute()["acc"] == 1.0  # torchmetrics alone would call 0.5 negative
    assert strict_threshold(0.5) < 0.5 and np.nextafter(strict_threshold(0.5), 1) == 0.5


def test_three_classes_decide_by_arg_max():
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    assert torch.equal(OperatingPoint(threshold=0.01).decide(probs), torch.tensor([2, 0]))


@pytest.fixture
def ckpt(smoke_checkpoint, tmp_path):
    """A private copy of the smoke checkpoint, so sidecars written here touch no other test."""
    path = tmp_path / "model.ckpt"
    shutil.copy(smoke_checkpoint, path)
    return path


def test_a_threshold_chosen_with_tta_views_stays_with_those_views(ckpt):
    """eval with tta=xray saves beside, not over, the plain sidecar; each load finds the one of its views."""
    xray = {"views": ["identity", "zoom:1.08"], "merge": "probability"}
    save_operating_point(POINT, ckpt, training_split_sha256(ckpt))
    save_operating_point({**POINT, "threshold": 0.75}, ckpt, training_split_sha256(ckpt), xray)
    assert sidecar_path(ckpt, xray) != sidecar_path(ckpt) and sidecar_path(ckpt, xray).is_file()
    assert sidecar_path(ckpt, {"views": ["identity"], "merge": "logit"}) == sidecar_path(ckpt)
    assert sidecar_path(ckpt, {**xray, "merge": "logit"}) != sidecar_path(ckpt, xray)
    assert load_operating_point(ckpt, "stored").threshold == 0.3125
    assert load_operating_point(ckpt, "stored", xray).threshold == 0.75
    model = InferenceModel.from_checkpoint(ckpt, tta=xray)
    assert model.operating_point.threshold == 0.75 and model.net.views == tuple(xray["views"])
    with pytest.raises(FileNotFoundError, match="same tta"):
        load_operating_point(ckpt, "stored", {"views": ["identity", "rotate:5"]})


def test_sidecar_is_used_under_auto_and_stored_but_not_default(ckpt):
    save_operating_point(POINT, ckpt, training_split_sha256(ckpt))
    for policy in ("auto", "stored"):
        point = load_operating_point(ckpt, policy)
        assert (point.threshold, point.temperature, point.method) == (0.3125, 1.5, "youden")
        assert point.source == str(sidecar_path(ckpt))
    assert load_operating_point(ckpt, "default") == OperatingPoint()
    model = InferenceModel.from_checkpoint(ckpt)
    assert model.operating_point.threshold == 0.3125


def test_no_sidecar_auto_uses_defaults_and_stored_refuses(ckpt):
    assert load_operating_point(ckpt, "auto") == OperatingPoint()
    with pytest.raises(FileNotFoundError, match=r"model\.operating_point\.json"):
        load_operating_point(ckpt, "stored")
    with pytest.raises(ValueError, match="operating_point must be one of"):
        load_operating_point(ckpt, "newest")


def test_sidecar_of_other_weights_is_refused(ckpt):
    """A resumed run overwrote the checkpoint: its old threshold must not be adopted silently."""
    save_operating_point(POINT, ckpt, training_split_sha256(ckpt))
    recorded = checkpoint_sha256(ckpt)
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["state_dict"]["net.head.fc.bias"] += 1.0
    torch.save(checkpoint, ckpt)
    with pytest.raises(ValueError, match=f"SHA-256 {recorded}"):
        InferenceModel.from_checkpoint(ckpt)
    assert InferenceModel.from_checkpoint(ckpt, operating_point="default").operating_point == OperatingPoint()


def test_sidecar_chosen_on_another_split_is_refused(ckpt):
    save_operating_point(POINT, ckpt, "0" * 64)
    with pytest.raises(ValueError, match="chosen on split 0000"):
        load_operating_point(ckpt, "auto")
