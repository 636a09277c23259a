"""Ensembles (one file) and test-time augmentation: probabilities and CAMs averaged the same way, by hand."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import assert_ok, perturbed_copy, run_entry_point, softened_copy
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from pneumonia_cam.data.batch_augment import black_level
from pneumonia_cam.inference.ensemble import save_average, save_ensemble
from pneumonia_cam.inference.export import export_onnx
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.models.combined import EnsembleNet, TTANet, TTAView
from pneumonia_cam.models.net import ChestXrayNet
from pneumonia_cam.runtime.onnx import OnnxModel
from src.eval import evaluate


def cam_grids(net: ChestXrayNet, x: torch.Tensor) -> torch.Tensor:
    """Every class's raw CAM grid (B x K x h x w) of one plain network, by the definition."""
    return torch.einsum("kc,bchw->bkhw", net.head.fc.weight, net.forward_features(x))


def nets(n: int) -> list[ChestXrayNet]:
    """n small random networks in eval mode."""
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(ChestXrayNet("resnet18", None, 2, freeze_backbone=False).eval())
    return out


@torch.no_grad()
def test_ensemble_net_averages_probabilities_and_cams():
    members = nets(3)
    ensemble = EnsembleNet(members).eval()
    x = torch.randn(2, 3, 64, 64)
    maps, logits = ensemble.features_and_logits(x)
    expected = torch.stack([m(x).exp() for m in members]).mean(0)
    torch.testing.assert_close(logits.softmax(1), expected, atol=1e-6, rtol=0)
    mean_cam = torch.stack([cam_grids(m, x) for m in members]).mean(0)
    torch.testing.assert_close(
        torch.einsum("kc,bchw->bkhw", ensemble.head.fc.weight, maps), mean_cam, atol=1e-5, rtol=1e-5
    )
    with pytest.raises(ValueError, match="at least 2"):
        EnsembleNet(members[:1])


@torch.no_grad()
def test_tta_net_mirrors_back_and_averages():
    (net,) = nets(1)
    tta = TTANet(net, ["identity", "hflip"]).eval()
    x = torch.randn(2, 3, 64, 64)
    maps, logits = tta.features_and_logits(x)
    flipped = x.flip(-1)
    torch.testing.assert_close(logits.softmax(1), (net(x).exp() + net(flipped).exp()) / 2, atol=1e-6, rtol=0)
    expected = (cam_grids(net, x) + cam_grids(net, flipped).flip(-1)) / 2
    torch.testing.assert_close(
        torch.einsum("kc,bchw->bkhw", tta.head.fc.weight, maps), expected, atol=1e-5, rtol=1e-5
    )
    with pytest.raises(ValueError, match="vflip"):
        TTANet(net, ["vflip"])


def test_tta_views_turn_zoom_and_map_back_by_hand():
    """rotate:90 is a quarter turn counter-clockwise (OpenCV's sense), exactly inverted on the feature grid;
    zoom:2 shows the centre half, and maps back onto the centre half with zeros outside; the fill pads."""
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).view(1, 2, 8, 8)
    turned = TTAView("rotate:90").apply(x, torch.zeros(()))
    torch.testing.assert_close(turned, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-4, rtol=0)
    torch.testing.assert_close(TTAView("rotate:90").invert(turned), x, atol=1e-4, rtol=0)
    ones = torch.ones(1, 1, 8, 8)
    back = TTAView("zoom:2").invert(ones)
    expected = torch.zeros(1, 1, 8, 8)
    expected[..., 2:6, 2:6] = 1.0
    torch.testing.assert_close(back, expected, atol=1e-6, rtol=0)
    ramp = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)  # 8 row + column: bilinear is exact on it
    position = 1.75 + 0.5 * torch.arange(8.0)  # output pixel j samples input (j + 0.5) / 2 + 2 - 0.5
    torch.testing.assert_close(
        TTAView("zoom:2").apply(ramp, torch.zeros(()))[0, 0],
        8 * position[:, None] + position,
        atol=1e-4,
        rtol=0,
    )
    fill = torch.tensor([-2.0, 3.0]).view(1, 2, 1, 1)
    shrunk = TTAView("zoom:0.5").apply(torch.zeros(1, 2, 8, 8), fill)
    torch.testing.assert_close(shrunk[..., 0, 0], fill.view(1, 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(shrunk[..., 3:5, 3:5], torch.zeros(1, 2, 2, 2), atol=1e-6, rtol=0)
    shifted = TTAView("shift:0.25:0").apply(x, torch.zeros(()))
    torch.testing.assert_close(shifted[..., 2:], x[..., :-2], atol=1e-4, rtol=0)
    for bad in ("vflip", "rotate", "zoom:0", "zoom:big", "shift:0.1"):
        with pytest.raises(ValueError, match="TTA view"):
            TTAView(bad)


@torch.no_grad()
def test_tta_net_merges_affine_views_and_averages_mapped_back_cams():
    """merge=logit: softmax of the mean log-probability; the CAM: the mean of each view's CAM mapped back."""
    (net,) = nets(1)
    views = ["identity", "rotate:10", "zoom:1.2"]
    x = torch.randn(2, 3, 64, 64)
    fill = torch.tensor([-2.1, -2.0, -1.8]).view(1, 3, 1, 1)
    seen = [TTAView(view).apply(x, fill) for view in views]
    log_probs = torch.stack([net(view) for view in seen])
    for merge, expected in (
        ("probability", log_probs.exp().mean(0)),
        ("logit", log_probs.mean(0).exp() / log_probs.mean(0).exp().sum(1, keepdim=True)),
    ):
        tta = TTANet(net, views, merge, fill.flatten().tolist()).eval()
        maps, logits = tta.features_and_logits(x)
        torch.testing.assert_close(logits.softmax(1), expected, atol=1e-6, rtol=0)
    cams = [TTAView(view).invert(cam_grids(net, image)) for view, image in zip(views, seen, strict=True)]
    torch.testing.assert_close(
        torch.einsum("kc,bchw->bkhw", tta.head.fc.weight, maps),
        torch.stack(cams).mean(0),
        atol=1e-5,
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="merge"):
        TTANet(net, views, "median")


def test_black_level_is_the_normalised_black_pixel(smoke_checkpoint):
    """The fill the TTA views pad with is what Normalize makes of 0: -mean / std per channel."""
    model = InferenceModel.from_checkpoint(smoke_checkpoint)
    normalize = next(s for s in model.preprocessor.transform.transforms if type(s).__name__ == "Normalize")
    expected = [-m / s for m, s in zip(normalize.mean, normalize.std, strict=True)]
    np.testing.assert_allclose(black_level(model.preprocessor.transform), expected, rtol=1e-6)


def test_tta_xray_config_on_the_python_api_and_onnx(smoke_checkpoint, tmp_path):
    """`tta=xray` from a config: the merged views' probability, the same from the exported ONNX graph."""
    tta = OmegaConf.load(Path(__file__).parents[1] / "configs" / "tta" / "xray.yaml")
    ckpt = softened_copy(smoke_checkpoint, tmp_path / "soft.ckpt")
    model = InferenceModel.from_config(OmegaConf.create({"ckpt_path": str(ckpt), "tta": tta}))
    plain = InferenceModel.from_checkpoint(ckpt)
    image = (np.random.default_rng(2).random((80, 100)) * 255).astype(np.uint8)
    tensor = plain.prepare(image).tensor[None]
    fill = torch.tensor(black_level(plain.preprocessor.transform)).view(1, -1, 1, 1)
    per_view = torch.stack([plain.predict_proba(TTAView(v).apply(tensor, fill)) for v in tta.views])
    assert float(per_view[:, 0, 1].max() - per_view[:, 0, 1].min()) > 1e-4  # the views do disagree
    expected = per_view.mean(0)
    torch.testing.assert_close(model.predict_proba(tensor), expected, atol=1e-6, rtol=0)
    assert isinstance(model.net, TTANet) and not isinstance(model.net.net, TTANet)  # wrapped once
    exported = OnnxModel(export_onnx(model, tmp_path / "tta.onnx"))
    np.testing.assert_allclose(exported.predict_proba(tensor.numpy()), expected.numpy(), atol=1e-5)
    assert exported.metadata["tta_views"] == list(tta.views)


@pytest.fixture
def ensemble_file(smoke_checkpoint: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(ensemble file, member A, member B): the smoke checkpoint and a shifted copy of it, bundled."""
    second = perturbed_copy(smoke_checkpoint, tmp_path / "b.ckpt")
    return save_ensemble([smoke_checkpoint, second], tmp_path / "ensemble.ckpt"), smoke_checkpoint, second


def test_ensemble_file_loads_as_one_model(ensemble_file, tmp_path):
    """Mean probabilities and the mean raw CAM grid of the members, through InferenceModel; CAM only."""
    path, first, second = ensemble_file
    model = InferenceModel.from_checkpoint(path)
    members = [InferenceModel.from_checkpoint(p) for p in (first, second)]
    image = (np.random.default_rng(0).random((90, 70)) * 255).astype(np.uint8)
    batch = model.prepare(image).tensor[None]
    expected = torch.stack([m.predict_proba(batch) for m in members]).mean(0)
    torch.testing.assert_close(model.predict_proba(batch), expected, atol=1e-6, rtol=0)
    grid = model.explain_batch([image], target_class=1).grids[0]
    member_grids = [m.explain_batch([image], target_class=1).grids[0] for m in members]
    torch.testing.assert_close(grid, torch.stack(member_grids).mean(0), atol=1e-5, rtol=1e-5)
    assert model.info.backbone == "resnet10+resnet10"
    with pytest.raises(ValueError, match="gradcam"):
        model.check_cam("gradcam", "layer4")
    with pytest.raises(ValueError, match="layer3"):
        model.explain([image], target_layer="layer3")
    exported = OnnxModel(export_onnx(model, tmp_path / "ensemble.onnx"))
    got = exported.predict_proba(exported.prepare(image)[0][None])
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


def test_ensemble_refuses_other_data_settings(smoke_checkpoint, tmp_path):
    other = perturbed_copy(smoke_checkpoint, tmp_path / "other_split.ckpt", data_seed=999)
    with pytest.raises(ValueError, match=r"other_split\.ckpt.*seed"):
        save_ensemble([smoke_checkpoint, other], tmp_path / "e.ckpt")
    with pytest.raises(ValueError, match="at least 2"):
        save_ensemble([smoke_checkpoint], tmp_path / "e.ckpt")


def test_eval_on_the_ensemble_file_equals_eval_of_its_members(ensemble_file, cfg_eval, tmp_path):
    """eval.py ckpt_path=<ensemble file> scores exactly what `ckpt_path=A ensemble=[B]` scores."""
    path, first, second = ensemble_file
    tables = {}
    for name, ckpt, members in (("file", path, []), ("list", first, [str(second)])):
        cfg = cfg_eval
        with open_dict(cfg):
            cfg.ckpt_path, cfg.ensemble = str(ckpt), members
            cfg.paths.output_dir = str(tmp_path / name)
            cfg.bootstrap.n_resamples = 50
            cfg.localisation.enabled = False
        Path(cfg.paths.output_dir).mkdir()
        HydraConfig().set_config(cfg)
        evaluate(cfg)
        tables[name] = pd.read_csv(tmp_path / name / "predictions.csv")
    assert (tables["file"]["path"] == tables["list"]["path"]).all()
    np.testing.assert_allclose(tables["file"]["probability"], tables["list"]["probability"], atol=2e-6)
    metrics = json.loads((tmp_path / "file" / "metrics.json").read_text())
    assert metrics["n"] == len(tables["file"])


def test_tta_from_config_on_the_python_api(smoke_checkpoint):
    """`tta=hflip` in predict/serve configs: P is the mean over the image and its mirror image."""
    cfg = OmegaConf.create({"ckpt_path": str(smoke_checkpoint), "tta": {"views": ["identity", "hflip"]}})
    model = InferenceModel.from_config(cfg)
    plain = InferenceModel.from_checkpoint(smoke_checkpoint)
    image = (np.random.default_rng(1).random((80, 100)) * 255).astype(np.uint8)
    tensor = plain.prepare(image).tensor
    expected = (plain.predict_proba(tensor[None]) + plain.predict_proba(tensor.flip(-1)[None])) / 2
    torch.testing.assert_close(model.predict_proba(tensor[None]), expected, atol=1e-6, rtol=0)
    assert isinstance(model.net, TTANet)


def test_average_of_checkpoints_is_the_mean_of_their_weights(smoke_checkpoint, tmp_path):
    second = perturbed_copy(smoke_checkpoint, tmp_path / "b.ckpt")
    path = save_average([smoke_checkpoint, second], tmp_path / "average.ckpt")
    states = [
        torch.load(p, map_location="cpu", weights_only=True)["state_dict"]
        for p in (smoke_checkpoint, second, path)
    ]
    bias = "net.head.fc.bias"
    torch.testing.assert_close(states[2][bias], (states[0][bias] + states[1][bias]) / 2)
    counters = [k for k, v in states[2].items() if not v.is_floating_point()]
    assert counters and all(torch.equal(states[2][k], states[1][k]) for k in counters)
    model = InferenceModel.from_checkpoint(path)
    torch.testing.assert_close(model.net.head.fc.bias, states[2][bias])
    other = perturbed_copy(smoke_checkpoint, tmp_path / "other_split.ckpt", data_seed=999)
    with pytest.raises(ValueError, match="seed"):
        save_average([smoke_checkpoint, other], tmp_path / "bad.ckpt")


@pytest.mark.slow
def test_ensemble_cli(smoke_checkpoint, tmp_path):
    second = perturbed_copy(smoke_checkpoint, tmp_path / "b.ckpt")
    out = tmp_path / "e.ckpt"
    result = run_entry_point(
        "ensemble.py",
        [f"members=[{smoke_checkpoint},{second}]", f"output={out}", f"hydra.run.dir={tmp_path}"],
    )
    assert_ok(result)
    assert InferenceModel.from_checkpoint(out).info.backbone == "resnet10+resnet10"
