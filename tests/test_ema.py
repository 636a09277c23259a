"""EMA of the weights: the update rule by hand, validation beside the raw weights, what inference loads."""

from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import perturbed_copy
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from pneumonia_cam.inference.ensemble import save_ensemble
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.models.classifier import PneumoniaClassifier
from src.train import train


def test_ema_update_rule_by_hand():
    """First update copies the weights; later ones give decay x EMA + (1 - decay) x weights."""
    module = PneumoniaClassifier(backbone="resnet18", weights=None, ema_decay=0.75)
    fc = module.net.head.fc
    with torch.no_grad():
        fc.weight.fill_(1.0)
    module.on_train_batch_end(None, None, 0)
    with torch.no_grad():
        fc.weight.fill_(3.0)
    module.on_train_batch_end(None, None, 1)
    torch.testing.assert_close(
        module.inference_net.head.fc.weight, torch.full_like(fc.weight, 0.75 * 1 + 0.25 * 3)
    )
    assert module.inference_net is module.ema.module
    assert PneumoniaClassifier(backbone="resnet18", weights=None).inference_net.head.fc is not None
    with pytest.raises(ValueError, match="val_ema/loss"):
        PneumoniaClassifier(backbone="resnet18", weights=None, monitor="val_ema/loss")
    with pytest.raises(ValueError, match="ema_decay"):
        PneumoniaClassifier(backbone="resnet18", weights=None, ema_decay=1.5)


def test_training_validates_and_checkpoints_the_ema(cfg_train):
    """val_ema/* is logged, selection can monitor it, and inference loads the EMA weights."""
    with open_dict(cfg_train):
        cfg_train.trainer.max_epochs = 2
        cfg_train.model.ema_decay = 0.9
        cfg_train.monitor.metric = "val_ema/loss"
    HydraConfig().set_config(cfg_train)
    _, objects = train(cfg_train)
    best = objects["trainer"].checkpoint_callback.best_model_path
    assert objects["trainer"].checkpoint_callback.monitor == "val_ema/loss"
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    ema_fc, raw_fc = state["ema.module.head.fc.weight"], state["net.head.fc.weight"]
    assert not torch.equal(ema_fc, raw_fc)  # the EMA lags the trained weights
    model = InferenceModel.from_checkpoint(best)
    torch.testing.assert_close(model.net.head.fc.weight, ema_fc)
    member = perturbed_copy(Path(best), Path(cfg_train.paths.output_dir) / "member.ckpt")
    bundle = save_ensemble([best, member], Path(best).parent / "ensemble.ckpt")
    ensemble = InferenceModel.from_checkpoint(bundle)
    torch.testing.assert_close(ensemble.net.members[0].head.fc.weight, ema_fc)  # members deploy their EMA
    logged = pd.read_csv(next(Path(cfg_train.paths.output_dir).glob("csv/**/metrics.csv")))
    assert {"val_ema/loss", "val_ema/auroc", "val/loss"} <= set(logged.columns)
    assert logged["val_ema/loss"].notna().sum() == 2
