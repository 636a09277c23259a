"""Stochastic weight averaging (callbacks=swa): the deployed checkpoint holds the mean of epochs' weights."""

import pytest
import torch
from conftest import smoke_config
from helpers import compose_config
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from src.train import train


def swa_config(tmp_path, data_dir):
    """The smoke run with callbacks=swa: 3 epochs, averaging from the 2nd, every epoch's checkpoint kept."""
    cfg = smoke_config(tmp_path, data_dir)
    swa_callbacks = compose_config("train.yaml", ["experiment=smoke", "callbacks=swa"]).callbacks
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.callbacks = swa_callbacks
        cfg.callbacks.rich_progress_bar = None
        cfg.callbacks.model_checkpoint.dirpath = str(tmp_path / "checkpoints")
        cfg.callbacks.last_checkpoint.dirpath = str(tmp_path / "checkpoints")
        cfg.callbacks.model_checkpoint.save_top_k = -1
        cfg.callbacks.swa.swa_epoch_start = 2  # 1-based: averaging starts with the 2nd epoch
        cfg.callbacks.swa.swa_lrs = 0.01
        cfg.trainer.max_epochs = 3
    return cfg


@pytest.mark.slow
def test_swa_checkpoint_is_the_mean_of_the_epochs(tmp_path, data_dir):
    """Lightning averages the weights at the start of epochs 1 and 2 (= after epochs 0 and 1), then spends one
    extra epoch recomputing BatchNorm statistics: that epoch's checkpoint is what test and eval use."""
    cfg = swa_config(tmp_path, data_dir)
    HydraConfig().set_config(cfg)
    _, objects = train(cfg)
    states = {
        epoch: torch.load(tmp_path / "checkpoints" / f"epoch_{epoch:03d}.ckpt", weights_only=True)[
            "state_dict"
        ]
        for epoch in range(4)
    }
    key = "net.head.fc.weight"
    torch.testing.assert_close(states[3][key], (states[0][key] + states[1][key]) / 2)
    bn_mean = "net.features.layer4.0.bn1.running_mean"
    assert not torch.allclose(states[3][bn_mean], states[2][bn_mean])  # recomputed for the averaged weights
    assert objects["trainer"].checkpoint_callback.best_model_path.endswith("epoch_003.ckpt")


def test_swa_with_ema_is_refused(tmp_path, data_dir):
    cfg = swa_config(tmp_path, data_dir)
    with open_dict(cfg):
        cfg.model.ema_decay = 0.9
    HydraConfig().set_config(cfg)
    with pytest.raises(ValueError, match="choose one"):
        train(cfg)
