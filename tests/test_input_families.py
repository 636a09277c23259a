"""For every pre-processing family: a model trained from weights of that family sees the same input and the
same features on every path (the training data module, the Python API, the ONNX runtime, the HTTP server)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from helpers import ROOT, compose_config, wait_ready
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from torchvision import models

from pneumonia_cam.inference.export import export_onnx
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.runtime import OnnxModel
from pneumonia_cam.serving.app import create_app

TFLITE_V2 = ROOT.parent / "shared" / "weights" / "imagenet_tflite" / "mobilenet_v2_1.0_224_quant.tflite"


def imagenet_file(folder: Path) -> Path:
    """A torchvision ResNet-18 state dict (random weights, the real file format)."""
    path = folder / "resnet18-random.pth"
    torch.save(models.resnet18(weights=None).state_dict(), path)
    return path


def xrv_file(folder: Path) -> Path:
    """A TorchXRayVision DenseNet-121 saved as TorchXRayVision publishes it (`torch.save` of the module)."""
    xrv = pytest.importorskip("torchxrayvision")
    path = folder / "txv-densenet-random.pt"
    torch.save(xrv.models.DenseNet(weights=None), path)
    return path


def tflite_file(folder: Path) -> Path:
    """Google's real quantized MobileNetV2 (its own input scaling)."""
    if not TFLITE_V2.is_file():
        pytest.skip("needs ../shared/weights/imagenet_tflite")
    return TFLITE_V2


FAMILIES = {
    "imagenet": ("resnet18", imagenet_file, 3),
    "xrv": ("xrv_densenet121", xrv_file, 1),
    "tflite": ("mobilenet_v2", tflite_file, 3),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_same_input_and_features_on_every_path(family: str, tmp_path: Path, data_dir: Path) -> None:
    from src.train import train

    backbone, make_file, channels = FAMILIES[family]
    weights = make_file(tmp_path)
    cfg = compose_config(
        "train.yaml",
        [
            "experiment=smoke",
            f"model.backbone={backbone}",
            f"model.weights={weights}",
            "model.unfreeze=[]",
            "trainer.max_epochs=1",
            "extras.print_config=false",
            "trainer.enable_progress_bar=false",
            "callbacks.rich_progress_bar=null",
        ],
    )
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.log_dir = str(tmp_path / "run")
        cfg.paths.data_dir = str(data_dir)
        cfg.extras.enforce_tags = False
    assert cfg.input["family"] == family
    HydraConfig().set_config(cfg)
    _, objects = train(cfg)
    GlobalHydra.instance().clear()
    datamodule, trained = objects["datamodule"], objects["model"].inference_net.eval()
    ckpt = next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["run_config"]["input"]["family"] == family

    # training path: the data module's test set as the trainer saw it
    images, _ = next(iter(datamodule.test_dataloader()))
    paths = datamodule.data_test.records["path"].tolist()[: len(images)]
    assert images.shape[1] == channels

    # the Python API (what eval, predict and the server use), rebuilt from the checkpoint alone
    model = InferenceModel.from_checkpoint(ckpt)
    assert model.info.input_family == family
    prepared = torch.stack([model.prepare(path).tensor for path in paths])
    torch.testing.assert_close(prepared, images, rtol=0, atol=0)
    with torch.inference_mode():
        expected = trained.pooled_features(images)
        torch.testing.assert_close(model.net.pooled_features(prepared), expected, rtol=0, atol=0)
        torch_logits = model.forward(prepared)[1]

    # the exported graph and its torch-free runtime
    runtime = OnnxModel(export_onnx(model, tmp_path / "model.onnx"))
    assert runtime.metadata["input_family"] == family
    replayed = np.stack([runtime.prepare(path)[0] for path in paths])
    np.testing.assert_allclose(replayed, images.numpy(), rtol=0, atol=1e-4 * float(images.abs().max()))
    np.testing.assert_allclose(runtime.forward(replayed)[0], torch_logits.numpy(), rtol=1e-4, atol=1e-4)

    # the HTTP server
    serve = compose_config("serve.yaml", [f"ckpt_path={ckpt}", "extras.print_config=false"])
    GlobalHydra.instance().clear()
    with TestClient(create_app(serve)) as client:
        wait_ready(client)
        assert client.get("/v1/model").json()["model"]["input_family"] == family
        body = client.post("/v1/predict", files={"file": ("x.png", Path(paths[0]).read_bytes(), "image/png")})
        probability = body.json()["probabilities"]["PNEUMONIA"]
    assert probability == pytest.approx(float(model.predict_proba(prepared[:1])[0, 1]), abs=1e-6)
