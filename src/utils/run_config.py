"""The composed run config travels inside every checkpoint, so eval and predict rebuild the same pipeline."""

from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from omegaconf import DictConfig, OmegaConf

CONFIG_KEY = "run_config"


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config as plain containers, without Hydra's own `hydra` node."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


class RunConfigInCheckpoint(Callback):
    """Store the resolved config (plain containers only, so `weights_only=True` loading works)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.config = plain_config(cfg)

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Attach the config to the checkpoint being written."""
        checkpoint[CONFIG_KEY] = self.config


def load_run_config(ckpt_path: str | Path) -> DictConfig:
    """Read the training config stored in a checkpoint without unpickling arbitrary objects."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if CONFIG_KEY not in checkpoint:
        raise KeyError(
            f"{path} holds no '{CONFIG_KEY}': it was not written by src/train.py. "
            "Pass the data config explicitly, e.g. `data=chest_xray data.data_dir=...`."
        )
    return OmegaConf.create(checkpoint[CONFIG_KEY])
