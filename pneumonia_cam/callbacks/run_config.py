"""The resolved run config and the split's hash go into every checkpoint (read back by utils.run_config)."""

from typing import Any

from lightning import Callback, LightningModule, Trainer
from omegaconf import DictConfig

from pneumonia_cam.utils.run_config import CONFIG_KEY, SPLIT_KEY, plain_config


class RunConfigInCheckpoint(Callback):
    """Store the resolved config and the split's hash (plain values only, so `weights_only=True` works)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.config = plain_config(cfg)

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Attach the config (and the hash of the split the run trained on) to the checkpoint."""
        checkpoint[CONFIG_KEY] = self.config
        split_hash = getattr(trainer.datamodule, "split_hash", None)
        if split_hash is not None:
            checkpoint[SPLIT_KEY] = split_hash
