"""The training-time CAM panel: PNGs in the run folder, TensorBoard images and W&B media, on schedule."""

from pathlib import Path

import cv2
import hydra
import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pneumonia_cam.callbacks.cam_panel import CAMPanel
from pneumonia_cam.utils import instantiate_loggers


def test_cam_panel_logged_every_k_epochs(cfg_train, tmp_path):
    """Two epochs with k=1: two PNG panels, two TensorBoard image steps, W&B image media."""
    with open_dict(cfg_train):
        cfg_train.trainer.max_epochs = 2
        cfg_train.logger = {
            "tensorboard": {
                "_target_": "lightning.pytorch.loggers.TensorBoardLogger",
                "save_dir": str(tmp_path),
            },
            "wandb": {
                "_target_": "lightning.pytorch.loggers.WandbLogger",
                "save_dir": str(tmp_path),
                "offline": True,
                "project": "test",
            },
        }
    HydraConfig().set_config(cfg_train)
    panel = CAMPanel(every_n_epochs=1, num_images=4, dirpath=str(tmp_path / "panels"), tile=64, columns=2)
    trainer = hydra.utils.instantiate(
        cfg_train.trainer,
        callbacks=[panel],
        logger=instantiate_loggers(cfg_train.logger),
        enable_checkpointing=False,
    )
    trainer.fit(hydra.utils.instantiate(cfg_train.model), hydra.utils.instantiate(cfg_train.data))
    import wandb

    wandb.finish()

    pngs = sorted((tmp_path / "panels").glob("*.png"))
    assert [p.name for p in pngs] == ["epoch_000.png", "epoch_001.png"]
    assert cv2.imread(str(pngs[0])).shape == (128, 128, 3)  # 4 tiles of 64 px in 2 columns

    events = EventAccumulator(str(next(Path(tmp_path).glob("lightning_logs/version_*"))))
    events.Reload()
    assert "val/cam_panel" in events.Tags()["images"]
    assert len(events.Images("val/cam_panel")) == 2

    media = list(Path(tmp_path).glob("wandb/offline-run-*/files/media/images/val/cam_panel_*.png"))
    assert len(media) == 2


def test_cam_panel_rejects_missing_layer_at_fit_start(cfg_train):
    """A layer the backbone lacks fails before training, not epochs later."""
    HydraConfig().set_config(cfg_train)
    trainer = hydra.utils.instantiate(
        cfg_train.trainer,
        callbacks=[CAMPanel(target_layer="denseblock4")],
        logger=False,
        enable_checkpointing=False,
    )
    with pytest.raises(ValueError, match="denseblock4"):
        trainer.fit(hydra.utils.instantiate(cfg_train.model), hydra.utils.instantiate(cfg_train.data))
